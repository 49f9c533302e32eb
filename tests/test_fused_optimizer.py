"""Through the optimizer API, the fused single-pass step (kerasopt.kernels) and the readable
reference path (the pure functions, one operation at a time) agree on every feature."""

from __future__ import annotations

import numpy as np
import pytest

import kerasopt
from kerasopt import kernels
from operand_ulps import assert_trajectories_close

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

FEATURES = {
    "plain": {},
    "clipnorm": {"clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.05},
    "weight_decay": {"weight_decay": 0.1},
    "ema_overwrite": {"use_ema": True, "ema_overwrite_frequency": 3},
    "accumulation": {"gradient_accumulation_steps": 3},
    "loss_scale_factor": {"loss_scale_factor": 64.0},
    "everything": {"global_clipnorm": 1.0, "weight_decay": 0.05, "use_ema": True,
                   "ema_overwrite_frequency": 4, "gradient_accumulation_steps": 2,
                   "loss_scale_factor": 8.0},
}


def _run(cls, config, dtype, fused, monkeypatch, *, steps=12, sparse=False):
    rng = np.random.default_rng(0)
    shapes = [(6, 4), (5,), ()]
    variables = [kerasopt.Variable(rng.standard_normal(s).astype(dtype), name=f"v{i}")
                 for i, s in enumerate(shapes)]
    opt = cls(learning_rate=0.01, **config)
    opt.exclude_from_weight_decay(var_names=["v1"])
    calls = []
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(kernels, "available", lambda: False)
        else:
            real, real_rows = kernels.fused_step, kernels.fused_rows_step
            patch.setattr(kernels, "fused_step", lambda *a, **k: calls.append(1) or real(*a, **k))
            patch.setattr(kernels, "fused_rows_step",
                          lambda *a, **k: calls.append(1) or real_rows(*a, **k))
        initial = [v.numpy() for v in variables]
        trajectory = []
        for _ in range(steps):
            grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
            if sparse:
                rows = rng.integers(0, 6, 4)
                grads[0] = kerasopt.IndexedSlices(grads[0][:4], rows, (6, 4))
            opt.apply(grads, variables)
            trajectory.append([v.numpy() for v in variables + opt.variables])
    state = trajectory[0][len(variables):] if steps else []
    return trajectory, initial + [np.zeros_like(x) for x in state], len(calls)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("cls, extra", [(kerasopt.Adam, {}), (kerasopt.Adam, {"amsgrad": True}),
                                        (kerasopt.Adamax, {})])
def test_fused_matches_reference(cls, extra, feature, dtype, monkeypatch):
    config = {**FEATURES[feature], **extra}
    fused, _, calls = _run(cls, config, dtype, True, monkeypatch)
    reference, initial, _ = _run(cls, config, dtype, False, monkeypatch)
    assert calls > 0, "the fused kernel was not used"
    # Elementwise the two paths round identically (a few ulps at most). With clipnorm /
    # global_clipnorm the kernel sums the squares in float64, which can move the clip scale
    # by an ulp. Either way the bound is in ulps of each step's operands.
    assert_trajectories_close(fused, reference, initial, ulps=16 if "clipnorm" in str(config)
                              else 4)


@pytest.mark.parametrize("cls", [kerasopt.Adam, kerasopt.Adamax])
def test_sparse_rows_fused_matches_reference(cls, monkeypatch):
    fused, _, calls = _run(cls, {}, np.float32, True, monkeypatch, sparse=True)
    reference, _, _ = _run(cls, {}, np.float32, False, monkeypatch, sparse=True)
    assert calls > 0
    for got, want in zip(fused, reference):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("built_order", [True, False])
def test_variable_listed_twice_takes_the_reference_path(built_order, monkeypatch):
    """Keras updates a variable listed twice twice in a row, both times through the slots
    of its last position; the fused path declines rather than update it by position (or
    twice in one launch)."""

    def run(fused):
        v = kerasopt.Variable(np.array([1.0, 2.0, 3.0], np.float32), name="v")
        w = kerasopt.Variable(np.array([-1.0, 0.5], np.float32), name="w")
        opt = kerasopt.Adam(learning_rate=0.1)
        opt.build([v, w, v])
        calls = []
        with monkeypatch.context() as patch:
            if not fused:
                patch.setattr(kernels, "available", lambda: False)
            real = kernels.fused_step
            patch.setattr(kernels, "fused_step", lambda *a, **k: calls.append(1) or real(*a, **k))
            for g in ([1.0, 1.0, 1.0], [0.5, -1.0, 2.0], [-2.0, 0.25, 1.0]):
                g = np.array(g, np.float32)
                grads, variables = [g, np.ones(2, np.float32), 2 * g], [v, w, v]
                if not built_order:
                    grads, variables = [g, 2 * g], [v, v]
                opt.apply(grads, variables)
        return v.numpy(), [s.numpy() for s in opt.variables], calls

    fused_v, fused_slots, calls = run(True)
    reference_v, reference_slots, _ = run(False)
    assert not calls
    np.testing.assert_array_equal(fused_v, reference_v)
    for a, b in zip(fused_slots, reference_slots):
        np.testing.assert_array_equal(a, b)
    # The first occurrence's momentum and velocity (after the iteration count and the rate)
    # never move: Keras reads the last position's.
    assert not fused_slots[2].any() and not fused_slots[3].any()
