"""kerasopt.torch's cached step plans (kerasopt._torch_plan) follow every change a user can
make between steps: each scenario runs the same sequence of steps and changes through the
fused, planned path and through the reference path (the pure functions), and both must
agree after every step."""

from __future__ import annotations

import pytest
import torch

import kerasopt.torch as kt
from kerasopt import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

SHAPES = [(6, 4), (5,), (), (3, 3)]


def _swap_data(opt, params):
    params[0].data = params[0].data.clone() * 0.5


def _truncate_data(opt, params):
    # Same storage, same first address, fewer elements: the plan must not write the old size.
    for p in params[:1]:
        p.data = p.data.reshape(-1)[:10].reshape(2, 5)
        state = opt.state[p]
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape != p.shape:
                state[key] = value.reshape(-1)[:10].reshape(2, 5).clone()


def _swap_slot_storage(opt, params):
    state = opt.state[params[1]]
    state["momentum"].data = torch.full_like(state["momentum"], 0.25)


def _replace_slot(opt, params):
    state = opt.state[params[1]]
    key = next(k for k in state if k == "momentum")
    state[key] = torch.full_like(state[key], 0.25)


def _transpose_data(opt, params):
    # Same storage, same address, same shape: only the strides say it is now transposed.
    params[3].data = params[3].data.t()


def _transpose_slot(opt, params):
    opt.state[params[3]]["momentum"].t_()


def _replace_state_dict(opt, params):
    opt.state[params[2]] = {}


def _clear_state(opt, params):
    opt.state.clear()


def _reload(opt, params):
    saved = opt.state_dict()
    for values in saved["state"].values():
        for value in values.values():
            if torch.is_tensor(value) and value.is_floating_point():
                value.mul_(0.5)
    opt.load_state_dict(saved)


def _freeze(opt, params):
    params[1].requires_grad_(False)


def _exclude(opt, params):
    opt.exclude_from_weight_decay(var_list=[params[0]])


def _hyperparameters(opt, params):
    group = opt.param_groups[0]
    group["lr"] = 0.003
    group["beta_1"] = 0.5
    if group["clipnorm"]:
        group["clipnorm"] = 0.2
    else:
        group["clipvalue"] = 0.1


def _add_group(opt, params):
    extra = torch.ones(7, dtype=params[0].dtype, requires_grad=True)
    params.append(extra)
    opt.add_param_group({"params": [extra], "weight_decay": None})


SCENARIOS = {
    "steady": None,
    "param data swapped": _swap_data,
    "slot tensor replaced": _replace_slot,
    "slot storage swapped": _swap_slot_storage,
    "param truncated in place": _truncate_data,
    "param transposed in place": _transpose_data,
    "slot transposed in place": _transpose_slot,
    "param state dict replaced": _replace_state_dict,
    "state cleared": _clear_state,
    "state_dict reloaded": _reload,
    "param frozen": _freeze,
    "weight decay exclusion": _exclude,
    "hyperparameters changed": _hyperparameters,
    "group added": _add_group,
}

# A frozen parameter's gradient is ignored, a non-contiguous tensor does not fit the kernel:
# the general path takes every step from the change on.
DECLINED_AFTER_CHANGE = {"param frozen", "param transposed in place", "slot transposed in place"}

GRADIENTS = {
    "fresh": lambda p, g: g,
    "non-contiguous": lambda p, g: g.t().contiguous().t() if g.dim() == 2 else g,
    "one missing": lambda p, g: None if p.shape == (5,) else g,
    "sparse": lambda p, g: g.to_sparse(1) if g.dim() == 2 else g,
}


def _trajectory(cls, config, dtype, change, gradients, fused, monkeypatch, steps=8):
    generator = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=generator, dtype=dtype, requires_grad=True)
              for s in SHAPES]
    opt = cls(params, learning_rate=0.01, weight_decay=0.05, **config)
    out = []
    planned = []
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(kernels, "available", lambda: False)
        else:
            real = opt._planned_step
            patch.setattr(opt, "_planned_step", lambda: planned.append(real()) or planned[-1])
        for step in range(steps):
            if step == 3 and change is not None:
                change(opt, params)
            for p in params:
                g = torch.randn(p.shape, generator=generator, dtype=dtype)
                p.grad = gradients(p, g)
            opt.step()
            out.append([p.detach().clone() for p in params])
    return out, planned


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("cls, config", [
    (kt.Adam, {"amsgrad": True, "use_ema": True, "ema_overwrite_frequency": 3}),
    (kt.Adamax, {"gradient_accumulation_steps": 2, "clipnorm": 0.5}),
])
def test_plan_follows_changes(cls, config, scenario, monkeypatch):
    change = SCENARIOS[scenario]
    fused, planned = _trajectory(cls, config, torch.float32, change, GRADIENTS["fresh"], True,
                                 monkeypatch)
    reference, _ = _trajectory(cls, config, torch.float32, change, GRADIENTS["fresh"], False,
                               monkeypatch)
    _assert_close(fused, reference, torch.float32)
    # The planned path runs from step 1 on; a change that leaves a parameter without state
    # sends the next step (which creates it) down the general path.
    assert all(planned[1:3]), planned
    if scenario in DECLINED_AFTER_CHANGE:
        assert not any(planned[3:]), planned
        return
    assert all(planned[4:]), planned
    if scenario not in ("group added", "param state dict replaced", "state cleared"):
        assert planned[3], planned


@pytest.mark.parametrize("kind", sorted(GRADIENTS))
def test_plan_declines_unusual_gradients(kind, monkeypatch):
    config = {"clipvalue": 0.5}
    fused, planned = _trajectory(kt.Adam, config, torch.float32, None, GRADIENTS[kind], True,
                                 monkeypatch)
    reference, _ = _trajectory(kt.Adam, config, torch.float32, None, GRADIENTS[kind], False,
                               monkeypatch)
    _assert_close(fused, reference, torch.float32)
    if kind != "fresh":
        assert not any(planned)
    else:
        assert all(planned[1:])


def _truncate_slot_in_place(opt, params):
    # Same storage, same first address, fewer elements: the plan must not write the old size.
    m = opt.state[params[0]]["momentum"]
    m.data = m.data[: m.numel() * 9 // 10]


def _truncate_keeping_gradient(opt, params):
    # The parameter shrinks in place (same first address); its gradient keeps the old shape.
    params[0].data = params[0].data.reshape(-1)[:4]


def _reshape_slot(opt, params):
    # As many elements as the parameter, in another shape: the reference cannot broadcast it.
    state = opt.state[params[0]]
    state["momentum"] = state["momentum"].reshape(1000, -1)


@pytest.mark.parametrize("change", [_truncate_slot_in_place, _truncate_keeping_gradient,
                                    _reshape_slot])
def test_plan_refuses_what_the_reference_refuses(change, monkeypatch):
    raised = {}
    for fused in (True, False):
        with monkeypatch.context() as patch:
            if not fused:
                patch.setattr(kernels, "available", lambda: False)
            p = torch.zeros(100_000, requires_grad=True)
            opt = kt.Adam([p], learning_rate=0.01)
            for _ in range(2):
                p.grad = torch.ones_like(p)
                opt.step()
            p.grad = torch.ones_like(p)
            change(opt, [p])
            with pytest.raises((RuntimeError, ValueError)) as error:
                opt.step()
            raised[fused] = error.type
    assert raised[True] is raised[False], raised


def test_a_later_groups_state_of_another_shape_raises_as_the_reference(monkeypatch):
    """With several groups every state tensor is checked before the first group's kernel
    runs, so the step is the reference path's (which refuses the broadcast), not a fused
    step refused half-way."""
    messages = {}
    for fused in (True, False):
        with monkeypatch.context() as patch:
            if not fused:
                patch.setattr(kernels, "available", lambda: False)
            a, b = torch.zeros(5, requires_grad=True), torch.zeros(4, 6, requires_grad=True)
            opt = kt.Adam([{"params": [a]}, {"params": [b], "weight_decay": 0.1}],
                          learning_rate=0.01)
            for _ in range(2):
                a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
                opt.step()
            opt.state[b]["momentum"] = opt.state[b]["momentum"].reshape(6, 4)
            a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
            with pytest.raises(RuntimeError) as error:
                opt.step()
            messages[fused] = str(error.value)
    assert messages[True] == messages[False], messages


def test_step_bumps_autograd_versions():
    w = torch.ones(3, requires_grad=True)
    opt = kt.Adam([w], learning_rate=0.1)
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    y = (w * w).sum()  # saves w for backward
    w.grad = torch.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def _assert_close(got, want, dtype):
    eps = torch.finfo(dtype).eps
    for step, (a_step, b_step) in enumerate(zip(got, want)):
        for a, b in zip(a_step, b_step):
            assert a.shape == b.shape
            assert torch.all((a - b).abs() <= 16 * eps * b.abs().max() + 1e-30), (
                f"step {step}: max diff {(a - b).abs().max()}"
            )
