"""``kerasopt.optax``: Keras 3's Adam, Adamax and AdamW as optax ``GradientTransformation``\\ s.

``adam(...)``, ``adamax(...)`` and ``adamw(...)`` (one factory per registered algorithm of
:mod:`kerasopt.specs`) take every Keras argument and return an
``optax.GradientTransformationExtraArgs`` over any pytree of arrays. All state lives in the
state pytree (:class:`AdamState` / :class:`AdamaxState` / :class:`AdamWState`): the raw
iteration counter, the algorithm's slots, the gradient accumulators, the EMA averages and
the loss-scale factor.
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

One ``update`` runs Keras 3's ``apply()`` through :func:`kerasopt.engine.apply`, in Keras's
order (this module only maps pytrees onto the engine's lists and back):

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
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kerasopt import algorithms, config, engine, files, pipeline, specs, validation
from kerasopt.backend import ops_for
from kerasopt.schedules import LearningRateSchedule
from kerasopt.sparse import IndexedSlices, canonical_fixed_size, values_of, with_values

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


def _state_class(spec: specs.AlgorithmSpec) -> type:
    """The state NamedTuple of ``spec``'s transformation: ``count``, the algorithm's slots
    (an optional one is None unless its flag is on), ``accumulator``, ``average`` and
    ``loss_scale_factor``; every field but ``count`` is a pytree shaped like the params,
    or None when its feature is off."""
    fields = ["count", *spec.all_slots, "accumulator", "average", "loss_scale_factor"]
    cls = NamedTuple(f"{spec.keras_name}State", [(f, Any) for f in fields])
    cls.__module__ = __name__
    cls.__doc__ = (
        f"State of :func:`{spec.name}`: ``count`` (raw iterations: micro-steps under "
        f"accumulation; int32, int64 with x64), the slots {', '.join(spec.all_slots)}, "
        "then ``accumulator``, ``average`` (EMA) and ``loss_scale_factor`` (float32)."
    )
    return cls


STATES: dict[str, type] = {spec.name: _state_class(spec) for spec in algorithms.registered()}
"""The state class of each registered algorithm's transformation, by registry name."""
globals().update({cls.__name__: cls for cls in STATES.values()})


def spec_of_state(state: Any) -> specs.AlgorithmSpec | None:
    """The algorithm whose transformation made ``state`` (None for other objects)."""
    for name, cls in STATES.items():
        if isinstance(state, cls):
            return algorithms.get(name)
    return None


# --------------------------------------------------------------------------- configuration

OPTAX_ONLY = {"weight_decay_mask": None, "exclude_from_weight_decay": None, "names": None,
              "state_dtype": None, "packed": False}
"""Keyword-only arguments of the factories beyond Keras's (and kerasopt's) own, with their
defaults."""

_OPTAX_SPELLINGS = {"mask": "weight_decay_mask", "learning_rate_fn": "learning_rate"}


def _counter_dtype() -> Any:
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _counter_limit(name: str, value: Any) -> None:
    """An integer compared with the counter must fit its dtype (int32 without x64)."""
    if value is None or config.is_array(value):
        return
    limit = int(jnp.iinfo(_counter_dtype()).max)
    if value > limit:
        raise ValueError(
            f"Argument `{name}` must be None or an integer >= 1 and at most {limit} (the "
            f"iteration counter is {jnp.dtype(_counter_dtype()).name}); received "
            f"{name}={value!r}."
        )


def _state_dtype(value: Any) -> Any:
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError as error:
        raise TypeError(
            f"Argument `state_dtype` must be None or a float dtype; received "
            f"state_dtype={value!r}."
        ) from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"Argument `state_dtype` must be None or a float dtype; received "
            f"state_dtype={value!r}."
        )
    return dtype


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


def _current_learning_rate(learning_rate: Any, count: jax.Array) -> Any:
    """Keras's ``optimizer.learning_rate`` for this step (schedules see the raw count)."""
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate(count)
    if callable(learning_rate) and not config.is_array(learning_rate):
        return learning_rate(count) if _takes_argument(learning_rate) else learning_rate()
    if config.is_array(learning_rate):
        return learning_rate
    return jnp.asarray(learning_rate, jnp.float32)  # Keras stores a float rate in float32


def _resolved(spec: specs.AlgorithmSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The rule's hyperparameters for this update: callables called (at trace time under
    ``jit``), a concrete value checked, a traced one (``inject_hyperparams``) as it is."""
    out = {}
    for h in spec.numeric:
        value = values[h.name]
        if h.callable_ok and callable(value) and not config.is_array(value):
            result = value()
            value = (h.resolved(lambda r=result: r) if not config.is_array(result)
                     else config.check_value(h.check, h.name, result, arrays_ok=True))
        out[h.name] = value
    return out


# --------------------------------------------------------------------------- pytrees


def _find_states(state: Any) -> list[Any]:
    classes = tuple(STATES.values())
    return [leaf for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(
        x, classes)) if isinstance(leaf, classes)]


def _find_state(state: Any, what: str) -> Any:
    found = _find_states(state)
    names = " / ".join(cls.__name__ for cls in STATES.values())
    if not found:
        raise ValueError(
            f"{what}: no kerasopt.optax state ({names}) found in the given state of type "
            f"{type(state).__name__}."
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


def _leaf_names(params: Any, paths: list[str], names: Any, name: str) -> list[str]:
    """The names ``exclude_from_weight_decay`` matches: the leaves' ``keystr`` paths, or
    the ``names`` given (a pytree of strings shaped like the params, or one string per
    leaf in flattening order), e.g. Keras's variable names for a list of parameters."""
    if names is None:
        return paths
    treedef = jax.tree_util.tree_structure(params)
    try:
        given = treedef.flatten_up_to(names)
    except (ValueError, TypeError):
        given = list(names) if isinstance(names, (list, tuple)) else None
    if given is None or len(given) != len(paths) or not all(isinstance(n, str) for n in given):
        raise ValueError(
            f"kerasopt.optax.{name}: `names` must give one string per parameter leaf ({len(paths)}"
            f" leaves: {paths[:4]}{'...' if len(paths) > 4 else ''}), as a pytree shaped like "
            f"the params or a flat list; received {validation.short_repr(names)}."
        )
    return list(given)


# --------------------------------------------------------------------------- packed state


class Packed(NamedTuple):
    """A state field kept as one flat buffer per kind of leaf (``packed=True``): the
    leaves of the same parameter dtype and state dtype, raveled and laid end to end in
    flattening order."""

    buffers: tuple


class _Packing(NamedTuple):
    """Where each parameter leaf lives in the packed buffers."""

    groups: list[tuple[Any, Any, list[int]]]
    """Per buffer: the parameters' dtype, the state's dtype, the leaves it holds."""
    segments: list[tuple[tuple[int, int, tuple[int, ...]], ...]]
    """Per buffer, each leaf's ``(start, stop, shape)``."""


def _packing(leaves: list[Any], state_dtype: Any) -> _Packing:
    keys: dict[tuple[Any, Any], list[int]] = {}
    for i, p in enumerate(leaves):
        dtype = jnp.dtype(p.dtype)
        keys.setdefault((dtype, state_dtype if state_dtype is not None else dtype), []).append(i)
    groups, segments = [], []
    for (dtype, compute), members in keys.items():
        start, spans = 0, []
        for i in members:
            size = int(np.prod(leaves[i].shape, dtype=np.int64))
            spans.append((start, start + size, tuple(leaves[i].shape)))
            start += size
        groups.append((dtype, compute, members))
        segments.append(tuple(spans))
    return _Packing(groups, segments)


def _pack(leaves: list[Any], packing: _Packing, use_state_dtype: bool) -> tuple:
    """One flat buffer per group (in the state's dtype, or the parameters')."""
    return tuple(
        jnp.concatenate([jnp.ravel(leaves[i]).astype(compute if use_state_dtype else dtype)
                         for i in members])
        for dtype, compute, members in packing.groups)


def _unpack(buffers: tuple, packing: _Packing, n: int) -> list[Any]:
    leaves: list[Any] = [None] * n
    for buffer, (_, _, members), spans in zip(buffers, packing.groups, packing.segments):
        for i, (start, stop, shape) in zip(members, spans):
            leaves[i] = buffer[start:stop].reshape(shape)
    return leaves


def _split(buffers: list[Any], packing: _Packing, n: int) -> list[Any]:
    """:func:`_unpack` for the step's results: each buffer's leaves as one XLA custom call
    on the CPU (``kerasopt.kernels.xla.split``: one kernel instead of one per leaf, which
    XLA compiled one by one), slices elsewhere; the same values."""
    from kerasopt.kernels import xla

    leaves: list[Any] = [None] * n
    for buffer, (_, _, members), spans in zip(buffers, packing.groups, packing.segments):
        for i, leaf in zip(members, xla.split(buffer, spans)):
            leaves[i] = leaf
    return leaves


def _decay_masks(decays: list[bool], packing: _Packing) -> list[Any]:
    """Per buffer, whether its leaves are decayed: a bool when all agree, else one flag per
    element."""
    masks: list[Any] = []
    for (_, _, members), spans in zip(packing.groups, packing.segments):
        flags = [decays[i] for i in members]
        if all(flags) or not any(flags):
            masks.append(bool(flags[0]))
        else:
            masks.append(jnp.asarray(np.repeat(flags, [stop - start for start, stop, _ in
                                                       spans])))
    return masks


def _is_sharded(leaf: Any) -> bool:
    sharding = getattr(leaf, "sharding", None)
    return sharding is not None and len(getattr(sharding, "device_set", ())) > 1


# --------------------------------------------------------------------------- the transformation


def _transformation(spec: specs.AlgorithmSpec, options: dict[str, Any]
                    ) -> optax.GradientTransformationExtraArgs:
    """The optax transformation of ``spec`` with checked ``options``: it maps pytrees onto
    :func:`kerasopt.engine.apply` and back."""
    name = spec.name
    state_cls = STATES[name]
    n_steps = options["gradient_accumulation_steps"]
    state_dtype = options["state_dtype"]
    hyper_values = {h.name: options[h.name] for h in spec.hyperparameters}
    slot_names = spec.slot_names(hyper_values)
    patterns = config.exclusion_patterns(options["exclude_from_weight_decay"],
                                         "exclude_from_weight_decay")
    pattern = config.exclusion_regex(patterns)
    warned = [False]

    def dtype_of(p: Any) -> Any:
        return state_dtype if state_dtype is not None else p.dtype

    def per_leaf_zeros(params: Any) -> Any:
        return jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=dtype_of(p)), params)

    def init_fn(params: Any) -> Any:
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            if not jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating):
                raise TypeError(
                    f"kerasopt.optax.{name}: params{jax.tree_util.keystr(path)} has dtype "
                    f"{jnp.asarray(p).dtype}; only floating-point parameters can be optimized."
                )
        params = jax.tree_util.tree_map(jnp.asarray, params)
        leaves = jax.tree_util.tree_leaves(params)
        if options["packed"] and not any(map(_is_sharded, leaves)):
            packing = _packing(leaves, state_dtype)

            def zeros(_: Any) -> Packed:
                return Packed(tuple(jnp.zeros_like(b) for b in _pack(leaves, packing, True)))

            def averages(_: Any) -> Packed:
                return Packed(_pack(leaves, packing, True))
        else:  # a sharded tree keeps its per-leaf layout
            zeros = per_leaf_zeros

            def averages(params: Any) -> Any:
                return jax.tree_util.tree_map(lambda p: p.astype(dtype_of(p)), params)
        fields = dict.fromkeys(state_cls._fields)
        fields.update({slot: zeros(params) for slot in slot_names})
        fields.update(
            count=jnp.zeros([], _counter_dtype()),
            accumulator=zeros(params) if n_steps is not None else None,
            average=averages(params) if options["use_ema"] else None,
            loss_scale_factor=(jnp.asarray(options["loss_scale_factor"], jnp.float32)
                               if options["loss_scale_factor"] is not None else None),
        )
        return state_cls(**fields)

    def decay_flags(params: Any, names: list[str]) -> list[bool]:
        if options["weight_decay"] is None:
            return [False] * len(names)
        flags = [True] * len(names)
        mask = options["weight_decay_mask"]
        if mask is not None:
            if callable(mask):
                mask = mask(params)
            treedef = jax.tree_util.tree_structure(params)
            try:
                flags = [bool(m) for m in treedef.flatten_up_to(mask)]
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"kerasopt.optax.{name}: `weight_decay_mask` must have the params' "
                    f"structure {treedef}; received {jax.tree_util.tree_structure(mask)} "
                    f"({error})."
                ) from None
        if pattern is not None:
            if not warned[0]:
                warned[0] = True
                config.warn_unmatched_exclusions(f"kerasopt.optax.{name}", patterns, names)
            flags = [f and pattern.search(n) is None for f, n in zip(flags, names)]
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
        leaves = [jnp.asarray(p) for _, p in with_path]
        grads = _flatten_grads(updates, params, treedef, name)
        for path, g, p in zip(paths, grads, leaves):
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
        decays = decay_flags(params, _leaf_names(params, paths, options["names"], name))

        def flat(tree: Any) -> list[Any]:
            return treedef.flatten_up_to(tree)

        compute = [jnp.dtype(dtype_of(p)) for p in leaves]
        pairs = []
        for i, (g, c) in enumerate(zip(grads, compute)):
            if g is None:
                continue
            if isinstance(g, IndexedSlices):
                g = canonical_fixed_size(IndexedSlices(
                    jnp.asarray(g.values).astype(c), jnp.asarray(g.indices), g.dense_shape))
            else:
                g = jnp.asarray(g).astype(c)
            pairs.append((i, g))
        count = state.count
        group = engine.Group(
            learning_rate=_current_learning_rate(options["learning_rate"], count),
            hyperparameters=_resolved(spec, options),
            **{key: options[key] for key in ("weight_decay", "clipnorm", "clipvalue",
                                             "global_clipnorm", "use_ema", "ema_momentum",
                                             "ema_overwrite_frequency")},
        )
        step = engine.Step(raw=count, loss_scale_factor=options["loss_scale_factor"],
                           accumulation_steps=n_steps,
                           sparse_updates=options["sparse_updates"])
        fields = [*slot_names, *(["accumulator"] if n_steps is not None else []),
                  *(["average"] if options["use_ema"] else [])]
        packed = isinstance(getattr(state, slot_names[0]), Packed)
        packing = _packing(leaves, state_dtype) if packed else None

        def per_leaf(field: str) -> list[Any]:
            value = getattr(state, field)
            if packed:
                return _unpack(value.buffers, packing, len(leaves))
            return treedef.flatten_up_to(value)

        dense = len(pairs) == len(leaves) and not any(
            isinstance(g, IndexedSlices) for _, g in pairs)
        if packed and dense:  # the step on one buffer per kind of leaf
            buffers = {f: getattr(state, f).buffers for f in fields}
            flat_grads = _pack([g for _, g in pairs], packing, True)
            old_weights = list(_pack(leaves, packing, False))
            arrays = engine.Arrays(
                weights=old_weights,
                slots=[tuple(buffers[f][k] for f in slot_names)
                       for k in range(len(packing.groups))],
                accumulators=list(buffers["accumulator"]) if n_steps is not None else None,
                averages=list(buffers["average"]) if options["use_ema"] else None,
            )
            new = engine.apply(engine.spec_rule(spec), arrays, list(enumerate(flat_grads)),
                               step=step, groups=[group], decay_mask=_decay_masks(decays,
                                                                                  packing),
                               ops=ops_for(leaves[0]), segments=packing.segments).arrays
            # w - p per leaf, as one subtraction per buffer, then cut into the leaves
            deltas = _split([w - p for w, p in zip(new.weights, old_weights)], packing,
                            len(leaves))
            new_fields = {slot: Packed(tuple(s[k] for s in new.slots))
                          for k, slot in enumerate(slot_names)}
            if n_steps is not None:
                new_fields["accumulator"] = Packed(tuple(new.accumulators))
            if options["use_ema"]:
                new_fields["average"] = Packed(tuple(new.averages))
        else:  # per leaf (also a packed state, for a step with None or sparse gradients)
            slot_leaves = [per_leaf(slot) for slot in slot_names]
            arrays = engine.Arrays(
                weights=leaves,
                slots=[tuple(tree[i] for tree in slot_leaves) for i in range(len(leaves))],
                accumulators=per_leaf("accumulator") if n_steps is not None else None,
                averages=per_leaf("average") if options["use_ema"] else None,
            )
            new = engine.apply(engine.spec_rule(spec), arrays, pairs, step=step,
                               groups=[group], decay_mask=decays,
                               ops=ops_for(leaves[0])).arrays
            deltas = [w - p for w, p in zip(new.weights, leaves)]

            def stored(values: list[Any]) -> Any:
                if packed:
                    return Packed(_pack(values, packing, True))
                return treedef.unflatten(values)

            new_fields = {slot: stored([s[k] for s in new.slots])
                          for k, slot in enumerate(slot_names)}
            if n_steps is not None:
                new_fields["accumulator"] = stored(new.accumulators)
            if options["use_ema"]:
                new_fields["average"] = stored(new.averages)
        return treedef.unflatten(deltas), state._replace(count=count + 1, **new_fields)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- public factories


_OPTAX_DOC = {
    "weight_decay_mask": "A pytree of bools shaped like the params (True = decay), or a "
                         "callable ``params -> mask``; optax's convention.",
    "exclude_from_weight_decay": "Regular expressions; a leaf whose name contains a match of "
                                 "any of them is not decayed (Keras's ``var_names``). A leaf's "
                                 "name is its ``jax.tree_util.keystr`` path (e.g. "
                                 "``\"['dense']['bias']\"``), or what ``names`` gives.",
    "names": "The leaves' names for ``exclude_from_weight_decay``: a pytree of strings shaped "
             "like the params, or one string per leaf (e.g. Keras's variable names when the "
             "params are a list).",
    "packed": "Keep each state field as one flat buffer per kind of leaf (parameter dtype "
              "and state dtype) and run the step on those buffers: one XLA loop per field "
              "instead of one per leaf, for trees with many small leaves (2,000 leaves of 1,024: "
              "about half optax's step time; on large leaves it is slower, as the gradients "
              "are copied into the buffer each step: 200 leaves totalling 16M, ~5x; on the CPU the "
              "updates are cut out of the buffers by one custom call, so that compiling the "
              "step does not build one kernel per leaf). The same results as the per-leaf "
              "state, bit for bit (``clipnorm`` / ``global_clipnorm`` within a few ulps). A "
              "sharded tree keeps the per-leaf layout. Read the averages with "
              "``ema_params(state, params)``. Off by default: the state's structure is then "
              "optax's (one leaf per parameter), which checkpoints and ``kerasopt.interop`` "
              "read.",
    "state_dtype": "None (state in the parameter's dtype, as Keras) or a float dtype, e.g. "
                   "``\"float32\"`` to keep the state and compute the step in float32 for "
                   "bfloat16 / float16 parameters.",
    "skip_nonfinite": "kerasopt only (default False: as Keras, NaN/inf gradients propagate). "
                      "When True, an update whose gradients hold NaN or inf returns zero "
                      "updates and leaves the inner state unchanged; the state becomes a "
                      ":class:`SkipNonFiniteState` counting the skips (``skipped_steps``); the "
                      "first skip warns (``jax.debug`` callback, so also under ``jit``).",
}


def _signature(spec: specs.AlgorithmSpec) -> inspect.Signature:
    defaults = config.defaults(spec)
    keras = [name for name in config.argument_order(spec) if name not in
             ("skip_nonfinite", "sparse_updates")]
    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=defaults[n]) for n in keras]
    parameters += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for n, default in OPTAX_ONLY.items()]
    parameters += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n])
                   for n in ("skip_nonfinite", "sparse_updates")]
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def factory(spec: specs.AlgorithmSpec) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """The optax factory of ``spec`` (``kerasopt.optax.adam`` ...): Keras's arguments with
    Keras's defaults, then the JAX-only keywords."""
    signature = _signature(spec)

    def make(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.update(values.pop("kwargs"))
        owner = f"kerasopt.optax.{spec.name}"
        options = config.checked_options(spec, values, owner=owner, arrays_ok=True,
                                         extra=tuple(OPTAX_ONLY), spellings=_OPTAX_SPELLINGS)
        for key in ("ema_overwrite_frequency", "gradient_accumulation_steps"):
            _counter_limit(key, options[key])
        for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                    "loss_scale_factor"):
            value = options[key]
            if value is not None and not config.is_array(value):
                # A Python float, so that a large integer (2**31) is not traced as an int32.
                options[key] = float(value)
        options["state_dtype"] = _state_dtype(options["state_dtype"])
        options["packed"] = validation.boolean("packed", options["packed"])
        tx = _transformation(spec, options)
        if options["skip_nonfinite"]:
            tx = _skip_nonfinite(tx, spec.name)
        return tx

    make.__name__ = make.__qualname__ = spec.name
    make.__module__ = __name__
    # Shown without ``**kwargs`` (optax.inject_hyperparams binds the signature it sees);
    # unknown keywords still reach ``make`` and get "did you mean".
    make.__signature__ = signature.replace(parameters=list(signature.parameters.values())[:-1])
    make.__doc__ = (
        f"Keras 3's {spec.keras_name} (``keras.optimizers.{spec.keras_name}``) as an optax "
        f"transformation.\n\n{inspect.cleandoc(spec.doc)}\n\n"
        + config.arguments_doc(spec, {k: _OPTAX_DOC[k] for k in OPTAX_ONLY}) + "\n"
    )
    return make


FACTORIES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    spec.name: factory(spec) for spec in algorithms.registered()
}
"""Each registered algorithm's factory by registry name (``adam``, ``adamax``, ``adamw``)."""
globals().update(FACTORIES)


# --------------------------------------------------------------------------- state helpers


def iterations(state: Any, gradient_accumulation_steps: int | None = None) -> jax.Array:
    """Keras's ``optimizer.iterations``: the raw count, or ``count // n`` when
    ``gradient_accumulation_steps=n`` is given (the state does not hold ``n``). ``state`` may
    be a kerasopt state or any optax state containing one."""
    count = _find_state(state, "iterations").count
    if gradient_accumulation_steps:
        return count // gradient_accumulation_steps
    return count


def ema_params(state: Any, params: Any = None) -> Any:
    """The EMA of the parameters (a pytree like the params, in the state's dtype), for
    evaluation. Needs ``use_ema=True``; with ``packed=True`` also ``params`` (for the
    tree's structure and the leaves' shapes)."""
    found = _find_state(state, "ema_params")
    if found.average is None:
        raise ValueError(
            "ema_params: this optimizer keeps no moving averages; create it with use_ema=True."
        )
    return _per_leaf_tree(found, "average", params, "ema_params")


def _per_leaf_tree(state: Any, field: str, params: Any, what: str) -> Any:
    """A state field as a pytree like the params (unpacking a packed one)."""
    value = getattr(state, field)
    if not isinstance(value, Packed):
        return value
    if params is None:
        raise ValueError(
            f"{what}: this state is packed (packed=True); pass the params too, e.g. "
            f"{what}(state, params), to give the averages the params' structure."
        )
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [jnp.asarray(p) for p in leaves]
    state_dtypes = {jnp.dtype(b.dtype) for b in value.buffers}
    state_dtype = next(iter(state_dtypes)) if len(state_dtypes) == 1 else None
    packing = _packing(leaves, state_dtype)
    if len(packing.groups) != len(value.buffers):
        packing = _packing(leaves, None)
    return treedef.unflatten(_unpack(value.buffers, packing, len(leaves)))


def finalize_params(params: Any, state: Any) -> Any:
    """Keras's ``finalize_variable_values``: with ``use_ema``, the averages (in each
    parameter's dtype); otherwise ``params`` unchanged."""
    found = _find_state(state, "finalize_params")
    if found.average is None:
        return params
    return jax.tree_util.tree_map(lambda p, a: a.astype(jnp.asarray(p).dtype), params,
                                  _per_leaf_tree(found, "average", params, "finalize_params"))


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


# --------------------------------------------------------------------------- non-finite steps


def _is_gradient_leaf(x: Any) -> bool:
    return isinstance(x, IndexedSlices)


def _all_finite(grads: Any) -> jax.Array:
    """One boolean: every (non-None) gradient value is finite (sparse: its values)."""
    leaves = jax.tree_util.tree_leaves(grads, is_leaf=_is_gradient_leaf)
    values = [jnp.asarray(values_of(g)) for g in leaves]
    return ops_for(jnp.zeros(())).all_finite(values)


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
        new_scale, counter = pipeline.next_loss_scale(finite, scale, state.step_counter, growth)
        return new_updates, LossScaleState(inner_state, counter, new_scale)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = [
    "FACTORIES",
    "LossScaleState",
    "Packed",
    "STATES",
    "SkipNonFiniteState",
    "ema_params",
    "factory",
    "finalize_params",
    "iterations",
    "loss_scale",
    "restore_state",
    "save_state",
    "scale_loss",
    "spec_of_state",
    *FACTORIES,
    *(cls.__name__ for cls in STATES.values()),
]
