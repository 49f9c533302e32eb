"""kerasopt.torch's fused single-pass step (kerasopt.kernels) and its reference path (the
pure functions on torch tensors) agree through the optimizer API on every feature."""

from __future__ import annotations

import pytest
import torch

from kerasopt import kernels
from operand_ulps import assert_trajectories_close
from optimizer_db import ALGORITHM_VARIANTS, no_decay, torch_class

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


def _run(cls, config, dtype, fused, monkeypatch, steps=12, one_group=False):
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (5,), ()]
    params = [torch.randn(s, generator=generator, dtype=dtype, requires_grad=True)
              for s in shapes]
    groups = ([{"params": params}] if one_group
              else [{"params": params[:2]},
                    {"params": params[2:], "weight_decay": no_decay(cls.spec.name).get(
                        "weight_decay")}])
    opt = cls(groups, learning_rate=0.01, **config)
    calls = []
    with monkeypatch.context() as patch:
        if fused:
            real, planned = kernels.fused_step, kernels.fused_step_table
            patch.setattr(kernels, "fused_step",
                          lambda *a, **k: calls.append("general") or real(*a, **k))
            patch.setattr(kernels, "fused_step_table",
                          lambda *a, **k: calls.append("planned") or planned(*a, **k))
        else:
            patch.setattr(kernels, "available", lambda: False)
        initial = [p.detach().clone() for p in params]
        trajectory = []
        for _ in range(steps):
            for p, s in zip(params, shapes):
                p.grad = torch.randn(s, generator=generator, dtype=dtype) * 3
            opt.step()
            state = [t.clone() for p in params for t in opt.state[p].values()
                     if torch.is_tensor(t)]
            trajectory.append([p.detach().clone() for p in params] + state)
    # The state starts at zero (the EMA average at the weights: looser, as it should be).
    initial += [torch.zeros_like(t) for t in trajectory[0][len(params):]] if steps else []
    return trajectory, calls, initial


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("cls, extra", [(torch_class(a), extra)
                                        for a, extra in ALGORITHM_VARIANTS])
def test_fused_matches_reference(cls, extra, feature, dtype, monkeypatch):
    config = {**FEATURES[feature], **extra}
    # A global norm spanning several groups takes the reference path; one group is fused.
    one_group = "global_clipnorm" in config
    fused, calls, _ = _run(cls, config, dtype, True, monkeypatch, one_group=one_group)
    reference, _, initial = _run(cls, config, dtype, False, monkeypatch, one_group=one_group)
    # The first step creates the state (general fused path); the later ones run the cached
    # plans of kerasopt._torch_plan.
    first = calls.index("planned")
    assert first > 0 and set(calls[:first]) == {"general"}, calls
    assert set(calls[first:]) == {"planned"}, calls
    # torch's own sqrt is not correctly rounded, and the kernel sums a clip norm in
    # float64: the paths differ by a few ulps of each step's operands.
    assert_trajectories_close(fused, reference, initial)
