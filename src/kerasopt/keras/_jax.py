"""``kerasopt.keras`` on Keras's JAX backend: ``stateless_apply`` as kerasopt's functional step.

Keras's JAX trainer calls ``optimizer.stateless_apply(optimizer_variables, grads,
trainable_variables)`` inside the ``jax.jit`` of its train step. Here that call maps the
optimizer's variables (in ``optimizer.variables`` order) onto kerasopt's functional Keras
pipeline and back, all traceable: the whole train step stays one XLA computation, and every
result is elementwise in its variable (or a global norm over whole arrays), so each keeps
its variable's sharding.

The pipeline today is :mod:`kerasopt.optax`'s transformation; :func:`run_pipeline` is the one
place that calls it, to be replaced by ``kerasopt.engine`` when that lands.

Where Keras's backends differ, this follows Keras's JAX backend:

* weight decay is done here, in its form ``w - w * wd * lr`` (Keras's torch backend, and
  kerasopt's pipeline, use ``w * (1 - wd * lr)``: the two round differently);
* on an accumulation update step, the accumulator of a variable without a gradient keeps
  its partial sum (Keras's other backends reset every accumulator).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import keras
from keras.src.backend import name_scope

from kerasopt import optax as kerasopt_optax


def _positive(value: Any) -> Any:
    """Keras clips only when the option is set and > 0."""
    return value if value and value > 0 else None


def _array(x: Any) -> Any:
    return x.value if isinstance(x, keras.Variable) else x


def run_pipeline(
    optimizer: Any,
    values: list[Any],
    grads: list[Any],
    params: list[Any],
    learning_rate: Any,
) -> tuple[list[Any], list[Any]]:
    """One Keras ``apply()`` of ``optimizer``'s algorithm without weight decay, functionally:
    ``values`` are the optimizer's variables' values (``optimizer.variables`` order),
    ``grads`` one per trainable variable (None: no gradient), ``params`` their values,
    ``learning_rate`` this step's rate. Returns ``(new_params, new_values)``.

    The adapter onto :mod:`kerasopt.optax` (its state holds the same arrays under other
    names); the engine will replace it.
    """
    algorithm = optimizer._algorithm
    position = {id(v): i for i, v in enumerate(optimizer.variables)}
    n = optimizer.gradient_accumulation_steps
    factory = getattr(kerasopt_optax, algorithm.kernel)
    tx = factory(
        learning_rate=learning_rate,
        **{name: getattr(optimizer, name) for name in algorithm.hyperparameters},
        **{flag: bool(getattr(optimizer, flag)) for flag in algorithm.flags},
        weight_decay=None,
        clipnorm=_positive(optimizer.clipnorm),
        clipvalue=_positive(optimizer.clipvalue),
        global_clipnorm=_positive(optimizer.global_clipnorm),
        use_ema=bool(optimizer.use_ema),
        ema_momentum=optimizer.ema_momentum,
        ema_overwrite_frequency=optimizer.ema_overwrite_frequency or None,
        loss_scale_factor=optimizer.loss_scale_factor,
        gradient_accumulation_steps=n or None,
    )
    state_cls = kerasopt_optax.AdamState if algorithm.kernel == "adam" else (
        kerasopt_optax.AdamaxState)
    slot_fields = [f for f in state_cls._fields
                   if f not in ("count", "accumulator", "average", "loss_scale_factor")]
    owned = dict(zip(slot_fields, [getattr(optimizer, a) for a in
                                   algorithm.slot_attributes(optimizer)] + [None] * 3))
    owned["accumulator"] = optimizer._accumulated_gradients if n else None
    owned["average"] = optimizer._model_variables_moving_average if optimizer.use_ema else None
    counter = position[id(optimizer._iterations)]
    state = state_cls(
        count=values[counter].astype(kerasopt_optax._counter_dtype()),
        loss_scale_factor=(jnp.asarray(optimizer.loss_scale_factor, jnp.float32)
                           if optimizer.loss_scale_factor is not None else None),
        **{field: [values[position[id(v)]] for v in variables] if variables is not None
           else None for field, variables in owned.items()},
    )
    updates, new_state = tx.update(list(grads), state, list(params))
    new_params = [p + u for p, u in zip(params, updates)]
    new_values = list(values)
    new_values[counter] = new_state.count.astype(values[counter].dtype)
    for field, variables in owned.items():
        if variables is None:
            continue
        for variable, value, g in zip(variables, getattr(new_state, field), grads):
            # Keras's JAX backend resets only the accumulators of the variables that have a
            # gradient on an update step (its other backends reset them all).
            if field != "accumulator" or g is not None:
                new_values[position[id(variable)]] = value
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


def _decayed(optimizer: Any, grads: list[Any], params: list[Any], learning_rate: Any,
             count: Any) -> list[Any]:
    """Keras's decoupled weight decay on its JAX backend, ``w - w * wd * lr``, for the
    variables with a gradient that are not excluded; under accumulation only on the update
    step (Keras computes it every step and keeps it on the update step only)."""
    if optimizer.weight_decay is None:
        return params
    n = optimizer.gradient_accumulation_steps
    out = []
    for variable, g, p in zip(optimizer._trainable_variables, grads, params):
        if g is None or not optimizer._use_weight_decay(variable):
            out.append(p)
            continue
        lr = jnp.asarray(learning_rate, p.dtype)
        wd = jnp.asarray(optimizer.weight_decay, p.dtype)
        decayed = p - p * wd * lr
        out.append(jnp.where((count + 1) % n == 0, decayed, p) if n else decayed)
    return out


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
    if len(trainable_variables) != len(optimizer._trainable_variables) or len(grads) != len(
            trainable_variables):
        raise ValueError(
            "Arguments `grads` and `trainable_variables` must be lists corresponding 1:1 to "
            "the trainable variables the optimizer was built with "
            f"({len(optimizer._trainable_variables)}); received {len(grads)} gradients and "
            f"{len(trainable_variables)} variables."
        )
    if any(getattr(v, "overwrite_with_gradient", False)
           for v in optimizer._trainable_variables):
        return None
    if all(g is None for g in grads):
        raise ValueError("No gradients provided for any variable.")
    values = [jnp.asarray(_array(v)) for v in optimizer_variables]
    params = [jnp.asarray(_array(v)) for v in trainable_variables]
    position = {id(v): i for i, v in enumerate(optimizer.variables)}
    learning_rate = _learning_rate(optimizer, values, position)
    count = values[position[id(optimizer._iterations)]]
    params = _decayed(optimizer, grads, params, learning_rate, count)
    new_params, new_values = run_pipeline(optimizer, values, grads, params, learning_rate)
    new_params = [
        v.constraint(p) if v.constraint is not None and g is not None else p
        for v, g, p in zip(optimizer._trainable_variables, grads, new_params)
    ]
    return new_params, new_values


def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> bool:
    """Keras's stateful ``apply`` (custom training loops) through :func:`stateless_apply` on
    the variables' current values (which respect an enclosing ``StatelessScope``)."""
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
    if len(grads) != len(variables) or all(g is None for g in grads):
        return False
    if any(getattr(v, "overwrite_with_gradient", False)
           for v in optimizer._trainable_variables):
        return False
    full = [None] * len(optimizer._trainable_variables)
    for g, v in zip(grads, variables):
        full[optimizer._get_variable_index(v)] = g
    if any(g is None for g in grads):
        optimizer._filter_empty_gradients(grads, variables)  # Keras's warning
    new_params, new_values = stateless_apply(
        optimizer, [v.value for v in optimizer.variables], full,
        [v.value for v in optimizer._trainable_variables])
    for variable, value in zip(optimizer._trainable_variables, new_params):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_values):
        variable.assign(value)
    return True


__all__ = ["apply", "run_pipeline", "stateless_apply"]
