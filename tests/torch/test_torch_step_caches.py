"""What kerasopt.torch keeps between steps (the resolved hyperparameters, the float rate's
float32 tensor, the state columns, the torch 0-d operands of the kernel scalars) is forgotten
whenever what it was made from changes: each edit between steps gives the same trajectory,
bit for bit, as an optimizer that keeps nothing (every cache dropped before every step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kerasopt.torch as kt
from kerasopt import kernels
from kerasopt.kernels import scalars

SHAPES = [(6, 4), (5,), (3, 3)]


def _forget(opt):
    """Drop everything the optimizer and the scalar math keep between steps."""
    opt._resolved, opt._rate_tensors, opt._columns = {}, {}, {}
    opt._checked_groups = None
    opt._plans = []
    opt._state_snapshot = None
    scalars._MATHS.maths = {}


def _set(key, value):
    def change(opt, step):
        opt.param_groups[0][key] = value
    return change


def _same_lr_new_object(opt, step):
    group = opt.param_groups[0]
    group["lr"] = float(str(group["lr"]))  # equal value, another float object


def _lr_back_and_forth(opt, step):
    opt.param_groups[0]["lr"] = 0.003 if step % 2 else 0.01


def _tensor_lr_filled(opt, step):
    group = opt.param_groups[0]
    if not isinstance(group["lr"], torch.Tensor):
        group["lr"] = torch.tensor(0.01)
    else:
        group["lr"].fill_(0.01 / (step + 1))  # in place: the same object, another value


def _callable_beta(opt, step):
    opt.param_groups[0]["beta_1"] = lambda: 0.5 + 0.05 * step


EDITS = {
    "lr": _set("lr", 0.003),
    "lr equal, new object": _same_lr_new_object,
    "lr back and forth": _lr_back_and_forth,
    "tensor lr filled in place": _tensor_lr_filled,
    "betas": _set("betas", (0.5, 0.9)),
    "beta_1": _set("beta_1", 0.5),
    "beta_2": _set("beta_2", 0.9),
    "callable beta_1": _callable_beta,
    "epsilon": _set("epsilon", 1e-3),
    "weight_decay": _set("weight_decay", 0.1),
    "weight_decay off": _set("weight_decay", None),
    "clipvalue": _set("clipvalue", 1e-3),
    "use_ema": _set("use_ema", True),
    "ema_momentum": _set("ema_momentum", 0.5),
}


def _trajectory(cls, dtype, edit, forget, scheduler=None, steps=8, **config):
    generator = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=generator, dtype=dtype, requires_grad=True)
              for s in SHAPES]
    opt = cls(params, learning_rate=0.01, weight_decay=0.05, **config)
    schedule = scheduler(opt) if scheduler is not None else None
    out = []
    for step in range(steps):
        if step >= 3 and edit is not None:
            edit(opt, step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        if forget:
            _forget(opt)
        opt.step()
        if schedule is not None:
            schedule.step()
        out.append([p.detach().clone() for p in params]
                   + [t.clone() for p in params for t in opt.state[p].values()])
    return out


def _assert_identical(got, want):
    for step, (a_step, b_step) in enumerate(zip(got, want, strict=True)):
        for a, b in zip(a_step, b_step, strict=True):
            assert torch.equal(a, b), f"step {step}: max diff {(a - b).abs().max()}"


pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("cls, dtype", [(kt.Adam, torch.float32), (kt.Adamax, torch.float64)])
def test_edits_between_steps_act_as_without_caches(cls, dtype, edit):
    config = {"use_ema": True} if edit == "ema_momentum" else {}
    warm = _trajectory(cls, dtype, EDITS[edit], forget=False, **config)
    cold = _trajectory(cls, dtype, EDITS[edit], forget=True, **config)
    _assert_identical(warm, cold)
    if edit != "lr equal, new object":  # the edit did change the steps
        unedited = _trajectory(cls, dtype, None, forget=False, **config)
        last, before = warm[-1], unedited[-1]
        assert len(last) != len(before) or not all(map(torch.equal, last, before))


@pytest.mark.parametrize("scheduler", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20),
], ids=["StepLR", "OneCycleLR (cycles betas)"])
@pytest.mark.parametrize("cls", [kt.Adam, kt.Adamax])
def test_torch_schedulers_act_as_without_caches(cls, scheduler):
    warm = _trajectory(cls, torch.float32, None, forget=False, scheduler=scheduler)
    cold = _trajectory(cls, torch.float32, None, forget=True, scheduler=scheduler)
    _assert_identical(warm, cold)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kept_operands_give_torchs_own_0d_pow_and_sqrt(dtype):
    """The powers and square roots of the kernel scalars, through the 0-d operands kept
    between calls, are bit for bit those of Keras's torch backend: torch.pow / torch.sqrt of
    fresh 0-d tensors of the dtype (the same math object, called again and again)."""
    np_dtype = np.dtype(np.float32 if dtype == torch.float32 else np.float64)
    math = scalars.scalar_math(torch.zeros((), dtype=dtype), np_dtype)
    rng = np.random.default_rng(0)
    bases = [0.9, 0.999, 0.5, 0.0, 1e-7, 0.3333333333333333, *rng.uniform(0, 1, 50).tolist()]
    exponents = [1, 2, 3, 10, 1000, 123457, 2**24 + 1, 2**40 + 3, 2.5, *range(1, 40, 7)]
    for base in bases:
        for exponent in exponents:
            want = torch.pow(torch.tensor(base, dtype=dtype), torch.tensor(exponent, dtype=dtype))
            got = math.power(base, exponent)
            assert type(got) is np_dtype.type
            assert np.array_equal(np.array(got), want.numpy()), (base, exponent)
            x = math.one - got
            root = torch.sqrt(torch.tensor(x, dtype=dtype))
            assert np.array_equal(np.array(math.sqrt(x)), root.numpy()), x


def test_torchs_step_wrapper_runs_whenever_it_has_work():
    """Hooks (global and per-optimizer, pre hooks that replace the arguments) and the profiler
    range ``Optimizer.step#<class>.step`` are torch.optim's, also now that a step without
    either skips torch's wrapper."""
    from torch.optim import optimizer as torch_optimizer

    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = kt.Adam([p], learning_rate=0.1)
    calls = []

    def replace_closure(optimizer, args, kwargs):
        calls.append("pre")
        return args, {"closure": lambda: calls.append("closure") or 1.5}

    handles = [opt.register_step_pre_hook(replace_closure),
               opt.register_step_post_hook(lambda *a: calls.append("post")),
               torch_optimizer.register_optimizer_step_pre_hook(
                   lambda *a: calls.append("global pre")),
               torch_optimizer.register_optimizer_step_post_hook(
                   lambda *a: calls.append("global post"))]
    try:
        assert opt.step() == 1.5
        assert calls == ["global pre", "pre", "closure", "post", "global post"]
    finally:
        for handle in handles:
            handle.remove()
    calls.clear()
    assert opt.step() is None and calls == []
    with torch.profiler.profile() as profile:
        opt.step()
    assert "Optimizer.step#Adam.step" in {event.name for event in profile.events()}
    assert opt.param_groups[0]["iterations"] == 3


def test_a_step_under_inference_mode_leaves_later_steps_working():
    """The kept 0-d operands are normal tensors even when the first step that builds them runs
    under ``torch.inference_mode()`` (in-place writes into inference tensors outside it would
    raise, for every later step of every optimizer of the thread)."""
    import threading

    errors, results = [], []

    def run():  # a thread of its own: the kept operands are built afresh in it
        try:
            w = torch.nn.Parameter(torch.linspace(-1, 1, 10))
            first = kt.Adam([w], learning_rate=0.0123, beta_1=0.8123)
            w.grad = torch.ones(10)
            with torch.inference_mode():
                first.step()
            v = torch.nn.Parameter(torch.linspace(-1, 1, 10))
            later = kt.Adam([v], learning_rate=0.0123, beta_1=0.8123)
            v.grad = torch.ones(10)
            later.step()
            later.step()
            results.append(v.detach().clone())
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not errors, errors
    reference = torch.nn.Parameter(torch.linspace(-1, 1, 10))
    opt = kt.Adam([reference], learning_rate=0.0123, beta_1=0.8123)
    for _ in range(2):
        reference.grad = torch.ones(10)
        opt.step()
    assert torch.equal(results[0], reference.detach())
