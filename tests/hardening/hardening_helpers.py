"""Helpers shared by the hardening suites: fresh-process environment, snapshots of an
optimizer's weights, state and counters, and exact comparisons of two snapshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """Environment for a fresh Python process that imports this checkout's kerasopt."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests" / "hardening"), str(ROOT / "tests"),
         env.get("PYTHONPATH", "")]
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


PYTHON = sys.executable


def snapshot_numpy(optimizer, variables):
    """Weights, optimizer variables and counters of a NumPy optimizer, as copies."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return (
        [np.array(v.numpy(), copy=True) for v in variables],
        [np.array(v.numpy(), copy=True) for v in optimizer.variables],
        int(optimizer.iterations.numpy()) if optimizer.built else 0,
        optimizer.skipped_steps,
        inner.skipped_steps if inner is not None else None,
    )


def assert_same_numpy(before, after):
    assert before[2:] == after[2:], (before[2:], after[2:])
    assert len(before[0]) == len(after[0]) and len(before[1]) == len(after[1])
    for x, y in zip(before[0] + before[1], after[0] + after[1]):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True)


def snapshot_torch(optimizer):
    """Parameters, state tensors and param-group values of a kerasopt.torch optimizer."""
    import torch

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    params = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
    ordered = [p for g in inner.param_groups for p in g["params"]]
    state = {
        i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inner.state[p].items()}
        for i, p in enumerate(ordered)
        if p in inner.state
    }
    groups = [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]
    extra = (getattr(optimizer, "dynamic_scale", None), getattr(optimizer, "step_counter", None))
    return params, state, groups, extra


def assert_same_torch(before, after):
    import torch

    assert len(before[0]) == len(after[0])
    for x, y in zip(before[0], after[0]):
        assert x.dtype == y.dtype and torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        assert before[1][key].keys() == after[1][key].keys()
        for slot, value in before[1][key].items():
            other = after[1][key][slot]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value.nan_to_num(7.0), other.nan_to_num(7.0)), slot
            else:
                assert value == other
    assert len(before[2]) == len(after[2])
    for g, h in zip(before[2], after[2]):
        assert g.keys() == h.keys(), (g.keys(), h.keys())
        for key in g:
            if key in ("lr",) and isinstance(g[key], float) and isinstance(h[key], float):
                assert g[key] == h[key] or (g[key] != g[key] and h[key] != h[key])
            else:
                assert g[key] is h[key] or g[key] == h[key], key
    assert before[3] == after[3]
