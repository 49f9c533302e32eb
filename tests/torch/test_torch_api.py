"""The torch.optim API of kerasopt.torch: groups, names, closures, schedulers, EMA, dtypes,
sparse gradients, and bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import kerasopt
import kerasopt.torch as kt
from optimizer_db import ALGORITHMS, torch_class

CLASSES = [torch_class(a) for a in ALGORITHMS]


def _params(seed=0, shapes=((3, 2), (2,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("cls", CLASSES)
def test_is_a_torch_optimizer(cls):
    params = _params()
    opt = cls(params)
    assert isinstance(opt, torch.optim.Optimizer)
    group = opt.param_groups[0]
    assert group["lr"] == 0.001 and group["beta_1"] == 0.9 and group["epsilon"] == 1e-7
    assert group["iterations"] == 0 and opt.iterations == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_param_groups_equal_separate_optimizers(cls):
    a, b = _params(0), _params(1)
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    opt = cls([{"params": a}, {"params": b, "learning_rate": 0.1, "beta_1": 0.5,
                                "clipvalue": 0.2}], learning_rate=0.01)
    opt_a = cls(a2, learning_rate=0.01)
    opt_b = cls(b2, learning_rate=0.1, beta_1=0.5, clipvalue=0.2)
    for step in range(5):
        _grads(a + b, seed=step)
        _grads(a2 + b2, seed=step)
        opt.step()
        opt_a.step()
        opt_b.step()
    for x, y in zip(a + b, a2 + b2):
        assert torch.equal(x, y)
    assert opt.param_groups[1]["lr"] == 0.1


def test_global_clipnorm_spans_all_groups():
    params = _params()
    twin = copy.deepcopy(params)
    opt = kt.Adam([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                  global_clipnorm=0.1, learning_rate=0.1)
    single = kt.Adam(twin, global_clipnorm=0.1, learning_rate=0.1)
    _grads(params)
    _grads(twin)
    opt.step()
    single.step()
    for x, y in zip(params, twin):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-7)


@pytest.mark.parametrize("cls", CLASSES)
def test_step_closure_zero_grad_and_skipped_params(cls):
    model = torch.nn.Linear(3, 1)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    unused = torch.nn.Parameter(torch.ones(2))
    opt = cls([*model.parameters(), frozen, unused], learning_rate=0.1)
    x = torch.randn(4, 3)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(frozen, torch.ones(2)) and torch.equal(unused, torch.ones(2))
    assert frozen not in opt.state
    assert torch.equal(opt.state[unused]["momentum"], torch.zeros(2))  # built, untouched
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    iterations = opt.raw_iterations
    assert opt.step() is None  # no gradient: torch.optim's no-op, nothing counted
    assert opt.raw_iterations == iterations


def test_named_parameters_drive_weight_decay_exclusion():
    model = torch.nn.Linear(3, 2)
    twin = copy.deepcopy(model)
    opt = kt.Adamax(model.named_parameters(), weight_decay=0.5, learning_rate=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    twin_opt = kt.Adamax(twin.parameters(), weight_decay=0.5, learning_rate=0.1)
    twin_opt.exclude_from_weight_decay(var_list=[twin.bias])
    for module in (model, twin):
        module.weight.grad = torch.zeros_like(module.weight)
        module.bias.grad = torch.zeros_like(module.bias)
    bias = model.bias.detach().clone()
    opt.step()
    twin_opt.step()
    assert torch.equal(model.bias, bias)  # excluded: zero gradient, no decay
    torch.testing.assert_close(model.weight, twin.weight * 1, rtol=0, atol=0)
    assert not torch.equal(model.weight, torch.zeros_like(model.weight))
    with pytest.raises(ValueError, match="needs parameter names"):
        twin_opt.exclude_from_weight_decay(var_names=["bias"])


@pytest.mark.parametrize("cls", CLASSES)
def test_add_param_group_and_scale_loss(cls):
    a, b = _params(0), _params(1)
    opt = cls(a, loss_scale_factor=16.0, learning_rate=0.1)
    _grads(a)
    opt.step()
    opt.add_param_group({"params": b, "learning_rate": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["iterations"] == 1
    assert float(opt.scale_loss(torch.tensor(2.0))) == 32.0
    reference = copy.deepcopy(b)
    ref_opt = cls(reference, learning_rate=0.5)
    _grads(a + b, seed=3)
    for p in b:
        p.grad *= 16.0
    _grads(reference, seed=3)
    for p, q in zip(reference, b):
        p.grad = q.grad / 16.0
    opt.step()
    ref_opt.step()
    # The new group's step counter is 2 (the optimizer's), so the bias correction differs
    # from a fresh optimizer's; the update still moves every new parameter.
    assert all(not torch.equal(p, q) for p, q in zip(b, _params(1)))
    assert opt.iterations == 2


@pytest.mark.parametrize("cls", CLASSES)
def test_ema_weights_context_and_finalize(cls):
    params = _params()
    opt = cls(params, use_ema=True, ema_momentum=0.5, learning_rate=0.1)
    for step in range(3):
        _grads(params, seed=step)
        opt.step()
    training = [p.detach().clone() for p in params]
    averages = [opt.state[p]["average"].clone() for p in params]
    assert not torch.equal(training[0], averages[0])
    with pytest.raises(RuntimeError, match="boom"), opt.ema_weights():
        assert all(torch.equal(p, a) for p, a in zip(params, averages))
        raise RuntimeError("boom")
    assert all(torch.equal(p, t) for p, t in zip(params, training))
    opt.finalize_variable_values()
    assert all(torch.equal(p, a) for p, a in zip(params, averages))


def test_torch_lr_scheduler_sets_the_rate():
    params = _params()
    twin = copy.deepcopy(params)
    opt = kt.Adam(params, learning_rate=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    rates = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    ref = kt.Adam(twin, learning_rate=lambda: rates[ref.raw_iterations])
    for step in range(6):
        _grads(params, seed=step)
        _grads(twin, seed=step)
        opt.step()
        scheduler.step()
        ref.step()
    for x, y in zip(params, twin):
        assert torch.equal(x, y)


def test_kerasopt_schedule_sees_raw_iterations_and_reports_lr():
    params = _params()
    schedule = kerasopt.schedules.PiecewiseConstantDecay([1, 3], [0.1, 0.01, 0.001])
    opt = kt.Adamax(params, learning_rate=schedule, gradient_accumulation_steps=2)
    seen = []
    for step in range(5):
        _grads(params, seed=step)
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
    # updates happen on raw steps 1 and 3 (0-based), with the schedule at raw 1 and 3
    # (PiecewiseConstantDecay: step <= 1 -> 0.1, step <= 3 -> 0.01)
    assert seen[1] == pytest.approx(0.1) and seen[3] == pytest.approx(0.01)
    assert opt.iterations == 2 and opt.raw_iterations == 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", CLASSES)
def test_low_precision_params(cls, dtype):
    full = _params()
    low = [torch.nn.Parameter(p.detach().to(dtype)) for p in full]
    low32 = [torch.nn.Parameter(p.detach().to(dtype)) for p in full]
    opts = [cls(full, learning_rate=0.01), cls(low, learning_rate=0.01),
            cls(low32, learning_rate=0.01, state_dtype=torch.float32)]
    for step in range(10):
        for ps in (full, low, low32):
            _grads(ps, seed=step)
        for opt in opts:
            opt.step()
    assert all(s.dtype == dtype for p in low for s in opts[1].state[p].values())
    assert all(s.dtype == torch.float32 for p in low32 for s in opts[2].state[p].values())
    for a, b, c in zip(full, low, low32):
        assert b.dtype == c.dtype == dtype
        # 10 steps of ~0.01 each; bf16 resolves ~0.008 near 1, so updates round coarsely
        tol = 0.08 if dtype == torch.bfloat16 else 2e-3
        torch.testing.assert_close(b.float(), a, rtol=tol, atol=tol)
        torch.testing.assert_close(c.float(), a, rtol=tol, atol=tol)


@pytest.mark.parametrize("cls", CLASSES)
def test_sparse_embedding_updates_lazily_like_the_core(cls):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Linear(3, 1)
    opt = cls([*emb.parameters(), *dense.parameters()], learning_rate=0.1, weight_decay=0.1)
    core_vars = [kerasopt.Variable(p.detach().numpy().copy()) for p in opt.param_groups[0][
        "params"]]
    core = getattr(kerasopt, cls.__name__)(learning_rate=0.1, weight_decay=0.1)
    untouched = [0, 5, 9]
    for ids in ([1, 2, 2, 7], [3, 1, 1], [2, 8, 8, 8]):
        opt.zero_grad()
        index = torch.tensor(ids)
        dense(emb(index)).sum().backward()
        grad = emb.weight.grad.coalesce()
        assert grad.is_sparse
        core_grads = [
            kerasopt.IndexedSlices(grad.values().numpy(), grad.indices()[0].numpy(), (10, 3)),
            dense.weight.grad.numpy(), dense.bias.grad.numpy(),
        ]
        opt.step()
        core.apply(core_grads, core_vars)
    for p, v in zip(opt.param_groups[0]["params"], core_vars):
        np.testing.assert_allclose(p.detach().numpy(), v.numpy(), rtol=1e-6, atol=1e-7)
    state = opt.state[emb.weight]
    assert torch.count_nonzero(state["momentum"][untouched]) == 0
    torch.manual_seed(0)
    initial = torch.nn.Embedding(10, 3, sparse=True)
    assert torch.equal(emb.weight[untouched], initial.weight[untouched])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", CLASSES)
def test_cuda_matches_cpu(cls):
    cpu = _params()
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu = cls(cpu, learning_rate=0.01, use_ema=True, global_clipnorm=1.0)
    opt_gpu = cls(gpu, learning_rate=0.01, use_ema=True, global_clipnorm=1.0)
    for step in range(10):
        _grads(cpu, seed=step)
        for p, q in zip(gpu, cpu):
            p.grad = q.grad.cuda()
        opt_cpu.step()
        opt_gpu.step()
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"learning_rte": 0.1}, TypeError, "unknown keyword argument.*learning_rte"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate=-1.0"),
        ({"learning_rate": 1}, TypeError, "learning_rate=1"),
        ({"beta_1": 1.0}, ValueError, "beta_1=1.0"),
        ({"epsilon": 0.0}, ValueError, "epsilon=0.0"),
        ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "Only one of"),
        ({"gradient_accumulation_steps": 1}, ValueError, "gradient_accumulation_steps=1"),
        ({"ema_momentum": 1.5}, ValueError, "ema_momentum=1.5"),
        ({"state_dtype": torch.int32}, TypeError, "state_dtype"),
    ],
)
@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(_params(), **kwargs)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_param_groups(cls):
    a, b = _params(0), _params(1)
    with pytest.raises(ValueError, match="already in param group 0"):
        cls([{"params": a}, {"params": [a[0], *b]}])
    with pytest.raises(ValueError, match="duplicate parameters"):
        cls([a[0], a[0]])
    with pytest.raises(TypeError, match="unknown key"):
        cls([{"params": a, "eps": 1e-8}])
    with pytest.raises(ValueError, match="beta_2=2.0"):
        cls([{"params": a, "beta_2": 2.0}])
    with pytest.raises(TypeError, match="single tensor"):
        cls(a[0])
    opt = cls(a)
    with pytest.raises(ValueError, match="already in param group 0"):
        opt.add_param_group({"params": a[1:]})
    with pytest.raises(ValueError, match="set one of them"):
        opt.add_param_group({"params": b, "lr": 0.1, "learning_rate": 0.2})
    assert len(opt.param_groups) == 1


def test_deepcopy_and_pickle_roundtrip():
    params = _params()
    opt = kt.Adam(params, use_ema=True)
    _grads(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    clone = copy.deepcopy(opt)
    assert clone.raw_iterations == 1
