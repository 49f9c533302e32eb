"""Run the same optimizer problem through kerasopt.torch, Keras 3 (torch backend) and the
NumPy core, and measure the trajectories' differences with the parity tolerance.

Keras and the NumPy core run through :mod:`kerasopt.cli.oracle` (the one oracle, shared with
``kerasopt verify`` and the other parity tests), which also holds the rule; only the
``kerasopt.torch`` side is run here."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kerasopt  # noqa: E402
import kerasopt.torch as kt  # noqa: E402
from kerasopt.cli import oracle  # noqa: E402
from kerasopt.cli.oracle import Schedule, StepCallable  # noqa: E402, F401

NAMES = ("dense/kernel", "dense/bias", "out/kernel")
SHAPES = ((6, 4), (4,), (4, 3))


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


def _with_rate(config: dict) -> dict:
    return {"learning_rate": 0.001, **config}


def run_torch(cls_name, config, w0, grads, exclude=None, state_dtype=None, param_dtype=None):
    """kerasopt.torch: the weights (float64 numpy) after every step."""
    counter = oracle.Counter()
    config = oracle.resolve_config(_with_rate(config), kerasopt.schedules, counter)
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
        counter.step += 1
        out.append([p.detach().double().numpy().copy() for p in params])
    return out, opt, params


def run_keras(cls_name, config, w0, grads, exclude=None):
    """Keras 3 (torch backend) through the oracle: the weights after every step."""
    return oracle.run_keras(cls_name, _with_rate(config), w0, grads,
                            var_names=[n.split("/")[-1] for n in NAMES],
                            exclude_names=exclude or None).weights


def run_core(cls_name, config, w0, grads, exclude=None):
    """kerasopt's NumPy core through the oracle: the weights after every step."""
    return oracle.run_kerasopt(cls_name, _with_rate(config), w0, grads, var_names=NAMES,
                               exclude_names=exclude or None).weights


def compare(ours: Sequence, reference: Sequence, w0: Sequence,
            dtype: Any = np.float32) -> tuple[float, float]:
    """(largest normalized error, largest absolute error) over every step and element under
    the oracle's rule for ``dtype`` (the runs' dtype; either side may be stored wider):
    normalized = |diff| / (atol + rtol * (|w_ref| + distance w_ref has travelled)). Any
    other mismatch (NaNs in other places, a shape) is an infinite error."""
    result, _ = oracle.compare_weights(w0, reference, ours, tol=oracle.tolerance(dtype))
    if result.failures and result.normalized <= 1.0:
        return float("inf"), float("inf")
    return result.normalized, result.abs_diff
