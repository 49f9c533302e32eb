"""``kerasopt.keras`` on Keras's TensorFlow backend: kerasopt's pipeline on ``tf.Tensor`` s.

``fit`` runs ``optimizer.apply(grads, variables)`` inside its ``tf.function`` (compiled by
XLA with ``jit_compile=True``). Here that call is :func:`kerasopt.engine.apply` (Keras's
order, written once) with the algorithm's pure rule and kerasopt's pipeline functions
evaluated on TensorFlow tensors: this module registers a TensorFlow namespace with
:func:`kerasopt.backend.register_namespace` and gives the engine :class:`TensorFlowOps`
(``tf.cond`` for its branches, ``tf.gather`` / ``scatter_update`` for rows). The results
are assigned to the variables: graph ops only, so the whole train step stays one graph (one
XLA cluster).

Sparse gradients (``tf.IndexedSlices``, what an ``Embedding`` lookup produces): with
``sparse_updates="lazy"`` only the rows present move: duplicate indices are summed first
(``tf.unique`` + ``unsorted_segment_sum``), then those rows of the variable and of every
slot are gathered, decayed and updated by the rule, and scattered back
(``scatter_update``); every other row keeps its value and its state. With ``"dense"`` the
step is Keras 3's own (which densifies the moments). Under gradient accumulation a sparse
gradient is densified into its accumulator.

Weight decay takes the form Keras's TensorFlow backend uses, ``w - w * wd * lr`` (its torch
backend uses ``w * (1 - wd * lr)``; see :mod:`kerasopt.keras._common`).

Keras's own step runs instead under a ``tf.distribute`` strategy other than the default one,
in a ``StatelessScope``, for variables with ``overwrite_with_gradient``, and for sparse
gradients with ``sparse_updates="dense"``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend import in_stateless_scope, name_scope

from kerasopt import backend as kerasopt_backend
from kerasopt import engine
from kerasopt.backend import Ops
from kerasopt.keras import _common
from kerasopt.sparse import IndexedSlices


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


class TensorFlowOps(Ops):
    """The engine's control flow and row access on TensorFlow tensors, inside a
    ``tf.function`` (and eagerly). Rows of a ``tf.Variable`` are read with ``tf.gather`` and
    written with its ``scatter_update``: a lazy sparse step touches only those rows."""

    name = "tensorflow"
    traced = True

    @staticmethod
    def cond(predicate: Any, if_true: Any, if_false: Any, operand: Any) -> Any:
        if isinstance(predicate, (bool, np.bool_)):
            return if_true(operand) if predicate else if_false(operand)
        return tf.cond(predicate, lambda: if_true(operand), lambda: if_false(operand))

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        return _where(condition, x, y)

    @staticmethod
    def zeros_like(x: Any) -> Any:
        return tf.zeros_like(x)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return tf.cast(x, dtype)

    @staticmethod
    def take_rows(x: Any, rows: Any) -> Any:
        return tf.gather(x, rows)

    @staticmethod
    def put_rows(x: Any, rows: Any, values: Any) -> Any:
        if isinstance(x, tf.Variable):
            x.scatter_update(tf.IndexedSlices(tf.cast(values, x.dtype), rows))
            return x
        return tf.tensor_scatter_nd_update(x, rows[:, None], tf.cast(values, x.dtype))

    @staticmethod
    def to_dense(values: Any, rows: Any, shape: tuple[int, ...]) -> Any:
        return tf.math.unsorted_segment_sum(values, rows, shape[0])

    @staticmethod
    def all_finite(arrays: list[Any]) -> Any:
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(a)) for a in arrays])


OPS = TensorFlowOps()


def _canonical(gradient: tf.IndexedSlices, variable: Any) -> IndexedSlices:
    """A ``tf.IndexedSlices`` as the engine's canonical sparse gradient: each touched row
    once (``tf.unique``), duplicates summed, in the variable's dtype."""
    rows, inverse = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(tf.cast(gradient.values, variable.dtype), inverse,
                                          tf.shape(rows)[0])
    return IndexedSlices(values, rows, tuple(variable.shape))


def _step(optimizer: Any, grads: list[Any], variables: list[Any]) -> None:
    """One Keras ``apply()`` (after the ``None`` gradients are dropped) through the engine,
    the results assigned to the variables. A lazily updated variable (and its slots) goes to
    the engine as the ``tf.Variable`` itself, so that its rows are scattered in place."""
    everything = optimizer._trainable_variables
    index = {id(v): i for i, v in enumerate(everything)}
    states = [optimizer.kerasopt_state(v) for v in everything]
    n = optimizer.gradient_accumulation_steps
    pairs, lazy = [], set()
    for g, v in zip(grads, variables):
        i = index[id(v)]
        if isinstance(g, tf.IndexedSlices):
            pairs.append((i, _canonical(g, v)))
            lazy.add(i)
        else:
            pairs.append((i, tf.cast(tf.convert_to_tensor(g), v.dtype)))
    lazy = lazy if not n else set()  # accumulation densifies sparse gradients

    def read(variable: Any, i: int) -> Any:
        if variable is None:
            return None
        return variable.value if i in lazy else tf.convert_to_tensor(variable.value)

    given = engine.Arrays(
        weights=[read(v, i) for i, v in enumerate(everything)],
        slots=[tuple(read(s, i) for s in slots) for i, (slots, _, _) in enumerate(states)],
        accumulators=([read(acc, i) for i, (_, acc, _) in enumerate(states)] if n else None),
        averages=([read(avg, i) for i, (_, _, avg) in enumerate(states)]
                  if optimizer.use_ema else None),
    )
    raw = tf.convert_to_tensor(optimizer._iterations.value)
    step, group, rule = _common.engine_inputs(optimizer, raw,
                                              _tensor(optimizer.learning_rate))
    new = engine.apply(rule, given, pairs, step=step, groups=[group], ops=OPS).arrays
    targets = [(everything, given.weights, new.weights)]
    for k in range(len(states[0][0]) if states else 0):
        targets.append(([slots[k] for slots, _, _ in states],
                        [s[k] for s in given.slots], [s[k] for s in new.slots]))
    if n:
        targets.append(([acc for _, acc, _ in states], given.accumulators, new.accumulators))
    if optimizer.use_ema:
        targets.append(([avg for _, _, avg in states], given.averages, new.averages))
    for owned, before, after in targets:
        for variable, old, value in zip(owned, before, after):
            if variable is not None and value is not old:  # unchanged or scattered in place
                variable.assign(value)


@tf.autograph.experimental.do_not_convert
def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> bool:
    """Keras's ``optimizer.apply(grads, trainable_variables)`` as kerasopt's step on
    TensorFlow. Returns False, having changed and reported nothing, when Keras's own step
    must run instead. Not converted by AutoGraph: the step branches on tensors only through
    ``tf.cond`` (:class:`TensorFlowOps`), and its Python control flow is over Python
    values."""
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
    if _common.keras_step_needed(optimizer):
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


__all__ = ["NAMESPACE", "OPS", "TensorFlowOps", "apply"]
