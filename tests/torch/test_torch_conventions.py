"""torch.optim's conventions kept by kerasopt.torch (issue 13, items 1-8): load_state_dict
hooks, a step without gradients, deepcopy/pickle, tensor learning rates, param_names across
loads, schedulers that cycle ``betas``, torch schedulers against kerasopt schedules, and
param-group error texts."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import kerasopt
import kerasopt.torch as kt
from kerasopt import kernels

CLASSES = [kt.Adam, kt.Adamax]


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _backward(model, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward()


def _train(model, opt, seeds):
    for seed in seeds:
        opt.zero_grad()
        _backward(model, seed)
        opt.step()


def _reference_path(monkeypatch):
    """Make every step take the readable reference path (no fused kernels)."""
    monkeypatch.setattr(kernels, "available", lambda: False)


# ------------------------------------------------------------ 1. load_state_dict hooks


@pytest.mark.parametrize("cls", CLASSES)
def test_load_state_dict_pre_and_post_hooks_run_as_in_torch(cls):
    model = _model()
    opt = cls(model.parameters(), learning_rate=0.01)
    _train(model, opt, range(2))
    saved = opt.state_dict()
    target = cls(_model(1).parameters(), learning_rate=0.01)
    calls = []

    def pre(optimizer, state_dict):
        calls.append(("pre", optimizer is target, state_dict is saved))
        state_dict["param_groups"][0]["weight_decay"] = 0.125  # changes what is loaded

    def post(optimizer):
        calls.append(("post", optimizer.param_groups[0]["weight_decay"]))

    target.register_load_state_dict_pre_hook(pre)
    target.register_load_state_dict_post_hook(post)
    target.load_state_dict(saved)
    # torch passes a shallow copy of the dict to the pre-hooks, then runs the post-hooks
    # after the load.
    assert calls == [("pre", True, False), ("post", 0.125)]
    assert target.param_groups[0]["weight_decay"] == 0.125
    assert target.raw_iterations == 2


def test_a_load_state_dict_pre_hook_may_return_a_new_dict():
    model = _model()
    opt = kt.Adam(model.parameters(), learning_rate=0.01)
    _train(model, opt, range(3))
    saved = opt.state_dict()
    target = kt.Adam(_model(1).parameters(), learning_rate=0.5)

    def replace(optimizer, state_dict):
        new = copy.deepcopy(state_dict)
        new["param_groups"][0]["lr"] = 0.25
        return new

    target.register_load_state_dict_pre_hook(replace)
    target.register_load_state_dict_pre_hook(
        lambda optimizer, sd: sd["param_groups"][0].update(beta_2=0.75), prepend=False)
    target.load_state_dict(saved)
    group = target.param_groups[0]
    assert group["lr"] == 0.25 and group["beta_2"] == 0.75 and target.raw_iterations == 3
    assert saved["param_groups"][0]["lr"] == 0.01  # the caller's dict is untouched


# ------------------------------------------------------------ 2. step() without gradients


@pytest.mark.parametrize("config", [{}, {"use_ema": True}, {"gradient_accumulation_steps": 2},
                                    {"learning_rate": kerasopt.schedules.ExponentialDecay(
                                        0.1, 2, 0.5)}])
@pytest.mark.parametrize("cls", CLASSES)
def test_step_without_gradients_is_a_no_op_with_hooks_run(cls, config):
    model = _model()
    opt = cls(model.parameters(), **config)
    _train(model, opt, [0])
    before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
    hooks = []
    opt.register_step_pre_hook(lambda *a: hooks.append("pre"))
    opt.register_step_post_hook(lambda *a: hooks.append("post"))
    opt.zero_grad()
    assert opt.step() is None
    assert opt.step(lambda: torch.tensor(3.0)) == 3.0  # the closure still runs
    assert hooks == ["pre", "post", "pre", "post"]
    assert opt.raw_iterations == 1
    for p, q in zip(model.parameters(), before[0]):
        assert torch.equal(p, q)
    after = opt.state_dict()

    def plain(groups):  # a schedule object is compared by its config
        return [{k: v.get_config() if hasattr(v, "get_config") else v for k, v in g.items()}
                for g in groups]

    assert plain(after["param_groups"]) == plain(before[1]["param_groups"])
    for key, slots in after["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, before[1]["state"][key][name]), name


def test_a_frozen_branch_and_an_idle_gan_optimizer_step_quietly():
    generator, discriminator = _model(0), _model(1)
    g_opt = kt.Adam(generator.parameters())
    d_opt = kt.Adam(discriminator.parameters())
    _backward(discriminator, 0)
    d_opt.step()
    g_opt.step()  # no gradient reached the generator
    assert (g_opt.raw_iterations, d_opt.raw_iterations) == (0, 1)
    assert not g_opt.state
    with_lso = kt.LossScaleOptimizer(kt.Adam(generator.parameters()))
    with_lso.step()
    assert with_lso.dynamic_scale == 2.0**15 and with_lso.step_counter == 0


# ------------------------------------------------------------ 3. deepcopy and pickle


def _full_config():
    return dict(learning_rate=0.01, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=3,
                gradient_accumulation_steps=2, loss_scale_factor=4.0, global_clipnorm=0.5,
                skip_nonfinite=True)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", CLASSES)
def test_a_copy_steps_exactly_like_the_original(cls, how):
    model = _model()
    opt = cls(model.named_parameters(), **_full_config())
    opt.exclude_from_weight_decay(var_list=[model[2].bias], var_names=["0.bias"])
    _train(model, opt, range(3))
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    for name in ("loss_scale_factor", "gradient_accumulation_steps", "norm_process_group",
                 "skip_nonfinite"):
        assert getattr(opt2, name) == getattr(opt, name), name
    _train(model, opt, range(3, 8))
    _train(model2, opt2, range(3, 8))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), model2.parameters()):
        for name, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][name]), name
    assert opt2.raw_iterations == opt.raw_iterations == 8
    # The copy's exclusions name its own parameters.
    assert opt2._excluded_ids == {id(model2[2].bias)}


def test_a_copied_loss_scale_optimizer_steps_like_the_original():
    model = _model()
    opt = kt.LossScaleOptimizer(kt.Adam(model.parameters(), learning_rate=0.01),
                                initial_scale=8.0, dynamic_growth_steps=2)
    _train(model, opt, range(3))
    model2, opt2 = copy.deepcopy((model, opt))
    model3, opt3 = pickle.loads(pickle.dumps((model, opt)))
    for m, o in ((model, opt), (model2, opt2), (model3, opt3)):
        _train(m, o, range(3, 6))
    for p, q, r in zip(model.parameters(), model2.parameters(), model3.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
    assert opt.dynamic_scale == opt2.dynamic_scale == opt3.dynamic_scale


# ------------------------------------------------------------ 4. tensor learning rate


@pytest.mark.parametrize("cls", CLASSES)
def test_a_tensor_learning_rate_is_accepted_at_construction(cls):
    model, twin = _model(), _model()
    rate = torch.tensor(0.01)
    opt = cls(model.parameters(), learning_rate=rate)
    ref = cls(twin.parameters(), learning_rate=0.01)
    assert opt.param_groups[0]["lr"] is rate  # kept as torch keeps it
    _train(model, opt, range(3))
    _train(twin, ref, range(3))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    # A torch scheduler updates a tensor rate in place (fill_), as with torch.optim.
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, [3])
    scheduler.step()
    assert opt.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(0.005)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                         "lr": torch.tensor(0.5, dtype=torch.float64)})


@pytest.mark.parametrize(("rate", "match"), [
    (torch.tensor([0.1, 0.2]), r"1-element.*shape \(2,\)"),
    (torch.tensor(-0.1), "learning_rate=tensor\\(-0.1"),
    (torch.tensor(float("nan")), "learning_rate=tensor\\(nan"),
    (torch.tensor(1), "floating"),
])
def test_a_bad_tensor_learning_rate_is_refused(rate, match):
    with pytest.raises((TypeError, ValueError), match=match):
        kt.Adam(_model().parameters(), learning_rate=rate)


# ------------------------------------------------------------ 5. param_names across loads


def test_param_names_survive_a_load_from_named_into_unnamed():
    model = _model()
    named = kt.Adam(model.named_parameters(), weight_decay=0.5)
    _train(model, named, range(2))
    saved = named.state_dict()
    assert saved["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    model2 = copy.deepcopy(model)
    unnamed = kt.Adam(model2.parameters(), weight_decay=0.5)
    unnamed.load_state_dict(saved)
    assert unnamed.param_groups[0]["param_names"] == saved["param_groups"][0]["param_names"]
    # The names now drive exclusions, as in the named optimizer.
    named.exclude_from_weight_decay(var_names=["bias"])
    unnamed.exclude_from_weight_decay(var_names=["bias"])
    _train(model, named, range(2, 4))
    _train(model2, unnamed, range(2, 4))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_param_names_kept_when_the_state_dict_has_none():
    model = _model()
    unnamed = kt.Adam(model.parameters())
    _train(model, unnamed, [0])
    named = kt.Adam(_model().named_parameters())
    names = list(named.param_groups[0]["param_names"])
    named.load_state_dict(unnamed.state_dict())
    assert named.param_groups[0]["param_names"] == names


def test_bad_param_names_in_a_state_dict_are_refused_before_any_change():
    model = _model()
    opt = kt.Adam(model.named_parameters())
    _train(model, opt, [0])
    saved = opt.state_dict()
    saved["param_groups"][0]["param_names"] = ["a", "b"]
    target = kt.Adam(_model().parameters())
    with pytest.raises(ValueError, match="param_names.*2 names.*4 parameters"):
        target.load_state_dict(saved)
    assert target.raw_iterations == 0 and "param_names" not in target.param_groups[0]


# ------------------------------------------------------------ 6. betas for OneCycleLR/CyclicLR


def _scheduled_values(make_scheduler, steps):
    """The (lr, betas[0]) each step sees under a torch scheduler, from torch.optim.Adam."""
    probe = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = make_scheduler(probe)
    values = []
    for _ in range(steps):
        group = probe.param_groups[0]
        values.append((group["lr"], group["betas"][0]))
        probe.step()
        scheduler.step()
    return values


SCHEDULERS = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                                  total_steps=12),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.05,
                                                              step_size_up=3),
}


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("cls", CLASSES)
def test_schedulers_that_cycle_beta1_drive_the_step(cls, scheduler, path, monkeypatch):
    if path == "reference":
        _reference_path(monkeypatch)
    elif not kernels.available():
        pytest.skip("numba is not installed")
    steps = 12
    values = _scheduled_values(SCHEDULERS[scheduler], steps)
    assert len({b for _, b in values}) > 3  # beta_1 really moves
    model = _model()
    opt = cls(model.parameters(), learning_rate=0.01, beta_2=0.99)
    sched = SCHEDULERS[scheduler](opt)
    assert opt.param_groups[0]["betas"] == (values[0][1], 0.99)
    trajectory = []
    for step in range(steps):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
        assert opt.param_groups[0]["beta_1"] == values[step][1]
        sched.step()
        trajectory.append([p.detach().numpy().copy() for p in model.parameters()])
    # Independent truth: the NumPy core with callable lr and beta_1 fed the same values.
    core_model = _model()
    counter = [0]
    core = getattr(kerasopt, cls.__name__)(
        learning_rate=lambda: values[counter[0]][0], beta_1=lambda: values[counter[0]][1],
        beta_2=0.99)
    variables = [kerasopt.Variable(p.detach().numpy().copy()) for p in core_model.parameters()]
    core.build(variables)
    for step in range(steps):
        core_model.zero_grad()
        for p, v in zip(core_model.parameters(), variables):
            p.data = torch.from_numpy(v.numpy().copy())
        _backward(core_model, step)
        core.apply([p.grad.numpy() for p in core_model.parameters()], variables)
        counter[0] += 1
        for got, want in zip(trajectory[step], variables):
            np.testing.assert_allclose(got, want.numpy(), rtol=2e-6, atol=1e-7)


def test_betas_and_keras_names_stay_in_step():
    opt = kt.Adam([torch.nn.Parameter(torch.ones(2))], beta_1=0.8, beta_2=0.95)
    group = opt.param_groups[0]
    assert opt.defaults["betas"] == (0.8, 0.95) and group["betas"] == (0.8, 0.95)
    group["betas"] = (0.7, 0.9)  # torch's spelling, as a scheduler writes it
    group["params"][0].grad = torch.ones(2)
    opt.step()
    assert (group["beta_1"], group["beta_2"]) == (0.7, 0.9)
    group["beta_1"] = 0.6  # Keras's spelling
    opt.step()
    assert group["betas"] == (0.6, 0.9)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "betas": (0.5, 0.6)})
    assert (opt.param_groups[1]["beta_1"], opt.param_groups[1]["beta_2"]) == (0.5, 0.6)
    with pytest.raises(ValueError, match="betas.*beta_1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))],
                             "betas": (0.5, 0.6), "beta_1": 0.4})
    with pytest.raises(ValueError, match=r"betas.*a pair"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "betas": 0.5})


# ------------------------------------------------------------ 7. torch scheduler vs schedule


@pytest.mark.parametrize("rate", [kerasopt.schedules.ExponentialDecay(0.1, 1, 0.5),
                                  lambda: 0.1], ids=["schedule", "callable"])
@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1),
    lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
], ids=["StepLR", "ReduceLROnPlateau"])
def test_a_torch_scheduler_on_a_schedule_group_is_refused(rate, make):
    model = _model()
    opt = kt.Adam(model.parameters(), learning_rate=rate)
    _train(model, opt, [0])
    scheduler = make(opt)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 4):
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(1.0)
        else:
            scheduler.step()
        opt.zero_grad()
        _backward(model, step)
        try:
            opt.step()
        except ValueError as error:
            assert "use one or the other" in str(error).lower() and "param group 0" in str(error)
            break
        before = [p.detach().clone() for p in model.parameters()]
    else:
        raise AssertionError("the torch scheduler was allowed to change a schedule's rate")
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # refused before anything changed


def test_a_float_rate_with_a_torch_scheduler_and_dcp_lr_zero_still_work():
    model = _model()
    opt = kt.Adam(model.parameters(), learning_rate=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for step in range(3):
        _train(model, opt, [step])
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    # A schedule group still takes a one-step external 0 (as DCP writes).
    sched_model = _model()
    sched_opt = kt.Adam(sched_model.parameters(),
                        learning_rate=kerasopt.schedules.ExponentialDecay(0.1, 1, 0.5))
    _train(sched_model, sched_opt, [0])
    sched_opt.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in sched_model.parameters()]
    _train(sched_model, sched_opt, [1])
    assert all(torch.equal(p, q) for p, q in zip(sched_model.parameters(), before))
    _train(sched_model, sched_opt, [2])
    assert sched_opt.param_groups[0]["lr"] == pytest.approx(0.025)


# ------------------------------------------------------------ 8. param-group error texts


@pytest.mark.parametrize("cls", CLASSES)
def test_param_group_errors_read_like_torchs_and_name_the_value(cls):
    a = list(_model().named_parameters())
    b = list(_model(1).named_parameters())
    tensors = [p for _, p in a]
    cases = [
        (lambda: cls([{"params": a}, {"params": [a[0], *b]}]), ValueError,
         r"some parameters appear in more than one parameter group: '0\.weight' of shape "
         r"\(3, 4\) is already in param group 0"),
        (lambda: cls(tensors[0]), TypeError,
         r"params argument given to the optimizer should be an iterable of Tensors or dicts, "
         r"but got torch\.FloatTensor.*shape \(3, 4\)"),
        (lambda: cls([]), ValueError, r"optimizer got an empty parameter list"),
        (lambda: cls([tensors[0], 3]), TypeError,
         r"optimizer can only optimize Tensors, but one of the params is int: 3 \(position 1 "
         r"of param group 0\)"),
        (lambda: cls([tensors[0] * 2]), ValueError,
         r"can't optimize a non-leaf Tensor: a parameter of shape \(3, 4\)"),
        (lambda: cls([{"params": set(tensors)}]), TypeError,
         r"optimizer parameters need to be organized in ordered collections.*set of 4"),
        (lambda: cls([a[0], tensors[1]]), ValueError,
         r"all optimizer params should be with/without names.*position 1"),
        (lambda: cls([tensors[0], tensors[0]]), ValueError,
         r"duplicate parameters: a parameter of shape \(3, 4\) at positions 0 and 1"),
        (lambda: cls(tensors).add_param_group([tensors[0]]), TypeError,
         r"param_group must be a dict, but got list"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()
    opt = cls(a[:2])
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without"):
        opt.add_param_group({"params": tensors[2:]})
    assert len(opt.param_groups) == 1
