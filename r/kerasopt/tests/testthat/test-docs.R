# The R examples of README.md and docs/keras.md run as written (r/run-tests.sh says where the
# repository is). Each ```r block runs in a fresh environment, in a temporary directory.

r_blocks <- function(path) {
  lines <- readLines(path, warn = FALSE)
  starts <- which(lines == "```r")
  lapply(starts, function(start) {
    end <- start + which(lines[(start + 1):length(lines)] == "```")[1]
    paste(lines[(start + 1):(end - 1)], collapse = "\n")
  })
}

test_that("the R examples in README.md and docs/keras.md run", {
  repo <- Sys.getenv("KERASOPT_REPO")
  skip_if(repo == "", "KERASOPT_REPO is not set (r/run-tests.sh sets it)")
  pages <- file.path(repo, c("README.md", "docs/keras.md"))
  counts <- integer(0)
  for (page in pages) {
    blocks <- r_blocks(page)
    counts[basename(page)] <- length(blocks)
    for (block in blocks) {
      old <- setwd(tempdir())
      problem <- tryCatch({
        eval(parse(text = block), envir = new.env(parent = globalenv()))
        NULL
      }, error = function(e) conditionMessage(e))
      setwd(old)
      if (is.null(problem)) succeed() else
        fail(paste0(basename(page), ": an R block failed (", problem, "):\n", block))
    }
  }
  expect_gte(counts[["README.md"]], 1)
  expect_gte(counts[["keras.md"]], 1)
})
