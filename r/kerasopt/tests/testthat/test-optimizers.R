python_config <- function(constructor) {
  scope <- run_python(sprintf("config = %s.get_config()", constructor))
  python_value(scope, "config")
}

# Unnamed optimizers are named adam, adam_1, ... as in Keras: compare all but the name.
without_name <- function(config) config[names(config) != "name"]

test_that("the defaults reach Python as Python's own defaults", {
  adam <- optimizer_adam()
  adamax <- optimizer_adamax()
  expect_s3_class(adam, "kerasopt.optimizers.Adam")
  expect_s3_class(adamax, "kerasopt.optimizers.Adamax")
  expect_identical(without_name(adam$get_config()),
                   without_name(python_config("kerasopt.Adam()")))
  expect_identical(without_name(adamax$get_config()),
                   without_name(python_config("kerasopt.Adamax()")))
})

test_that("every argument reaches Python under its own name", {
  adam <- optimizer_adam(
    learning_rate = 0.01, beta_1 = 0.8, beta_2 = 0.99, epsilon = 1e-6, amsgrad = TRUE,
    weight_decay = 0.004, clipnorm = NULL, clipvalue = NULL, global_clipnorm = 1.5,
    use_ema = TRUE, ema_momentum = 0.9, ema_overwrite_frequency = 3, name = "my_adam",
    loss_scale_factor = 128, gradient_accumulation_steps = 2)
  expect_identical(adam$get_config(), python_config(paste0(
    "kerasopt.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6, ",
    "amsgrad=True, weight_decay=0.004, global_clipnorm=1.5, use_ema=True, ",
    "ema_momentum=0.9, ema_overwrite_frequency=3, name='my_adam', ",
    "loss_scale_factor=128.0, gradient_accumulation_steps=2)")))

  adamax <- optimizer_adamax(
    learning_rate = 0.02, beta_1 = 0.7, beta_2 = 0.95, epsilon = 1e-5,
    weight_decay = 0.1, clipnorm = 2, use_ema = TRUE, ema_momentum = 0.5,
    ema_overwrite_frequency = 4L, name = "my_adamax", loss_scale_factor = 4,
    gradient_accumulation_steps = 3L)
  expect_identical(adamax$get_config(), python_config(paste0(
    "kerasopt.Adamax(learning_rate=0.02, beta_1=0.7, beta_2=0.95, epsilon=1e-5, ",
    "weight_decay=0.1, clipnorm=2.0, use_ema=True, ema_momentum=0.5, ",
    "ema_overwrite_frequency=4, name='my_adamax', loss_scale_factor=4.0, ",
    "gradient_accumulation_steps=3)")))
  expect_identical(optimizer_adamax(clipvalue = 0.5)$get_config()$clipvalue, 0.5)
})

test_that("whole R numbers become Python ints or floats as kerasopt needs", {
  builtins <- reticulate::import_builtins()
  py_type <- function(x) builtins$type(x)$`__name__`
  for (steps in list(2, 2L)) {
    opt <- optimizer_adamax(gradient_accumulation_steps = steps,
                            use_ema = TRUE, ema_overwrite_frequency = steps)
    expect_identical(opt$gradient_accumulation_steps, 2L)
    expect_identical(py_type(opt$gradient_accumulation_steps), "int")
    expect_identical(py_type(opt$ema_overwrite_frequency), "int")
  }
  for (lr in list(1, 1L)) {
    opt <- optimizer_adam(learning_rate = lr)
    expect_identical(opt$get_config()$learning_rate, 1)
    expect_identical(variable_value(opt$learning_rate), 1)
  }
})

test_that("extra named arguments go to Python, which rejects unknown ones", {
  expect_error(optimizer_adamax(foo = 1), "foo")
  # A 14th positional argument lands in `...`, which needs names.
  positional <- c(unname(as.list(formals(optimizer_adam)))[1:13], list(3))
  expect_error(do.call(optimizer_adam, positional), "must be named")
})

test_that("a function of no arguments works as a beta", {
  opt <- optimizer_adam(beta_1 = function() 0.5)
  v <- kerasopt_variable(c(1, 2))
  apply_gradients(opt, list(c(0.5, -0.5)), list(v))
  reference <- python_trajectory("kerasopt.Adam(beta_1=0.5)", list(c(1, 2)),
                                 list(list(c(0.5, -0.5))))
  expect_equal(variable_value(v), reference[[1]], tolerance = 1e-6)
})

invalid_cases <- list(
  list(quote(optimizer_adam(beta_1 = 1.5)), "kerasopt.Adam(beta_1=1.5)", "beta_1"),
  list(quote(optimizer_adamax(beta_1 = 1.5)), "kerasopt.Adamax(beta_1=1.5)", "beta_1"),
  list(quote(optimizer_adamax(beta_2 = -0.1)), "kerasopt.Adamax(beta_2=-0.1)", "beta_2"),
  list(quote(optimizer_adam(learning_rate = -1)), "kerasopt.Adam(learning_rate=-1.0)",
       "learning_rate"),
  list(quote(optimizer_adam(learning_rate = "fast")), "kerasopt.Adam(learning_rate='fast')",
       "learning_rate"),
  list(quote(optimizer_adamax(epsilon = 0)), "kerasopt.Adamax(epsilon=0.0)", "epsilon"),
  list(quote(optimizer_adam(clipnorm = 1, clipvalue = 1)),
       "kerasopt.Adam(clipnorm=1.0, clipvalue=1.0)", "clipnorm"),
  list(quote(optimizer_adam(weight_decay = -1)), "kerasopt.Adam(weight_decay=-1.0)",
       "weight_decay"),
  list(quote(optimizer_adamax(gradient_accumulation_steps = 1)),
       "kerasopt.Adamax(gradient_accumulation_steps=1)", "gradient_accumulation_steps"),
  list(quote(optimizer_adamax(gradient_accumulation_steps = 2.5)),
       "kerasopt.Adamax(gradient_accumulation_steps=2.5)", "gradient_accumulation_steps"),
  list(quote(optimizer_adam(ema_momentum = 2)), "kerasopt.Adam(ema_momentum=2.0)",
       "ema_momentum"),
  list(quote(optimizer_adam(use_ema = TRUE, ema_overwrite_frequency = 0)),
       "kerasopt.Adam(use_ema=True, ema_overwrite_frequency=0)", "ema_overwrite_frequency"),
  list(quote(optimizer_adam(amsgrad = "yes")), "kerasopt.Adam(amsgrad='yes')", "amsgrad"),
  list(quote(optimizer_adamax(loss_scale_factor = 0)),
       "kerasopt.Adamax(loss_scale_factor=0.0)", "loss_scale_factor"),
  list(quote(optimizer_adamax(foo = 1)), "kerasopt.Adamax(foo=1.0)", "foo")
)

test_that("invalid arguments give an R error carrying kerasopt's message", {
  for (case in invalid_cases) {
    label <- deparse(case[[1]])
    message <- python_error(case[[2]])
    expect_match(message, case[[3]], fixed = TRUE)
    expect_error(eval(case[[1]]), regexp = case[[3]], fixed = TRUE, label = label)
    expect_error(eval(case[[1]]), regexp = message, fixed = TRUE, label = label)
  }
})

test_that("an R error for an invalid argument shows the Python exception", {
  err <- tryCatch(optimizer_adam(beta_1 = 1.5), error = function(e) e)
  expect_match(conditionMessage(err), "ValueError")
  expect_match(conditionMessage(err),
               "Argument `beta_1` must be a float in [0, 1)", fixed = TRUE)
})
