"""``kerasopt.keras`` on Keras's TensorFlow backend: kerasopt's pipeline on ``tf.Tensor`` s.

``fit`` runs ``optimizer.apply(grads, variables)`` inside its ``tf.function`` (compiled by
XLA with ``jit_compile=True``, Keras's default where the model allows it). Here that call is
kerasopt's pipeline, in Keras's order, with kerasopt's pure update rules
(:mod:`kerasopt.algorithms`) and pipeline functions (:mod:`kerasopt.pipeline`) evaluated on
TensorFlow tensors (this module registers a TensorFlow namespace with
:func:`kerasopt.backend.register_namespace`), and the results assigned to the variables:
graph ops only, so the whole train step stays one graph (one XLA cluster).

Sparse gradients (``tf.IndexedSlices``, what an ``Embedding`` lookup produces): with
``sparse_updates="lazy"`` only the rows present move: duplicate indices are summed first
(``tf.unique`` + ``unsorted_segment_sum``), then those rows of the variable and of every
slot are gathered, decayed and updated by the rule, and scattered back
(``scatter_update``); every other row keeps its value and its state. With ``"dense"`` the
step is Keras 3's own (which densifies the moments). Under gradient accumulation a sparse
gradient is densified into its accumulator.

Weight decay takes the form Keras's TensorFlow backend uses, ``w - w * wd * lr`` (its torch
backend uses ``w * (1 - wd * lr)``).

Keras's own step runs instead under a ``tf.distribute`` strategy other than the default one,
in a ``StatelessScope``, for variables with ``overwrite_with_gradient``, and for sparse
gradients with ``sparse_updates="dense"``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import keras
import tensorflow as tf
from keras.src.backend import in_stateless_scope, name_scope

from kerasopt import backend as kerasopt_backend
from kerasopt import pipeline


def _cast_scalar(value: Any, like: Any) -> Any:
    """``value`` as a 0-d tensor of ``like``'s dtype (a Python number rounded once, to that
    dtype: ``tf.cast`` would go through float32 first)."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=like.dtype)
    return tf.cast(_tensor(value), like.dtype)


def _float32_scalar(value: Any) -> Any:
    return tf.cast(_tensor(value), tf.float32)


def _tensor(value: Any) -> Any:
    return value.value if isinstance(value, keras.Variable) else value


def _where(condition: Any, x: Any, y: Any) -> Any:
    """``np.where`` with a Python number on either side in the other side's dtype."""
    if isinstance(x, (int, float)):
        x = tf.constant(x, dtype=y.dtype)
    if isinstance(y, (int, float)):
        y = tf.constant(y, dtype=x.dtype)
    return tf.where(condition, x, y)


NAMESPACE = SimpleNamespace(
    __name__="tensorflow",
    sqrt=tf.sqrt,
    abs=tf.abs,
    maximum=tf.maximum,
    minimum=tf.minimum,
    where=_where,
    sum=tf.reduce_sum,
    clip=tf.clip_by_value,
    isfinite=tf.math.is_finite,
    all=tf.reduce_all,
    ones=lambda shape, dtype: tf.ones(shape, dtype),
    cast_scalar=_cast_scalar,
    float32_scalar=_float32_scalar,
)
"""The functions of an array namespace that kerasopt's rules and pipeline use, on
TensorFlow tensors."""


def _is_tensorflow(x: Any) -> bool:
    return isinstance(x, (tf.Tensor, tf.Variable))


kerasopt_backend.register_namespace(_is_tensorflow, NAMESPACE)


class _Rows:
    """A sparse gradient in canonical form: each touched row once, duplicates summed."""

    def __init__(self, gradient: tf.IndexedSlices, dtype: Any) -> None:
        self.rows, inverse = tf.unique(gradient.indices)
        self.values = tf.math.unsorted_segment_sum(
            tf.cast(gradient.values, dtype), inverse, tf.shape(self.rows)[0])

    def with_values(self, values: Any) -> _Rows:
        out = object.__new__(_Rows)
        out.rows, out.values = self.rows, values
        return out


def _values(g: Any) -> Any:
    return g.values if isinstance(g, _Rows) else g


def _resolved(value: Any) -> Any:
    """A hyperparameter's value this step (a callable is called at trace time)."""
    return value() if callable(value) else value


def _positive(value: Any) -> Any:
    return value if value and value > 0 else None


def _clip(optimizer: Any, grads: list[Any]) -> list[Any]:
    """Keras's ``_clip_gradients`` (on the rows' values for sparse gradients)."""
    values = [_values(g) for g in grads]
    if _positive(optimizer.clipnorm):
        values = [pipeline.clip_by_norm(v, optimizer.clipnorm) for v in values]
    elif _positive(optimizer.global_clipnorm):
        values = pipeline.clip_by_global_norm(values, optimizer.global_clipnorm)
    elif _positive(optimizer.clipvalue):
        values = [pipeline.clip_by_value(v, optimizer.clipvalue) for v in values]
    else:
        return grads
    return [g.with_values(v) if isinstance(g, _Rows) else v for g, v in zip(grads, values)]


def _decay(optimizer: Any, variable: Any, w: Any, learning_rate: Any) -> Any:
    """Keras's weight decay on its TensorFlow backend: ``w - w * wd * lr``."""
    if optimizer.weight_decay is None or not optimizer._use_weight_decay(variable):
        return w
    wd = _cast_scalar(optimizer.weight_decay, w)
    return w - w * wd * _cast_scalar(learning_rate, w)


def _update(optimizer: Any, grads: list[Any], variables: list[Any], index: list[int],
            step: Any) -> None:
    """Clip, decay and the update rule, assigned to the variables and slots."""
    algorithm = optimizer._algorithm
    slot_lists = [getattr(optimizer, a) for a in algorithm.slot_attributes(optimizer)]
    hyper = {name: _resolved(getattr(optimizer, name)) for name in algorithm.hyperparameters}
    learning_rate = _tensor(optimizer.learning_rate)
    grads = _clip(optimizer, grads)
    for variable, g, i in zip(variables, grads, index):
        slots = [s[i] for s in slot_lists]
        if isinstance(g, _Rows):
            w = _decay(optimizer, variable, tf.gather(variable.value, g.rows), learning_rate)
            new = algorithm.rule(w, g.values, *(tf.gather(s.value, g.rows) for s in slots),
                                 learning_rate=learning_rate, step=step, **hyper)
            for target, value in zip((variable, *slots), new):
                target.value.scatter_update(tf.IndexedSlices(value, g.rows))
        else:
            w = _decay(optimizer, variable, tf.convert_to_tensor(variable.value),
                       learning_rate)
            new = algorithm.rule(w, g, *(tf.convert_to_tensor(s.value) for s in slots),
                                 learning_rate=learning_rate, step=step, **hyper)
            for target, value in zip((variable, *slots), new):
                target.assign(value)


def _average(optimizer: Any, iterations: Any) -> None:
    """The EMA of every trainable variable and its periodic overwrite, as Keras does."""
    variables = optimizer._trainable_variables
    averages = optimizer._model_variables_moving_average
    for variable, average in zip(variables, averages):
        if average is None:
            continue
        w = tf.convert_to_tensor(variable.value)
        momentum = tf.cast(tf.not_equal(iterations, 0), w.dtype) * _cast_scalar(
            pipeline.keras_float(optimizer.ema_momentum), w)
        average.assign(pipeline.ema(tf.convert_to_tensor(average.value), w, momentum))
    frequency = optimizer.ema_overwrite_frequency
    if frequency:
        def overwrite():
            for variable, average in zip(variables, averages):
                if average is not None:
                    variable.assign(average.value)

        tf.cond(tf.equal((iterations + 1) % frequency, 0), overwrite, lambda: None)


def _step(optimizer: Any, grads: list[Any], variables: list[Any]) -> None:
    """One Keras ``apply()`` after the ``None`` gradients are dropped."""
    n = optimizer.gradient_accumulation_steps
    raw = tf.convert_to_tensor(optimizer._iterations.value)
    iterations = raw // n if n else raw
    step = iterations + 1
    index = [optimizer._get_variable_index(v) for v in variables]
    lazy = optimizer.sparse_updates == "lazy"
    prepared = []
    for g, v in zip(grads, variables):
        if isinstance(g, tf.IndexedSlices) and lazy and not n:
            prepared.append(_Rows(g, v.dtype))
        else:
            prepared.append(tf.cast(tf.convert_to_tensor(g), v.dtype))
    factor = optimizer.loss_scale_factor
    if factor is not None:
        prepared = [g.with_values(pipeline.unscale(g.values, factor)) if isinstance(g, _Rows)
                    else pipeline.unscale(g, factor) for g in prepared]
    if n:
        accumulators = [optimizer._accumulated_gradients[i] for i in index]

        def update_step():
            mean = pipeline.accumulated_mean(
                prepared, [tf.convert_to_tensor(a.value) for a in accumulators], n)
            _update(optimizer, mean, variables, index, step)
            for accumulator in optimizer._accumulated_gradients:  # all, as Keras does
                if accumulator is not None:
                    accumulator.assign(tf.zeros_like(accumulator.value))

        def micro_step():
            totals = pipeline.accumulate(
                prepared, [tf.convert_to_tensor(a.value) for a in accumulators])
            for accumulator, total in zip(accumulators, totals):
                accumulator.assign(total)

        tf.cond(tf.equal((raw + 1) % n, 0), update_step, micro_step)
    else:
        _update(optimizer, prepared, variables, index, step)
    if optimizer.use_ema:
        _average(optimizer, iterations)


def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> bool:
    """Keras's ``optimizer.apply(grads, trainable_variables)`` as kerasopt's step on
    TensorFlow. Returns False, having changed and reported nothing, when Keras's own step
    must run instead."""
    grads = list(grads)
    if not grads or in_stateless_scope() or tf.distribute.has_strategy():
        return False
    if trainable_variables is None:
        if not optimizer.built or len(grads) != len(optimizer._trainable_variables):
            return False
        variables = list(optimizer._trainable_variables)
    else:
        variables = list(trainable_variables)
        if not optimizer.built:
            with name_scope(optimizer.name, caller=optimizer):
                optimizer.build(variables)
            optimizer.built = True
        optimizer._check_variables_are_known(variables)
    if len(grads) != len(variables) or all(g is None for g in grads):
        return False
    if any(getattr(v, "overwrite_with_gradient", False)
           for v in optimizer._trainable_variables):
        return False
    if optimizer.sparse_updates == "dense" and any(
            isinstance(g, tf.IndexedSlices) for g in grads):
        return False
    if any(g is None for g in grads):
        grads, variables = optimizer._filter_empty_gradients(grads, variables)
    with name_scope(optimizer.name, caller=optimizer):
        _step(optimizer, grads, variables)
        for variable in variables:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
    optimizer._iterations.assign_add(1)
    return True


__all__ = ["NAMESPACE", "apply"]
