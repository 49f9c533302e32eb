"""Run the same optimizer problem through kerasopt.torch, Keras 3 (torch backend) and the
NumPy core, and measure the trajectories' differences with the parity tolerance."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kerasopt  # noqa: E402
import kerasopt.torch as kt  # noqa: E402

ATOL, RTOL = 1e-6, 1e-5
NAMES = ("dense/kernel", "dense/bias", "out/kernel")
SHAPES = ((6, 4), (4,), (4, 3))


@dataclass(frozen=True)
class Schedule:
    """A schedule by class name: built from keras.optimizers.schedules or kerasopt.schedules."""

    class_name: str
    kwargs: tuple

    def build(self, module: Any) -> Any:
        return getattr(module, self.class_name)(**dict(self.kwargs))


@dataclass(frozen=True)
class StepCallable:
    """A zero-argument callable rate; ``fn(completed_steps)`` gives the value."""

    fn: Callable[[int], float]


def problem(seed: int, steps: int, scale: float = 1.0, none_every: int | None = None):
    """Initial weights and a gradient sequence (``None`` for param 1 every ``none_every``)."""
    rng = np.random.default_rng(seed)
    w0 = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = []
    for step in range(steps):
        row = [(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]
        if none_every and step % none_every == 0:
            row[1] = None
        grads.append(row)
    return w0, grads


def _rate(spec: Any, schedules: Any, counter: list[int]) -> Any:
    if isinstance(spec, Schedule):
        return spec.build(schedules)
    if isinstance(spec, StepCallable):
        return lambda: spec.fn(counter[0])
    return spec


def run_torch(cls_name, config, w0, grads, exclude=None, state_dtype=None, param_dtype=None):
    """kerasopt.torch: the weights (float64 numpy) after every step."""
    config = dict(config)
    counter = [0]
    config["learning_rate"] = _rate(config.get("learning_rate", 0.001), kerasopt.schedules,
                                    counter)
    dtype = param_dtype or torch.float32
    params = [torch.nn.Parameter(torch.tensor(w, dtype=dtype)) for w in w0]
    kwargs = {"state_dtype": state_dtype} if state_dtype is not None else {}
    opt = getattr(kt, cls_name)(list(zip(NAMES, params)), **config, **kwargs)
    if exclude:
        opt.exclude_from_weight_decay(var_names=exclude)
    out = []
    for row in grads:
        for p, g in zip(params, row):
            p.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
        counter[0] += 1
        out.append([p.detach().double().numpy().copy() for p in params])
    return out, opt, params


def run_keras(cls_name, config, w0, grads, exclude=None):
    import warnings

    import keras

    config = dict(config)
    counter = [0]
    config["learning_rate"] = _rate(config.get("learning_rate", 0.001),
                                    keras.optimizers.schedules, counter)
    variables = [keras.Variable(w, name=n.split("/")[-1]) for w, n in zip(w0, NAMES)]
    opt = getattr(keras.optimizers, cls_name)(**config)
    if exclude:
        opt.exclude_from_weight_decay(var_names=exclude)
    opt.build(variables)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in grads:
            opt.apply([None if g is None else torch.tensor(g) for g in row], variables)
            counter[0] += 1
            out.append([np.asarray(v.numpy(), np.float64).copy() for v in variables])
    return out


def run_core(cls_name, config, w0, grads, exclude=None):
    import warnings

    config = dict(config)
    counter = [0]
    config["learning_rate"] = _rate(config.get("learning_rate", 0.001), kerasopt.schedules,
                                    counter)
    variables = [kerasopt.Variable(w.copy(), name=n) for w, n in zip(w0, NAMES)]
    opt = getattr(kerasopt, cls_name)(**config)
    if exclude:
        opt.exclude_from_weight_decay(var_names=exclude)
    opt.build(variables)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in grads:
            opt.apply(list(row), variables)
            counter[0] += 1
            out.append([np.asarray(v.numpy(), np.float64).copy() for v in variables])
    return out


def compare(ours: Sequence, reference: Sequence, w0: Sequence) -> tuple[float, float]:
    """(largest normalized error, largest absolute error) over every step and element;
    normalized = |diff| / (ATOL + RTOL * (|w_ref| + distance w_ref has travelled))."""
    travel = [np.zeros_like(w, dtype=np.float64) for w in w0]
    previous = [np.asarray(w, np.float64) for w in w0]
    worst, worst_abs = 0.0, 0.0
    for got_step, ref_step in zip(ours, reference, strict=True):
        for i, (got, ref) in enumerate(zip(got_step, ref_step)):
            travel[i] = travel[i] + np.abs(ref - previous[i])
            previous[i] = ref
            diff = np.abs(got - ref)
            if not np.all(np.isfinite(got) == np.isfinite(ref)):
                return float("inf"), float("inf")
            diff = np.where(np.isfinite(ref), diff, 0.0)
            bound = ATOL + RTOL * (np.abs(ref) + travel[i])
            worst = max(worst, float(np.max(diff / bound)))
            worst_abs = max(worst_abs, float(np.max(diff)))
    return worst, worst_abs
