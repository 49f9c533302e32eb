"""``kerasopt verify``: run kerasopt and the installed Keras on the same random problems.

For every feature (each option of the optimizers) and every installed front end -- the
NumPy core, ``kerasopt.torch`` and ``kerasopt.optax`` -- both sides start from the same
weights and get the same gradient sequence. After every step the weights are compared, at
the end the optimizer state (iteration counter, slots, accumulators, EMA averages, loss
scale) and the EMA-finalized weights. A difference passes when::

    |kerasopt - keras| <= atol + rtol * (|keras| + travel)

where ``travel`` is the distance the Keras weight has moved since its start (for a state
tensor: the largest magnitude it has held). float32 uses atol=1e-6, rtol=1e-5, float64
atol=rtol=1e-12. The table reports the largest absolute difference and the largest ratio
``|diff| / bound`` ("err/tol"; <= 1 passes). The rule, the Keras runs and their subprocesses
live in :mod:`kerasopt.cli.oracle`, which the test suite's parity tests use too.

The algorithms come from the registry (:func:`kerasopt.algorithms.registered`): every
registered algorithm is verified, and a feature that sets an algorithm's own argument
(``amsgrad``) runs on the algorithms that take it.

Keras is the reference: the NumPy core and ``kerasopt.torch`` are compared with Keras on
its torch backend, ``kerasopt.optax`` with Keras on its JAX backend. One process can load
Keras with one backend only, so each Keras run happens in a subprocess
(``KERAS_BACKEND=torch`` / ``jax``) that runs every case and writes the trajectories to an
``.npz`` file; this process runs the kerasopt side meanwhile.

The comparison core, :func:`verify`, takes the kerasopt side as a parameter (``factories``),
so a test can check that a deliberately wrong optimizer is reported as a failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasopt import algorithms
from kerasopt.cli import oracle
from kerasopt.cli.common import positive_int
from kerasopt.cli.oracle import KerasRun, Problem, Trajectory

KERAS_REQUIREMENT = "keras==3.15.1"


def install_hint() -> str:
    """How to install Keras, the reference, from where the user is."""
    from kerasopt._install import _python

    return (
        "kerasopt verify needs Keras 3 as the reference. Install it with\n"
        f"    {_python()} -m pip install {KERAS_REQUIREMENT}\n"
        "(Keras runs on its torch backend for the NumPy and PyTorch checks and on its JAX "
        "backend for the kerasopt.optax check.)"
    )


# What each optional backend needs, and the extra that installs it.
BACKEND_PACKAGES = {"torch": (("torch",), "torch"), "jax": (("jax", "optax"), "jax")}

DEFAULT_STEPS = 100
QUICK_STEPS = 20

SHAPES = {"kernel": (5, 4), "bias": (4,), "scale": (3,)}


def algorithm_names() -> list[str]:
    """The Keras class names of every registered algorithm, in registration order."""
    return [spec.keras_name for spec in algorithms.registered()]

# Which Keras backend is the reference for each kerasopt front end.
BACKENDS = {
    "numpy": ("NumPy core (kerasopt.Adam)", "torch"),
    "torch": ("kerasopt.torch", "torch"),
    "jax": ("kerasopt.optax", "jax"),
}

_LR = {"type": "float", "value": 0.01}


def _schedule(class_name: str, **config: Any) -> dict[str, Any]:
    return {"type": "schedule", "class": class_name, "config": config}


@dataclass(frozen=True)
class Feature:
    """One verified option set.

    Attributes:
        kwargs: constructor arguments of both optimizers (besides the learning rate).
        lr: ``{"type": "float", "value": x}``, ``{"type": "schedule", "class": name,
            "config": {...}}`` or ``{"type": "callable", "initial": a, "decay": b}`` (the
            rate ``a * b ** k`` after ``k`` completed calls).
        exclude: ``exclude_from_weight_decay(var_names=...)``.
        loss_scale: wrap in ``LossScaleOptimizer(inner, **loss_scale)``.
        dtype: the variables' dtype.
        grad_scale: multiplies every gradient (loss-scaled gradients are large).
        none_every: every this many steps one variable's gradient is ``None``.
        nonfinite_steps: steps on which one gradient holds an inf or a NaN.

    A feature runs on every registered algorithm that takes each of its ``kwargs`` (an
    algorithm's own argument such as ``amsgrad`` limits it to those that have it).
    """

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    lr: Mapping[str, Any] = field(default_factory=lambda: dict(_LR))
    exclude: Sequence[str] | None = None
    loss_scale: Mapping[str, Any] | None = None
    dtype: str = "float32"
    grad_scale: float = 1.0
    none_every: int | None = None
    nonfinite_steps: Sequence[int] = ()

    def applies_to(self, keras_name: str) -> bool:
        """Whether the algorithm takes every argument of ``kwargs`` that is some registered
        algorithm's own."""
        own = {h.name for s in algorithms.registered() for h in s.hyperparameters}
        takes = algorithms.get(keras_name).defaults()
        return all(k in takes for k in self.kwargs if k in own)


FEATURES: dict[str, Feature] = {
    "defaults": Feature(lr={"type": "float", "value": 0.001}),
    "betas+epsilon": Feature({"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-3}),
    "amsgrad": Feature({"amsgrad": True}),
    "schedule:ExponentialDecay": Feature(lr=_schedule(
        "ExponentialDecay", initial_learning_rate=0.02, decay_steps=10, decay_rate=0.8)),
    "schedule:PiecewiseConstantDecay": Feature(lr=_schedule(
        "PiecewiseConstantDecay", boundaries=[7, 30], values=[0.02, 0.01, 0.003])),
    "schedule:PolynomialDecay": Feature(lr=_schedule(
        "PolynomialDecay", initial_learning_rate=0.02, decay_steps=15,
        end_learning_rate=0.001, power=2.0, cycle=True)),
    "schedule:InverseTimeDecay": Feature(lr=_schedule(
        "InverseTimeDecay", initial_learning_rate=0.02, decay_steps=5, decay_rate=0.5,
        staircase=True)),
    "schedule:CosineDecay": Feature(lr=_schedule(
        "CosineDecay", initial_learning_rate=0.01, decay_steps=40, alpha=0.1,
        warmup_target=0.02, warmup_steps=5)),
    "schedule:CosineDecayRestarts": Feature(lr=_schedule(
        "CosineDecayRestarts", initial_learning_rate=0.02, first_decay_steps=8, t_mul=2.0,
        m_mul=0.8, alpha=0.05)),
    "callable_lr": Feature(lr={"type": "callable", "initial": 0.02, "decay": 0.97}),
    "weight_decay+exclude": Feature({"weight_decay": 0.05}, exclude=["bias"]),
    "clipnorm": Feature({"clipnorm": 0.5}, grad_scale=3.0),
    "global_clipnorm": Feature({"global_clipnorm": 1.0}, grad_scale=3.0),
    "clipvalue": Feature({"clipvalue": 0.3}),
    "ema+overwrite": Feature(
        {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 7}),
    "accumulation": Feature({"gradient_accumulation_steps": 3}),
    "accumulation+ema": Feature(
        {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3}),
    "none_gradients": Feature({"weight_decay": 0.02, "use_ema": True}, none_every=3),
    "none_gradients+accumulation": Feature({"gradient_accumulation_steps": 2}, none_every=3),
    "loss_scale_factor": Feature({"loss_scale_factor": 128.0}, grad_scale=128.0),
    "LossScaleOptimizer": Feature(
        loss_scale={"initial_scale": 64.0, "dynamic_growth_steps": 4}, grad_scale=64.0,
        nonfinite_steps=(2, 5, 11)),
    "float64": Feature(
        {"weight_decay": 0.01, "global_clipnorm": 1.0, "use_ema": True}, dtype="float64"),
    "all_features": Feature(
        {"weight_decay": 0.01, "global_clipnorm": 2.0, "use_ema": True,
         "ema_overwrite_frequency": 5, "loss_scale_factor": 8.0,
         "gradient_accumulation_steps": 2},
        lr=_schedule("CosineDecay", initial_learning_rate=0.02, decay_steps=60),
        exclude=["bias"], grad_scale=8.0),
}

QUICK_FEATURES = (
    "defaults", "amsgrad", "schedule:CosineDecay", "callable_lr", "weight_decay+exclude",
    "global_clipnorm", "ema+overwrite", "accumulation", "LossScaleOptimizer", "float64",
)

# Features a front end cannot run, with the reason shown in the table.
UNSUPPORTED = {
    ("jax", "float64"): "JAX runs float32 unless jax_enable_x64 is set",
    ("jax", "none_gradients+accumulation"): (
        "Keras's JAX backend keeps a None-gradient variable's partial sum; its torch "
        "backend (and kerasopt) drop it"),
}


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Case:
    """One (feature, algorithm) pair."""

    feature: str
    algo: str

    @property
    def key(self) -> str:
        return f"{self.algo}:{self.feature}"

    @property
    def spec(self) -> Feature:
        return FEATURES[self.feature]

    def as_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "key": self.key, "algo": self.algo, "kwargs": dict(spec.kwargs), "lr": dict(spec.lr),
            "exclude": list(spec.exclude) if spec.exclude else None,
            "loss_scale": dict(spec.loss_scale) if spec.loss_scale else None,
            "dtype": spec.dtype, "vars": list(SHAPES),
        }


def make_problem(case: Case, steps: int) -> Problem:
    """A seeded problem: gradients of varying magnitude (so clipping bites on some steps),
    an all-zero gradient on step 3, optional ``None`` and non-finite gradients."""
    spec = case.spec
    rng = np.random.default_rng(zlib.crc32(case.key.encode()))
    dtype = np.dtype(spec.dtype)
    w0 = {v: rng.uniform(-1.0, 1.0, s).astype(dtype) for v, s in SHAPES.items()}
    grads: list[dict[str, np.ndarray | None]] = []
    names = list(SHAPES)
    for k in range(steps):
        step: dict[str, np.ndarray | None] = {}
        for i, (v, s) in enumerate(SHAPES.items()):
            scale = 10.0 ** rng.uniform(-2.0, 0.7) * spec.grad_scale
            g = rng.standard_normal(s) * scale
            if k == 3 and i == 0:
                g = np.zeros(s)
            step[v] = g.astype(dtype)
        if spec.none_every and k % spec.none_every == 0:
            step[names[k % len(names)]] = None
        if k in spec.nonfinite_steps:
            v = names[k % len(names)]
            g = np.array(step[v] if step[v] is not None else np.zeros(SHAPES[v], dtype))
            g.flat[k % g.size] = np.inf if k % 2 else np.nan
            step[v] = g
        grads.append(step)
    return Problem(w0, grads)


# --------------------------------------------------------------------------- kerasopt sides
#
# A factory builds the kerasopt optimizer of one front end; verify() takes them as a
# parameter. numpy: factory(algo, kwargs) -> kerasopt.<algo>; torch:
# factory(algo, named_params, kwargs) -> kerasopt.torch.<algo>; jax:
# factory(algo, kwargs) -> optax GradientTransformation. ``algo`` is the Keras class name;
# ``kwargs`` include learning_rate.


def numpy_factory(algo: str, kwargs: Mapping[str, Any]) -> Any:
    import kerasopt

    return getattr(kerasopt, algo)(**kwargs)


def torch_factory(algo: str, params: Any, kwargs: Mapping[str, Any]) -> Any:
    import kerasopt.torch

    return getattr(kerasopt.torch, algo)(params, **kwargs)


def jax_factory(algo: str, kwargs: Mapping[str, Any]) -> Any:
    import kerasopt.optax

    return kerasopt.optax.FACTORIES[algorithms.get(algo).name](**kwargs)


DEFAULT_FACTORIES: dict[str, Callable[..., Any]] = {
    "numpy": numpy_factory, "torch": torch_factory, "jax": jax_factory,
}


def _run_numpy(case: Case, problem: Problem, factory: Callable[..., Any]) -> Trajectory:
    spec, names = case.spec, list(SHAPES)
    run = oracle.run_kerasopt(
        case.algo, {**spec.kwargs, "learning_rate": spec.lr}, [problem.w0[v] for v in names],
        [[g[v] for v in names] for g in problem.grads], var_names=names,
        exclude_names=list(spec.exclude) if spec.exclude else None,
        loss_scale=spec.loss_scale, factory=factory)
    return Trajectory.from_run(run, names)


def _run_torch(case: Case, problem: Problem, factory: Callable[..., Any]) -> Trajectory:
    import torch

    import kerasopt

    spec, counter = case.spec, oracle.Counter()
    dtype = getattr(torch, spec.dtype)
    params = {v: torch.nn.Parameter(torch.tensor(problem.w0[v], dtype=dtype)) for v in SHAPES}
    kwargs = {**spec.kwargs,
              "learning_rate": oracle.resolve(spec.lr, kerasopt.schedules, counter)}
    opt = factory(case.algo, list(params.items()), kwargs)
    if spec.exclude:
        opt.exclude_from_weight_decay(var_names=list(spec.exclude))
    if spec.loss_scale:
        opt = kerasopt.torch.LossScaleOptimizer(opt, **spec.loss_scale)
    inner = getattr(opt, "inner_optimizer", opt)
    weights: dict[str, list[np.ndarray]] = {v: [] for v in SHAPES}
    for grads in problem.grads:
        for v, p in params.items():
            p.grad = None if grads[v] is None else torch.tensor(grads[v], dtype=dtype)
        opt.step()
        counter.step += 1
        for v, p in params.items():
            weights[v].append(oracle.to_numpy(p))
    state: dict[str, np.ndarray] = {"iteration": np.array(inner.raw_iterations)}
    group = inner.param_groups[0]
    if group.get("learning_rate") is None:
        state["learning_rate"] = np.array(group["lr"], np.float32)
    for v, p in params.items():
        for slot, value in inner.state[p].items():
            state[f"{v}_{slot}"] = oracle.to_numpy(value)
    if spec.loss_scale:
        state["scale/step_counter"] = np.array(opt.step_counter)
        state["scale/dynamic_scale"] = np.array(opt.dynamic_scale, np.float32)
    finalized = None
    if group["use_ema"]:
        inner.finalize_variable_values()
        finalized = {v: oracle.to_numpy(p) for v, p in params.items()}
    return Trajectory({v: np.stack(w) for v, w in weights.items()}, state, {}, finalized)


def _optax_fields(algo: str) -> dict[str, str]:
    """kerasopt.optax state field -> Keras slot name: the algorithm's slots (from the
    registry), the accumulators and the EMA averages."""
    slots = algorithms.get(algo).all_slots
    return {**{s: s for s in slots}, "accumulator": "gradient_accumulator",
            "average": "average"}


def _run_jax(case: Case, problem: Problem, factory: Callable[..., Any]) -> Trajectory:
    import jax
    import jax.numpy as jnp
    import optax

    import kerasopt
    import kerasopt.optax as ko

    spec, counter = case.spec, oracle.Counter()
    kwargs = {**spec.kwargs,
              "learning_rate": oracle.resolve(spec.lr, kerasopt.schedules, counter)}
    if spec.exclude:
        kwargs["exclude_from_weight_decay"] = list(spec.exclude)
    tx = factory(case.algo, kwargs)
    if spec.loss_scale:
        tx = ko.loss_scale(tx, **spec.loss_scale)
    params = {v: jnp.asarray(problem.w0[v]) for v in SHAPES}
    state = tx.init(params)

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # A zero-argument callable rate is evaluated when the update is traced, so it runs
    # eagerly; everything else under jax.jit, as in training. None gradients change the
    # tree structure, so each structure gets its own compiled step.
    jitted = step if spec.lr["type"] == "callable" else jax.jit(step)
    weights: dict[str, list[np.ndarray]] = {v: [] for v in SHAPES}
    for grads in problem.grads:
        tree = {v: (None if grads[v] is None else jnp.asarray(grads[v])) for v in SHAPES}
        params, state = jitted(params, state, tree)
        counter.step += 1
        for v in SHAPES:
            weights[v].append(np.asarray(params[v]))
    named: dict[str, np.ndarray] = {}
    inner = state
    if isinstance(state, ko.LossScaleState):
        named["scale/step_counter"] = np.asarray(state.step_counter)
        named["scale/dynamic_scale"] = np.asarray(state.dynamic_scale)
        inner = state.inner_state
    named["iteration"] = np.asarray(inner.count)
    for field_name, slot in _optax_fields(case.algo).items():
        tree = getattr(inner, field_name, None)
        if tree is not None:
            for v in SHAPES:
                named[f"{v}_{slot}"] = np.asarray(tree[v])
    finalized = None
    if spec.kwargs.get("use_ema"):
        final = ko.finalize_params(params, state)
        finalized = {v: np.asarray(final[v]) for v in SHAPES}
    return Trajectory({v: np.stack(w) for v, w in weights.items()}, named, {}, finalized)


RUNNERS: dict[str, Callable[[Case, Problem, Callable[..., Any]], Trajectory]] = {
    "numpy": _run_numpy, "torch": _run_torch, "jax": _run_jax,
}


# --------------------------------------------------------------------------- comparison


@dataclass
class Result:
    """One row of the table."""

    feature: str
    algo: str
    backend: str
    steps: int
    abs_diff: float = 0.0
    rel_diff: float = 0.0
    normalized: float = 0.0
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is not None or not self.failures

    def add(self, m: oracle.Measure) -> None:
        self.abs_diff = max(self.abs_diff, m.abs_diff)
        self.rel_diff = max(self.rel_diff, m.rel_diff)
        self.normalized = max(self.normalized, m.normalized)
        self.failures.extend(m.failures)


def compare(case: Case, backend: str, ref: Trajectory, got: Trajectory,
            w0: Mapping[str, np.ndarray]) -> Result:
    """Compare a kerasopt trajectory with Keras's under :func:`kerasopt.cli.oracle.measure`:
    weights after every step, the final state (by Keras name) and the EMA-finalized
    weights."""
    tol = oracle.tolerance(case.spec.dtype)
    steps = len(next(iter(ref.weights.values())))
    result = Result(case.feature, case.algo, backend, steps)
    travel_end = {}
    for v, ref_w in ref.weights.items():
        got_w = got.weights.get(v)
        if got_w is None or got_w.shape != ref_w.shape:
            result.failures.append(f"weights of {v}: missing or of another shape")
            continue
        travel = oracle.travel(w0[v], ref_w)
        travel_end[v] = travel[-1]
        for k in range(steps):
            result.add(oracle.measure(ref_w[k], got_w[k], travel[k], tol,
                                      f"step {k + 1}, {v}"))
            if len(result.failures) > 3:
                return result
    for name, got_value in got.state.items():
        if name not in ref.state:
            if name == "learning_rate" or name.startswith("scale/"):
                continue
            result.failures.append(f"state {name!r}: Keras has no such variable")
            continue
        result.add(oracle.measure(ref.state[name], got_value, ref.state_scale.get(name, 0.0),
                                  tol, f"state {name!r}"))
    missing = [n for n in ref.state
               if "_" in n and not n.startswith("scale/") and n not in got.state
               and n != "learning_rate"]
    if missing:
        result.failures.append(f"state missing on the kerasopt side: {missing}")
    if (ref.finalized is None) != (got.finalized is None):
        result.failures.append("finalize_variable_values: only one side ran it")
    elif ref.finalized is not None and got.finalized is not None:
        for v, ref_f in ref.finalized.items():
            result.add(oracle.measure(ref_f, got.finalized[v], travel_end.get(v, 0.0), tol,
                                      f"finalized {v}"))
    return result


# --------------------------------------------------------------------------- driver


def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None


def installed_backends() -> list[str]:
    """The front ends whose framework is importable (NumPy always)."""
    found = ["numpy"]
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    if importlib.util.find_spec("jax") is not None and importlib.util.find_spec("optax"):
        found.append("jax")
    return found


def cases_for(features: Iterable[str]) -> list[Case]:
    """Every (feature, registered algorithm) pair the feature applies to."""
    return [Case(f, a) for f in features for a in algorithm_names()
            if FEATURES[f].applies_to(a)]


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        self.enabled = enabled
        self.desc, self.total, self.count = desc, total, 0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                print(f"{desc}: {total} runs...", file=sys.stderr, flush=True)
            else:
                self.bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr,
                                leave=False)

    def update(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def verify(
    features: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    steps: int = DEFAULT_STEPS,
    factories: Mapping[str, Callable[..., Any]] | None = None,
    progress: bool = False,
) -> list[Result]:
    """Run every (feature, algorithm) on every backend through kerasopt and Keras and
    compare. ``factories`` replaces the kerasopt side per backend (see
    :data:`DEFAULT_FACTORIES`). Returns one :class:`Result` per row."""
    features = list(features or FEATURES)
    backends = list(backends or installed_backends())
    factories = {**DEFAULT_FACTORIES, **(factories or {})}
    cases = cases_for(features)
    problems = {c.key: make_problem(c, steps) for c in cases}
    per_backend = {
        b: [c for c in cases if (b, c.feature) not in UNSUPPORTED] for b in backends
    }
    keras_backends = sorted({BACKENDS[b][1] for b in backends if per_backend[b]})
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kerasopt-verify-") as directory:
        keras_runs = {}
        for kb in keras_backends:
            kb_cases = {c.key: c for b in backends if BACKENDS[b][1] == kb
                        for c in per_backend[b]}
            keras_runs[kb] = KerasRun(kb, [c.as_json() for c in kb_cases.values()],
                                      problems, directory)
        try:
            ours: dict[tuple[str, str], Trajectory | Exception] = {}
            total = sum(len(v) for v in per_backend.values())
            bar = _Progress(total, "kerasopt", progress)
            for b in backends:
                for case in per_backend[b]:
                    try:
                        with warnings.catch_warnings():  # None gradients warn, by design
                            warnings.simplefilter("ignore")
                            ours[b, case.key] = RUNNERS[b](
                                case, problems[case.key], factories[b])
                    except Exception as error:  # reported as a failed row
                        ours[b, case.key] = error
                    bar.update()
            bar.close()
            references = {}
            for kb, run in keras_runs.items():
                bar = _Progress(len(run.cases), f"Keras ({kb} backend)", progress)
                references[kb] = run.wait(bar.update)
                bar.close()
        finally:
            for run in keras_runs.values():
                run.kill()
    for b in backends:
        for case in cases:
            if (b, case.feature) in UNSUPPORTED:
                results.append(Result(case.feature, case.algo, b, 0,
                                      skipped=UNSUPPORTED[b, case.feature]))
                continue
            got = ours[b, case.key]
            if isinstance(got, Exception):
                results.append(Result(case.feature, case.algo, b, steps,
                                      failures=[f"kerasopt raised {got!r}"]))
                continue
            ref = references[BACKENDS[b][1]][case.key]
            results.append(compare(case, b, ref, got, problems[case.key].w0))
    return results


def format_table(results: Sequence[Result]) -> str:
    headers = ("optimizer", "feature", "backend", "steps", "max |diff|", "max rel diff",
               "err/tol", "result")
    rows = []
    for r in results:
        if r.skipped:
            rows.append((r.algo, r.feature, r.backend, "-", "-", "-", "-",
                         f"skipped ({r.skipped})"))
            continue
        rows.append((r.algo, r.feature, r.backend, str(r.steps), f"{r.abs_diff:.2e}",
                     f"{r.rel_diff:.2e}", f"{r.normalized:.3f}",
                     "PASS" if r.passed else "FAIL"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    numeric = {3, 4, 5, 6}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _parse_list(value: str, allowed: Iterable[str], what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    allowed = list(allowed)
    unknown = [x for x in items if x not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown}; choose from: {', '.join(allowed)}")
    return items


def _backend_hint(backend: str) -> str:
    from kerasopt._install import fix_command, torch_command

    packages, extra = BACKEND_PACKAGES[backend]
    commands = [torch_command()] if backend == "torch" else []
    commands.append(fix_command(extra))
    return f"{' and '.join(packages)} not installed; install with: " + "; ".join(commands)


def run(args: argparse.Namespace, factories: Mapping[str, Callable[..., Any]] | None = None
        ) -> int:
    """The command: returns 0 when every row passes, 1 on any failure, 2 without Keras."""
    if not keras_available():
        print(install_hint(), file=sys.stderr)
        return 2
    installed = installed_backends()
    backends = args.backends or installed
    missing = [b for b in backends if b not in installed]
    if missing:
        hints = "; ".join(f"{b}: {_backend_hint(b)}" for b in missing)
        print(f"kerasopt verify: backend(s) not installed: {hints}.", file=sys.stderr)
        return 2
    # Backends left out because their framework is missing (not by --backends): said and
    # counted as skipped.
    absent = [b for b in BACKENDS if b not in installed] if not args.backends else []
    features = args.features or (list(QUICK_FEATURES) if args.quick else list(FEATURES))
    steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    start = time.perf_counter()
    results = verify(features, backends, steps, factories, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print()
    print("err/tol = max |kerasopt - keras| / (atol + rtol*(|keras| + travel)); <= 1 passes "
          f"({oracle.describe_tolerances()}). Weights are compared after every step; state, "
          "counters and EMA weights at the end.")
    for r in failed:
        print(f"\nFAIL {r.algo} {r.feature} [{r.backend}]:")
        for message in r.failures[:4]:
            print(f"  {message}")
    ran = sum(1 for r in results if not r.skipped)
    skipped = len(results) - ran
    not_run = {b: [c for c in cases_for(features) if (b, c.feature) not in UNSUPPORTED]
               for b in absent}
    for b, cases in not_run.items():
        print(f"\nSkipped the {b} backend ({BACKENDS[b][0]}, {len(cases)} runs): "
              f"{_backend_hint(b)}")
    skipped += sum(len(cases) for cases in not_run.values())
    detail = f"; backend{'s' if len(absent) > 1 else ''} {', '.join(absent)} not installed" \
        if absent else ""
    print(f"\n{ran - len(failed)}/{ran} runs match Keras "
          f"({skipped} skipped{detail}) in {elapsed:.1f} s.")
    return 1 if failed else 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare kerasopt with the installed Keras, feature by feature",
        description=(
            "Run kerasopt and the installed Keras 3 on the same random problems, for every "
            "optimizer option, on each installed front end (the NumPy core and kerasopt.torch "
            "against Keras's torch backend, kerasopt.optax against Keras's JAX backend), and "
            "print the largest difference per feature. Exit code 0: all match; 1: a "
            "difference exceeds the tolerance; 2: Keras (or a requested backend) is missing."
        ),
    )
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                        help=f"steps per run (default {DEFAULT_STEPS}; {QUICK_STEPS} with "
                        "--quick)")
    parser.add_argument("--backends", default=None,
                        type=lambda v: _parse_list(v, BACKENDS, "backend"),
                        help="comma-separated: numpy,torch,jax (default: all installed)")
    parser.add_argument("--features", default=None,
                        type=lambda v: _parse_list(v, FEATURES, "feature"),
                        help="comma-separated features (default: all): " + ", ".join(FEATURES))
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and a representative subset of the features")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
