"""Keras 3's ``apply()``, written once: the order of one optimizer step, for every frontend.

One call of :func:`apply` is one ``optimizer.apply(grads)`` of Keras's base optimizer::

    0. skip_nonfinite (kerasopt)  a NaN / inf gradient: nothing changes but the skip count
    1. sparse_updates="dense"     sparse gradients densified (duplicates summed)
    2. unscale                    g <- g / loss_scale_factor
    3. accumulate                 micro-step: acc <- acc + g, and nothing else until 7
                                  update step: g <- (g + acc) / n, then every acc <- 0
    4. clip                       clipnorm | global_clipnorm | clipvalue          (per group)
    5. decay                      w <- w * (1 - weight_decay * lr)                (masked)
    6. rule                       (w, slots) <- rule(w, g, *slots, lr, t = iterations + 1)
    7. EMA                        avg <- m * avg + (1 - m) * w, m = 0 while iterations == 0;
                                  w <- avg when (iterations + 1) % frequency == 0
    8. count                      iterations_raw <- iterations_raw + 1

with ``iterations = iterations_raw // n`` under accumulation (learning-rate schedules see
``iterations_raw``). The stages are the small pure functions of :mod:`kerasopt.pipeline`
and the algorithm's rule from its :class:`~kerasopt.specs.AlgorithmSpec`; this module only
sequences them over lists of arrays, one entry per variable, with the branches of steps 0,
3 and 7 taken through :class:`kerasopt.backend.Ops` (a Python ``if`` for NumPy and torch,
``lax.cond`` for JAX). Each frontend adapts its storage around it: the NumPy core and
``kerasopt.torch`` write the returned arrays back into their variables, ``kerasopt.optax``
turns them into updates. The fused kernels (:mod:`kerasopt.kernels`) run the same order in
one pass over memory; the agreement tests hold them to this reference.

Variables may come in groups with their own options (torch's param groups; one group
elsewhere): the global norm spans every variable whose group sets ``global_clipnorm``, and
each group scales by its own threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kerasopt import config, pipeline
from kerasopt.backend import Ops, cast_scalar, namespace
from kerasopt.sparse import IndexedSlices, map_values, values_of, with_values
from kerasopt.specs import AlgorithmSpec


class Arrays(NamedTuple):
    """What a step reads and returns, as lists with one entry per variable."""

    weights: list[Any]
    slots: list[tuple[Any, ...]]
    """Each variable's slots, in its algorithm's order."""
    accumulators: list[Any] | None = None
    """Gradient accumulators (``gradient_accumulation_steps``), or None."""
    averages: list[Any] | None = None
    """EMA averages, None for a variable whose group keeps none; None without EMA."""


@dataclass(frozen=True)
class Group:
    """The options of a group of variables for one step, as values: the learning rate
    evaluated at this step, the rule's hyperparameters resolved."""

    learning_rate: Any
    hyperparameters: Mapping[str, Any]
    weight_decay: Any = None
    clipnorm: Any = None
    clipvalue: Any = None
    global_clipnorm: Any = None
    use_ema: bool = False
    ema_momentum: Any = 0.99
    ema_overwrite_frequency: Any = None


Rule = Callable[[int, Any, Any, tuple, Mapping[str, Any]], tuple[Any, tuple]]
"""``rule(index, w, g, slots, arguments) -> (w, slots)``: the update of variable ``index``
by a dense gradient (``arguments``: ``learning_rate``, ``step`` and the hyperparameters),
in the compute dtype."""

RowsRule = Callable[[int, Any, IndexedSlices, tuple, Mapping[str, Any], Any], tuple[Any, tuple]]
"""``rows_rule(index, w, g, slots, arguments, decay) -> (w, slots)``: the lazy update of
variable ``index`` by a canonical ``IndexedSlices``: only its rows of ``w`` and ``slots``
move, first decayed by ``decay = (weight_decay, learning_rate)`` unless it is None."""


def spec_rule(spec: AlgorithmSpec) -> Rule:
    """The rule of ``spec`` in the engine's calling convention."""

    def rule(index: int, w: Any, g: Any, slots: tuple, arguments: Mapping[str, Any]):
        new = spec.rule(w, g, *slots, **arguments)
        return new[0], tuple(new[1:])

    return rule


def lazy_rows(rule: Rule, ops: Ops) -> RowsRule:
    """``rule`` applied to the rows a sparse gradient touches: the rows of ``w`` and of
    each slot are read (in the compute dtype), decayed, updated and written back; every
    other row keeps its value and its state."""

    def rows_rule(index: int, w: Any, g: IndexedSlices, slots: tuple,
                  arguments: Mapping[str, Any], decay: Any):
        rows = g.indices
        w_rows = ops.astype(ops.take_rows(w, rows), compute_dtype(w, slots))
        if decay is not None:
            w_rows = pipeline.decay(w_rows, *decay)
        new_w, new_slots = rule(index, w_rows, g.values,
                                tuple(ops.take_rows(s, rows) for s in slots), arguments)
        return (ops.put_rows(w, rows, new_w),
                tuple(ops.put_rows(s, rows, v) for s, v in zip(slots, new_slots)))

    return rows_rule


def compute_dtype(w: Any, slots: tuple) -> Any:
    """The dtype a variable's step is computed in: its state's (``state_dtype``: float32
    state for a bfloat16 weight), else the weight's (Keras's rule)."""
    return slots[0].dtype if slots else w.dtype


@dataclass(frozen=True)
class Hooks:
    """Where a frontend replaces a single-process default (distributed training).

    ``global_norm(values, indices)``: the L2 norm over ``values`` (the gradients of the
    variables ``indices`` that take part in ``global_clipnorm``), across processes where
    they are sharded; called whenever a group sets ``global_clipnorm``, also with no
    values, so every process enters the same collectives. ``tensor_norm(value, index)``:
    the norm of one variable's gradient for ``clipnorm`` when it is sharded, else None (the
    local :func:`pipeline.clip_by_norm`). ``all_finite(values)``: one verdict for every
    process.
    """

    global_norm: Callable[[list[Any], list[int]], Any] | None = None
    tensor_norm: Callable[[Any, int], Any] | None = None
    all_finite: Callable[[list[Any]], Any] | None = None


class Result(NamedTuple):
    arrays: Arrays
    raw: Any
    """``iterations_raw`` after the step (unchanged when it was skipped)."""
    skipped: Any
    """Whether ``skip_nonfinite`` skipped the step (a bool, or a traced one)."""


class Layout(NamedTuple):
    """How the variables map onto groups, decay and packed tensors (see :func:`apply`)."""

    group_of: list[int]
    decay_mask: list[Any]
    segments: list[Any]


@dataclass(frozen=True)
class Step:
    """The optimizer-wide inputs of a step."""

    raw: Any
    """``iterations_raw`` before the step (a Python int, or a traced integer)."""
    loss_scale_factor: Any = None
    accumulation_steps: int | None = None
    sparse_updates: str = "lazy"
    skip_nonfinite: bool = False
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def iterations(self) -> Any:
        n = self.accumulation_steps
        return self.raw // n if n else self.raw

    @property
    def phase(self) -> Any:
        """None without accumulation; else whether this call is the update step."""
        n = self.accumulation_steps
        return None if not n else (self.raw + 1) % n == 0


def apply(
    rule: Rule,
    arrays: Arrays,
    grads: Sequence[tuple[int, Any]],
    *,
    step: Step,
    groups: Sequence[Group],
    group_of: Sequence[int] | None = None,
    decay_mask: Sequence[bool] | None = None,
    ops: Ops,
    rows_rule: RowsRule | None = None,
    segments: Sequence[Any] | None = None,
) -> Result:
    """One Keras ``apply()`` over ``arrays`` (see the module docstring for the order).

    Args:
        rule: The update rule (:func:`spec_rule`, or a frontend's own, e.g. a Keras
            subclass's ``update_step``).
        arrays: The weights and state of every variable the optimizer holds, in the
            compute dtype.
        grads: ``(index, gradient)`` pairs, in the order the caller gave them (Keras's
            ``apply(grads, variables)`` after dropping ``None`` gradients): an array of
            the variable's shape and dtype, or a canonical ``IndexedSlices`` (each row
            once). A variable without a gradient keeps its value and state but is still
            averaged under EMA; a variable given twice is updated twice, as in Keras.
        step: The counter and the optimizer-wide options.
        groups: The options of each group; ``group_of[i]`` is variable ``i``'s group
            (default: all in group 0).
        decay_mask: Per variable, whether weight decay applies (default: all).
        ops: The array library's :class:`~kerasopt.backend.Ops`.
        rows_rule: The lazy update by a sparse gradient (default: :func:`lazy_rows` of
            ``rule``).
        segments: For a variable that packs several tensors end to end (one flat buffer
            per dtype, :mod:`kerasopt.optax`'s ``packed=True``), its tensors'
            ``(start, stop, shape)``: ``clipnorm`` clips each and the global norm sums each
            as the unpacked tensors would be; its ``decay_mask`` entry is then an array, one
            flag per element. None for an ordinary variable.

    Returns:
        The new arrays (NumPy and torch may have updated rows of the given ones in place),
        the new raw counter and whether the step was skipped.
    """
    n = len(arrays.weights)
    group_of = list(group_of) if group_of is not None else [0] * n
    decay_mask = list(decay_mask) if decay_mask is not None else [True] * n
    segments = list(segments) if segments is not None else [None] * n
    grads = list(grads)
    rows_rule = rows_rule or lazy_rows(rule, ops)
    layout = Layout(group_of, decay_mask, segments)
    if step.sparse_updates == "dense":
        grads = [(i, densify(g, ops)) for i, g in grads]

    def run(arrays: Arrays) -> Arrays:
        gs = grads
        if step.loss_scale_factor is not None:
            factor = step.loss_scale_factor
            gs = [(i, map_values(lambda v: pipeline.unscale(v, factor), g)) for i, g in gs]
        if step.accumulation_steps:
            arrays = accumulate_and_update(rule, rows_rule, arrays, gs, step, groups, layout,
                                           ops)
        else:
            arrays = update(rule, rows_rule, arrays, gs, step, groups, layout, ops)
        return average(arrays, step.iterations, groups, group_of, ops)

    if not step.skip_nonfinite:
        return Result(run(arrays), step.raw + 1, False)
    finite = (step.hooks.all_finite or ops.all_finite)([values_of(g) for _, g in grads])
    new = ops.cond(finite, run, lambda unchanged: unchanged, arrays)
    if isinstance(finite, bool):
        return Result(new, step.raw + 1 if finite else step.raw, not finite)
    return Result(new, step.raw + finite.astype(step.raw.dtype), ~finite)


def densify(g: Any, ops: Ops) -> Any:
    """A sparse gradient as the dense one (duplicates summed); others unchanged."""
    if isinstance(g, IndexedSlices):
        return ops.to_dense(g.values, g.indices, g.dense_shape)
    return g


def accumulate_and_update(rule: Rule, rows_rule: RowsRule, arrays: Arrays,
                          grads: list[tuple[int, Any]], step: Step,
                          groups: Sequence[Group], layout: Layout, ops: Ops) -> Arrays:
    """Step 3 around 4-6: a micro-step adds into the accumulators; the update step takes
    the mean of the cycle, runs :func:`update` on it and resets every accumulator (a
    variable without a gradient now loses its partial sum, as in Keras)."""
    n = step.accumulation_steps
    dense = [(i, densify(g, ops)) for i, g in grads]

    def on_update_step(arrays: Arrays) -> Arrays:
        totals = pipeline.accumulated_mean([g for _, g in dense],
                                           [arrays.accumulators[i] for i, _ in dense], n)
        arrays = update(rule, rows_rule, arrays,
                        [(i, total) for (i, _), total in zip(dense, totals)],
                        step, groups, layout, ops)
        return arrays._replace(accumulators=[ops.zeros_like(a) for a in arrays.accumulators])

    def on_micro_step(arrays: Arrays) -> Arrays:
        accumulators = list(arrays.accumulators)
        totals = pipeline.accumulate([g for _, g in dense],
                                     [arrays.accumulators[i] for i, _ in dense])
        for (i, _), total in zip(dense, totals):
            accumulators[i] = total
        return arrays._replace(weights=list(arrays.weights), slots=list(arrays.slots),
                               accumulators=accumulators)

    return ops.cond(step.phase, on_update_step, on_micro_step, arrays)


def update(rule: Rule, rows_rule: RowsRule, arrays: Arrays, grads: list[tuple[int, Any]],
           step: Step, groups: Sequence[Group], layout: Layout, ops: Ops) -> Arrays:
    """Steps 4-6: clip, then decay and the rule, gradient by gradient."""
    group_of, decay_mask = layout.group_of, layout.decay_mask
    grads = clip(grads, groups, layout, step.hooks, ops)
    weights, slots = list(arrays.weights), list(arrays.slots)
    t = step.iterations + 1
    for i, g in grads:
        group = groups[group_of[i]]
        w = weights[i]
        decay = None
        mask = decay_mask[i]
        if group.weight_decay is not None and (config.is_array(mask) or mask):
            decay = (group.weight_decay, group.learning_rate)
        arguments = {"learning_rate": group.learning_rate, "step": t,
                     **group.hyperparameters}
        if isinstance(g, IndexedSlices):
            weights[i], slots[i] = rows_rule(i, w, g, slots[i], arguments, decay)
            continue
        w_c = ops.astype(w, compute_dtype(w, slots[i]))
        if decay is not None and config.is_array(mask):  # per element: w * f, or w * 1
            factor = cast_scalar(pipeline.decay_factor(*decay), w_c)
            w_c = w_c * ops.where(mask, factor, ops.ones_like(factor))
        elif decay is not None:
            w_c = pipeline.decay(w_c, *decay)
        new_w, slots[i] = rule(i, w_c, g, slots[i], arguments)
        weights[i] = ops.astype(new_w, w.dtype)  # the weight gets the rounded result
    return arrays._replace(weights=weights, slots=slots)


def clip(grads: list[tuple[int, Any]], groups: Sequence[Group], layout: Layout,
         hooks: Hooks, ops: Ops) -> list[tuple[int, Any]]:
    """Step 4, Keras's ``_clip_gradients`` per group: ``clipnorm`` per tensor,
    ``global_clipnorm`` over every gradient whose group sets it, or ``clipvalue``. A
    threshold given as an array (``optax.inject_hyperparams``) clips where it is > 0."""

    def gated(threshold: Any, clipped: Any, original: Any) -> Any:
        if config.is_array(threshold):
            return ops.where(threshold > 0, clipped, original)
        return clipped

    group_of = layout.group_of
    out = list(grads)
    members = []
    for k, (i, g) in enumerate(grads):
        group = groups[group_of[i]]
        v = values_of(g)
        if config.clip_active(group.clipnorm):
            norm = hooks.tensor_norm(v, i) if hooks.tensor_norm is not None else None
            if layout.segments[i] is not None:
                parts = [pipeline.clip_by_norm(part, group.clipnorm)
                         for part in unpacked(v, layout.segments[i])]
                clipped = namespace(v).concatenate([part.reshape(-1) for part in parts])
            elif norm is None:
                clipped = pipeline.clip_by_norm(v, group.clipnorm)
            else:
                clipped = pipeline.clip_by_global_norm([v], group.clipnorm, norm)[0]
            out[k] = (i, with_values(g, gated(group.clipnorm, clipped, v)))
        elif config.clip_active(group.global_clipnorm):
            members.append(k)
        elif config.clip_active(group.clipvalue):
            out[k] = (i, with_values(g, gated(group.clipvalue,
                                              pipeline.clip_by_value(v, group.clipvalue), v)))
    if any(config.clip_active(group.global_clipnorm) for group in groups):
        values = [values_of(grads[k][1]) for k in members]
        if hooks.global_norm is not None:
            norm = hooks.global_norm(values, [grads[k][0] for k in members])
        else:
            tensors = [part for k, v in zip(members, values)
                       for part in unpacked(v, layout.segments[grads[k][0]])]
            norm = pipeline.global_norm(tensors) if tensors else None
        for k, v in zip(members, values):
            i, g = grads[k]
            threshold = groups[group_of[i]].global_clipnorm
            clipped = pipeline.clip_by_global_norm([v], threshold, norm)[0]
            out[k] = (i, with_values(g, gated(threshold, clipped, v)))
    return out


def unpacked(v: Any, segments: Any) -> list[Any]:
    """The tensors packed in ``v`` (their ``(start, stop, shape)``); ``[v]`` when None."""
    if segments is None:
        return [v]
    return [v[start:stop].reshape(shape) for start, stop, shape in segments]


def average(arrays: Arrays, iterations: Any, groups: Sequence[Group], group_of: list[int],
            ops: Ops) -> Arrays:
    """Step 7: the EMA of every averaged variable (also those without a gradient this
    step, and on accumulation micro-steps, as in Keras), then the periodic overwrite."""
    if arrays.averages is None:
        return arrays
    weights, averages = list(arrays.weights), list(arrays.averages)
    for i, a in enumerate(averages):
        if a is None:
            continue
        group = groups[group_of[i]]
        momentum = pipeline.ema_momentum_at(iterations, group.ema_momentum)
        averages[i] = a = pipeline.ema(a, ops.astype(weights[i], a.dtype), momentum)
        frequency = group.ema_overwrite_frequency
        if frequency is not None:
            overwrite = (iterations + 1) % frequency == 0
            weights[i] = ops.cond(overwrite, lambda w, a=a: ops.astype(a, w.dtype),
                                  lambda w: w, weights[i])
    return arrays._replace(weights=weights, averages=averages)


# --------------------------------------------------------------------------- fused kernels


def kernel_arguments(group: Group, step: Step, *, decay_mask: Sequence[bool] | None,
                     averaging: bool) -> dict[str, Any]:
    """The scalar keywords of :func:`kerasopt.kernels.fused_step` for one group: the same
    step as :func:`apply`, in the kernels' terms (``accumulation_phase``, this step's EMA
    momentum and overwrite)."""
    phase = step.phase
    iterations = step.iterations
    frequency = group.ema_overwrite_frequency
    return dict(
        learning_rate=group.learning_rate if phase is not False else 0.0,
        step=iterations + 1,
        weight_decay=group.weight_decay,
        weight_decay_mask=decay_mask if group.weight_decay is not None else None,
        clipnorm=group.clipnorm or None,
        global_clipnorm=group.global_clipnorm or None,
        clipvalue=group.clipvalue or None,
        loss_scale_factor=step.loss_scale_factor,
        accumulation_steps=step.accumulation_steps,
        accumulation_phase=None if phase is None else ("update" if phase else "micro"),
        ema_momentum=(pipeline.ema_momentum_at(iterations, group.ema_momentum)
                      if averaging else None),
        ema_overwrite=bool(averaging and frequency and (iterations + 1) % frequency == 0),
        **group.hyperparameters,
    )
