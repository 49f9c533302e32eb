# Run by R CMD check, or by r/run-tests.sh (which sets RETICULATE_PYTHON to the
# Python environment where kerasopt is installed).
library(testthat)
library(kerasopt)

test_check("kerasopt")
