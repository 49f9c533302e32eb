# The arguments that Adam and Adamax share, converted for Python: R's NULL
# becomes None, whole numbers become Python floats or ints as kerasopt needs.
.optimizer_args <- function(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                            clipnorm, clipvalue, global_clipnorm, use_ema,
                            ema_momentum, ema_overwrite_frequency, name,
                            loss_scale_factor, gradient_accumulation_steps) {
  list(
    learning_rate = .as_learning_rate(learning_rate),
    beta_1 = .as_py_float(beta_1),
    beta_2 = .as_py_float(beta_2),
    epsilon = .as_py_float(epsilon),
    weight_decay = .as_py_float(weight_decay),
    clipnorm = .as_py_float(clipnorm),
    clipvalue = .as_py_float(clipvalue),
    global_clipnorm = .as_py_float(global_clipnorm),
    use_ema = use_ema,
    ema_momentum = .as_py_float(ema_momentum),
    ema_overwrite_frequency = .as_py_int(ema_overwrite_frequency),
    loss_scale_factor = .as_py_float(loss_scale_factor),
    gradient_accumulation_steps = .as_py_int(gradient_accumulation_steps),
    name = name
  )
}

.construct <- function(class_name, args, dots, keras = FALSE) {
  if (length(dots) && (is.null(names(dots)) || any(names(dots) == ""))) {
    stop("Extra arguments to optimizer_", tolower(class_name), "() must be named.",
         call. = FALSE)
  }
  if (!(isTRUE(keras) || isFALSE(keras))) {
    stop("Argument `keras` must be TRUE or FALSE.", call. = FALSE)
  }
  .require_module("kerasopt")
  if (!keras) {
    return(do.call(kerasopt[[class_name]], c(args, dots)))
  }
  .require_module("keras", install = "Keras 3 (pip install keras) and kerasopt")
  args$learning_rate <- .helpers()$keras_learning_rate(args$learning_rate)
  module <- reticulate::import("kerasopt.keras")
  do.call(module[[class_name]], c(args, dots))
}

#' Optimizer that implements the Adam algorithm
#'
#' Keras 3's Adam (`keras.optimizers.Adam`), computed by the Python library
#' kerasopt with Keras's exact numerics. Adam is a stochastic gradient descent
#' method based on adaptive estimation of first- and second-order moments.
#' The call mirrors `keras3::optimizer_adam()`.
#'
#' Each step, in Keras's order: `NULL` gradients are dropped, gradients are
#' divided by `loss_scale_factor`, accumulated over
#' `gradient_accumulation_steps`, clipped, decoupled weight decay is applied,
#' then
#' \preformatted{
#' alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
#' m = m + (g - m) * (1 - beta_1)
#' v = v + (g^2 - v) * (1 - beta_2)
#' w = w - m * alpha / (sqrt(v) + epsilon)      # v_hat = max(v_hat, v) with amsgrad
#' }
#' and, with `use_ema`, the moving average of the weights is updated.
#'
#' Invalid arguments raise an R error carrying kerasopt's message, which names
#' the argument and the value received.
#'
#' @param learning_rate A number (stored in float32, as in Keras; a whole
#'   number such as `1` is passed as the float `1.0`), a schedule made by one of
#'   the `learning_rate_schedule_*()` functions (see
#'   [learning_rate_schedule_exponential_decay()]), or a function of no
#'   arguments returning the learning rate. Defaults to `0.001`.
#' @param beta_1 A number in \[0, 1), or a function of no arguments returning
#'   one: the exponential decay rate of the first-moment estimates. Defaults to
#'   `0.9`.
#' @param beta_2 A number in \[0, 1), or a function of no arguments returning
#'   one: the exponential decay rate of the second-moment estimates. Defaults to
#'   `0.999`.
#' @param epsilon A small number > 0 for numerical stability: the "epsilon hat"
#'   of the Adam paper, added to `sqrt(v)`. Defaults to `1e-7`.
#' @param amsgrad Logical: whether to apply the AMSGrad variant (keep the
#'   running maximum of the second moment). Defaults to `FALSE`.
#' @param weight_decay If not `NULL`, decoupled weight decay: each step first
#'   does `w <- w - w * weight_decay * learning_rate`.
#' @param clipnorm If not `NULL`, each gradient is clipped so that its L2 norm
#'   is at most this value.
#' @param clipvalue If not `NULL`, each gradient element is clipped to
#'   \[-clipvalue, clipvalue\].
#' @param global_clipnorm If not `NULL`, all gradients are clipped together so
#'   that their global L2 norm is at most this value. At most one of
#'   `clipnorm`, `clipvalue` and `global_clipnorm` may be set.
#' @param use_ema Logical: whether to keep an exponential moving average (EMA)
#'   of the weights. Defaults to `FALSE`.
#' @param ema_momentum The EMA momentum, in \[0, 1]:
#'   `average = ema_momentum * average + (1 - ema_momentum) * w`. Used only
#'   with `use_ema = TRUE`. Defaults to `0.99`.
#' @param ema_overwrite_frequency `NULL`, or a whole number >= 1 (`5` and `5L`
#'   both work): every this many iterations the weights are overwritten with
#'   their moving average. With `NULL` they are only overwritten by
#'   [finalize_variable_values()]. Used only with `use_ema = TRUE`.
#' @param name String: the optimizer's name, used in the names of its state
#'   variables. Defaults to `"adam"`.
#' @param ... Further keyword arguments passed to the Python constructor;
#'   kerasopt rejects unknown ones with an error that names them.
#' @param loss_scale_factor If not `NULL`, gradients are divided by this factor
#'   before use (multiply the loss by it, see the optimizer's `scale_loss()`).
#' @param gradient_accumulation_steps `NULL`, or a whole number >= 2 (`2` and
#'   `2L` both work): the weights are updated only every this many calls, with
#'   the mean of the accumulated gradients.
#' @param keras `FALSE` (default): kerasopt's own optimizer, for R arrays
#'   (see [apply_gradients()]). `TRUE`: a Keras optimizer,
#'   `kerasopt.keras.Adam` (a subclass of `keras.optimizers.Adam` with
#'   kerasopt's fused step), for `compile()` of a Keras model (keras3, or
#'   Python's keras through reticulate); needs Python's keras (>= 3.15) and a
#'   Keras backend in the Python that R uses. A schedule made by a
#'   `learning_rate_schedule_*()` function becomes the same Keras schedule.
#'   Pass `sparse_updates = "dense"` (in `...`) for Keras 3's densified update
#'   of embedding gradients on the TensorFlow backend (default `"lazy"`).
#'
#' @returns With `keras = FALSE`, the kerasopt Python optimizer (a
#'   `kerasopt.adam.Adam` object, via 'reticulate'): use it with
#'   [apply_gradients()] and [finalize_variable_values()], or call its Python
#'   methods directly, e.g. `opt$get_config()`. With `keras = TRUE`, a
#'   `kerasopt.keras.Adam` Keras optimizer.
#'
#' @seealso [optimizer_adamax()], [apply_gradients()],
#'   [learning_rate_schedule_exponential_decay()]
#' @examples
#' \dontrun{
#' opt <- optimizer_adam(learning_rate = 0.01, amsgrad = TRUE)
#' w <- kerasopt_variable(c(0, 0, 0), name = "w")
#' target <- c(1, -2, 3)
#' for (step in 1:100) {
#'   apply_gradients(opt, list(2 * (variable_value(w) - target)), list(w))
#' }
#' variable_value(w)
#' }
#' @export
optimizer_adam <- function(learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999,
                           epsilon = 1e-07, amsgrad = FALSE, weight_decay = NULL,
                           clipnorm = NULL, clipvalue = NULL, global_clipnorm = NULL,
                           use_ema = FALSE, ema_momentum = 0.99,
                           ema_overwrite_frequency = NULL, name = "adam", ...,
                           loss_scale_factor = NULL, gradient_accumulation_steps = NULL,
                           keras = FALSE) {
  args <- .optimizer_args(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                          clipnorm, clipvalue, global_clipnorm, use_ema,
                          ema_momentum, ema_overwrite_frequency, name,
                          loss_scale_factor, gradient_accumulation_steps)
  args$amsgrad <- amsgrad
  .construct("Adam", args, list(...), keras = keras)
}

#' Optimizer that implements the Adamax algorithm
#'
#' Keras 3's Adamax (`keras.optimizers.Adamax`), computed by the Python library
#' kerasopt with Keras's exact numerics. Adamax is a variant of Adam based on
#' the infinity norm; it is sometimes better than Adam, especially for models
#' with embeddings. The call mirrors `keras3::optimizer_adamax()`.
#'
#' Each step, after the shared pipeline (loss-scale division, accumulation,
#' clipping, weight decay; see [optimizer_adam()]):
#' \preformatted{
#' m = m + (g - m) * (1 - beta_1)
#' u = max(beta_2 * u, abs(g))
#' w = w - lr * m / ((1 - beta_1^t) * (u + epsilon))
#' }
#'
#' Invalid arguments raise an R error carrying kerasopt's message, which names
#' the argument and the value received.
#'
#' @inheritParams optimizer_adam
#' @param beta_1 A number in \[0, 1), or a function of no arguments returning
#'   one: the exponential decay rate of the first-moment estimates. Defaults to
#'   `0.9`.
#' @param beta_2 A number in \[0, 1), or a function of no arguments returning
#'   one: the exponential decay rate of the exponentially weighted infinity
#'   norm. Defaults to `0.999`.
#' @param epsilon A small number > 0 added to the infinity norm for numerical
#'   stability. Defaults to `1e-7`.
#' @param name String: the optimizer's name, used in the names of its state
#'   variables. Defaults to `"adamax"`.
#'
#' @param keras `FALSE` (default): kerasopt's own optimizer, for R arrays.
#'   `TRUE`: a Keras optimizer, `kerasopt.keras.Adamax` (a subclass of
#'   `keras.optimizers.Adamax` with kerasopt's fused step), for `compile()` of
#'   a Keras model; see [optimizer_adam()].
#'
#' @returns With `keras = FALSE`, the kerasopt Python optimizer (a
#'   `kerasopt.adamax.Adamax` object, via 'reticulate'): use it with
#'   [apply_gradients()] and [finalize_variable_values()], or call its Python
#'   methods directly. With `keras = TRUE`, a `kerasopt.keras.Adamax` Keras
#'   optimizer.
#'
#' @seealso [optimizer_adam()], [apply_gradients()]
#' @examples
#' \dontrun{
#' target <- c(1, -2, 3)
#' w <- kerasopt_variable(c(0, 0, 0), name = "w")
#' opt <- optimizer_adamax(learning_rate = 0.05)
#' for (step in 1:200) {
#'   grad <- 2 * (variable_value(w) - target)   # gradient of sum((w - target)^2)
#'   apply_gradients(opt, list(grad), list(w))
#' }
#' variable_value(w)
#' }
#' @export
optimizer_adamax <- function(learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999,
                             epsilon = 1e-07, weight_decay = NULL, clipnorm = NULL,
                             clipvalue = NULL, global_clipnorm = NULL, use_ema = FALSE,
                             ema_momentum = 0.99, ema_overwrite_frequency = NULL,
                             name = "adamax", ..., loss_scale_factor = NULL,
                             gradient_accumulation_steps = NULL, keras = FALSE) {
  args <- .optimizer_args(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                          clipnorm, clipvalue, global_clipnorm, use_ema,
                          ema_momentum, ema_overwrite_frequency, name,
                          loss_scale_factor, gradient_accumulation_steps)
  .construct("Adamax", args, list(...), keras = keras)
}

#' Optimizer that implements the AdamW algorithm
#'
#' Keras 3's AdamW (`keras.optimizers.AdamW`): Adam with decoupled weight decay,
#' `weight_decay = 0.004` by default (and required), computed by the Python
#' library kerasopt with Keras's exact numerics. The call mirrors
#' `keras3::optimizer_adam_w()`.
#'
#' Each step first decays the weights, `w <- w - w * weight_decay * learning_rate`
#' (except those excluded with the optimizer's `exclude_from_weight_decay()`),
#' then takes [optimizer_adam()]'s step.
#'
#' @inheritParams optimizer_adam
#' @param weight_decay The decoupled weight decay, a number >= 0. Defaults to
#'   `0.004`.
#' @param name String: the optimizer's name, used in the names of its state
#'   variables. Defaults to `"adamw"`.
#' @param keras `FALSE` (default): kerasopt's own optimizer, for R arrays.
#'   `TRUE`: a Keras optimizer, `kerasopt.keras.AdamW` (a subclass of
#'   `keras.optimizers.AdamW` with kerasopt's fused step), for `compile()` of a
#'   Keras model; see [optimizer_adam()].
#'
#' @returns With `keras = FALSE`, the kerasopt Python optimizer (a
#'   `kerasopt.optimizers.AdamW` object, via 'reticulate'): use it with
#'   [apply_gradients()] and [finalize_variable_values()]. With `keras = TRUE`,
#'   a `kerasopt.keras.AdamW` Keras optimizer.
#'
#' @seealso [optimizer_adam()], [optimizer_adamax()]
#' @examples
#' \dontrun{
#' opt <- optimizer_adam_w(learning_rate = 0.01, weight_decay = 0.01)
#' }
#' @export
optimizer_adam_w <- function(learning_rate = 0.001, weight_decay = 0.004, beta_1 = 0.9,
                             beta_2 = 0.999, epsilon = 1e-07, amsgrad = FALSE,
                             clipnorm = NULL, clipvalue = NULL, global_clipnorm = NULL,
                             use_ema = FALSE, ema_momentum = 0.99,
                             ema_overwrite_frequency = NULL, name = "adamw", ...,
                             loss_scale_factor = NULL, gradient_accumulation_steps = NULL,
                             keras = FALSE) {
  args <- .optimizer_args(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                          clipnorm, clipvalue, global_clipnorm, use_ema,
                          ema_momentum, ema_overwrite_frequency, name,
                          loss_scale_factor, gradient_accumulation_steps)
  args$amsgrad <- amsgrad
  .construct("AdamW", args, list(...), keras = keras)
}
