#' kerasopt: Keras 3's Adam and Adamax optimizers for R
#'
#' R calls in the style of the 'keras3' R package, over the Python library
#' 'kerasopt' (through 'reticulate'): [optimizer_adam()], [optimizer_adamax()],
#' the `learning_rate_schedule_*()` functions, and helpers to train R arrays
#' from R: [kerasopt_variable()], [apply_gradients()], [variable_value()] and
#' [finalize_variable_values()].
#'
#' The Python interpreter is the one 'reticulate' selects; point it at an
#' environment where kerasopt is installed with the `RETICULATE_PYTHON`
#' environment variable (or [reticulate::use_python()]) before the first call.
#' When the Python in use cannot import kerasopt, the first call stops with a
#' message that names that Python and says how to point R at another one.
#'
#' With `keras = TRUE`, [optimizer_adam()] and [optimizer_adamax()] return a
#' Keras optimizer (`kerasopt.keras.Adam` / `Adamax`, subclasses of Keras's own)
#' that `compile()` of keras3 (or of Python's keras through reticulate)
#' accepts; that needs Python's keras (>= 3.15) and one of its backends in the
#' same Python environment.
#'
#' Python exceptions raised by kerasopt (for instance for an invalid argument)
#' become R errors whose message is kerasopt's message.
#'
#' @keywords internal
#' @docType package
#' @name kerasopt-package
NULL

#' The kerasopt Python module
#'
#' The Python module `kerasopt`, imported (lazily, on first use) through
#' 'reticulate', for direct access to everything the R functions do not wrap,
#' for example `kerasopt$LossScaleOptimizer` or `kerasopt$serialize`.
#'
#' @format A Python module (a 'reticulate' object).
#' @examples
#' \dontrun{
#' opt <- kerasopt$Adamax(learning_rate = 0.01)
#' }
#' @export
kerasopt <- NULL

.state <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  kerasopt <<- reticulate::import("kerasopt", delay_load = list(
    on_error = function(error) stop(.missing_module_message("kerasopt"), call. = FALSE)
  ))
}

# The Python that reticulate uses (or will use), for messages.
.python_in_use <- function() {
  tryCatch(reticulate::py_config()$python, error = function(e) "(none found)")
}

# What to do when the Python in use cannot import `module`: say which Python
# that is and how to point R at one that has kerasopt, instead of reticulate's
# raw configuration dump.
.missing_module_message <- function(module, install = "kerasopt") {
  paste0(
    "The Python that R uses through reticulate (", .python_in_use(), ") cannot import ",
    "the Python module '", module, "'.\n",
    "Point R at a Python environment where ", install, " is installed, before the first ",
    "kerasopt call of an R session:\n",
    "  Sys.setenv(RETICULATE_PYTHON = \"/path/to/env/bin/python\")\n",
    "(or the line RETICULATE_PYTHON=/path/to/env/bin/python in ~/.Renviron).\n",
    "To make such an environment from the kerasopt repository:\n",
    "  python3 -m venv ~/kerasopt-env\n",
    "  ~/kerasopt-env/bin/pip install \"/path/to/kerasopt[keras]\"\n",
    "reticulate picks its Python once per R session: restart R after changing it."
  )
}

# Stop with .missing_module_message() unless the Python in use can import
# `module` (checked once per session and module).
.require_module <- function(module, install = "kerasopt") {
  key <- paste0("has_", module)
  if (!isTRUE(.state[[key]])) {
    if (!reticulate::py_module_available(module)) {
      stop(.missing_module_message(module, install), call. = FALSE)
    }
    .state[[key]] <- TRUE
  }
  invisible(TRUE)
}

# The kerasopt module without automatic conversion of results to R.
.ko <- function() {
  .require_module("kerasopt")
  reticulate::import("kerasopt", convert = FALSE)
}

# Python-side helpers for moving arrays between R and NumPy. Arrays travel as
# little-endian float64 bytes in R's column-major (Fortran) order, so shapes
# and element positions match on both sides (x[i, j] in R is x[i-1, j-1] in
# NumPy), and nothing depends on reticulate's NumPy bridge (which needs a
# reticulate built for the installed NumPy major version).
.helper_code <- '
import numpy as np


def _target_dtype(dtype, like):
    like_dtype = getattr(like, "dtype", None)
    if like_dtype is not None:
        try:
            return np.dtype(like_dtype)
        except TypeError:
            pass
    return np.dtype(dtype)


def from_r(raw, dim, dtype="float32", like=None):
    flat = np.frombuffer(bytes(raw), dtype="<f8")
    array = flat.reshape(tuple(int(d) for d in dim), order="F")
    return np.array(array, dtype=_target_dtype(dtype, like), order="C", copy=True)


def call_warning_to_r(fn, args):
    """Call fn(*args); return the messages of the warnings it raised."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        fn(*args)
    return [str(w.message) for w in caught]


def keras_learning_rate(value):
    """A kerasopt schedule as the same Keras schedule (a Keras optimizer calls a callable
    learning rate without the step); anything else unchanged."""
    import kerasopt.schedules

    if isinstance(value, kerasopt.schedules.LearningRateSchedule):
        import keras

        return keras.optimizers.schedules.deserialize(kerasopt.schedules.serialize(value))
    return value


def to_r(x):
    value = x.numpy() if hasattr(x, "numpy") and callable(x.numpy) else x
    array = np.asarray(value, dtype="<f8")
    return bytearray(array.tobytes(order="F")), [int(d) for d in array.shape]
'

.helpers <- function() {
  if (is.null(.state$helpers)) {
    .require_module("kerasopt")
    types <- reticulate::import("types", convert = FALSE)
    builtins <- reticulate::import_builtins(convert = FALSE)
    module <- types$ModuleType("kerasopt_r_helpers")
    builtins$exec(.helper_code, module$`__dict__`)
    .state$helpers <- module
  }
  .state$helpers
}

# Call the Python method `method` of `object` with `args` (an R list), turning
# the Python warnings it raises into R warnings.
.call_method <- function(object, method, args) {
  fn <- reticulate::py_get_attr(object, method)
  messages <- reticulate::py_to_r(.helpers()$call_warning_to_r(fn, args))
  for (message in unlist(messages)) warning(message, call. = FALSE)
  invisible(NULL)
}

.is_py <- function(x) inherits(x, "python.builtin.object")

# An R numeric array (vector, matrix or array) as a NumPy array of the same
# shape: `dtype`, or the dtype of `like` when given.
.r_to_numpy <- function(x, dtype = "float32", like = NULL) {
  if (.is_py(x)) {
    return(x)
  }
  if (!is.numeric(x) && !is.logical(x)) {
    stop("Expected a numeric vector, matrix or array; received an object of class ",
         paste(class(x), collapse = "/"), ".", call. = FALSE)
  }
  dim <- if (is.null(dim(x))) length(x) else dim(x)
  raw <- writeBin(as.double(x), raw(), endian = "little")
  .helpers()$from_r(raw, as.list(as.integer(dim)), dtype, like)
}

# A NumPy array (or anything numpy.asarray accepts, or a kerasopt Variable) as
# an R double vector (1-D), matrix / array (2-D and up) or number (0-D).
.numpy_to_r <- function(x) {
  parts <- reticulate::py_to_r(.helpers()$to_r(x))
  shape <- as.integer(unlist(parts[[2]]))
  values <- readBin(parts[[1]], "double", n = prod(shape), endian = "little")
  if (length(shape) >= 2) {
    dim(values) <- shape
  }
  values
}

# R values for Python parameters that kerasopt wants as a float: a whole R
# number such as 1 or 1L becomes the Python float 1.0. Anything else (NULL,
# Python objects, R functions, strings, vectors) passes through unchanged, so
# kerasopt checks it and reports a bad value with its own message.
.as_py_float <- function(x) {
  if (is.numeric(x) && !is.object(x) && length(x) == 1 && is.null(dim(x))) {
    return(as.double(x))
  }
  x
}

# R values for Python parameters that kerasopt wants as an int: a whole R
# number such as 2 or 2L becomes the Python int 2. Other values (NULL, 2.5,
# strings, ...) pass through unchanged for kerasopt to accept or reject.
.as_py_int <- function(x) {
  if (is.numeric(x) && !is.object(x) && length(x) == 1 && is.null(dim(x)) &&
      is.finite(x) && x == trunc(x) && abs(x) <= .Machine$integer.max) {
    return(as.integer(x))
  }
  x
}

# A learning rate: an R number (as a float), a schedule made by a
# learning_rate_schedule_*() function (its Python object), or anything else
# kerasopt accepts (a Python schedule, a zero-argument function).
.as_learning_rate <- function(x) {
  if (inherits(x, "kerasopt_learning_rate_schedule")) {
    return(attr(x, "py_object", exact = TRUE))
  }
  .as_py_float(x)
}
