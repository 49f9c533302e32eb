#' Variables that a kerasopt optimizer trains
#'
#' `kerasopt_variable()` wraps an R numeric vector, matrix or array into a
#' `kerasopt.Variable` over a NumPy array of the same shape (a vector becomes a
#' 1-D array, a matrix a 2-D array; element `x[i, j]` in R is element
#' `[i - 1, j - 1]` in NumPy). The optimizer updates it in place;
#' `variable_value()` reads it back into R.
#'
#' @param x For `kerasopt_variable()`: an R numeric (or logical) vector,
#'   matrix or array, or a Python array object (a NumPy array, a torch tensor),
#'   which is used as is. For `variable_value()`: a `kerasopt.Variable`, or any
#'   Python object `numpy.asarray()` accepts (for example `opt$iterations` or
#'   `opt$learning_rate`).
#' @param name String or `NULL`: the variable's name. Names matter for
#'   `opt$exclude_from_weight_decay(var_names = ...)`. With `NULL` kerasopt
#'   makes one up.
#' @param dtype The NumPy dtype of the variable, `"float32"` (the default, as
#'   in Keras) or `"float64"`. Ignored when `x` is a Python object.
#'
#' @returns `kerasopt_variable()`: the `kerasopt.Variable` (a Python object via
#'   'reticulate'). `variable_value()`: a double vector for a 1-D value, a
#'   matrix or array of the same shape for 2-D and up, a single number for a
#'   0-D value.
#'
#' @seealso [apply_gradients()]
#' @examples
#' \dontrun{
#' w <- kerasopt_variable(matrix(0, nrow = 2, ncol = 3), name = "w")
#' w$shape              # list(2L, 3L)
#' variable_value(w)    # a 2 x 3 matrix
#' }
#' @export
kerasopt_variable <- function(x, name = NULL, dtype = "float32") {
  value <- .r_to_numpy(x, dtype = dtype)
  kerasopt$Variable(value, name = name)
}

#' @rdname kerasopt_variable
#' @export
variable_value <- function(x) {
  if (!.is_py(x)) {
    stop("`x` must be a kerasopt Variable or another Python array object.", call. = FALSE)
  }
  .numpy_to_r(x)
}

.as_list <- function(x) {
  if (is.null(x) || .is_py(x) || !is.list(x)) list(x) else x
}

.check_variables <- function(variables) {
  variables <- unname(.as_list(variables))
  for (v in variables) {
    if (!.is_py(v)) {
      stop("`variables` must be kerasopt Variables, made by kerasopt_variable(); ",
           "received an object of class ", paste(class(v), collapse = "/"), ".",
           call. = FALSE)
    }
  }
  variables
}

#' Apply gradients to variables with a kerasopt optimizer
#'
#' `apply_gradients()` runs one optimizer step (`opt.apply(grads, variables)` in
#' Python): each gradient, an R numeric vector, matrix or array with the shape
#' of its variable, is converted to a NumPy array of the variable's dtype and
#' the variables are updated in place. `finalize_variable_values()` copies the
#' moving averages into the variables when the optimizer was made with
#' `use_ema = TRUE` (and does nothing otherwise); call it at the end of
#' training, as Keras's `fit()` does.
#'
#' @param optimizer A kerasopt optimizer, from [optimizer_adam()] or
#'   [optimizer_adamax()].
#' @param grads A list of gradients, one per variable, in the same order: R
#'   numeric vectors, matrices or arrays (or Python arrays), or `NULL` for a
#'   variable without a gradient this step (kerasopt skips it, with a warning).
#'   A single gradient need not be wrapped in a list.
#' @param variables A list of variables made by [kerasopt_variable()] (a single
#'   variable need not be wrapped in a list).
#'
#' @returns The optimizer, invisibly. Python warnings raised during the step
#'   (such as kerasopt's warning about variables without gradients) become R
#'   warnings; Python errors become R errors.
#'
#' @seealso [kerasopt_variable()], [variable_value()]
#' @examples
#' \dontrun{
#' w <- kerasopt_variable(c(5, -5), name = "w")
#' opt <- optimizer_adamax(learning_rate = 0.1, use_ema = TRUE)
#' for (step in 1:100) apply_gradients(opt, list(2 * variable_value(w)), list(w))
#' finalize_variable_values(opt, list(w))
#' variable_value(w)
#' }
#' @export
apply_gradients <- function(optimizer, grads, variables) {
  variables <- .check_variables(variables)
  grads <- unname(.as_list(grads))
  if (length(grads) != length(variables)) {
    stop(sprintf(
      "`grads` and `variables` must have the same length; received %d gradient(s) and %d variable(s).",
      length(grads), length(variables)), call. = FALSE)
  }
  py_grads <- lapply(seq_along(grads), function(i) {
    if (is.null(grads[[i]])) NULL else .r_to_numpy(grads[[i]], like = variables[[i]])
  })
  .call_method(optimizer, "apply", list(py_grads, variables))
  invisible(optimizer)
}

#' @rdname apply_gradients
#' @export
finalize_variable_values <- function(optimizer, variables) {
  .call_method(optimizer, "finalize_variable_values", list(.check_variables(variables)))
  invisible(optimizer)
}
