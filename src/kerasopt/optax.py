"""``kerasopt.optax``: Keras 3's Adam and Adamax as optax ``GradientTransformation``\\ s.

``adam(...)`` and ``adamax(...)`` take every Keras argument and return an
``optax.GradientTransformationExtraArgs`` over any pytree of arrays. All state lives in the
state pytree (:class:`AdamState` / :class:`AdamaxState`): the raw iteration counter, the
algorithm's slots, the gradient accumulators, the EMA averages and the loss-scale factor.
Nothing is kept on the Python side, so ``init`` and ``update`` run under ``jax.jit``, and
the transformations compose with ``optax.chain``, ``optax.apply_updates`` and
``optax.inject_hyperparams``::

    tx = kerasopt.optax.adamax(learning_rate=1e-3, use_ema=True, global_clipnorm=1.0)
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)     # params are required
        return optax.apply_updates(params, updates), state

One ``update`` runs Keras 3's ``apply()`` in Keras's order (the update rules and the
pipeline steps are kerasopt's pure functions; this module only maps them over pytrees):

1. ``None`` gradients are dropped (their parameters do not move; warned at trace time);
2. gradients are divided by ``loss_scale_factor``;
3. with ``gradient_accumulation_steps = n``, micro-steps only add into the accumulators and
   the n-th uses ``(g + acc) / n`` and resets every accumulator (``lax.cond``);
4. ``clipnorm`` / ``global_clipnorm`` / ``clipvalue``;
5. decoupled weight decay ``w -= w * weight_decay * lr`` (unless excluded);
6. the update rule with ``t = iterations + 1``;
7. EMA of the weights and the periodic overwrite (``jnp.where``);
8. the counter ``count += 1``.

The update returned is the optax delta ``new_params - params``; ``optax.apply_updates``
adds it back. Where Keras assigns a value (the new weight, or the EMA average on an overwrite
step) the delta reproduces it up to one rounding of ``w + (new - w)``, which is exact
whenever ``new`` is within a factor of two of ``w`` (Sterbenz), i.e. essentially always.

Keras details reproduced (see SPEC.md): hyperparameters are cast to the parameter's dtype
before use (``beta ** t`` in float32 for float32 parameters); a float learning rate is
stored in float32; schedules see the *raw* iteration count; ``iterations`` is
``count // n`` under accumulation; the EMA momentum is 0 while ``iterations == 0``; under
accumulation the EMA is updated on every micro-step and the overwrite check
``(iterations + 1) % ema_overwrite_frequency == 0`` holds on every micro-step of the
matching group; all accumulators are reset on an update step (a ``None`` gradient loses its
partial sum).

Counter dtype: ``count`` is ``int32`` (``int64`` when ``jax_enable_x64`` is on), as Keras's
iteration variable is on its JAX backend.

Learning rate: a float; a ``kerasopt.schedules.LearningRateSchedule`` (called with the raw
count); a callable taking one argument (an optax schedule, called with the raw count); or a
zero-argument callable (Keras's convention, called on every update, i.e. at trace time
under ``jit``). Betas may be zero-argument callables too (also evaluated at trace time).
Under ``optax.inject_hyperparams`` the numeric hyperparameters arrive as arrays; pass
``static_args=("gradient_accumulation_steps", "ema_overwrite_frequency")`` when those
should stay Python integers (as arrays they still work, dynamically).

Sparse gradients: a leaf of the gradients may be a ``kerasopt.IndexedSlices`` of JAX arrays
with a fixed number of rows ``k``. Duplicate indices are summed (``jnp.unique`` with
``size=k``, sort-based, jit-able); only the touched rows of the parameter and of its slots
move (lazy update, weight decay on those rows only). Indices must lie in ``[0, rows)``; under
``jit`` they cannot be checked, and out-of-range rows are dropped. Under gradient
accumulation sparse gradients are densified into the accumulator. Importing this module
registers ``IndexedSlices`` as a pytree node (children: values, indices).

Dtypes: float32, bfloat16 and float16 parameters. By default the state has the parameter's
dtype (Keras's rule) and the step is computed in it; ``state_dtype="float32"`` keeps the
slots, accumulators and averages in float32 and computes the step in float32, rounding only
the new parameter to its dtype. Note Keras's rule for Adam in bfloat16: ``bfloat16(0.999)``
is 1, so ``beta_2 ** t == 1`` and the step size is 0 -- Keras's Adam does not move bfloat16
weights with the default ``beta_2``; ``state_dtype="float32"`` avoids it.

Sharding: the state is created with ``jnp.zeros_like`` and the step is element-wise, so
sharded parameters (``NamedSharding``) keep their sharding; ``global_clipnorm`` sums over
whole (global) arrays, so it is the true global norm.

Checkpointing: the state is a pytree of arrays; :func:`save_state` / :func:`restore_state`
write and read it with NumPy (atomic ``.npz``, bit-exact, bfloat16 included) against a
template from ``tx.init(params)``. Orbax's ``PyTreeCheckpointer`` works on it as well.

Differences from Keras: validation at construction (Keras accepts a negative rate,
``beta_1 = 1``, ``epsilon = 0``); callable betas; lazy sparse updates; a ``clipnorm`` /
``global_clipnorm`` / ``clipvalue`` given as an *array* (``inject_hyperparams``) clips only
where it is > 0 (a Python 0 switches clipping off, as in Keras).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kerasopt import files, pipeline, validation
from kerasopt.algorithms import adam_update, adamax_update
from kerasopt.schedules import LearningRateSchedule
from kerasopt.sparse import IndexedSlices, map_values, values_of, with_values

__all__ = [
    "AdamState",
    "AdamaxState",
    "LossScaleState",
    "SkipNonFiniteState",
    "adam",
    "adamax",
    "ema_params",
    "finalize_params",
    "iterations",
    "loss_scale",
    "restore_state",
    "save_state",
    "scale_loss",
    "stateless_apply_jax",
]


# --------------------------------------------------------------------------- pytree support


def _register_indexed_slices() -> None:
    def flatten(x: IndexedSlices):
        return (x.values, x.indices), x.dense_shape

    def unflatten(dense_shape, children):
        obj = object.__new__(IndexedSlices)
        obj.values, obj.indices = children
        obj.dense_shape = dense_shape
        return obj

    try:
        jax.tree_util.register_pytree_node(IndexedSlices, flatten, unflatten)
    except ValueError:  # already registered (by kerasopt.sparse or an earlier import)
        pass


_register_indexed_slices()


# --------------------------------------------------------------------------- state


class AdamState(NamedTuple):
    """State of :func:`adam`: every field but ``count`` is a pytree shaped like the params
    (or ``None`` when the feature is off)."""

    count: jax.Array
    """Raw iterations (micro-steps under accumulation); int32, int64 with x64."""
    momentum: Any
    velocity: Any
    velocity_hat: Any
    """``None`` unless ``amsgrad``."""
    accumulator: Any
    """``None`` unless ``gradient_accumulation_steps``."""
    average: Any
    """EMA of the parameters; ``None`` unless ``use_ema``."""
    loss_scale_factor: Any
    """A float32 scalar, or ``None`` (read by :func:`scale_loss`)."""


class AdamaxState(NamedTuple):
    """State of :func:`adamax` (see :class:`AdamState`; ``norm`` is Adamax's ``u``)."""

    count: jax.Array
    momentum: Any
    norm: Any
    accumulator: Any
    average: Any
    loss_scale_factor: Any


_STATES = (AdamState, AdamaxState)


# --------------------------------------------------------------------------- validation


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def _checked_number(name: str, value: Any, check: Callable[[str, Any], Any]) -> Any:
    """Run ``check`` on a Python number, or on a concrete 0-d array's value; a traced value
    (inside ``inject_hyperparams``'s update) passes unchecked."""
    if value is None:
        return None
    if _is_array(value):
        if np.ndim(value) != 0:
            raise ValueError(
                f"Argument `{name}` must be a scalar; received an array of shape "
                f"{np.shape(value)}."
            )
        if isinstance(value, jax.core.Tracer):
            return value
        check(name, np.asarray(value).item())
        return value
    return check(name, value)


def _required_number(name: str, value: Any, check: Callable[[str, Any], Any]) -> Any:
    """Like :func:`_checked_number`, but ``None`` is refused (by ``check``, naming it)."""
    if value is None:
        return check(name, value)
    return _checked_number(name, value, check)


def _non_negative(name: str, value: Any) -> float:
    # A Python float, so that a large integer (2**31) is not traced as an int32 under jit.
    return float(validation.real(name, value, minimum=0.0,
                                 allowed="None or a finite float >= 0"))


def _positive(name: str, value: Any) -> float:
    return float(validation.real(
        name, value, minimum=0.0, min_inclusive=False, allowed="a finite float > 0"
    ))


def _beta(name: str, value: Any) -> Any:
    if callable(value) and not _is_array(value):
        return value
    return _required_number(name, value, validation.beta)


def _resolve_beta(name: str, value: Any) -> Any:
    """The beta's value (calling a zero-argument callable), checked when concrete."""
    if callable(value) and not _is_array(value):
        result = value()
        if validation.is_real(result):
            return validation.resolved_beta(name, lambda: result)
        return _checked_number(name, result, validation.beta)
    return value


def _integer(name: str, value: Any, minimum: int, allowed: str) -> Any:
    def check(name: str, v: Any) -> Any:
        v = validation.integer(name, v, minimum=minimum, allowed=allowed)
        dtype = _counter_dtype()
        limit = int(jnp.iinfo(dtype).max)
        if v > limit:  # it is compared with the counter, an int32 (int64 with x64)
            raise ValueError(
                f"Argument `{name}` must be {allowed} and at most {limit} (the iteration "
                f"counter is {jnp.dtype(dtype).name}); received {name}={v!r}."
            )
        return v

    return _checked_number(name, value, check)


def _takes_argument(fn: Callable) -> bool:
    """True when ``fn`` needs a positional argument (an optax-style schedule ``f(count)``)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD) and (
            parameter.default is parameter.empty
        ):
            return True
    return False


def _learning_rate(value: Any) -> Any:
    if isinstance(value, LearningRateSchedule) or (callable(value) and not _is_array(value)):
        return value
    if _is_array(value):
        return _checked_number("learning_rate", value, _non_negative_rate)
    _non_negative_rate("learning_rate", value)
    if not isinstance(value, (float, np.floating)):
        raise TypeError(
            "Argument `learning_rate` must be a float (not an integer), a "
            "LearningRateSchedule, or a callable; received "
            f"learning_rate={value!r}. Write it as {float(value)!r}."
        )
    return value


def _non_negative_rate(name: str, value: Any) -> Any:
    return validation.real(
        name,
        value,
        minimum=0.0,
        allowed="a finite float >= 0, a LearningRateSchedule, or a callable",
    )


class _Config(NamedTuple):
    learning_rate: Any
    weight_decay: Any
    clipnorm: Any
    clipvalue: Any
    global_clipnorm: Any
    use_ema: bool
    ema_momentum: Any
    ema_overwrite_frequency: Any
    loss_scale_factor: Any
    gradient_accumulation_steps: Any
    weight_decay_mask: Any
    exclude_pattern: re.Pattern | None
    state_dtype: Any


def _base_config(
    *,
    learning_rate: Any,
    weight_decay: Any,
    clipnorm: Any,
    clipvalue: Any,
    global_clipnorm: Any,
    use_ema: Any,
    ema_momentum: Any,
    ema_overwrite_frequency: Any,
    loss_scale_factor: Any,
    gradient_accumulation_steps: Any,
    weight_decay_mask: Any,
    exclude_from_weight_decay: Any,
    state_dtype: Any,
) -> _Config:
    validation.at_most_one_clip_option(
        clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm
    )
    pattern = None
    if exclude_from_weight_decay is not None:
        if isinstance(exclude_from_weight_decay, str):
            exclude_from_weight_decay = [exclude_from_weight_decay]
        names = list(exclude_from_weight_decay)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    "Argument `exclude_from_weight_decay` must be a list of regular-expression "
                    f"strings; received an element {name!r}."
                )
        if names:
            try:
                pattern = re.compile("|".join(sorted(set(names))))
            except re.error as error:
                raise ValueError(
                    "Argument `exclude_from_weight_decay` must hold valid regular expressions; "
                    f"received exclude_from_weight_decay={names!r} ({error})."
                ) from error
    if state_dtype is not None:
        try:
            state_dtype = jnp.dtype(state_dtype)
        except TypeError as error:
            raise TypeError(
                f"Argument `state_dtype` must be None or a float dtype; received "
                f"state_dtype={state_dtype!r}."
            ) from error
        if not jnp.issubdtype(state_dtype, jnp.floating):
            raise TypeError(
                f"Argument `state_dtype` must be None or a float dtype; received "
                f"state_dtype={state_dtype!r}."
            )
    return _Config(
        learning_rate=_learning_rate(learning_rate),
        weight_decay=_checked_number("weight_decay", weight_decay, _non_negative),
        clipnorm=_checked_number("clipnorm", clipnorm, _non_negative),
        clipvalue=_checked_number("clipvalue", clipvalue, _non_negative),
        global_clipnorm=_checked_number("global_clipnorm", global_clipnorm, _non_negative),
        use_ema=validation.boolean("use_ema", use_ema),
        ema_momentum=_required_number(
            "ema_momentum",
            ema_momentum,
            lambda n, v: validation.real(
                n, v, minimum=0.0, maximum=1.0, allowed="a float in [0, 1]"
            ),
        ),
        ema_overwrite_frequency=_integer(
            "ema_overwrite_frequency", ema_overwrite_frequency, 1, "None or an integer >= 1"
        ),
        loss_scale_factor=_checked_number(
            "loss_scale_factor",
            loss_scale_factor,
            lambda n, v: float(validation.real(
                n, v, minimum=0.0, min_inclusive=False, allowed="None or a finite float > 0"
            )),
        ),
        gradient_accumulation_steps=_integer(
            "gradient_accumulation_steps",
            gradient_accumulation_steps,
            2,
            "None or an integer >= 2",
        ),
        weight_decay_mask=weight_decay_mask,
        exclude_pattern=pattern,
        state_dtype=state_dtype,
    )


# --------------------------------------------------------------------------- helpers


def _counter_dtype() -> Any:
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _current_learning_rate(learning_rate: Any, count: jax.Array) -> Any:
    """Keras's ``optimizer.learning_rate`` for this step (schedules see the raw count)."""
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate(count)
    if callable(learning_rate) and not _is_array(learning_rate):
        return learning_rate(count) if _takes_argument(learning_rate) else learning_rate()
    if _is_array(learning_rate):
        return learning_rate
    return jnp.asarray(learning_rate, jnp.float32)  # Keras stores a float rate in float32


def _is_static_zero(value: Any) -> bool:
    return not _is_array(value) and not value


def _clip(grads: list[Any], config: _Config) -> list[Any]:
    """Keras's ``_clip_gradients`` over the non-None gradients (sparse: on their values)."""
    present = [i for i, g in enumerate(grads) if g is not None]
    out = list(grads)

    def gated(threshold: Any, clipped: Any, original: Any) -> Any:
        if _is_array(threshold):  # an injected (possibly traced) value: off where <= 0
            return jnp.where(threshold > 0, clipped, original)
        return clipped

    if config.clipnorm is not None and not _is_static_zero(config.clipnorm):
        for i in present:
            v = values_of(grads[i])
            out[i] = with_values(
                grads[i], gated(config.clipnorm, pipeline.clip_by_norm(v, config.clipnorm), v)
            )
    elif config.global_clipnorm is not None and not _is_static_zero(config.global_clipnorm):
        values = [values_of(grads[i]) for i in present]
        clipped = pipeline.clip_by_global_norm(values, config.global_clipnorm)
        for i, v, c in zip(present, values, clipped):
            out[i] = with_values(grads[i], gated(config.global_clipnorm, c, v))
    elif config.clipvalue is not None and not _is_static_zero(config.clipvalue):
        for i in present:
            v = values_of(grads[i])
            out[i] = with_values(
                grads[i], gated(config.clipvalue, pipeline.clip_by_value(v, config.clipvalue), v)
            )
    return out


def _canonical_rows(g: IndexedSlices, n_rows: int) -> IndexedSlices:
    """Each touched row once (sorted), duplicates summed; padded to the same fixed count
    with the out-of-range row ``n_rows`` (whose values are zero and which is dropped)."""
    k = g.indices.shape[0]
    rows, inverse = jnp.unique(g.indices, size=k, fill_value=n_rows, return_inverse=True)
    summed = jnp.zeros_like(g.values).at[inverse.reshape(-1)].add(g.values)
    return IndexedSlices(summed, rows, g.dense_shape)


def _to_dense(g: IndexedSlices) -> jax.Array:
    return jnp.zeros(g.dense_shape, g.values.dtype).at[g.indices].add(g.values, mode="drop")


def _find_states(state: Any) -> list[Any]:
    found = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, _STATES)
        )
        if isinstance(leaf, _STATES)
    ]
    return found


def _find_state(state: Any, what: str) -> AdamState | AdamaxState:
    found = _find_states(state)
    if not found:
        raise ValueError(
            f"{what}: no kerasopt.optax state (AdamState / AdamaxState) found in the given "
            f"state of type {type(state).__name__}."
        )
    if len(found) > 1:
        raise ValueError(
            f"{what}: the given state holds {len(found)} kerasopt.optax states; pass the one "
            "you mean."
        )
    return found[0]


def _describe_paths(tree: Any) -> set[str]:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or isinstance(x, IndexedSlices)
    )[0]
    return {jax.tree_util.keystr(path) for path, _ in leaves}


def _flatten_grads(grads: Any, params: Any, treedef: Any, name: str) -> list[Any]:
    try:
        return treedef.flatten_up_to(grads)
    except (ValueError, TypeError) as error:
        expected = _describe_paths(params)
        received = _describe_paths(grads)
        missing = sorted(expected - received)
        unexpected = sorted(received - expected)
        raise ValueError(
            f"kerasopt.optax.{name}: the gradients' pytree structure does not match the "
            f"params'.\n  params structure: {treedef}\n  grads structure:  "
            f"{jax.tree_util.tree_structure(grads)}\n  in params, not in grads: {missing}\n"
            f"  in grads, not in params: {unexpected}\n  ({error})"
        ) from None


def _check_gradient(path: str, g: Any, w: Any, name: str) -> None:
    where = f"kerasopt.optax.{name}: gradient for params{path}"
    if isinstance(g, IndexedSlices):
        if tuple(g.dense_shape) != tuple(w.shape):
            raise ValueError(
                f"{where}: IndexedSlices dense_shape {tuple(g.dense_shape)} does not match the "
                f"parameter's shape {tuple(w.shape)}."
            )
        if g.indices.ndim != 1 or not jnp.issubdtype(g.indices.dtype, jnp.integer):
            raise ValueError(
                f"{where}: IndexedSlices indices must be a 1-D integer array; received dtype "
                f"{g.indices.dtype} and shape {tuple(g.indices.shape)}."
            )
        expected = (g.indices.shape[0], *w.shape[1:])
        if tuple(g.values.shape) != expected:
            raise ValueError(
                f"{where}: IndexedSlices values have shape {tuple(g.values.shape)}; expected "
                f"{expected}."
            )
        return
    shape = tuple(np.shape(g))
    if shape != tuple(w.shape):
        raise ValueError(
            f"{where} has shape {shape}; expected the parameter's shape {tuple(w.shape)}."
        )
    dtype = getattr(g, "dtype", None)
    if dtype is not None and not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(f"{where} has dtype {dtype}; pass a real-valued array.")


# --------------------------------------------------------------------------- the transformation


def _keras_transformation(
    name: str,
    config: _Config,
    slot_names: Sequence[str],
    state_cls: type,
    rule: Callable[..., tuple[Any, ...]],
    hyperparameters: Callable[[], dict[str, Any]],
) -> optax.GradientTransformationExtraArgs:
    n_steps = config.gradient_accumulation_steps

    def state_dtype(p: Any) -> Any:
        return config.state_dtype if config.state_dtype is not None else p.dtype

    def zeros(params: Any) -> Any:
        return jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=state_dtype(p)), params)

    def init_fn(params: Any) -> Any:
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            if not jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating):
                raise TypeError(
                    f"kerasopt.optax.{name}: params{jax.tree_util.keystr(path)} has dtype "
                    f"{jnp.asarray(p).dtype}; only floating-point parameters can be optimized."
                )
        params = jax.tree_util.tree_map(jnp.asarray, params)
        fields = dict.fromkeys(state_cls._fields)
        fields.update({slot: zeros(params) for slot in slot_names})
        fields.update(
            count=jnp.zeros([], _counter_dtype()),
            accumulator=zeros(params) if n_steps is not None else None,
            average=(
                jax.tree_util.tree_map(lambda p: p.astype(state_dtype(p)), params)
                if config.use_ema
                else None
            ),
            loss_scale_factor=(
                jnp.asarray(config.loss_scale_factor, jnp.float32)
                if config.loss_scale_factor is not None
                else None
            ),
        )
        return state_cls(**fields)

    def decay_flags(params: Any, paths: list[str]) -> list[bool]:
        flags = [True] * len(paths)
        if config.weight_decay is None:
            return [False] * len(paths)
        mask = config.weight_decay_mask
        if mask is not None:
            if callable(mask):
                mask = mask(params)
            treedef = jax.tree_util.tree_structure(params)
            try:
                mask_leaves = treedef.flatten_up_to(mask)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"kerasopt.optax.{name}: `weight_decay_mask` must have the params' "
                    f"structure {treedef}; received {jax.tree_util.tree_structure(mask)} "
                    f"({error})."
                ) from None
            flags = [bool(m) for m in mask_leaves]
        if config.exclude_pattern is not None:
            flags = [
                f and config.exclude_pattern.search(path) is None
                for f, path in zip(flags, paths)
            ]
        return flags

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any):
        del extra_args
        if params is None:
            raise ValueError(
                f"kerasopt.optax.{name}: update(grads, state, params) needs `params` (weight "
                "decay, the update rule and the EMA all read the current parameters); "
                "received params=None."
            )
        if not isinstance(state, state_cls):
            raise TypeError(
                f"kerasopt.optax.{name}: expected a {state_cls.__name__} from this "
                f"transformation's init; received {type(state).__name__}."
            )
        with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [jax.tree_util.keystr(path) for path, _ in with_path]
        params_leaves = [jnp.asarray(p) for _, p in with_path]
        grads = _flatten_grads(updates, params, treedef, name)
        for path, g, p in zip(paths, grads, params_leaves):
            if g is not None:
                _check_gradient(path, g, p, name)
        missing = [path for path, g in zip(paths, grads) if g is None]
        if len(missing) == len(paths):
            raise ValueError(f"kerasopt.optax.{name}: no gradients provided (all are None).")
        if missing:
            warnings.warn(
                f"kerasopt.optax.{name}: gradients do not exist for params {missing}; they are "
                "not updated this step.",
                stacklevel=2,
            )
        decays = decay_flags(params, paths)

        def flat(tree: Any) -> list[Any]:
            return treedef.flatten_up_to(tree)

        count = state.count
        slots = [flat(getattr(state, slot)) for slot in slot_names]
        compute = [jnp.dtype(state_dtype(p)) for p in params_leaves]
        ws = [p.astype(c) for p, c in zip(params_leaves, compute)]

        # 1-2. cast to the compute dtype, sum duplicate rows, unscale.
        gs: list[Any] = []
        for g, w in zip(grads, ws):
            if g is None:
                gs.append(None)
                continue
            if isinstance(g, IndexedSlices):
                g = _canonical_rows(
                    IndexedSlices(jnp.asarray(g.values).astype(w.dtype), jnp.asarray(g.indices),
                                  g.dense_shape),
                    w.shape[0],
                )
            else:
                g = jnp.asarray(g).astype(w.dtype)
            gs.append(g)
        if config.loss_scale_factor is not None:
            factor = config.loss_scale_factor
            gs = [None if g is None else map_values(lambda v: pipeline.unscale(v, factor), g)
                  for g in gs]

        n_updates = count // n_steps if n_steps is not None else count
        learning_rate = _current_learning_rate(config.learning_rate, count)
        hyper = hyperparameters()
        step = n_updates + 1

        def apply_update(gs: list[Any], ws: list[Any], slots: list[list[Any]]):
            """Clip, decay and the update rule; returns new (ws, slots)."""
            gs = _clip(gs, config)
            new_ws = list(ws)
            new_slots = [list(s) for s in slots]
            for i, (g, w) in enumerate(zip(gs, ws)):
                if g is None:
                    continue
                own_slots = [s[i] for s in slots]
                if isinstance(g, IndexedSlices):
                    rows = g.indices
                    w_rows = w.at[rows].get(mode="fill", fill_value=0)
                    slot_rows = [s.at[rows].get(mode="fill", fill_value=0) for s in own_slots]
                    if decays[i]:
                        w_rows = pipeline.decay(w_rows, config.weight_decay, learning_rate)
                    result = rule(w_rows, g.values, *slot_rows, learning_rate=learning_rate,
                                  step=step, **hyper)
                    new_ws[i] = w.at[rows].set(result[0], mode="drop")
                    for k, s in enumerate(own_slots):
                        new_slots[k][i] = s.at[rows].set(result[1 + k], mode="drop")
                else:
                    if decays[i]:
                        w = pipeline.decay(w, config.weight_decay, learning_rate)
                    result = rule(w, g, *own_slots, learning_rate=learning_rate, step=step,
                                  **hyper)
                    new_ws[i] = result[0]
                    for k in range(len(own_slots)):
                        new_slots[k][i] = result[1 + k]
            return new_ws, new_slots

        # 3. gradient accumulation.
        accumulators = None
        if n_steps is not None:
            accumulators = flat(state.accumulator)
            dense = [_to_dense(g) if isinstance(g, IndexedSlices) else g for g in gs]
            present = [i for i, g in enumerate(dense) if g is not None]

            def on_update_step(operands):
                ws, slots, accs = operands
                mean = list(dense)
                for i, total in zip(
                    present,
                    pipeline.accumulated_mean([dense[i] for i in present],
                                              [accs[i] for i in present], n_steps),
                ):
                    mean[i] = total
                ws, slots = apply_update(mean, ws, slots)
                return ws, slots, [jnp.zeros_like(a) for a in accs]

            def on_micro_step(operands):
                ws, slots, accs = operands
                accs = list(accs)
                for i, total in zip(
                    present,
                    pipeline.accumulate([dense[i] for i in present], [accs[i] for i in present]),
                ):
                    accs[i] = total
                return list(ws), [list(s) for s in slots], accs

            is_update_step = (count + 1) % n_steps == 0
            ws, slots, accumulators = jax.lax.cond(
                is_update_step, on_update_step, on_micro_step, (ws, slots, accumulators)
            )
        else:
            ws, slots = apply_update(gs, ws, slots)

        new_params = [w.astype(p.dtype) for w, p in zip(ws, params_leaves)]

        # 7. EMA and the periodic overwrite.
        averages = None
        if config.use_ema:
            momentum = pipeline.ema_momentum_at(n_updates, config.ema_momentum)
            averages = [
                pipeline.ema(a, p.astype(a.dtype), momentum)
                for a, p in zip(flat(state.average), new_params)
            ]
            frequency = config.ema_overwrite_frequency
            if frequency is not None:
                overwrite = (n_updates + 1) % frequency == 0
                new_params = [
                    jnp.where(overwrite, a.astype(p.dtype), p)
                    for a, p in zip(averages, new_params)
                ]

        deltas = [new - p for new, p in zip(new_params, params_leaves)]
        unflatten = treedef.unflatten
        new_state = state._replace(
            count=count + 1,
            **{slot: unflatten(values) for slot, values in zip(slot_names, slots)},
            accumulator=unflatten(accumulators) if accumulators is not None else None,
            average=unflatten(averages) if averages is not None else None,
        )
        return unflatten(deltas), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- public factories

_BASE_DOC = """
    Args (Keras's, with Keras's defaults and meaning):
        learning_rate: float (stored in float32), ``kerasopt.schedules.LearningRateSchedule``
            or one-argument schedule (called with the raw iteration count), or a
            zero-argument callable.
        weight_decay: decoupled weight decay ``w -= w * weight_decay * lr`` before the step.
        clipnorm / global_clipnorm / clipvalue: gradient clipping; at most one.
        use_ema, ema_momentum, ema_overwrite_frequency: EMA of the weights (kept in the
            state; see :func:`ema_params` and :func:`finalize_params`).
        loss_scale_factor: gradients are divided by it (see :func:`scale_loss`).
        gradient_accumulation_steps: update every n calls with the mean gradient.
    JAX-only arguments:
        weight_decay_mask: a pytree of bools shaped like the params (True = decay), or a
            callable ``params -> mask``; optax's convention.
        exclude_from_weight_decay: regular expressions; a leaf whose
            ``jax.tree_util.keystr`` path (e.g. ``"['dense']['bias']"``) contains a match of
            any of them is not decayed (Keras's ``var_names``).
        state_dtype: None (state in the parameter's dtype, as Keras) or a float dtype, e.g.
            ``"float32"`` to keep the state and compute the step in float32 for bfloat16 /
            float16 parameters.
        skip_nonfinite: kerasopt only (default False: as Keras, NaN/inf gradients propagate).
            When True, an update whose gradients hold NaN or inf returns zero updates and
            leaves the inner state unchanged; the state becomes a :class:`SkipNonFiniteState`
            counting the skips (``skipped_steps``); the first skip warns (``jax.debug``
            callback, so also under ``jit``).
"""


def adam(
    learning_rate: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: Any = 1e-7,
    amsgrad: bool = False,
    weight_decay: Any = None,
    clipnorm: Any = None,
    clipvalue: Any = None,
    global_clipnorm: Any = None,
    use_ema: bool = False,
    ema_momentum: Any = 0.99,
    ema_overwrite_frequency: Any = None,
    loss_scale_factor: Any = None,
    gradient_accumulation_steps: Any = None,
    *,
    weight_decay_mask: Any = None,
    exclude_from_weight_decay: Iterable[str] | None = None,
    state_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Keras 3's Adam (``keras.optimizers.Adam``) as an optax transformation.

    ``epsilon`` is Keras's "epsilon hat", added to ``sqrt(v)`` of the uncorrected second
    moment; ``beta_1`` / ``beta_2`` may be zero-argument callables.
    """
    config = _base_config(
        learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
        clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps,
        weight_decay_mask=weight_decay_mask, exclude_from_weight_decay=exclude_from_weight_decay,
        state_dtype=state_dtype,
    )
    beta_1 = _beta("beta_1", beta_1)
    beta_2 = _beta("beta_2", beta_2)
    epsilon = _required_number("epsilon", epsilon, _positive)
    amsgrad = validation.boolean("amsgrad", amsgrad)

    def hyperparameters() -> dict[str, Any]:
        return {
            "beta_1": _resolve_beta("beta_1", beta_1),
            "beta_2": _resolve_beta("beta_2", beta_2),
            "epsilon": epsilon,
        }

    if amsgrad:
        slots, rule = ("momentum", "velocity", "velocity_hat"), adam_update
    else:
        slots = ("momentum", "velocity")

        def rule(w, g, m, v, **kwargs):
            return adam_update(w, g, m, v, None, **kwargs)

    tx = _keras_transformation("adam", config, slots, AdamState, rule, hyperparameters)
    if validation.boolean("skip_nonfinite", skip_nonfinite):
        tx = _skip_nonfinite(tx, "adam")
    return tx


def adamax(
    learning_rate: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: Any = 1e-7,
    weight_decay: Any = None,
    clipnorm: Any = None,
    clipvalue: Any = None,
    global_clipnorm: Any = None,
    use_ema: bool = False,
    ema_momentum: Any = 0.99,
    ema_overwrite_frequency: Any = None,
    loss_scale_factor: Any = None,
    gradient_accumulation_steps: Any = None,
    *,
    weight_decay_mask: Any = None,
    exclude_from_weight_decay: Iterable[str] | None = None,
    state_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Keras 3's Adamax (``keras.optimizers.Adamax``) as an optax transformation.

    Epsilon is added after the max (unlike ``torch.optim.Adamax``) and the bias correction
    divides the step.
    """
    config = _base_config(
        learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
        clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps,
        weight_decay_mask=weight_decay_mask, exclude_from_weight_decay=exclude_from_weight_decay,
        state_dtype=state_dtype,
    )
    beta_1 = _beta("beta_1", beta_1)
    beta_2 = _beta("beta_2", beta_2)
    epsilon = _required_number("epsilon", epsilon, _positive)

    def hyperparameters() -> dict[str, Any]:
        return {
            "beta_1": _resolve_beta("beta_1", beta_1),
            "beta_2": _resolve_beta("beta_2", beta_2),
            "epsilon": epsilon,
        }

    tx = _keras_transformation(
        "adamax", config, ("momentum", "norm"), AdamaxState, adamax_update, hyperparameters
    )
    if validation.boolean("skip_nonfinite", skip_nonfinite):
        tx = _skip_nonfinite(tx, "adamax")
    return tx


adam.__doc__ = (adam.__doc__ or "") + _BASE_DOC
adamax.__doc__ = (adamax.__doc__ or "") + _BASE_DOC


# --------------------------------------------------------------------------- state helpers


def iterations(state: Any, gradient_accumulation_steps: int | None = None) -> jax.Array:
    """Keras's ``optimizer.iterations``: the raw count, or ``count // n`` when
    ``gradient_accumulation_steps=n`` is given (the state does not hold ``n``). ``state`` may
    be a kerasopt state or any optax state containing one."""
    count = _find_state(state, "iterations").count
    if gradient_accumulation_steps:
        return count // gradient_accumulation_steps
    return count


def ema_params(state: Any) -> Any:
    """The EMA of the parameters (a pytree like the params, in the state's dtype), for
    evaluation. Needs ``use_ema=True``."""
    found = _find_state(state, "ema_params")
    if found.average is None:
        raise ValueError(
            "ema_params: this optimizer keeps no moving averages; create it with use_ema=True."
        )
    return found.average


def finalize_params(params: Any, state: Any) -> Any:
    """Keras's ``finalize_variable_values``: with ``use_ema``, the averages (in each
    parameter's dtype); otherwise ``params`` unchanged."""
    found = _find_state(state, "finalize_params")
    if found.average is None:
        return params
    return jax.tree_util.tree_map(lambda p, a: a.astype(jnp.asarray(p).dtype), params,
                                  found.average)


def scale_loss(loss: Any, state: Any) -> Any:
    """Keras's ``optimizer.scale_loss``: ``loss * loss_scale_factor`` when set."""
    dynamic = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, LossScaleState)
        )
        if isinstance(leaf, LossScaleState)
    ]
    if dynamic:  # kerasopt.optax.loss_scale: the current dynamic scale
        return loss * dynamic[0].dynamic_scale.astype(jnp.result_type(loss))
    found = _find_state(state, "scale_loss")
    if found.loss_scale_factor is None:
        return loss
    return loss * found.loss_scale_factor.astype(jnp.result_type(loss))


# --------------------------------------------------------------------------- checkpointing


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Write an optimizer state pytree (any optax state) to ``path`` (``.npz``), atomically
    (:func:`kerasopt.files.atomic_write`: a temporary file in the same directory, fsync,
    rename, directory fsync; the umask's mode for a new file). Bit-exact, bfloat16 included:
    each leaf is stored as raw bytes with its dtype name and shape."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, leaf in enumerate(leaves):
        array = np.asarray(jax.device_get(leaf))
        meta.append({"dtype": array.dtype.name, "shape": list(array.shape)})
        arrays[f"leaf_{i}"] = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def restore_state(path: str | os.PathLike, like: Any) -> Any:
    """Read a state written by :func:`save_state` into the structure of ``like`` (the state
    from ``tx.init(params)``). Checks the leaf count, dtypes and shapes, places each leaf
    with ``like``'s sharding, and never unpickles (data only)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    with files.open_regular(path) as f, np.load(f, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        if len(meta) != len(leaves):
            raise ValueError(
                f"restore_state: {path} holds {len(meta)} arrays; the template state has "
                f"{len(leaves)} (a different optimizer configuration or params?)."
            )
        restored = []
        for i, (info, leaf) in enumerate(zip(meta, leaves)):
            dtype = jnp.dtype(leaf.dtype)
            if info["dtype"] != dtype.name or tuple(info["shape"]) != tuple(leaf.shape):
                raise ValueError(
                    f"restore_state: array {i} in {path} is {info['dtype']}{info['shape']}; "
                    f"the template expects {dtype.name}{list(leaf.shape)}."
                )
            array = np.frombuffer(data[f"leaf_{i}"].tobytes(), dtype).reshape(info["shape"])
            sharding = getattr(leaf, "sharding", None)
            restored.append(
                jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)
            )
    return treedef.unflatten(restored)


# --------------------------------------------------------------------------- Keras stateless API


def stateless_apply_jax(
    optimizer: Any, optimizer_variables: Any, grads: Any, trainable_variables: Any
) -> tuple[list[Any], list[Any]]:
    """``kerasopt.Adam/Adamax.stateless_apply`` on JAX arrays, traceable by ``jax.jit``.

    ``optimizer_variables`` are in ``optimizer.variables`` order (Keras's); they are mapped
    onto this module's state, one :func:`adam` / :func:`adamax` update runs over the lists,
    and the results are mapped back. Returns ``(new_trainable, new_optimizer_variables)``.
    """
    from kerasopt.adam import Adam
    from kerasopt.adamax import Adamax
    from kerasopt.variable import Variable

    if type(optimizer) not in (Adam, Adamax):
        raise TypeError(
            "stateless_apply with JAX arrays supports kerasopt.Adam and kerasopt.Adamax; "
            f"received {type(optimizer).__name__}. Use NumPy arrays, or kerasopt.optax."
        )
    position = {id(v): i for i, v in enumerate(optimizer.variables)}
    given = [jnp.asarray(x) for x in optimizer_variables]

    def values(variables: list[Any]) -> list[Any]:
        return [given[position[id(v)]] for v in variables]

    lr_storage = optimizer._learning_rate
    learning_rate = (
        given[position[id(lr_storage)]] if isinstance(lr_storage, Variable) else lr_storage
    )
    params = [jnp.asarray(w) for w in trainable_variables]
    common = {
        "learning_rate": learning_rate,
        "beta_1": optimizer.beta_1,
        "beta_2": optimizer.beta_2,
        "epsilon": optimizer.epsilon,
        "weight_decay": optimizer.weight_decay,
        "clipnorm": optimizer.clipnorm,
        "clipvalue": optimizer.clipvalue,
        "global_clipnorm": optimizer.global_clipnorm,
        "use_ema": optimizer.use_ema,
        "ema_momentum": optimizer.ema_momentum,
        "ema_overwrite_frequency": optimizer.ema_overwrite_frequency,
        "loss_scale_factor": optimizer.loss_scale_factor,
        "gradient_accumulation_steps": optimizer.gradient_accumulation_steps,
        "weight_decay_mask": [
            optimizer._use_weight_decay(v) for v in optimizer._trainable_variables
        ],
    }
    if isinstance(optimizer, Adam):
        tx = adam(amsgrad=optimizer.amsgrad, **common)
        slot_lists = {"momentum": optimizer._momentums, "velocity": optimizer._velocities,
                      "velocity_hat": getattr(optimizer, "_velocity_hats", None)}
        state_cls = AdamState
    else:
        tx = adamax(**common)
        slot_lists = {"momentum": optimizer._m, "norm": optimizer._u}
        state_cls = AdamaxState
    owned = {
        **slot_lists,
        "accumulator": getattr(optimizer, "_accumulators", None),
        "average": getattr(optimizer, "_ema_averages", None),
    }
    state = state_cls(
        count=given[position[id(optimizer._iterations)]].astype(_counter_dtype()),
        loss_scale_factor=(
            jnp.asarray(optimizer.loss_scale_factor, jnp.float32)
            if optimizer.loss_scale_factor is not None
            else None
        ),
        **{field: values(vs) if vs is not None else None for field, vs in owned.items()},
    )
    updates, new_state = tx.update(list(grads), state, params)
    new_trainable = [p + u for p, u in zip(params, updates)]
    out = list(given)
    out[position[id(optimizer._iterations)]] = new_state.count
    for field, variables in owned.items():
        if variables is not None:
            for variable, value in zip(variables, getattr(new_state, field)):
                out[position[id(variable)]] = value
    return new_trainable, out


# --------------------------------------------------------------------------- non-finite steps


def _is_gradient_leaf(x: Any) -> bool:
    return isinstance(x, IndexedSlices)


def _all_finite(grads: Any) -> jax.Array:
    """One boolean: every (non-None) gradient value is finite (sparse: its values)."""
    leaves = jax.tree_util.tree_leaves(grads, is_leaf=_is_gradient_leaf)
    checks = [jnp.all(jnp.isfinite(jnp.asarray(values_of(g)))) for g in leaves]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _zero_updates(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: jnp.zeros_like(jnp.asarray(p)), params)


def _skipping_update(inner: Any, updates: Any, inner_state: Any, params: Any, finite: Any,
                     extra_args: dict[str, Any]) -> tuple[Any, Any]:
    """``inner.update`` where ``finite``, else zero updates and ``inner_state`` unchanged."""
    if params is None:  # let the inner transformation raise its clear error
        return inner.update(updates, inner_state, params, **extra_args)

    def apply(_: Any) -> tuple[Any, Any]:
        return inner.update(updates, inner_state, params, **extra_args)

    def skip(_: Any) -> tuple[Any, Any]:
        return _zero_updates(params), inner_state

    return jax.lax.cond(finite, apply, skip, None)


class SkipNonFiniteState(NamedTuple):
    """State of a transformation made with ``skip_nonfinite=True``."""

    inner_state: Any
    skipped_steps: jax.Array
    """Updates skipped because a gradient held NaN or inf (int32)."""


def _skip_nonfinite(inner: Any, name: str) -> optax.GradientTransformationExtraArgs:
    warned = [False]

    def warn_once(skipped: Any) -> None:
        if bool(skipped) and not warned[0]:
            warned[0] = True
            warnings.warn(
                f"kerasopt.optax.{name}: a gradient holds NaN or inf; skip_nonfinite=True "
                "skips such updates (zero updates, state unchanged). Further skips are "
                "counted in the state's `skipped_steps` without warning.",
                RuntimeWarning,
                stacklevel=2,
            )

    def init_fn(params: Any) -> SkipNonFiniteState:
        return SkipNonFiniteState(inner.init(params), jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any):
        if not isinstance(state, SkipNonFiniteState):
            raise TypeError(
                f"kerasopt.optax.{name}(skip_nonfinite=True): expected a SkipNonFiniteState "
                f"from this transformation's init; received {type(state).__name__}."
            )
        finite = _all_finite(updates)
        new_updates, inner_state = _skipping_update(
            inner, updates, state.inner_state, params, finite, extra_args
        )
        skipped = jnp.logical_not(finite)
        jax.debug.callback(warn_once, skipped)
        return new_updates, SkipNonFiniteState(
            inner_state, state.skipped_steps + skipped.astype(jnp.int32)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- dynamic loss scale


class LossScaleState(NamedTuple):
    """State of :func:`loss_scale` (Keras's ``LossScaleOptimizer`` variables)."""

    inner_state: Any
    step_counter: jax.Array
    """Finite updates since the scale last changed (int32)."""
    dynamic_scale: jax.Array
    """The current loss scale (float32)."""


def loss_scale(
    inner: Any, initial_scale: Any = 2.0**15, dynamic_growth_steps: int = 2000
) -> optax.GradientTransformationExtraArgs:
    """Keras 3's ``LossScaleOptimizer`` around an optax transformation (e.g.
    :func:`adam`): gradients of ``scale_loss(loss, state)`` are divided by the current scale
    and passed to ``inner``; after ``dynamic_growth_steps`` finite updates in a row the scale
    doubles. An update whose gradients hold NaN or inf returns zero updates, leaves the
    inner state unchanged (no iteration, slot or EMA change), resets the counter and halves
    the scale. All of it lives in the state pytree (:class:`LossScaleState`), so it runs
    under ``jit`` and checkpoints with :func:`save_state` / ``kerasopt.save``."""
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            "Argument `inner` must be an optax GradientTransformation; received "
            f"inner={inner!r}."
        )
    initial_scale = validation.real(
        "initial_scale", initial_scale, minimum=0.0, min_inclusive=False,
        allowed="a finite float > 0",
    )
    growth = validation.integer(
        "dynamic_growth_steps", dynamic_growth_steps, minimum=1, allowed="an integer >= 1"
    )

    def init_fn(params: Any) -> LossScaleState:
        return LossScaleState(
            inner.init(params), jnp.zeros([], jnp.int32), jnp.asarray(initial_scale, jnp.float32)
        )

    def unscale(g: Any, scale: jax.Array) -> Any:
        values = jnp.asarray(values_of(g))
        return with_values(g, values / scale.astype(values.dtype))

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any):
        if not isinstance(state, LossScaleState):
            raise TypeError(
                "kerasopt.optax.loss_scale: expected a LossScaleState from this "
                f"transformation's init; received {type(state).__name__}."
            )
        scale = state.dynamic_scale
        finite = _all_finite(updates)
        unscaled = jax.tree_util.tree_map(
            lambda g: unscale(g, scale), updates, is_leaf=_is_gradient_leaf
        )
        new_updates, inner_state = _skipping_update(
            inner, unscaled, state.inner_state, params, finite, extra_args
        )
        grow = jnp.logical_and(finite, state.step_counter == growth - 1)
        counter = jnp.where(
            finite, jnp.where(grow, 0, state.step_counter + 1), 0
        ).astype(jnp.int32)
        two, half = jnp.float32(2.0), jnp.float32(0.5)
        new_scale = jnp.where(finite, jnp.where(grow, scale * two, scale), scale * half)
        return new_updates, LossScaleState(inner_state, counter, new_scale.astype(jnp.float32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
