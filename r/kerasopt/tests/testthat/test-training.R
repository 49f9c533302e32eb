test_that("R arrays keep their shape and element order in kerasopt", {
  m <- matrix(c(1, 2, 3, 4, 5, 6), nrow = 2)
  v <- kerasopt_variable(m, name = "m")
  expect_identical(unlist(v$shape), c(2L, 3L))
  expect_identical(v$name, "m")
  expect_identical(as.character(v$dtype$name), "float32")
  # NumPy element [0, 1] is R element [1, 2].
  scope <- run_python("x = float(v.numpy()[0, 1])", list(v = v))
  expect_identical(python_value(scope, "x"), 3)
  expect_identical(variable_value(v), m)

  a <- array(as.double(1:24), dim = c(2, 3, 4))
  va <- kerasopt_variable(a, dtype = "float64")
  expect_identical(unlist(va$shape), c(2L, 3L, 4L))
  expect_identical(as.character(va$dtype$name), "float64")
  scope <- run_python("x = float(v.numpy()[1, 2, 3])", list(v = va))
  expect_identical(python_value(scope, "x"), a[2, 3, 4])
  expect_identical(variable_value(va), a)

  expect_identical(variable_value(kerasopt_variable(c(0.5, 1.5, 2.5))), c(0.5, 1.5, 2.5))
  expect_identical(variable_value(kerasopt_variable(7)), 7)
  expect_identical(variable_value(kerasopt_variable(1:3)), c(1, 2, 3))
  # float32 storage: values round to float32.
  expect_equal(variable_value(kerasopt_variable(0.1)), 0.1, tolerance = 1e-7)
  expect_false(identical(variable_value(kerasopt_variable(0.1)), 0.1))
})

set.seed(20240501)
init <- list(matrix(rnorm(12), nrow = 3), rnorm(5))
grads <- lapply(1:6, function(i) list(matrix(rnorm(12), nrow = 3), rnorm(5)))

expect_same_trajectory <- function(r_optimizer, python_constructor, finalize = FALSE) {
  r_result <- r_trajectory(r_optimizer, init, grads, finalize = finalize)
  py_result <- python_trajectory(python_constructor, init, grads, finalize = finalize)
  expect_identical(dim(r_result[[1]]), dim(init[[1]]))
  expect_identical(length(r_result[[2]]), length(init[[2]]))
  for (i in seq_along(init)) {
    expect_equal(row_major(r_result[[i]]), py_result[[i]], tolerance = 1e-6)
    # The variables actually moved.
    expect_gt(max(abs(r_result[[i]] - init[[i]])), 1e-4)
  }
}

test_that("Adamax steps from R match the same steps in Python", {
  expect_same_trajectory(optimizer_adamax(learning_rate = 0.01),
                         "kerasopt.Adamax(learning_rate=0.01)")
})

test_that("Adam steps from R match the same steps in Python", {
  expect_same_trajectory(optimizer_adam(learning_rate = 0.01),
                         "kerasopt.Adam(learning_rate=0.01)")
  expect_same_trajectory(
    optimizer_adam(learning_rate = 0.02, amsgrad = TRUE, weight_decay = 0.05, clipnorm = 1),
    "kerasopt.Adam(learning_rate=0.02, amsgrad=True, weight_decay=0.05, clipnorm=1.0)")
})

test_that("AdamW steps from R match the same steps in Python", {
  expect_same_trajectory(optimizer_adam_w(learning_rate = 0.01),
                         "kerasopt.AdamW(learning_rate=0.01)")
  expect_same_trajectory(
    optimizer_adam_w(learning_rate = 0.02, weight_decay = 0.1, amsgrad = TRUE),
    "kerasopt.AdamW(learning_rate=0.02, weight_decay=0.1, amsgrad=True)")
})

test_that("EMA, accumulation, clipping and loss scaling from R match Python", {
  expect_same_trajectory(
    optimizer_adamax(learning_rate = 0.05, use_ema = TRUE, ema_momentum = 0.5,
                     ema_overwrite_frequency = 2, gradient_accumulation_steps = 2,
                     global_clipnorm = 2, loss_scale_factor = 4),
    paste0("kerasopt.Adamax(learning_rate=0.05, use_ema=True, ema_momentum=0.5, ",
           "ema_overwrite_frequency=2, gradient_accumulation_steps=2, ",
           "global_clipnorm=2.0, loss_scale_factor=4.0)"),
    finalize = TRUE)
  expect_same_trajectory(
    optimizer_adam(learning_rate = 0.05, use_ema = TRUE, clipvalue = 0.5),
    "kerasopt.Adam(learning_rate=0.05, use_ema=True, clipvalue=0.5)",
    finalize = TRUE)
})

test_that("a schedule as the learning rate from R matches Python", {
  expect_same_trajectory(
    optimizer_adamax(learning_rate = learning_rate_schedule_exponential_decay(
      0.1, decay_steps = 2, decay_rate = 0.5)),
    "kerasopt.Adamax(learning_rate=kerasopt.schedules.ExponentialDecay(0.1, 2, 0.5))")
  expect_same_trajectory(
    optimizer_adam(learning_rate = learning_rate_schedule_piecewise_constant_decay(
      c(2, 4), c(0.1, 0.01, 0.001))),
    paste0("kerasopt.Adam(learning_rate=kerasopt.schedules.PiecewiseConstantDecay(",
           "[2.0, 4.0], [0.1, 0.01, 0.001]))"))
})

test_that("Adamax trains a tiny problem from R", {
  target <- c(1, -2, 3)
  w <- kerasopt_variable(c(0, 0, 0), name = "w")
  opt <- optimizer_adamax(learning_rate = 0.05)
  loss <- function(x) sum((x - target)^2)
  start <- loss(variable_value(w))
  for (step in 1:200) {
    apply_gradients(opt, list(2 * (variable_value(w) - target)), list(w))
  }
  expect_lt(loss(variable_value(w)), 1e-2 * start)
  expect_identical(variable_value(opt$iterations), 200)
})

test_that("apply_gradients() accepts single arrays and NULL gradients", {
  a <- kerasopt_variable(c(1, 1), name = "a")
  opt <- optimizer_adamax(learning_rate = 0.1)
  expect_invisible(apply_gradients(opt, c(1, -1), a))
  expect_equal(variable_value(a), c(0.9, 1.1), tolerance = 1e-6)

  a <- kerasopt_variable(c(1, 1), name = "a")
  b <- kerasopt_variable(c(1, 1), name = "b")
  opt <- optimizer_adamax(learning_rate = 0.1)
  apply_gradients(opt, list(c(1, -1), c(0, 0)), list(a, b))
  expect_equal(variable_value(a), c(0.9, 1.1), tolerance = 1e-6)
  # A NULL gradient leaves its variable alone; kerasopt's warning is an R warning.
  expect_warning(apply_gradients(opt, list(NULL, c(1, 1)), list(a, b)),
                 "Gradients do not exist for variables ['a']", fixed = TRUE)
  expect_equal(variable_value(a), c(0.9, 1.1), tolerance = 1e-6)
  # b's second Adamax step (t = 2): m = 0.1, u = 1, so w = 1 - 0.1 * 0.1 / (1 - 0.9^2).
  expect_equal(variable_value(b), rep(1 - 0.01 / 0.19, 2), tolerance = 1e-6)
})

test_that("bad calls give clear errors and change nothing", {
  v <- kerasopt_variable(matrix(0, 2, 2), name = "v")
  opt <- optimizer_adam()
  expect_error(apply_gradients(opt, list(c(1, 2, 3)), list(v)), "shape")
  expect_identical(variable_value(v), matrix(0, 2, 2))
  expect_error(apply_gradients(opt, list(1, 2), list(v)), "same length")
  expect_error(apply_gradients(opt, list(1), list(matrix(0, 2, 2))), "kerasopt Variables")
  expect_error(kerasopt_variable("a"), "numeric")
  expect_error(variable_value(1), "kerasopt Variable")
})
