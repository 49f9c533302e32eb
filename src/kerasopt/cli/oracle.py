"""Keras as the oracle: run an optimizer on a fixed gradient sequence, compare with Keras.

The one place that runs Keras's optimizers and judges a difference, used by
``kerasopt verify`` and by the test suite's parity tests (NumPy core, ``kerasopt.torch``,
``kerasopt.optax``).

A run is described the same way on both sides: an optimizer class name (``"Adam"``, the
same in Keras and every kerasopt frontend), its constructor config, the starting weights and,
per step, one gradient (or ``None``) per variable. :func:`run_keras` runs it through the
installed Keras (its backend is the one ``KERAS_BACKEND`` chose; on JAX through
``stateless_apply`` under ``jax.jit``, as Keras's JAX trainer does) and :func:`run_kerasopt`
through the NumPy core; both return a :class:`Run`. :class:`KerasRun` runs a list of cases in
a subprocess with the Keras backend it is given (one process can load Keras with one backend
only).

The tolerance, for every weight after every step::

    |got - ref| <= atol + rtol * (|ref| + travel)

where ``travel`` is the path length the Keras weight has covered since its start
(``sum_k |ref_k - ref_{k-1}|``, elementwise, non-finite steps left out): float32 uses
atol=1e-6, rtol=1e-5 and float64 atol=rtol=1e-12 (:data:`TOLERANCES`). For a state tensor
the "travel" term is the largest magnitude the same Keras tensor has held up to then:
rounding in a running mean is relative to the terms averaged, not to a mean that happens to
be ~0 now. NaNs must sit in the same places, equal infinities agree, integer state (the
iteration counters) must match exactly by value. :func:`measure` applies the rule to one
array.

Learning rates that cannot be written as a number are given as :class:`Schedule` (a schedule
by class name, built from ``keras.optimizers.schedules`` or ``kerasopt.schedules``),
:class:`StepCallable` (a zero-argument callable, ``fn(completed_steps)``), or in JSON form
for a subprocess: ``{"type": "float", "value": x}``, ``{"type": "schedule", "class": name,
"config": {...}}``, ``{"type": "callable", "initial": a, "decay": b}`` (the rate
``a * b ** k`` after ``k`` completed steps).

This module imports Keras (and torch, JAX) only inside the functions that run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float32): (1e-6, 1e-5),
    np.dtype(np.float64): (1e-12, 1e-12),
}
"""``(atol, rtol)`` of the parity rule per float dtype."""


def tolerance(dtype: Any) -> tuple[float, float]:
    """``(atol, rtol)`` for a float dtype."""
    return TOLERANCES[np.dtype(dtype)]


def describe_tolerances() -> str:
    """The tolerances in words (``float32: atol 1e-6, rtol 1e-5; ...``)."""
    def short(x: float) -> str:
        return f"{x:.0e}".replace("e-0", "e-")

    return "; ".join(f"{dtype.name}: atol {short(atol)}, rtol {short(rtol)}"
                     for dtype, (atol, rtol) in TOLERANCES.items())


# --------------------------------------------------------------------------- the rule


@dataclass
class Measure:
    """The largest differences of one or more comparisons under the parity rule.

    Attributes:
        abs_diff: the largest ``|got - ref|``.
        rel_diff: the largest ``|got - ref| / max(|ref|, atol)``.
        normalized: the largest ``|got - ref| / bound`` (<= 1 passes).
        failures: one message per array that broke the rule.
    """

    abs_diff: float = 0.0
    rel_diff: float = 0.0
    normalized: float = 0.0
    failures: list[str] = field(default_factory=list)

    def add(self, other: Measure) -> Measure:
        self.abs_diff = max(self.abs_diff, other.abs_diff)
        self.rel_diff = max(self.rel_diff, other.rel_diff)
        self.normalized = max(self.normalized, other.normalized)
        self.failures.extend(other.failures)
        return self


def measure(ref: Any, got: Any, scale: Any = 0.0, tol: tuple[float, float] | None = None,
            label: str = "value", check_dtype: bool = False) -> Measure:
    """``got`` against the Keras value ``ref`` under the parity rule, ``scale`` being the
    travel (a weight) or the largest magnitude held (a state tensor), broadcast to ``ref``.
    ``tol`` defaults to :func:`tolerance` of ``ref``'s dtype. Integer values must be equal.
    ``check_dtype``: a float ``ref`` and ``got`` must also have the same dtype."""
    result = Measure()
    ref_arr, got_arr = np.asarray(ref), np.asarray(got)
    if ref_arr.dtype.kind in "iub" or got_arr.dtype.kind in "iub":
        if ref_arr.shape != got_arr.shape or not np.array_equal(
                ref_arr.astype(np.int64), got_arr.astype(np.int64)):
            result.failures.append(f"{label}: {got_arr!r} != Keras {ref_arr!r}")
        return result
    ref64, got64 = ref_arr.astype(np.float64), got_arr.astype(np.float64)
    if ref64.shape != got64.shape:
        result.failures.append(f"{label}: shape {got64.shape} != Keras {ref64.shape}")
        return result
    if check_dtype and ref_arr.dtype != got_arr.dtype:
        result.failures.append(f"{label}: dtype {got_arr.dtype} != Keras {ref_arr.dtype}")
    ref_nan, got_nan = np.isnan(ref64), np.isnan(got64)
    if not np.array_equal(ref_nan, got_nan):
        result.failures.append(f"{label}: NaN positions differ (Keras {int(ref_nan.sum())}, "
                               f"kerasopt {int(got_nan.sum())})")
        return result
    ok = ~ref_nan
    ref64, got64 = ref64[ok], got64[ok]
    scale = np.broadcast_to(np.asarray(scale, np.float64), ok.shape)[ok]
    if ref64.size == 0:
        return result
    atol, rtol = tol or tolerance(ref_arr.dtype)
    with np.errstate(invalid="ignore"):
        diff = np.where(ref64 == got64, 0.0, np.abs(got64 - ref64))  # equal infinities
    bound = atol + rtol * (np.abs(np.where(np.isfinite(ref64), ref64, 0.0)) + scale)
    ratio = diff / bound
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.maximum(np.abs(ref64), atol))
    result.abs_diff = float(np.max(diff))
    result.rel_diff = float(np.max(rel))
    result.normalized = float(np.max(ratio))
    if not result.normalized <= 1.0:
        i = int(np.argmax(ratio))
        result.failures.append(
            f"{label}: |diff| {diff[i]:.3e} > tolerance {bound[i]:.3e} (Keras {ref64[i]!r}, "
            f"kerasopt {got64[i]!r}; {result.normalized:.2f}x tolerance)")
    return result


def travel(initial: Any, trajectory: Sequence[Any]) -> list[np.ndarray]:
    """Per step, the path length each element of a Keras weight has covered since
    ``initial`` (non-finite steps add nothing)."""
    previous = np.asarray(initial, np.float64)
    total = np.zeros(previous.shape, np.float64)
    out = []
    for value in trajectory:
        current = np.asarray(value, np.float64)
        with np.errstate(invalid="ignore"):
            delta = np.abs(current - previous)
        total = total + np.where(np.isfinite(delta), delta, 0.0)
        out.append(total)
        previous = current
    return out


def largest_finite(x: Any) -> float:
    """The largest finite magnitude in ``x`` (0 when there is none)."""
    magnitude = np.abs(np.asarray(x, np.float64))
    magnitude = magnitude[np.isfinite(magnitude)]
    return float(magnitude.max()) if magnitude.size else 0.0


def compare_weights(initial: Sequence[Any], ref: Sequence[Sequence[Any]],
                    got: Sequence[Sequence[Any]], *, tol: tuple[float, float] | None = None,
                    check_dtype: bool = False, names: Sequence[str] | None = None,
                    max_failures: int = 5) -> tuple[Measure, list[np.ndarray]]:
    """Weight trajectories under the rule: ``ref[k][i]`` / ``got[k][i]`` is variable ``i``
    after step ``k``. Returns the measure and each variable's travel at the end."""
    result = Measure()
    if len(got) != len(ref):
        result.failures.append(f"{len(got)} steps recorded, Keras {len(ref)}")
        return result, []
    names = list(names) if names is not None else [f"variable {i}" for i in range(len(initial))]
    travels = [travel(w0, [step[i] for step in ref]) for i, w0 in enumerate(initial)]
    for k, (ref_step, got_step) in enumerate(zip(ref, got)):
        for i, (r, g) in enumerate(zip(ref_step, got_step)):
            result.add(measure(r, g, travels[i][k], tol, f"step {k + 1}, {names[i]}",
                               check_dtype))
        if len(result.failures) >= max_failures:
            break
    ends = [t[-1] if t else np.zeros(np.shape(w0)) for t, w0 in zip(travels, initial)]
    return result, ends


# --------------------------------------------------------------------------- learning rates


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule by Keras class name and constructor arguments."""

    class_name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, class_name: str, **kwargs: Any) -> None:
        object.__setattr__(self, "class_name", class_name)
        object.__setattr__(self, "kwargs", dict(kwargs))

    def build(self, schedules_module: Any) -> Any:
        return getattr(schedules_module, self.class_name)(**self.kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Schedule({self.class_name!r}, {args})"


@dataclass(frozen=True)
class StepCallable:
    """A callable learning rate: ``fn(completed_apply_calls) -> float``."""

    fn: Callable[[int], float]
    label: str = "callable"

    def __repr__(self) -> str:
        return f"StepCallable({self.label})"


class Counter:
    """The number of steps completed, read by callable learning rates."""

    def __init__(self) -> None:
        self.step = 0


_JSON_TYPES = ("float", "schedule", "callable")


def resolve(value: Any, schedules_module: Any, counter: Counter) -> Any:
    """A config value as the optimizer takes it: a :class:`Schedule` (or its JSON form)
    built from ``schedules_module``, a :class:`StepCallable` (or its JSON form) as a
    zero-argument callable reading ``counter``; anything else unchanged."""
    if isinstance(value, Schedule):
        return value.build(schedules_module)
    if isinstance(value, StepCallable):
        fn = value.fn
        return lambda: fn(counter.step)
    if isinstance(value, Mapping) and value.get("type") in _JSON_TYPES:
        if value["type"] == "float":
            return float(value["value"])
        if value["type"] == "schedule":
            return getattr(schedules_module, value["class"])(**value["config"])
        initial, decay = float(value["initial"]), float(value.get("decay", 1.0))
        return lambda: initial * decay ** counter.step
    return value


def resolve_config(config: Mapping[str, Any], schedules_module: Any,
                   counter: Counter) -> dict[str, Any]:
    """Every value of ``config`` through :func:`resolve`."""
    return {k: resolve(v, schedules_module, counter) for k, v in config.items()}


def _varies(value: Any) -> bool:
    """Whether a learning rate is a callable whose value changes between steps (it is
    evaluated when a jitted step is traced, so such a run stays eager)."""
    if isinstance(value, StepCallable):
        return True
    return (isinstance(value, Mapping) and value.get("type") == "callable"
            and float(value.get("decay", 1.0)) != 1.0)


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """What one optimizer run produced.

    Attributes:
        initial: the starting weights, one array per variable.
        weights: ``weights[k][i]`` is variable ``i`` after step ``k``.
        state: the optimizer's ``variables`` at the end, as NumPy arrays, in its order.
        state_names: their names (Keras's ``path``; kerasopt's ``name``).
        state_keys: their names without scopes, a LossScaleOptimizer's own variables
            prefixed ``scale/`` (``iteration``, ``kernel_momentum``, ``scale/dynamic_scale``).
        states: ``states[k]`` is the optimizer's ``variables`` after step ``k``.
        finalized: the weights after ``finalize_variable_values`` (only with ``use_ema``).
        learning_rates: the optimizer's ``learning_rate`` read before every step.
        iterations: ``int(optimizer.iterations)`` after every step.
    """

    initial: list[np.ndarray]
    weights: list[list[np.ndarray]]
    state: list[np.ndarray]
    state_names: list[str]
    finalized: list[np.ndarray] | None = None
    learning_rates: list[float] = field(default_factory=list)
    states: list[list[np.ndarray]] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    state_keys: list[str] = field(default_factory=list)


def to_numpy(x: Any) -> np.ndarray:
    """A copy of a Keras/kerasopt variable, tensor or array as a NumPy array."""
    if hasattr(x, "value") and not isinstance(x, np.ndarray) and hasattr(x, "assign"):
        x = x.value
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.array(x, copy=True)


def slot_name(path: str) -> str:
    """A state variable's name without its scopes: Keras makes the optimizer's scope unique
    per instance (``adam_3/kernel_momentum``) and nests a wrapped optimizer's slots under
    the wrapper (``loss_scale_optimizer/adam/kernel_momentum``)."""
    return str(path).rsplit("/", 1)[-1]


def state_keys(optimizer: Any) -> list[str]:
    """The :attr:`Run.state_keys` of a Keras or kerasopt optimizer, in its order."""
    inner = getattr(optimizer, "inner_optimizer", None)
    names = [slot_name(getattr(v, "path", None) or v.name) for v in optimizer.variables]
    if inner is None:
        return names
    n_own = len(optimizer.variables) - len(inner.variables)
    return ["scale/" + n for n in names[:n_own]] + names[n_own:]


def _default_names(n: int) -> list[str]:
    base = ["kernel", "bias", "scale"]
    return [base[i] if i < len(base) else f"var{i}" for i in range(n)]


def _constraint_fn(spec: Any, clip: Callable[[Any, float, float], Any]) -> Any:
    if spec is None:
        return None
    if isinstance(spec, tuple):
        low, high = spec
        return lambda w: clip(w, low, high)
    return spec


def _exclude(optimizer: Any, variables: Sequence[Any], names: Sequence[str] | None,
             indices: Sequence[int] | None) -> None:
    """``exclude_from_weight_decay`` on the (inner) optimizer, by names and by variables."""
    if names is not None or indices is not None:
        getattr(optimizer, "inner_optimizer", optimizer).exclude_from_weight_decay(
            var_list=[variables[i] for i in (indices or [])] or None,
            var_names=list(names) if names else None)


def run_optimizer(
    optimizer: Any,
    variables: Sequence[Any],
    to_grad: Callable[[np.ndarray], Any],
    init_weights: Sequence[np.ndarray],
    grad_sequence: Sequence[Sequence[np.ndarray | None]],
    counter: Counter,
    *,
    exclude_names: Sequence[str] | None = None,
    exclude_vars: Sequence[int] | None = None,
    lr_changes: Mapping[int, Any] | None = None,
    resolve_lr: Callable[[Any], Any] | None = None,
    use_apply_gradients: bool = False,
    stateless: Callable[..., Any] | None = None,
) -> Run:
    """Step a Keras-API optimizer (Keras's or kerasopt's NumPy core) through
    ``grad_sequence`` and record a :class:`Run`. ``stateless``: a (jitted)
    ``optimizer.stateless_apply`` to step with instead of ``apply`` (Keras on JAX)."""
    target = getattr(optimizer, "inner_optimizer", optimizer)
    _exclude(optimizer, variables, exclude_names, exclude_vars)
    run = Run(initial=[np.array(w, copy=True) for w in init_weights], weights=[], state=[],
              state_names=[])
    if stateless is not None:
        optimizer.build(list(variables))
    for k, grads in enumerate(grad_sequence):
        if lr_changes and k in lr_changes:
            optimizer.learning_rate = resolve_lr(lr_changes[k]) if resolve_lr else \
                lr_changes[k]
        run.learning_rates.append(float(np.asarray(to_numpy(optimizer.learning_rate))))
        converted = [None if g is None else to_grad(g) for g in grads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if stateless is not None:
                new_w, new_opt = stateless([v.value for v in optimizer.variables], converted,
                                           [v.value for v in variables])
                for var, value in zip((*variables, *optimizer.variables), (*new_w, *new_opt)):
                    var.assign(value)
            elif use_apply_gradients:
                optimizer.apply_gradients(list(zip(converted, variables)))
            else:
                optimizer.apply(converted, variables)
        counter.step += 1
        run.weights.append([to_numpy(v) for v in variables])
        run.states.append([to_numpy(v) for v in optimizer.variables])
        run.iterations.append(int(to_numpy(optimizer.iterations)))
    run.state = [to_numpy(v) for v in optimizer.variables]
    run.state_names = [str(getattr(v, "path", None) or v.name) for v in optimizer.variables]
    run.state_keys = state_keys(optimizer)
    if getattr(target, "use_ema", False):
        optimizer.finalize_variable_values(variables)
        run.finalized = [to_numpy(v) for v in variables]
    return run


def _run_keras_jax_scan(optimizer: Any, variables: Sequence[Any], init_weights: Sequence[Any],
                        grad_sequence: Sequence[Sequence[np.ndarray]]) -> Run:
    """Keras on JAX, every gradient present and the rate fixed per step: the whole
    trajectory in one ``jax.jit``-compiled ``lax.scan`` over ``stateless_apply``."""
    import jax

    optimizer.build(list(variables))
    grads = [np.stack([step[i] for step in grad_sequence]) for i in range(len(variables))]

    def step(carry: Any, gs: Any) -> tuple[Any, Any]:
        trainable, opt_vars = carry
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, list(gs), trainable)
        return (trainable, opt_vars), (trainable, opt_vars)

    @jax.jit
    def scan(trainable: Any, opt_vars: Any, grads: Any) -> Any:
        return jax.lax.scan(step, (trainable, opt_vars), grads)[1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights, states = scan([v.value for v in variables],
                               [v.value for v in optimizer.variables], grads)
    weights = [np.asarray(w) for w in weights]
    states = [np.asarray(s) for s in states]
    n = len(grad_sequence)
    run = Run(initial=[np.array(w, copy=True) for w in init_weights],
              weights=[[w[k].copy() for w in weights] for k in range(n)],
              state=[s[-1].copy() for s in states], state_names=[],
              states=[[s[k].copy() for s in states] for k in range(n)])
    for var, value in zip((*variables, *optimizer.variables),
                          (*(w[-1] for w in weights), *(s[-1] for s in states))):
        var.assign(value)
    run.state_names = [str(getattr(v, "path", None) or v.name) for v in optimizer.variables]
    run.state_keys = state_keys(optimizer)
    run.iterations = [int(x) for x in states[run.state_keys.index("iteration")]]
    if getattr(getattr(optimizer, "inner_optimizer", optimizer), "use_ema", False):
        optimizer.finalize_variable_values(variables)
        run.finalized = [to_numpy(v) for v in variables]
    return run


def run_keras(
    optimizer_cls_name: str,
    config: Mapping[str, Any],
    init_weights: Sequence[np.ndarray],
    grad_sequence: Sequence[Sequence[np.ndarray | None]],
    *,
    var_names: Sequence[str] | None = None,
    exclude_names: Sequence[str] | None = None,
    exclude_vars: Sequence[int] | None = None,
    constraints: Sequence[Any] | None = None,
    loss_scale: Mapping[str, Any] | None = None,
    lr_changes: Mapping[int, Any] | None = None,
    use_apply_gradients: bool = False,
) -> Run:
    """Run ``keras.optimizers.<optimizer_cls_name>(**config)`` on the installed Keras (its
    backend as ``KERAS_BACKEND`` chose it).

    Args:
        optimizer_cls_name: a Keras optimizer class name (``"Adam"``).
        config: constructor arguments; learning-rate specs (:func:`resolve`) are resolved.
        init_weights: starting values; each array's dtype is the variable's dtype.
        grad_sequence: per step, one gradient (or ``None``) per variable.
        var_names: variable names (default ``kernel``, ``bias``, ``scale``, ...).
        exclude_names / exclude_vars: ``exclude_from_weight_decay(var_names=...)`` and
            ``(var_list=[variables[i] for i in exclude_vars])``.
        constraints: per variable ``None``, ``(low, high)`` (clip) or a callable.
        loss_scale: wrap in ``LossScaleOptimizer(inner, **loss_scale)`` when given.
        lr_changes: ``{step: value}``: set ``optimizer.learning_rate = value`` before that
            step (a float or a learning-rate spec).
        use_apply_gradients: call ``apply_gradients(zip(...))`` instead of ``apply``.

    On JAX the steps run through ``stateless_apply``: all of them in one jitted
    ``lax.scan`` when every gradient is present and nothing changes the rate between steps
    (then :attr:`Run.learning_rates` stays empty), else one jitted step at a time (eagerly
    for a callable rate, which is evaluated when traced).
    """
    import keras

    schedules = keras.optimizers.schedules
    counter = Counter()
    names = list(var_names) if var_names is not None else _default_names(len(init_weights))
    constraints = list(constraints) if constraints is not None else [None] * len(init_weights)
    variables = []
    for w, name, c in zip(init_weights, names, constraints):
        variable = keras.Variable(np.array(w, copy=True), dtype=str(np.asarray(w).dtype),
                                  name=name)
        variable.constraint = _constraint_fn(c, keras.ops.clip)
        variables.append(variable)
    optimizer = getattr(keras.optimizers, optimizer_cls_name)(
        **resolve_config(config, schedules, counter))
    if loss_scale is not None:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, **loss_scale)
    stateless = None
    if keras.backend.backend() == "jax":
        import jax

        varies = any(_varies(v) for v in config.values()) or bool(lr_changes)
        if (not varies and not use_apply_gradients and all(c is None for c in constraints)
                and all(g is not None for step in grad_sequence for g in step)):
            _exclude(optimizer, variables, exclude_names, exclude_vars)
            return _run_keras_jax_scan(optimizer, variables, init_weights, grad_sequence)
        stateless = optimizer.stateless_apply
        if not any(_varies(v) for v in config.values()):
            stateless = jax.jit(stateless)
    to_grad = keras.ops.convert_to_tensor
    if keras.backend.backend() == "torch":
        import torch

        def to_grad(g: np.ndarray) -> Any:
            return torch.from_numpy(np.array(g, copy=True))

    return run_optimizer(
        optimizer, variables, to_grad, init_weights, grad_sequence,
        counter, exclude_names=exclude_names, exclude_vars=exclude_vars,
        lr_changes=lr_changes, resolve_lr=lambda v: resolve(v, schedules, counter),
        use_apply_gradients=use_apply_gradients, stateless=stateless,
    )


def run_kerasopt(
    optimizer_cls_name: str,
    config: Mapping[str, Any],
    init_weights: Sequence[np.ndarray],
    grad_sequence: Sequence[Sequence[np.ndarray | None]],
    *,
    var_names: Sequence[str] | None = None,
    exclude_names: Sequence[str] | None = None,
    exclude_vars: Sequence[int] | None = None,
    constraints: Sequence[Any] | None = None,
    loss_scale: Mapping[str, Any] | None = None,
    lr_changes: Mapping[int, Any] | None = None,
    use_apply_gradients: bool = False,
    factory: Callable[[str, dict[str, Any]], Any] | None = None,
) -> Run:
    """The same run as :func:`run_keras`, through ``kerasopt.<optimizer_cls_name>`` on
    ``kerasopt.Variable`` over NumPy arrays. ``factory(name, config)`` builds the optimizer
    instead (``kerasopt verify`` checks that a wrong one is reported)."""
    import kerasopt

    schedules = kerasopt.schedules
    counter = Counter()
    names = list(var_names) if var_names is not None else _default_names(len(init_weights))
    constraints = list(constraints) if constraints is not None else [None] * len(init_weights)
    variables = [
        kerasopt.Variable(np.array(w, copy=True), name=name, dtype=np.asarray(w).dtype,
                          constraint=_constraint_fn(c, np.clip))
        for w, name, c in zip(init_weights, names, constraints)
    ]
    resolved = resolve_config(config, schedules, counter)
    if factory is not None:
        optimizer = factory(optimizer_cls_name, resolved)
    else:
        optimizer = getattr(kerasopt, optimizer_cls_name)(**resolved)
    if loss_scale is not None:
        optimizer = kerasopt.LossScaleOptimizer(optimizer, **loss_scale)
    return run_optimizer(
        optimizer, variables, lambda g: np.array(g, copy=True), init_weights, grad_sequence,
        counter, exclude_names=exclude_names, exclude_vars=exclude_vars,
        lr_changes=lr_changes, resolve_lr=lambda v: resolve(v, schedules, counter),
        use_apply_gradients=use_apply_gradients,
    )


# --------------------------------------------------------------------------- comparison


@dataclass
class ParityStats:
    """Largest errors of one comparison. ``*_norm`` is ``max |diff| / bound`` (<= 1 passes)."""

    weight_norm: float = 0.0
    weight_abs: float = 0.0
    state_norm: float = 0.0
    state_abs: float = 0.0
    steps: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: ParityStats) -> ParityStats:
        return ParityStats(
            weight_norm=max(self.weight_norm, other.weight_norm),
            weight_abs=max(self.weight_abs, other.weight_abs),
            state_norm=max(self.state_norm, other.state_norm),
            state_abs=max(self.state_abs, other.state_abs),
            steps=self.steps + other.steps,
            failures=self.failures + other.failures,
        )

    def add(self, m: Measure, kind: str) -> None:
        if kind == "weight":
            self.weight_norm = max(self.weight_norm, m.normalized)
            self.weight_abs = max(self.weight_abs, m.abs_diff)
        else:
            self.state_norm = max(self.state_norm, m.normalized)
            self.state_abs = max(self.state_abs, m.abs_diff)
        self.failures.extend(m.failures)

    def as_dict(self) -> dict[str, float]:
        return {
            "weight_norm": self.weight_norm,
            "weight_abs": self.weight_abs,
            "state_norm": self.state_norm,
            "state_abs": self.state_abs,
            "steps": self.steps,
        }


def _compare_state(ref_state: Sequence[np.ndarray], got_state: Sequence[np.ndarray],
                   ref_names: Sequence[str], got_names: Sequence[str], when: str,
                   stats: ParityStats, compare_names: bool, tol: tuple[float, float] | None,
                   scales: Sequence[float]) -> None:
    if len(got_state) != len(ref_state):
        stats.failures.append(
            f"optimizer.variables ({when}): {len(got_state)} variables {list(got_names)}, "
            f"Keras has {len(ref_state)} {list(ref_names)}")
        return
    for j, (r, g) in enumerate(zip(ref_state, got_state)):
        name = ref_names[j] if j < len(ref_names) else str(j)
        label = f"optimizer.variables[{j}] ({name}, {when})"
        if compare_names and j < len(got_names) and slot_name(name) != slot_name(got_names[j]):
            stats.failures.append(f"{label}: kerasopt names it {got_names[j]!r}")
        stats.add(measure(r, g, np.float64(scales[j]), tol, label, check_dtype=True), "state")


def state_scales(states: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
    """Per step and state variable, the largest magnitude it has held so far (restarting
    when the number of state variables changes, e.g. when the learning-rate variable is
    dropped for a schedule)."""
    scales: list[list[float]] = []
    running: list[float] = []
    for state in states:
        if len(running) != len(state):
            running = [0.0] * len(state)
        running = [max(r, largest_finite(x)) for r, x in zip(running, state)]
        scales.append(running)
    return scales


def compare_runs(ref: Run, got: Run, *, compare_names: bool = True,
                 compare_states_every_step: bool = True,
                 tol: tuple[float, float] | None = None) -> ParityStats:
    """Compare ``got`` to the Keras run ``ref``: the weights after every step (same dtype),
    the ``iterations`` after every step (exactly), the ``learning_rate`` before every step
    (to 1e-6 relative: schedules compute in float32 and torch's and NumPy's float32
    ``pow``/``cos`` may differ by an ulp), the optimizer state after every step (when both
    have the same number of state variables then) and at the end (count, order, names,
    values), and the finalized (EMA) weights. ``tol`` overrides the ``(atol, rtol)`` pair
    chosen from the dtype. Returns the stats with any failures listed."""
    stats = ParityStats(steps=len(ref.weights))
    weights, travel_end = compare_weights(ref.initial, ref.weights, got.weights, tol=tol,
                                          check_dtype=True)
    stats.add(weights, "weight")
    if len(got.weights) != len(ref.weights):
        return stats
    if got.iterations != ref.iterations:
        k = next((i for i, (a, b) in enumerate(zip(ref.iterations, got.iterations)) if a != b),
                 min(len(ref.iterations), len(got.iterations)))
        stats.failures.append(
            f"optimizer.iterations after step {k + 1}: {got.iterations[k:k + 1]}, Keras "
            f"{ref.iterations[k:k + 1]}")
    lr_ref = np.asarray(ref.learning_rates, np.float64)
    lr_got = np.asarray(got.learning_rates, np.float64)
    if lr_ref.shape != lr_got.shape:
        stats.failures.append(f"learning rates read on {lr_got.size} steps, Keras {lr_ref.size}")
    else:
        lr_bad = np.abs(lr_got - lr_ref) > 1e-6 * np.abs(lr_ref) + 1e-12
        if lr_bad.any():
            k = int(np.argmax(lr_bad))
            stats.failures.append(f"optimizer.learning_rate before step {k + 1}: "
                                  f"{lr_got[k]!r}, Keras {lr_ref[k]!r}")
    scales = state_scales(ref.states)
    end_scales = scales[-1] if scales and len(scales[-1]) == len(ref.state) else [
        largest_finite(x) for x in ref.state]
    _compare_state(ref.state, got.state, ref.state_names, got.state_names, "end", stats,
                   compare_names, tol, end_scales)
    if compare_states_every_step and len(ref.states) == len(got.states):
        for k, (r, g) in enumerate(zip(ref.states, got.states)):
            if len(stats.failures) >= 5:
                break
            if len(r) == len(g):
                _compare_state(r, g, ref.state_names, got.state_names, f"step {k + 1}", stats,
                               False, tol, scales[k])
    if (ref.finalized is None) != (got.finalized is None):
        stats.failures.append("finalize_variable_values: only one side ran it")
    elif ref.finalized is not None:
        for i, (r, g) in enumerate(zip(ref.finalized, got.finalized)):
            stats.add(measure(r, g, travel_end[i], tol, f"finalized variable {i}",
                              check_dtype=True), "weight")
    return stats


def raise_on_failures(stats: ParityStats) -> ParityStats:
    """Raise ``AssertionError`` listing the first failures of a comparison, if any."""
    if stats.failures:
        shown = "\n  ".join(stats.failures[:8])
        raise AssertionError(
            f"kerasopt differs from Keras ({len(stats.failures)} failure(s); worst weight "
            f"error {stats.weight_norm:.3g}x tolerance, state {stats.state_norm:.3g}x):\n  "
            f"{shown}")
    return stats


def assert_parity(ref: Run, got: Run, **kwargs: Any) -> ParityStats:
    """:func:`compare_runs`, raising ``AssertionError`` with the first failures."""
    return raise_on_failures(compare_runs(ref, got, **kwargs))


# --------------------------------------------------------------------------- subprocess


@dataclass
class Problem:
    """Starting weights and, per step, one gradient (or ``None``) per variable, by name."""

    w0: dict[str, np.ndarray]
    grads: list[dict[str, np.ndarray | None]]


@dataclass
class Trajectory:
    """A run by variable name: ``weights[var]`` is ``(steps, *shape)``; ``state`` maps each
    :attr:`Run.state_keys` name to its final value; ``state_scale`` the largest magnitude
    each state variable held (the Keras side's scale for :func:`measure`); ``finalized`` the
    weights after ``finalize_variable_values`` (EMA only)."""

    weights: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    state_scale: dict[str, float] = field(default_factory=dict)
    finalized: dict[str, np.ndarray] | None = None

    @classmethod
    def from_run(cls, run: Run, names: Sequence[str]) -> Trajectory:
        weights = {v: np.stack([step[i] for step in run.weights]) for i, v in enumerate(names)}
        state = dict(zip(run.state_keys, run.state))
        scales = {key: 0.0 for key in run.state_keys}
        for step in run.states:
            if len(step) == len(run.state_keys):
                for key, value in zip(run.state_keys, step):
                    scales[key] = max(scales[key], largest_finite(value))
        finalized = None if run.finalized is None else dict(zip(names, run.finalized))
        return cls(weights, state, scales, finalized)

    def to_arrays(self, key: str) -> dict[str, np.ndarray]:
        out = {f"{key}/w/{v}": a for v, a in self.weights.items()}
        out.update({f"{key}/s/{n}": a for n, a in self.state.items()})
        out.update({f"{key}/scale/{n}": np.float64(a) for n, a in self.state_scale.items()})
        if self.finalized is not None:
            out.update({f"{key}/f/{v}": a for v, a in self.finalized.items()})
        return out

    @classmethod
    def from_arrays(cls, key: str, arrays: Mapping[str, np.ndarray]) -> Trajectory:
        def part(tag: str) -> dict[str, np.ndarray]:
            prefix = f"{key}/{tag}/"
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        finalized = part("f")
        return cls(part("w"), part("s"), {k: float(v) for k, v in part("scale").items()},
                   finalized or None)


def problem_arrays(cases: Sequence[Mapping[str, Any]],
                   problems: Mapping[str, Problem]) -> dict[str, np.ndarray]:
    """The problems of ``cases`` (by ``case["key"]``) as arrays for an ``.npz`` file."""
    arrays = {}
    for case in cases:
        key = case["key"]
        p = problems[key]
        for v in case["vars"]:
            zeros = np.zeros(np.shape(p.w0[v]), np.asarray(p.w0[v]).dtype)
            arrays[f"{key}/w0/{v}"] = p.w0[v]
            arrays[f"{key}/g/{v}"] = np.stack(
                [g[v] if g[v] is not None else zeros for g in p.grads])
            arrays[f"{key}/present/{v}"] = np.array([g[v] is not None for g in p.grads])
    return arrays


def problem_from_arrays(key: str, names: Sequence[str],
                        arrays: Mapping[str, np.ndarray]) -> Problem:
    w0 = {v: arrays[f"{key}/w0/{v}"] for v in names}
    n = len(arrays[f"{key}/present/{names[0]}"])
    grads = [{v: (arrays[f"{key}/g/{v}"][k] if arrays[f"{key}/present/{v}"][k] else None)
              for v in names} for k in range(n)]
    return Problem(w0, grads)


def run_keras_case(case: Mapping[str, Any], problem: Problem) -> Trajectory:
    """One JSON case through :func:`run_keras`: ``{"key", "algo"`` (Keras class name),
    ``"kwargs", "lr"`` (a learning-rate spec), ``"exclude", "loss_scale", "vars"}``."""
    names = list(case["vars"])
    run = run_keras(
        case["algo"], {"learning_rate": case["lr"], **case["kwargs"]},
        [problem.w0[v] for v in names], [[g[v] for v in names] for g in problem.grads],
        var_names=names, exclude_names=case.get("exclude") or None,
        loss_scale=case.get("loss_scale") or None)
    return Trajectory.from_run(run, names)


def keras_worker(cases_path: str, problems_path: str, out_path: str) -> None:
    """Run every case through Keras (the backend ``KERAS_BACKEND`` names); print one line per
    finished case (for a progress bar); write the trajectories to ``out_path``."""
    warnings.filterwarnings("ignore")
    with open(cases_path) as f:
        cases = json.load(f)
    with np.load(problems_path) as data:
        arrays = dict(data)
    out: dict[str, np.ndarray] = {}
    for case in cases:
        problem = problem_from_arrays(case["key"], case["vars"], arrays)
        out.update(run_keras_case(case, problem).to_arrays(case["key"]))
        print(f"done {case['key']}", flush=True)
    np.savez(out_path, **out)


class KerasRun:
    """A Keras subprocess (``KERAS_BACKEND=backend``) running JSON ``cases`` (see
    :func:`run_keras_case`) on ``problems[case["key"]]``; :meth:`wait` returns the
    trajectories by key."""

    def __init__(self, backend: str, cases: Sequence[Mapping[str, Any]],
                 problems: Mapping[str, Problem], directory: str) -> None:
        self.backend = backend
        self.cases = [dict(c) for c in cases]
        self.out_path = os.path.join(directory, f"keras-{backend}.npz")
        cases_path = os.path.join(directory, f"cases-{backend}.json")
        problems_path = os.path.join(directory, f"problems-{backend}.npz")
        with open(cases_path, "w") as f:
            json.dump(self.cases, f)
        np.savez(problems_path, **problem_arrays(self.cases, problems))
        env = {**os.environ, "KERAS_BACKEND": backend}
        if backend == "jax":
            env.setdefault("JAX_PLATFORMS", "cpu")
            env.pop("XLA_FLAGS", None)
        code = ("import sys; from kerasopt.cli.oracle import keras_worker; "
                "keras_worker(*sys.argv[1:4])")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, cases_path, problems_path, self.out_path],
            env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )

    def wait(self, progress: Callable[[], None] | None = None) -> dict[str, Trajectory]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("done ") and progress is not None:
                progress()
        if self.process.wait() != 0:
            self.stderr.seek(0)
            tail = self.stderr.read()[-3000:]
            raise RuntimeError(
                f"Keras ({self.backend} backend) failed in its subprocess:\n{tail}")
        self.stderr.close()
        with np.load(self.out_path) as data:
            arrays = dict(data)
        return {c["key"]: Trajectory.from_arrays(c["key"], arrays) for c in self.cases}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_keras_subprocess(backend: str, cases: Sequence[Mapping[str, Any]],
                         problems: Mapping[str, Problem]) -> dict[str, Trajectory]:
    """:class:`KerasRun` started and waited for, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="kerasopt-oracle-") as directory:
        run = KerasRun(backend, cases, problems, directory)
        try:
            return run.wait()
        finally:
            run.kill()
