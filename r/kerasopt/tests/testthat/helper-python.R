# Helpers for computing reference values with kerasopt directly in Python.
#
# Data travels to Python as plain (nested) Python lists of floats in row-major
# (C) order with explicit shapes, independently of the package's own R <->
# NumPy conversion, so that conversion is checked too.

# The elements of an R vector / matrix / array in NumPy's (row-major) order.
row_major <- function(x) {
  if (is.null(dim(x))) as.vector(x) else as.vector(aperm(x, rev(seq_along(dim(x)))))
}

shape_of <- function(x) as.list(as.integer(if (is.null(dim(x))) length(x) else dim(x)))

# Run Python `code` in a fresh namespace holding `inputs` (a named R list,
# converted by reticulate), with numpy as `np` and kerasopt imported; return
# the namespace (a Python dict, not converted).
run_python <- function(code, inputs = list()) {
  builtins <- reticulate::import_builtins(convert = FALSE)
  scope <- reticulate::r_to_py(c(list(placeholder = NULL), inputs))
  builtins$exec(paste("import numpy as np", "import kerasopt", code, sep = "\n"), scope)
  scope
}

# The value of `name` in a namespace from run_python(): must be plain Python
# data (numbers, strings, lists of them).
python_value <- function(scope, name) reticulate::py_to_r(scope$get(name))

# The message of the exception that Python `expression` raises.
python_error <- function(expression) {
  code <- sprintf("try:\n    %s\n    msg = None\nexcept Exception as e:\n    msg = str(e)",
                  expression)
  msg <- python_value(run_python(code), "msg")
  if (is.null(msg)) stop("Python did not raise: ", expression)
  msg
}

# Train `variables` (R arrays) with the Python optimizer `constructor` (a Python
# expression) on `grads` (a list of steps, each a list of R arrays, one per
# variable). Returns the final values, each flattened in row-major order.
python_trajectory <- function(constructor, variables, grads, finalize = FALSE) {
  code <- paste(
    sprintf("opt = %s", constructor),
    "vs = [kerasopt.Variable(np.array(v, np.float32).reshape(s), name=f'v{i}')",
    "      for i, (v, s) in enumerate(zip(init, shapes))]",
    "for step in grads:",
    "    opt.apply([np.array(g, np.float32).reshape(s) for g, s in zip(step, shapes)], vs)",
    "if finalize:",
    "    opt.finalize_variable_values(vs)",
    "result = [[float(x) for x in v.numpy().ravel()] for v in vs]",
    sep = "\n")
  scope <- run_python(code, list(
    init = lapply(variables, function(v) as.list(row_major(v))),
    shapes = lapply(variables, shape_of),
    grads = lapply(grads, function(step) lapply(step, function(g) as.list(row_major(g)))),
    finalize = finalize))
  lapply(python_value(scope, "result"), unlist)
}

# The same training from R, through the package.
r_trajectory <- function(optimizer, variables, grads, finalize = FALSE) {
  vs <- lapply(seq_along(variables), function(i) {
    kerasopt_variable(variables[[i]], name = paste0("v", i - 1))
  })
  for (step in grads) apply_gradients(optimizer, step, vs)
  if (finalize) finalize_variable_values(optimizer, vs)
  lapply(vs, variable_value)
}
