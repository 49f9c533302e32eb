# The R signatures mirror the keras3 R package: same argument names, order and
# defaults (R's NULL where Python has None); the optimizers add one last argument,
# `keras` (FALSE: kerasopt's optimizer for R arrays; TRUE: a Keras optimizer).

expect_formals <- function(f, expected) {
  expect_identical(as.list(formals(f)), expected)
}

test_that("optimizer_adam() has keras3's arguments and defaults", {
  expect_formals(optimizer_adam, alist(
    learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-07,
    amsgrad = FALSE, weight_decay = NULL, clipnorm = NULL, clipvalue = NULL,
    global_clipnorm = NULL, use_ema = FALSE, ema_momentum = 0.99,
    ema_overwrite_frequency = NULL, name = "adam", ... = ,
    loss_scale_factor = NULL, gradient_accumulation_steps = NULL, keras = FALSE))
})

test_that("optimizer_adamax() has keras3's arguments and defaults", {
  expect_formals(optimizer_adamax, alist(
    learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-07,
    weight_decay = NULL, clipnorm = NULL, clipvalue = NULL, global_clipnorm = NULL,
    use_ema = FALSE, ema_momentum = 0.99, ema_overwrite_frequency = NULL,
    name = "adamax", ... = , loss_scale_factor = NULL,
    gradient_accumulation_steps = NULL, keras = FALSE))
})

test_that("optimizer_adam_w() has keras3's arguments and defaults", {
  expect_formals(optimizer_adam_w, alist(
    learning_rate = 0.001, weight_decay = 0.004, beta_1 = 0.9, beta_2 = 0.999,
    epsilon = 1e-07, amsgrad = FALSE, clipnorm = NULL, clipvalue = NULL,
    global_clipnorm = NULL, use_ema = FALSE, ema_momentum = 0.99,
    ema_overwrite_frequency = NULL, name = "adamw", ... = , loss_scale_factor = NULL,
    gradient_accumulation_steps = NULL, keras = FALSE))
})

test_that("each registered algorithm has its R function", {
  names <- reticulate::py_eval(
    "[spec.r_name for spec in __import__('kerasopt.algorithms').algorithms.registered()]")
  for (name in names) expect_true(exists(name, envir = asNamespace("kerasopt")), info = name)
})

test_that("the schedules have keras3's arguments and defaults", {
  expect_formals(learning_rate_schedule_exponential_decay, alist(
    initial_learning_rate = , decay_steps = , decay_rate = , staircase = FALSE,
    name = "ExponentialDecay"))
  expect_formals(learning_rate_schedule_piecewise_constant_decay, alist(
    boundaries = , values = , name = "PiecewiseConstant"))
  expect_formals(learning_rate_schedule_polynomial_decay, alist(
    initial_learning_rate = , decay_steps = , end_learning_rate = 1e-04, power = 1,
    cycle = FALSE, name = "PolynomialDecay"))
  expect_formals(learning_rate_schedule_inverse_time_decay, alist(
    initial_learning_rate = , decay_steps = , decay_rate = , staircase = FALSE,
    name = "InverseTimeDecay"))
  expect_formals(learning_rate_schedule_cosine_decay, alist(
    initial_learning_rate = , decay_steps = , alpha = 0, name = "CosineDecay",
    warmup_target = NULL, warmup_steps = 0L))
  expect_formals(learning_rate_schedule_cosine_decay_restarts, alist(
    initial_learning_rate = , first_decay_steps = , t_mul = 2, m_mul = 1, alpha = 0,
    name = "SGDRDecay"))
})

test_that("the training helpers have their documented arguments", {
  expect_formals(kerasopt_variable, alist(x = , name = NULL, dtype = "float32"))
  expect_formals(variable_value, alist(x = ))
  expect_formals(apply_gradients, alist(optimizer = , grads = , variables = ))
  expect_formals(finalize_variable_values, alist(optimizer = , variables = ))
})

test_that("every exported function is documented", {
  exported <- getNamespaceExports("kerasopt")
  for (f in setdiff(exported, "kerasopt")) {
    expect_true(length(help(f, package = "kerasopt")) == 1, info = f)
  }
})
