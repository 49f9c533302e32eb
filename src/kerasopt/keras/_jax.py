"""``kerasopt.keras`` on Keras's JAX backend: ``stateless_apply`` as kerasopt's engine.

Keras's JAX trainer calls ``optimizer.stateless_apply(optimizer_variables, grads,
trainable_variables)`` inside the ``jax.jit`` of its train step. Here that call maps the
optimizer's variables (in ``optimizer.variables`` order) onto :func:`kerasopt.engine.apply`
(Keras's ``apply()`` written once, with ``lax.cond`` for its branches) and back, all
traceable: the whole train step stays one XLA computation, and every result is elementwise
in its variable (or a global norm over whole arrays), so each keeps its variable's sharding.

Where Keras's backends differ, this follows Keras's JAX backend (see
:mod:`kerasopt.keras._common`):

* weight decay in its form ``w - w * wd * lr`` (Keras's torch backend, and the engine's
  default, use ``w * (1 - wd * lr)``: the two round differently);
* on an accumulation update step, the accumulator of a variable without a gradient keeps
  its partial sum (Keras's other backends, and the engine, reset every accumulator).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import keras
from keras.src.backend import name_scope

from kerasopt import engine
from kerasopt.backend import ops_for
from kerasopt.keras import _common


def _array(x: Any) -> Any:
    return x.value if isinstance(x, keras.Variable) else x


def stateless_apply(optimizer: Any, optimizer_variables: Any, grads: Any,
                    trainable_variables: Any) -> tuple[list[Any], list[Any]] | None:
    """Keras's ``stateless_apply`` contract, traceable under ``jax.jit``; None (Keras's own
    then runs) for variables with ``overwrite_with_gradient``."""
    if not optimizer.built:
        raise ValueError(
            f"To call `stateless_apply`, {type(optimizer).__name__} must be built (i.e. its "
            "variables must have been created). You can build it via "
            "`optimizer.build(trainable_variables)`."
        )
    optimizer_variables = list(optimizer_variables)
    trainable_variables = list(trainable_variables)
    grads = list(grads)
    if len(optimizer_variables) != len(optimizer.variables):
        raise ValueError(
            "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 to "
            f"{type(optimizer).__name__}().variables. Received list with length "
            f"{len(optimizer_variables)}, but expected {len(optimizer.variables)} variables."
        )
    variables = optimizer._trainable_variables
    if len(trainable_variables) != len(variables) or len(grads) != len(variables):
        raise ValueError(
            "Arguments `grads` and `trainable_variables` must be lists corresponding 1:1 to "
            f"the trainable variables the optimizer was built with ({len(variables)}); "
            f"received {len(grads)} gradients and {len(trainable_variables)} variables."
        )
    if _common.keras_step_needed(optimizer):
        return None
    if all(g is None for g in grads):
        raise ValueError("No gradients provided for any variable.")
    values = [jnp.asarray(_array(v)) for v in optimizer_variables]
    position = {id(v): i for i, v in enumerate(optimizer.variables)}
    counter = position[id(optimizer._iterations)]

    def value_of(variable: Any) -> Any:
        return None if variable is None else values[position[id(variable)]]

    states = [optimizer.kerasopt_state(v) for v in variables]
    arrays = engine.Arrays(
        weights=[jnp.asarray(_array(w)) for w in trainable_variables],
        slots=[tuple(value_of(s) for s in slots) for slots, _, _ in states],
        accumulators=([value_of(acc) for _, acc, _ in states]
                      if optimizer.gradient_accumulation_steps else None),
        averages=[value_of(avg) for _, _, avg in states] if optimizer.use_ema else None,
    )
    learning_rate = _learning_rate(optimizer, values, position)
    step, group, rule = _common.engine_inputs(optimizer, values[counter], learning_rate)
    result = engine.apply(rule, arrays, [(i, g) for i, g in enumerate(grads) if g is not None],
                          step=step, groups=[group], ops=ops_for(values[counter]))
    new = result.arrays
    new_values = list(values)
    new_values[counter] = jnp.asarray(result.raw).astype(values[counter].dtype)
    for i, (slots, accumulator, average) in enumerate(states):
        for variable, value in zip(slots, new.slots[i]):
            new_values[position[id(variable)]] = value
        # Keras's JAX backend resets only the accumulators of the variables that have a
        # gradient on an update step.
        if accumulator is not None and grads[i] is not None:
            new_values[position[id(accumulator)]] = new.accumulators[i]
        if average is not None:
            new_values[position[id(average)]] = new.averages[i]
    new_params = [
        v.constraint(w) if v.constraint is not None and g is not None else w
        for v, g, w in zip(variables, grads, new.weights)
    ]
    return new_params, new_values


def _learning_rate(optimizer: Any, values: list[Any], position: dict[int, int]) -> Any:
    """This step's rate, as Keras's ``optimizer.learning_rate`` reads it: the rate variable's
    value, a schedule at the raw iteration count, or a callable's result."""
    rate = optimizer._learning_rate
    if isinstance(rate, keras.Variable):
        return values[position[id(rate)]]
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return jnp.asarray(rate(values[position[id(optimizer._iterations)]]))
    if callable(rate):
        return jnp.asarray(rate())
    return jnp.asarray(rate)


_OPTIONS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
            "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
            "gradient_accumulation_steps", "sparse_updates")


def _compiled(optimizer: Any) -> Any:
    """:func:`stateless_apply` of ``optimizer`` under ``jax.jit`` (an eager step would run
    each of the engine's ``lax.cond`` s as a compilation of its own), traced again when an
    option the trace reads has changed; not compiled when the learning rate or a
    hyperparameter is a plain callable (Keras calls it on every eager step)."""
    import jax

    rate = optimizer._learning_rate
    values = [getattr(optimizer, h.name) for h in optimizer.spec.hyperparameters]
    if (callable(rate) and not isinstance(
            rate, (keras.Variable, keras.optimizers.schedules.LearningRateSchedule))
            or any(callable(v) for v in values)):
        return lambda *args: stateless_apply(optimizer, *args)
    key = repr([*(getattr(optimizer, name) for name in _OPTIONS), *values, id(rate),
                id(getattr(optimizer, "_exclude_from_weight_decay_cache", None))])
    cache = optimizer.__dict__.setdefault("_kerasopt_jitted", {})
    if key not in cache:
        cache.clear()
        cache[key] = jax.jit(lambda *args: stateless_apply(optimizer, *args))
    return cache[key]


def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> bool:
    """Keras's stateful ``apply`` (custom training loops) through :func:`stateless_apply`,
    compiled, on the variables' current values (which respect an enclosing
    ``StatelessScope``)."""
    grads = list(grads)
    if not grads:
        return False
    if trainable_variables is None:
        if not optimizer.built or len(grads) != len(optimizer._trainable_variables):
            return False
        variables = optimizer._trainable_variables
    else:
        variables = list(trainable_variables)
        if not optimizer.built:
            with name_scope(optimizer.name, caller=optimizer):
                optimizer.build(variables)
            optimizer.built = True
        optimizer._check_variables_are_known(variables)
    if (len(grads) != len(variables) or all(g is None for g in grads)
            or _common.keras_step_needed(optimizer)):
        return False
    full = [None] * len(optimizer._trainable_variables)
    for g, v in zip(grads, variables):
        full[optimizer._get_variable_index(v)] = g
    if any(g is None for g in grads):
        optimizer._filter_empty_gradients(grads, variables)  # Keras's warning
    new_params, new_values = _compiled(optimizer)(
        [v.value for v in optimizer.variables], full,
        [v.value for v in optimizer._trainable_variables])
    for variable, value in zip(optimizer._trainable_variables, new_params):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_values):
        variable.assign(value)
    return True


__all__ = ["apply", "stateless_apply"]
