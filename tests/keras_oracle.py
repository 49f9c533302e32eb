"""Keras 3 as an independent oracle: run an optimizer on a fixed gradient sequence.

The same description of a run (optimizer class name, constructor config, initial weights,
one list of gradients per step) goes through ``run_keras`` (Keras 3 on its torch backend)
and ``run_kerasopt`` (the NumPy core); both return a :class:`Run` with the weights after
every step and the optimizer's state variables at the end. ``compare_runs`` then measures
the difference against the parity tolerance::

    |got - ref| <= atol + rtol * (|ref| + travel)

where ``travel`` is the path length the Keras weight has covered since its start
(``sum_k |ref_k - ref_{k-1}|``, elementwise). float32 uses atol=1e-6, rtol=1e-5 and
float64 atol=rtol=1e-12. For state variables the "travel" term is the largest magnitude
the same Keras state tensor has held up to that step: rounding in a running mean is
relative to the terms being averaged, not to a mean that happens to be ~0 now (Keras on
torch computes ``m = beta_1*m + (1-beta_1)*g``, the NumPy core ``m + (g-m)*(1-beta_1)``,
as Keras's generic optimizers do; the two differ by an ulp of the *previous* ``m``, which
shows when a tiny gradient follows a large one). Integer state (the
iteration counters) must match exactly by value (Keras stores int32, kerasopt int64).

Backend-neutral specs keep configs shareable between the two sides (and with future
torch/JAX frontend tests):

- ``Schedule("CosineDecay", initial_learning_rate=..., ...)``: a learning-rate schedule,
  built from ``keras.optimizers.schedules`` or ``kerasopt.schedules`` by class name;
- ``StepCallable(fn)``: a zero-argument callable learning rate; ``fn(step)`` gets the number
  of ``apply`` calls completed so far (an int) and returns a float;
- a constraint ``(low, high)`` clips the variable into ``[low, high]`` after every step.

Import this module only after ``KERAS_BACKEND`` is set (``tests/conftest.py`` does it).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import warnings  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

TOLERANCES = {
    np.dtype(np.float32): (1e-6, 1e-5),
    np.dtype(np.float64): (1e-12, 1e-12),
}


# --------------------------------------------------------------------------- specs


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


class _Counter:
    def __init__(self) -> None:
        self.step = 0


def _resolve(value: Any, schedules_module: Any, counter: _Counter) -> Any:
    if isinstance(value, Schedule):
        return value.build(schedules_module)
    if isinstance(value, StepCallable):
        fn = value.fn
        return lambda: fn(counter.step)
    return value


def _resolve_config(config: Mapping[str, Any], schedules_module: Any, counter: _Counter):
    return {k: _resolve(v, schedules_module, counter) for k, v in config.items()}


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    """What one optimizer run produced.

    Attributes:
        initial: the starting weights, one array per variable.
        weights: ``weights[k][i]`` is variable ``i`` after step ``k`` (``len == n_steps``).
        state: the optimizer's ``variables`` at the end, as NumPy arrays, in its order.
        states: ``states[k]`` is the optimizer's ``variables`` after step ``k``.
        state_names: their names (Keras's ``path``; kerasopt's ``name``).
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


# --------------------------------------------------------------------------- gradients


def make_gradients(
    shapes: Sequence[tuple[int, ...]],
    n_steps: int,
    *,
    seed: int = 0,
    dtype: Any = np.float32,
    scale_range: tuple[float, float] = (1e-4, 1e2),
    none_every: int | None = None,
    nonfinite_steps: Sequence[int] = (),
) -> list[list[np.ndarray | None]]:
    """A seeded gradient sequence with varied scales.

    Each step and variable gets a standard-normal gradient times a scale drawn log-uniformly
    from ``scale_range`` (so some are near zero and some large enough for clipping to bite);
    about a tenth of the elements are shrunk by 1e-6, and variable 0 gets an all-zero
    gradient on step 3 (Keras's zero-norm guard in ``clipnorm``). ``none_every=n`` makes
    variable ``k % len(shapes)`` have a ``None`` gradient on every step ``k`` divisible by
    ``n`` (never all variables at once). ``nonfinite_steps`` put an inf or NaN into one
    gradient on those steps.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.log10(scale_range[0]), np.log10(scale_range[1])
    steps: list[list[np.ndarray | None]] = []
    for k in range(n_steps):
        grads: list[np.ndarray | None] = []
        for i, shape in enumerate(shapes):
            scale = 10.0 ** rng.uniform(lo, hi)
            g = rng.standard_normal(shape) * scale
            tiny = rng.random(shape) < 0.1
            g = np.where(tiny, g * 1e-6, g)
            if k == 3 and i == 0:
                g = np.zeros(shape)
            grads.append(np.asarray(g, dtype=dtype))
        if none_every and k % none_every == 0 and len(shapes) > 1:
            grads[k % len(shapes)] = None
        if k in nonfinite_steps:
            i = int(rng.integers(len(shapes)))
            g = grads[i] if grads[i] is not None else np.zeros(shapes[i], dtype)
            g = np.array(g, dtype=dtype)
            g.flat[int(rng.integers(max(g.size, 1)))] = np.inf if k % 2 else np.nan
            grads[i] = g
        steps.append(grads)
    return steps


def make_weights(
    shapes: Sequence[tuple[int, ...]], *, seed: int = 1, dtype: Any = np.float32
) -> list[np.ndarray]:
    """Seeded starting weights in roughly [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.uniform(-1.0, 1.0, shape), dtype=dtype) for shape in shapes]


# --------------------------------------------------------------------------- runners


def _default_names(n: int) -> list[str]:
    base = ["kernel", "bias", "scale"]
    return [base[i] if i < len(base) else f"var{i}" for i in range(n)]


def _run(
    make_optimizer: Callable[[_Counter], Any],
    make_variable: Callable[[np.ndarray, str, Any], Any],
    to_grad: Callable[[np.ndarray], Any],
    init_weights: Sequence[np.ndarray],
    grad_sequence: Sequence[Sequence[np.ndarray | None]],
    *,
    var_names: Sequence[str] | None,
    exclude_names: Sequence[str] | None,
    exclude_vars: Sequence[int] | None,
    constraints: Sequence[Any] | None,
    lr_changes: Mapping[int, Any] | None,
    resolve_lr: Callable[[Any, _Counter], Any],
    use_apply_gradients: bool,
) -> Run:
    names = list(var_names) if var_names is not None else _default_names(len(init_weights))
    constraints = list(constraints) if constraints is not None else [None] * len(init_weights)
    variables = [
        make_variable(np.array(w, copy=True), name, c)
        for w, name, c in zip(init_weights, names, constraints)
    ]
    counter = _Counter()
    opt = make_optimizer(counter)
    target = getattr(opt, "inner_optimizer", opt)
    if exclude_names is not None or exclude_vars is not None:
        target.exclude_from_weight_decay(
            var_list=[variables[i] for i in (exclude_vars or [])] or None,
            var_names=list(exclude_names) if exclude_names else None,
        )
    run = Run(initial=[np.array(w, copy=True) for w in init_weights], weights=[], state=[],
              state_names=[])
    for k, grads in enumerate(grad_sequence):
        if lr_changes and k in lr_changes:
            opt.learning_rate = resolve_lr(lr_changes[k], counter)
        run.learning_rates.append(float(np.asarray(_numpy(opt.learning_rate))))
        converted = [None if g is None else to_grad(g) for g in grads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if use_apply_gradients:
                opt.apply_gradients(list(zip(converted, variables)))
            else:
                opt.apply(converted, variables)
        counter.step += 1
        run.weights.append([_numpy(v) for v in variables])
        run.states.append([_numpy(v) for v in opt.variables])
        run.iterations.append(int(_numpy(opt.iterations)))
    run.state = [_numpy(v) for v in opt.variables]
    run.state_names = [str(getattr(v, "path", None) or v.name) for v in opt.variables]
    if getattr(target, "use_ema", False):
        opt.finalize_variable_values(variables)
        run.finalized = [_numpy(v) for v in variables]
    return run


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "numpy"):
        x = x.numpy()
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


def _constraint_fn(spec: Any, clip: Callable[[Any, float, float], Any]) -> Any:
    if spec is None:
        return None
    if isinstance(spec, tuple):
        low, high = spec
        return lambda w: clip(w, low, high)
    return spec


def to_torch(g: np.ndarray) -> Any:
    """A NumPy gradient as a CPU torch tensor of the same dtype (what Keras on torch takes)."""
    import torch

    return torch.from_numpy(np.array(g, copy=True))


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
    """Run ``keras.optimizers.<optimizer_cls_name>(**config)`` (on KERAS_BACKEND=torch).

    Args:
        optimizer_cls_name: ``"Adam"`` or ``"Adamax"`` (any Keras optimizer class name).
        config: constructor arguments; ``Schedule``/``StepCallable`` specs are resolved.
        init_weights: starting values; each array's dtype is the variable's dtype.
        grad_sequence: per step, one gradient (or ``None``) per variable.
        var_names: variable names (default ``kernel``, ``bias``, ``scale``, ...).
        exclude_names / exclude_vars: ``exclude_from_weight_decay(var_names=...)`` and
            ``(var_list=[variables[i] for i in exclude_vars])``.
        constraints: per variable ``None``, ``(low, high)`` (clip) or a callable.
        loss_scale: wrap in ``LossScaleOptimizer(inner, **loss_scale)`` when given.
        lr_changes: ``{step: value}``: set ``optimizer.learning_rate = value`` before that
            step (a float, ``Schedule`` or ``StepCallable``).
        use_apply_gradients: call ``apply_gradients(zip(...))`` instead of ``apply``.
    """
    import keras

    schedules = keras.optimizers.schedules

    def make_optimizer(counter: _Counter) -> Any:
        opt = getattr(keras.optimizers, optimizer_cls_name)(
            **_resolve_config(config, schedules, counter)
        )
        if loss_scale is not None:
            opt = keras.optimizers.LossScaleOptimizer(opt, **loss_scale)
        return opt

    def make_variable(value: np.ndarray, name: str, constraint: Any) -> Any:
        variable = keras.Variable(value, dtype=str(value.dtype), name=name)
        variable.constraint = _constraint_fn(constraint, keras.ops.clip)
        return variable

    return _run(
        make_optimizer,
        make_variable,
        to_torch,
        init_weights,
        grad_sequence,
        var_names=var_names,
        exclude_names=exclude_names,
        exclude_vars=exclude_vars,
        constraints=constraints,
        lr_changes=lr_changes,
        resolve_lr=lambda v, c: _resolve(v, schedules, c),
        use_apply_gradients=use_apply_gradients,
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
) -> Run:
    """The same run as :func:`run_keras`, through ``kerasopt.<optimizer_cls_name>`` on
    ``kerasopt.Variable`` over NumPy arrays."""
    import kerasopt

    schedules = kerasopt.schedules

    def make_optimizer(counter: _Counter) -> Any:
        opt = getattr(kerasopt, optimizer_cls_name)(**_resolve_config(config, schedules, counter))
        if loss_scale is not None:
            opt = kerasopt.LossScaleOptimizer(opt, **loss_scale)
        return opt

    def make_variable(value: np.ndarray, name: str, constraint: Any) -> Any:
        return kerasopt.Variable(
            value, name=name, dtype=value.dtype, constraint=_constraint_fn(constraint, np.clip)
        )

    return _run(
        make_optimizer,
        make_variable,
        lambda g: np.array(g, copy=True),
        init_weights,
        grad_sequence,
        var_names=var_names,
        exclude_names=exclude_names,
        exclude_vars=exclude_vars,
        constraints=constraints,
        lr_changes=lr_changes,
        resolve_lr=lambda v, c: _resolve(v, schedules, c),
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

    def as_dict(self) -> dict[str, float]:
        return {
            "weight_norm": self.weight_norm,
            "weight_abs": self.weight_abs,
            "state_norm": self.state_norm,
            "state_abs": self.state_abs,
            "steps": self.steps,
        }


def tolerance(dtype: Any) -> tuple[float, float]:
    """``(atol, rtol)`` for a float dtype."""
    return TOLERANCES[np.dtype(dtype)]


def _diff(ref: np.ndarray, got: np.ndarray, scale: np.ndarray, label: str, stats: ParityStats,
          kind: str, tol: tuple[float, float] | None = None) -> None:
    ref64 = np.asarray(ref, np.float64)
    got64 = np.asarray(got, np.float64)
    if ref64.shape != got64.shape:
        stats.failures.append(f"{label}: shape {got64.shape} != Keras {ref64.shape}")
        return
    if np.asarray(ref).dtype != np.asarray(got).dtype and np.asarray(ref).dtype.kind == "f":
        stats.failures.append(f"{label}: dtype {np.asarray(got).dtype} != Keras "
                              f"{np.asarray(ref).dtype}")
    ref_nan, got_nan = np.isnan(ref64), np.isnan(got64)
    if not np.array_equal(ref_nan, got_nan):
        stats.failures.append(f"{label}: NaN positions differ (Keras {int(ref_nan.sum())}, "
                              f"kerasopt {int(got_nan.sum())})")
        return
    ok = ~ref_nan
    ref64, got64, scale = ref64[ok], got64[ok], np.broadcast_to(scale, ok.shape)[ok]
    if ref64.size == 0:
        return
    atol, rtol = tol or tolerance(np.asarray(ref).dtype)
    diff = np.abs(got64 - ref64)
    diff = np.where(ref64 == got64, 0.0, diff)  # equal infinities
    bound = atol + rtol * (np.abs(np.where(np.isfinite(ref64), ref64, 0.0)) + scale)
    norm = float(np.max(diff / bound))
    raw = float(np.max(diff))
    if kind == "weight":
        stats.weight_norm = max(stats.weight_norm, norm)
        stats.weight_abs = max(stats.weight_abs, raw)
    else:
        stats.state_norm = max(stats.state_norm, norm)
        stats.state_abs = max(stats.state_abs, raw)
    if not norm <= 1.0:
        i = int(np.argmax(diff / bound))
        stats.failures.append(
            f"{label}: |diff| {diff[i]:.3e} > bound {bound[i]:.3e} "
            f"(Keras {ref64[i]!r}, kerasopt {got64[i]!r}; {norm:.2f}x tolerance)"
        )


def _slot(path: str) -> str:
    """A state variable's name without its scopes: Keras makes the optimizer's scope unique
    per instance (``adam_3/kernel_momentum``) and nests a wrapped optimizer's slots under
    the wrapper (``loss_scale_optimizer/adam/kernel_momentum``)."""
    return path.rsplit("/", 1)[-1]


def _compare_state(
    ref_state: Sequence[np.ndarray],
    got_state: Sequence[np.ndarray],
    ref_names: Sequence[str],
    got_names: Sequence[str],
    when: str,
    stats: ParityStats,
    compare_names: bool,
    tol: tuple[float, float] | None,
    scales: Sequence[float],
) -> None:
    if len(got_state) != len(ref_state):
        stats.failures.append(
            f"optimizer.variables ({when}): {len(got_state)} variables {list(got_names)}, "
            f"Keras has {len(ref_state)} {list(ref_names)}"
        )
        return
    for j, (r, g) in enumerate(zip(ref_state, got_state)):
        name = ref_names[j] if j < len(ref_names) else str(j)
        label = f"optimizer.variables[{j}] ({name}, {when})"
        if compare_names and j < len(got_names) and _slot(name) != _slot(got_names[j]):
            stats.failures.append(f"{label}: kerasopt names it {got_names[j]!r}")
        r_arr, g_arr = np.asarray(r), np.asarray(g)
        if r_arr.dtype.kind in "iub" or g_arr.dtype.kind in "iub":
            if r_arr.shape != g_arr.shape or not np.array_equal(
                r_arr.astype(np.int64), g_arr.astype(np.int64)
            ):
                stats.failures.append(f"{label}: {g_arr!r} != Keras {r_arr!r}")
            continue
        _diff(r_arr, g_arr, np.float64(scales[j]), label, stats, "state", tol)


def _largest_finite(x: np.ndarray) -> float:
    magnitude = np.abs(np.asarray(x, np.float64))
    magnitude = magnitude[np.isfinite(magnitude)]
    return float(magnitude.max()) if magnitude.size else 0.0


def _state_scales(states: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
    """Per step and state variable, the largest magnitude it has held so far (restarting
    when the number of state variables changes, e.g. when the learning-rate variable is
    dropped for a schedule)."""
    scales: list[list[float]] = []
    running: list[float] = []
    for state in states:
        if len(running) != len(state):
            running = [0.0] * len(state)
        running = [max(r, _largest_finite(x)) for r, x in zip(running, state)]
        scales.append(running)
    return scales


def compare_runs(
    ref: Run,
    got: Run,
    *,
    compare_names: bool = True,
    compare_states_every_step: bool = True,
    tol: tuple[float, float] | None = None,
) -> ParityStats:
    """Compare ``got`` to the Keras run ``ref``: the weights after every step, the
    ``iterations`` after every step (exactly), the ``learning_rate`` before every step (to
    1e-6 relative: schedules compute in float32 and torch's and NumPy's float32
    ``pow``/``cos`` may differ by an ulp), the optimizer state after every step (when both
    have the same number of state variables then) and at the end (count, order, names,
    values), and the finalized (EMA) weights. ``tol`` overrides the ``(atol, rtol)`` pair
    chosen from the dtype. Returns the stats with any failures listed."""
    stats = ParityStats(steps=len(ref.weights))
    if len(got.weights) != len(ref.weights):
        stats.failures.append(f"{len(got.weights)} steps recorded, Keras {len(ref.weights)}")
        return stats
    travel = [np.zeros(np.shape(w), np.float64) for w in ref.initial]
    previous = [np.asarray(w, np.float64) for w in ref.initial]
    for k, (ref_step, got_step) in enumerate(zip(ref.weights, got.weights)):
        for i, (r, g) in enumerate(zip(ref_step, got_step)):
            r64 = np.asarray(r, np.float64)
            with np.errstate(invalid="ignore"):
                delta = np.abs(r64 - previous[i])
            travel[i] = travel[i] + np.where(np.isfinite(delta), delta, 0.0)
            previous[i] = r64
            _diff(r, g, travel[i], f"step {k + 1}, variable {i}", stats, "weight", tol)
        if len(stats.failures) >= 5:
            break
    if got.iterations != ref.iterations:
        k = next(i for i, (a, b) in enumerate(zip(ref.iterations, got.iterations)) if a != b)
        stats.failures.append(
            f"optimizer.iterations after step {k + 1}: {got.iterations[k]}, Keras "
            f"{ref.iterations[k]}"
        )
    lr_ref = np.asarray(ref.learning_rates, np.float64)
    lr_got = np.asarray(got.learning_rates, np.float64)
    lr_bad = np.abs(lr_got - lr_ref) > 1e-6 * np.abs(lr_ref) + 1e-12
    if lr_ref.shape != lr_got.shape or lr_bad.any():
        k = int(np.argmax(lr_bad)) if lr_ref.shape == lr_got.shape else 0
        stats.failures.append(
            f"optimizer.learning_rate before step {k + 1}: {lr_got[k]!r}, Keras {lr_ref[k]!r}"
        )
    scales = _state_scales(ref.states)
    end_scales = scales[-1] if scales and len(scales[-1]) == len(ref.state) else [
        _largest_finite(x) for x in ref.state
    ]
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
            _diff(r, g, travel[i], f"finalized variable {i}", stats, "weight", tol)
    return stats


def assert_parity(ref: Run, got: Run, **kwargs: Any) -> ParityStats:
    """:func:`compare_runs`, raising ``AssertionError`` with the first failures."""
    return raise_on_failures(compare_runs(ref, got, **kwargs))


def raise_on_failures(stats: ParityStats) -> ParityStats:
    """Raise ``AssertionError`` listing the first failures of a comparison, if any."""
    if stats.failures:
        shown = "\n  ".join(stats.failures[:8])
        raise AssertionError(
            f"kerasopt differs from Keras ({len(stats.failures)} failure(s); worst weight "
            f"error {stats.weight_norm:.3g}x tolerance, state {stats.state_norm:.3g}x):\n  "
            f"{shown}"
        )
    return stats
