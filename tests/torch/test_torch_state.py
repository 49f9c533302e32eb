"""state_dict / load_state_dict: bit-exact resume, and bad states refused before any change."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import kerasopt
import kerasopt.torch as kt


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]


def _train(model, opt, batches, scheduler=None):
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.scale_loss(loss).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


CONFIGS = {
    "Adam defaults": ("Adam", {}),
    "Adam amsgrad+wd+clip": ("Adam", {"amsgrad": True, "weight_decay": 0.01,
                                      "global_clipnorm": 0.5, "learning_rate": 0.01}),
    "Adamax ema+accumulation (mid cycle)": (
        "Adamax", {"use_ema": True, "ema_overwrite_frequency": 3,
                   "gradient_accumulation_steps": 3, "learning_rate": 0.01,
                   "loss_scale_factor": 4.0}),
    "Adam schedule": ("Adam", {"learning_rate": kerasopt.schedules.ExponentialDecay(
        0.01, 5, 0.5)}),
    "Adam bf16 params, float32 state": ("Adam", {"state_dtype": torch.float32}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_is_bit_identical(name):
    cls_name, config = CONFIGS[name]
    cls = getattr(kt, cls_name)
    dtype = torch.bfloat16 if "bf16" in name else torch.float32
    batches = [(x.to(dtype), y.to(dtype)) for x, y in _batches(11)]
    model = _model().to(dtype)
    straight = copy.deepcopy(model)
    straight_opt = cls(straight.named_parameters(), **config)
    _train(straight, straight_opt, batches)

    opt = cls(model.named_parameters(), **config)
    _train(model, opt, batches[:7])  # 7 = mid accumulation cycle for n=3
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = _model(seed=123).to(dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.named_parameters(), **config)
    opt2.load_state_dict(saved["opt"])
    assert opt2.raw_iterations == 7
    _train(resumed, opt2, batches[7:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        sa, sb = straight_opt.state[p], opt2.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype
            assert torch.equal(sa[key], sb[key]), key


def test_resume_with_torch_lr_scheduler():
    batches = _batches(12)
    model = _model()
    straight = copy.deepcopy(model)
    opt = kt.Adam(straight.parameters(), learning_rate=0.01)
    _train(straight, opt, batches, torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5))

    opt = kt.Adam(model.parameters(), learning_rate=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
    _train(model, opt, batches[:6], sched)
    state, sched_state = copy.deepcopy(opt.state_dict()), sched.state_dict()
    opt2 = kt.Adam(model.parameters(), learning_rate=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 4, gamma=0.5)
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched_state)
    _train(model, opt2, batches[6:], sched2)
    for a, b in zip(straight.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_across_devices():
    batches = _batches(8)
    model = _model()
    straight = copy.deepcopy(model)
    opt = kt.Adam(straight.parameters(), use_ema=True)
    _train(straight, opt, batches)
    opt = kt.Adam(model.parameters(), use_ema=True)
    _train(model, opt, batches[:4])
    state = opt.state_dict()
    gpu = copy.deepcopy(model).cuda()
    opt2 = kt.Adam(gpu.parameters(), use_ema=True)
    opt2.load_state_dict(state)
    assert all(s.device.type == "cuda" for st in opt2.state.values() for s in st.values())
    _train(gpu, opt2, [(x.cuda(), y.cuda()) for x, y in batches[4:]])
    for a, b in zip(straight.parameters(), gpu.parameters()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)


def _trained_state(cls=kt.Adam, **config):
    model = _model()
    opt = cls(model.parameters(), **config)
    _train(model, opt, _batches(2))
    return model, opt


def _snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
            [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups])


def _unchanged(model, opt, snap):
    params, state, groups = snap
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert {id(p) for p in opt.state} == set(state)
    for p, s in opt.state.items():
        assert all(torch.equal(s[k], state[id(p)][k]) for k in s)
    assert groups == [dict((k, v) for k, v in g.items() if k != "params")
                      for g in opt.param_groups]


def test_load_rejects_other_optimizers_before_changing_anything():
    model, opt = _trained_state()
    snap = _snapshot(model, opt)
    twin = copy.deepcopy(model)
    other = torch.optim.Adam(twin.parameters())
    torch.nn.functional.mse_loss(twin(torch.randn(2, 5)), torch.randn(2, 2)).backward()
    other.step()
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict(other.state_dict())
    _, adamax = _trained_state(kt.Adamax)
    with pytest.raises(ValueError, match="kerasopt.torch.Adamax"):
        opt.load_state_dict(adamax.state_dict())
    _unchanged(model, opt, snap)


def test_load_rejects_mismatched_shapes_before_changing_anything():
    model, opt = _trained_state(use_ema=True)
    snap = _snapshot(model, opt)
    state = copy.deepcopy(opt.state_dict())
    last = max(state["state"])
    state["state"][last]["velocity"] = torch.zeros(7)
    state["param_groups"][0]["iterations"] = 99
    with pytest.raises(ValueError, match=r"state 'velocity' has shape \(7,\)"):
        opt.load_state_dict(state)
    _unchanged(model, opt, snap)


def test_load_rejects_wrong_parameter_count():
    model, opt = _trained_state()
    snap = _snapshot(model, opt)
    small = torch.nn.Linear(5, 4)
    opt_small = kt.Adam(small.parameters())
    small(torch.randn(2, 5)).sum().backward()
    opt_small.step()
    with pytest.raises(ValueError, match="has 2 parameters in the state_dict and 4 here"):
        opt.load_state_dict(opt_small.state_dict())
    with pytest.raises(ValueError, match="expects a dict with 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    _unchanged(model, opt, snap)


def test_schedule_group_honours_an_external_lr_for_one_step():
    """A 0 written into a scheduled group's "lr" (as torch.distributed.checkpoint writes for
    its state-creating step) applies to the next step only: no decay, no update then."""
    p = torch.nn.Parameter(torch.ones(3))
    schedule = kerasopt.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    opt = kt.Adamax([p], learning_rate=schedule, weight_decay=0.5)
    group = opt.param_groups[0]
    p.grad = torch.ones(3)
    opt.step()  # reports the schedule's rate
    assert group["lr"] == pytest.approx(0.1)
    before = p.detach().clone()
    group["lr"] = 0.0
    p.grad = torch.zeros(3)  # the momentum alone would move p at a non-zero rate
    opt.step()
    assert torch.equal(p.detach(), before)  # no decay, no update at rate 0
    opt.step()  # the schedule decides again
    assert group["lr"] == pytest.approx(float(schedule(2)))
    assert not torch.equal(p.detach(), before)


@pytest.mark.parametrize("config", [
    {"use_ema": True, "gradient_accumulation_steps": 2, "weight_decay": 0.1},
    {"learning_rate": kerasopt.schedules.ExponentialDecay(0.01, 2, 0.5), "weight_decay": 0.1,
     "use_ema": True},
], ids=["float-rate", "schedule"])
def test_dcp_state_initialising_step_counts_and_changes_nothing(config):
    """torch.distributed.checkpoint's get_optimizer_state_dict creates the state of a fresh
    optimizer with a step() of zero gradients (lr 0): nothing but the state may change."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, straight = _model(), _model()
    opt, straight_opt = kt.Adam(model.parameters(), **config), kt.Adam(straight.parameters(),
                                                                       **config)
    weights = [p.detach().clone() for p in model.parameters()]
    saved = get_optimizer_state_dict(model, opt)
    assert opt.raw_iterations == 0 and saved["param_groups"][0]["iterations"] == 0
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w) and p.grad is None
        assert torch.equal(opt.state[p]["average"], w)
        assert not torch.any(opt.state[p]["momentum"])
    batches = _batches(5)
    _train(model, opt, batches)
    _train(straight, straight_opt, batches)
    for p, q in zip(model.parameters(), straight.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, straight_opt.state[q][key]), key
    assert opt.raw_iterations == straight_opt.raw_iterations == 5
