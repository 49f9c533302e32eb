steps <- c(0, 1, 5, 37, 100, 150, 1000)

# The Python schedule `expression` evaluated at `steps`.
python_schedule_values <- function(expression) {
  scope <- run_python(
    sprintf("s = %s\nvalues = [float(s(int(step))) for step in steps]", expression),
    list(steps = as.list(as.integer(steps))))
  unlist(python_value(scope, "values"))
}

schedule_cases <- list(
  list(quote(learning_rate_schedule_exponential_decay(0.1, 100, 0.96)),
       "kerasopt.schedules.ExponentialDecay(0.1, 100, 0.96)"),
  list(quote(learning_rate_schedule_exponential_decay(0.1, decay_steps = 30, decay_rate = 0.5,
                                                      staircase = TRUE, name = "e")),
       "kerasopt.schedules.ExponentialDecay(0.1, 30, 0.5, staircase=True, name='e')"),
  list(quote(learning_rate_schedule_piecewise_constant_decay(c(10, 100), c(1, 0.5, 0.1))),
       "kerasopt.schedules.PiecewiseConstantDecay([10.0, 100.0], [1.0, 0.5, 0.1])"),
  list(quote(learning_rate_schedule_polynomial_decay(0.1, 120)),
       "kerasopt.schedules.PolynomialDecay(0.1, 120)"),
  list(quote(learning_rate_schedule_polynomial_decay(0.1, 40, end_learning_rate = 0.01,
                                                     power = 0.5, cycle = TRUE)),
       "kerasopt.schedules.PolynomialDecay(0.1, 40, 0.01, power=0.5, cycle=True)"),
  list(quote(learning_rate_schedule_inverse_time_decay(0.1, 10, 0.5)),
       "kerasopt.schedules.InverseTimeDecay(0.1, 10, 0.5)"),
  list(quote(learning_rate_schedule_inverse_time_decay(0.1, 10, 0.5, staircase = TRUE)),
       "kerasopt.schedules.InverseTimeDecay(0.1, 10, 0.5, staircase=True)"),
  list(quote(learning_rate_schedule_cosine_decay(0.1, 200)),
       "kerasopt.schedules.CosineDecay(0.1, 200)"),
  list(quote(learning_rate_schedule_cosine_decay(0, 200, alpha = 0.1, warmup_target = 0.5,
                                                 warmup_steps = 50)),
       paste0("kerasopt.schedules.CosineDecay(0.0, 200, alpha=0.1, warmup_target=0.5, ",
              "warmup_steps=50)")),
  list(quote(learning_rate_schedule_cosine_decay_restarts(0.1, 20)),
       "kerasopt.schedules.CosineDecayRestarts(0.1, 20)"),
  list(quote(learning_rate_schedule_cosine_decay_restarts(0.1, 20, t_mul = 1, m_mul = 0.5,
                                                          alpha = 0.2)),
       "kerasopt.schedules.CosineDecayRestarts(0.1, 20, t_mul=1.0, m_mul=0.5, alpha=0.2)")
)

test_that("each schedule evaluates like the same schedule in Python", {
  for (case in schedule_cases) {
    label <- deparse(case[[1]])
    schedule <- eval(case[[1]])
    expect_s3_class(schedule, "kerasopt_learning_rate_schedule")
    expect_true(is.function(schedule))
    values <- schedule(steps)
    expect_type(values, "double")
    expect_equal(values, python_schedule_values(case[[2]]), tolerance = 1e-6, label = label)
    expect_equal(schedule(37), values[steps == 37], label = label)
    # Its config is the Python schedule's config.
    scope <- run_python(sprintf("config = %s.get_config()", case[[2]]))
    expect_equal(schedule$get_config(), python_value(scope, "config"), label = label)
  }
})

test_that("a schedule is its Python object when handed to Python", {
  schedule <- learning_rate_schedule_exponential_decay(0.1, 10, 0.5)
  py_schedule <- reticulate::r_to_py(schedule)
  expect_s3_class(py_schedule, "kerasopt.schedules.ExponentialDecay")
  opt <- optimizer_adamax(learning_rate = schedule)
  expect_equal(variable_value(opt$learning_rate), 0.1, tolerance = 1e-7)
  # Passed straight to the Python constructor, it converts the same way.
  opt2 <- kerasopt$Adamax(learning_rate = schedule)
  expect_s3_class(opt2$`_learning_rate`, "kerasopt.schedules.ExponentialDecay")
  expect_output(print(schedule), "ExponentialDecay")
})

test_that("schedule arguments are checked by kerasopt", {
  expect_error(learning_rate_schedule_exponential_decay(0.1, 0, 0.5), "decay_steps")
  expect_error(learning_rate_schedule_polynomial_decay(0.1, -1), "decay_steps")
  expect_error(learning_rate_schedule_piecewise_constant_decay(c(1, 2), c(1, 2)), "boundaries")
  expect_error(learning_rate_schedule_piecewise_constant_decay(c(2, 1), c(1, 2, 3)),
               "strictly increasing")
  expect_error(learning_rate_schedule_cosine_decay_restarts(0.1, 10, t_mul = 0), "t_mul")
  expect_error(learning_rate_schedule_cosine_decay(0.1, 10, warmup_steps = -1), "warmup_steps")
  expect_error(learning_rate_schedule_exponential_decay(0.1, 10), "decay_rate")
})
