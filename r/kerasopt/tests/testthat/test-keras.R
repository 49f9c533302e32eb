# optimizer_adam(keras = TRUE) / optimizer_adamax(keras = TRUE) return Keras optimizers that
# a Keras model's compile() accepts. keras3 (R) is not installed here, so the model is built
# with Python's keras through reticulate, as keras3 itself does; the loss trajectory must
# equal the same run with keras$optimizers$X (Keras's own optimizer) on the torch backend.

Sys.setenv(KERAS_BACKEND = "torch")  # before Python's keras is first imported

reticulate::py_run_string("
import numpy as np

def kerasopt_r_test_weights(model):
    rng = np.random.default_rng(1)
    return [(0.5 * rng.standard_normal(w.shape)).astype('float32') for w in model.get_weights()]
")
initial_weights <- function(model) {
  reticulate::import_main(convert = FALSE)$kerasopt_r_test_weights(model)
}

keras_trajectory <- function(optimizer, epochs = 4L) {
  keras <- reticulate::import("keras", convert = FALSE)
  np <- reticulate::import("numpy", convert = FALSE)
  rng <- np$random$default_rng(0L)
  x <- rng$standard_normal(c(64L, 4L))$astype("float32")
  y <- np$tanh(np$sum(x, axis = 1L, keepdims = TRUE))$astype("float32")
  model <- keras$Sequential(list(
    keras$Input(shape = list(4L)),
    keras$layers$Dense(8L, activation = "tanh"),
    keras$layers$Dense(1L)
  ))
  model$set_weights(initial_weights(model))  # the same for both runs
  model$compile(optimizer = optimizer, loss = "mse")
  history <- model$fit(x, y, batch_size = 16L, epochs = epochs, shuffle = FALSE, verbose = 0L)
  list(loss = as.numeric(unlist(reticulate::py_to_r(history$history[["loss"]]))),
       optimizer = model$optimizer)
}

test_that("optimizer_adamax(keras = TRUE) trains a Keras model as keras$optimizers$Adamax", {
  keras <- reticulate::import("keras", convert = FALSE)
  ours <- keras_trajectory(optimizer_adamax(learning_rate = 0.01, keras = TRUE))
  theirs <- keras_trajectory(keras$optimizers$Adamax(learning_rate = 0.01))
  expect_true(reticulate::import_builtins()$isinstance(ours$optimizer,
                                                       keras$optimizers$Optimizer))
  expect_identical(reticulate::py_to_r(ours$optimizer$`__class__`$`__module__`),
                   "kerasopt.keras.optimizers")
  expect_length(ours$loss, 4)
  expect_equal(ours$loss, theirs$loss, tolerance = 1e-6)
  expect_lt(ours$loss[4], ours$loss[1])
})

test_that("optimizer_adam(keras = TRUE) with a schedule and every feature matches Keras", {
  keras <- reticulate::import("keras", convert = FALSE)
  ours <- keras_trajectory(optimizer_adam(
    learning_rate = learning_rate_schedule_exponential_decay(0.05, decay_steps = 2,
                                                             decay_rate = 0.7),
    amsgrad = TRUE, weight_decay = 0.01, global_clipnorm = 1, use_ema = TRUE,
    ema_overwrite_frequency = 3, gradient_accumulation_steps = 2, keras = TRUE))
  theirs <- keras_trajectory(keras$optimizers$Adam(
    learning_rate = keras$optimizers$schedules$ExponentialDecay(0.05, 2L, 0.7),
    amsgrad = TRUE, weight_decay = 0.01, global_clipnorm = 1, use_ema = TRUE,
    ema_overwrite_frequency = 3L, gradient_accumulation_steps = 2L))
  expect_equal(ours$loss, theirs$loss, tolerance = 1e-6)
})

test_that("optimizer_adam_w(keras = TRUE) matches keras$optimizers$AdamW", {
  keras <- reticulate::import("keras", convert = FALSE)
  ours <- keras_trajectory(optimizer_adam_w(learning_rate = 0.01, keras = TRUE))
  theirs <- keras_trajectory(keras$optimizers$AdamW(learning_rate = 0.01))
  expect_equal(ours$loss, theirs$loss, tolerance = 1e-6)
})

test_that("keras must be TRUE or FALSE", {
  expect_error(optimizer_adamax(keras = "yes"), "`keras` must be TRUE or FALSE")
})

test_that("a Python without kerasopt gets a message on how to point R at one", {
  # r/run-tests.sh names a Python without kerasopt: the interpreter the test
  # environment was made from (a virtualenv's base).
  base <- Sys.getenv("KERASOPT_R_BARE_PYTHON")
  skip_if(base == "", "KERASOPT_R_BARE_PYTHON is not set (r/run-tests.sh sets it)")
  status <- system2(base, c("-c", shQuote("import kerasopt")), stdout = FALSE, stderr = FALSE)
  expect_true(status != 0, info = paste(base, "can import kerasopt; the check needs one that cannot"))
  out <- suppressWarnings(system2(
    file.path(R.home("bin"), "Rscript"),
    c("-e", shQuote("library(kerasopt); optimizer_adamax()")),
    stdout = TRUE, stderr = TRUE,
    env = c(paste0("RETICULATE_PYTHON=", base), "RETICULATE_MINICONDA_ENABLED=FALSE")))
  text <- paste(out, collapse = "\n")
  expect_match(text, "cannot import the Python module 'kerasopt'", fixed = TRUE)
  expect_match(text, "RETICULATE_PYTHON", fixed = TRUE)
  expect_match(text, base, fixed = TRUE)
  expect_false(grepl("Detected Python configuration", text, fixed = TRUE))
})
