# Wrap a kerasopt Python schedule as an R function of the step, which also
# converts back to the Python schedule when handed to Python.
.schedule <- function(class_name, args) {
  py_schedule <- do.call(kerasopt$schedules[[class_name]], args)
  evaluate <- function(step) {
    vapply(step, function(s) {
      .numpy_to_r(py_schedule$`__call__`(.as_py_int(s)))
    }, numeric(1), USE.NAMES = FALSE)
  }
  structure(evaluate, py_object = py_schedule,
            class = c("kerasopt_learning_rate_schedule", "function"))
}

#' Learning-rate schedules
#'
#' Keras 3's learning-rate schedules (`keras.optimizers.schedules.*`), computed
#' by kerasopt, with the names and arguments of the 'keras3' R package. Pass a
#' schedule as the `learning_rate` of [optimizer_adam()] or
#' [optimizer_adamax()]: the optimizer evaluates it at its iteration count
#' before each step (the raw count of `apply_gradients()` calls, under gradient
#' accumulation). A schedule is also an R function of the step:
#' `schedule(step)` returns the learning rate at `step` (vectorised over
#' `step`), computed in float32 as Keras does.
#'
#' The schedules, with `step` the optimizer step:
#' \describe{
#'   \item{`learning_rate_schedule_exponential_decay()`}{
#'     `initial_learning_rate * decay_rate ^ (step / decay_steps)`; with
#'     `staircase = TRUE` the exponent is floored.}
#'   \item{`learning_rate_schedule_piecewise_constant_decay()`}{
#'     `values[1]` while `step <= boundaries[1]`, `values[i + 1]` while
#'     `boundaries[i] < step <= boundaries[i + 1]`, and the last value after
#'     the last boundary.}
#'   \item{`learning_rate_schedule_polynomial_decay()`}{
#'     `(initial_learning_rate - end_learning_rate) *
#'     (1 - min(step, decay_steps) / decay_steps) ^ power + end_learning_rate`;
#'     with `cycle = TRUE`, `decay_steps` grows to the first multiple of itself
#'     not below `step`.}
#'   \item{`learning_rate_schedule_inverse_time_decay()`}{
#'     `initial_learning_rate / (1 + decay_rate * step / decay_steps)`; with
#'     `staircase = TRUE`, `step / decay_steps` is floored.}
#'   \item{`learning_rate_schedule_cosine_decay()`}{
#'     an optional linear warmup from `initial_learning_rate` to
#'     `warmup_target` over `warmup_steps`, then a cosine decay over
#'     `decay_steps` from the warmup target (or the initial rate) to `alpha`
#'     times it.}
#'   \item{`learning_rate_schedule_cosine_decay_restarts()`}{
#'     cosine decay with warm restarts (SGDR): the multiplier decays from 1 to
#'     `alpha` over `first_decay_steps`, then restarts, each period `t_mul`
#'     times longer and `m_mul` times higher.}
#' }
#'
#' Invalid arguments raise an R error carrying kerasopt's message.
#'
#' @param initial_learning_rate A number: the initial learning rate.
#' @param decay_steps A number > 0 (a whole number is passed as an integer):
#'   the number of steps to decay over (exponential and inverse time decay:
#'   the step interval of the decay).
#' @param decay_rate A number: the decay rate.
#' @param staircase Logical: whether to decay at discrete intervals (floor of
#'   `step / decay_steps`). Defaults to `FALSE`.
#' @param name String: the schedule's name, as in Keras's config.
#' @param boundaries A numeric vector (or list) of strictly increasing step
#'   boundaries.
#' @param values A numeric vector (or list) of learning rates, one more than
#'   `boundaries`: the rate before the first boundary, between each pair, and
#'   after the last.
#' @param end_learning_rate A number: the final learning rate. Defaults to
#'   `1e-4`.
#' @param power A number: the power of the polynomial. Defaults to `1`.
#' @param cycle Logical: whether to cycle beyond `decay_steps`. Defaults to
#'   `FALSE`.
#' @param alpha A number: the minimum learning rate, as a fraction of the
#'   initial (or warmup target) learning rate. Defaults to `0`.
#' @param warmup_target `NULL` (no warmup, the default) or a number: the
#'   learning rate reached at the end of the warmup.
#' @param warmup_steps A whole number >= 0: the number of warmup steps.
#'   Defaults to `0L`.
#' @param first_decay_steps A number > 0 (a whole number is passed as an
#'   integer): the length of the first decay period.
#' @param t_mul A number > 0: each period is `t_mul` times longer than the
#'   previous one. Defaults to `2`.
#' @param m_mul A number: each restart starts at `m_mul` times the previous
#'   period's initial rate. Defaults to `1`.
#'
#' @returns A schedule: an R function of the step (returning the learning rate
#'   as a double) of class `kerasopt_learning_rate_schedule`. It stands for the
#'   kerasopt Python schedule object: passing it to an optimizer, or to
#'   [reticulate::r_to_py()], gives the Python schedule, and `$` reaches the
#'   Python object's attributes and methods (`schedule$get_config()`).
#'
#' @seealso [optimizer_adam()], [optimizer_adamax()]
#' @examples
#' \dontrun{
#' schedule <- learning_rate_schedule_exponential_decay(
#'   initial_learning_rate = 0.1, decay_steps = 100, decay_rate = 0.96,
#'   staircase = TRUE)
#' schedule(c(0, 100, 250))
#' opt <- optimizer_adamax(learning_rate = schedule)
#'
#' piecewise <- learning_rate_schedule_piecewise_constant_decay(
#'   boundaries = c(100000, 110000), values = c(1.0, 0.5, 0.1))
#' piecewise(105000)   # 0.5
#' }
#' @name learning_rate_schedule
NULL

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_exponential_decay <- function(initial_learning_rate, decay_steps,
                                                     decay_rate, staircase = FALSE,
                                                     name = "ExponentialDecay") {
  .schedule("ExponentialDecay", list(
    initial_learning_rate = .as_py_float(initial_learning_rate),
    decay_steps = .as_py_int(decay_steps),
    decay_rate = .as_py_float(decay_rate),
    staircase = staircase,
    name = name))
}

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_piecewise_constant_decay <- function(boundaries, values,
                                                            name = "PiecewiseConstant") {
  .schedule("PiecewiseConstantDecay", list(
    boundaries = if (is.numeric(boundaries)) as.list(boundaries) else boundaries,
    values = if (is.numeric(values)) lapply(as.list(values), .as_py_float) else values,
    name = name))
}

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_polynomial_decay <- function(initial_learning_rate, decay_steps,
                                                    end_learning_rate = 1e-04, power = 1,
                                                    cycle = FALSE, name = "PolynomialDecay") {
  .schedule("PolynomialDecay", list(
    initial_learning_rate = .as_py_float(initial_learning_rate),
    decay_steps = .as_py_int(decay_steps),
    end_learning_rate = .as_py_float(end_learning_rate),
    power = .as_py_float(power),
    cycle = cycle,
    name = name))
}

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_inverse_time_decay <- function(initial_learning_rate, decay_steps,
                                                      decay_rate, staircase = FALSE,
                                                      name = "InverseTimeDecay") {
  .schedule("InverseTimeDecay", list(
    initial_learning_rate = .as_py_float(initial_learning_rate),
    decay_steps = .as_py_int(decay_steps),
    decay_rate = .as_py_float(decay_rate),
    staircase = staircase,
    name = name))
}

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_cosine_decay <- function(initial_learning_rate, decay_steps, alpha = 0,
                                                name = "CosineDecay", warmup_target = NULL,
                                                warmup_steps = 0L) {
  .schedule("CosineDecay", list(
    initial_learning_rate = .as_py_float(initial_learning_rate),
    decay_steps = .as_py_int(decay_steps),
    alpha = .as_py_float(alpha),
    name = name,
    warmup_target = .as_py_float(warmup_target),
    warmup_steps = .as_py_int(warmup_steps)))
}

#' @rdname learning_rate_schedule
#' @export
learning_rate_schedule_cosine_decay_restarts <- function(initial_learning_rate,
                                                         first_decay_steps, t_mul = 2,
                                                         m_mul = 1, alpha = 0,
                                                         name = "SGDRDecay") {
  .schedule("CosineDecayRestarts", list(
    initial_learning_rate = .as_py_float(initial_learning_rate),
    first_decay_steps = .as_py_int(first_decay_steps),
    t_mul = .as_py_float(t_mul),
    m_mul = .as_py_float(m_mul),
    alpha = .as_py_float(alpha),
    name = name))
}

#' Methods for learning-rate schedules
#'
#' A schedule made by a `learning_rate_schedule_*()` function converts to its
#' Python object with [reticulate::r_to_py()]; `$` reaches that object's
#' attributes and methods; `print()` shows its class and config.
#'
#' @param x A schedule made by a `learning_rate_schedule_*()` function.
#' @param convert Passed by 'reticulate'; unused.
#' @param name The name of a Python attribute or method.
#' @param ... Unused.
#' @returns `r_to_py()`: the Python schedule. `$`: the attribute. `print()`:
#'   `x`, invisibly.
#' @keywords internal
#' @name kerasopt_learning_rate_schedule-methods
NULL

#' @rdname kerasopt_learning_rate_schedule-methods
#' @exportS3Method reticulate::r_to_py
r_to_py.kerasopt_learning_rate_schedule <- function(x, convert = FALSE) {
  attr(x, "py_object", exact = TRUE)
}

#' @rdname kerasopt_learning_rate_schedule-methods
#' @export
`$.kerasopt_learning_rate_schedule` <- function(x, name) {
  attr(x, "py_object", exact = TRUE)[[name]]
}

#' @rdname kerasopt_learning_rate_schedule-methods
#' @export
print.kerasopt_learning_rate_schedule <- function(x, ...) {
  py <- attr(x, "py_object", exact = TRUE)
  class_name <- reticulate::py_get_attr(py, "__class__")$`__name__`
  cat("<kerasopt learning rate schedule: ", as.character(class_name), ">\n", sep = "")
  config <- py$get_config()
  for (key in names(config)) {
    value <- config[[key]]
    cat("  ", key, ": ",
        if (is.null(value)) "NULL" else paste(format(unlist(value)), collapse = ", "),
        "\n", sep = "")
  }
  invisible(x)
}
