"""Bad edits to param groups and concurrent steps (issue 14, items 10 and 11): every group
is checked with the constructor's rules before a step changes anything, the error names the
group, key and value; the check is cached; two threads stepping one optimizer lose nothing."""

from __future__ import annotations

import copy
import math
import pickle
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def _snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
            opt.raw_iterations)


def _assert_unchanged(model, opt, before):
    params, state, raw = before
    assert opt.raw_iterations == raw
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    for p, slots in opt.state.items():
        for k, v in slots.items():
            assert torch.equal(v, state[id(p)][k]), k


# ------------------------------------------------------------ 10. bad edits


TWO_GROUP_EDITS = [("weight_decay", "abc"), ("clipnorm", "abc"), ("ema_momentum", "abc"),
                   ("beta_1", "abc"), ("epsilon", "abc"), ("lr", "abc"),
                   ("sparse_updates", "eager"), ("betas", (0.5,))]


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize(("key", "value"), TWO_GROUP_EDITS)
@pytest.mark.parametrize("cls", CLASSES)
def test_a_bad_edit_to_group_1_changes_nothing(cls, key, value, path, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(kernels, "available", lambda: False)
    model = _model()
    opt = cls([{"params": model[0].parameters()},
               {"params": model[2].parameters(), "weight_decay": 0.1}],
              learning_rate=0.01, use_ema=True)
    for step in range(2):
        _backward(model, step)
        opt.step()
    opt.param_groups[1][key] = value
    _backward(model, 2)
    before = _snapshot(model, opt)
    with pytest.raises((TypeError, ValueError)) as error:
        opt.step()
    message = str(error.value)
    assert "param group 1" in message and key.rstrip("s") in message, message
    assert repr(value)[:4] in message, message
    _assert_unchanged(model, opt, before)
    # Put right, the step runs as if nothing had happened.
    opt.param_groups[1][key] = {"betas": (0.9, 0.999), "sparse_updates": "lazy"}.get(
        key, 0.01 if key == "lr" else copy.deepcopy(opt.defaults.get(key)))
    if key in ("weight_decay", "clipnorm"):
        opt.param_groups[1][key] = {"weight_decay": 0.1, "clipnorm": None}[key]
    opt.step()
    assert opt.raw_iterations == 3


SINGLE_GROUP_EDITS = [("lr", -1.0), ("lr", math.nan), ("lr", math.inf), ("beta_1", 1.5),
                      ("beta_2", -0.1), ("epsilon", -1.0), ("epsilon", 0.0),
                      ("clipvalue", -1.0), ("ema_momentum", 5.0), ("use_ema", "yes"),
                      ("amsgrad", 1), ("ema_overwrite_frequency", 0),
                      ("weight_decay", math.nan), ("state_dtype", torch.int32),
                      ("learning_rate", 0.5), ("betas", (1.5, 0.999))]


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize(("key", "value"), SINGLE_GROUP_EDITS, ids=repr)
def test_an_invalid_single_group_edit_is_refused(key, value, path, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(kernels, "available", lambda: False)
    model = _model()
    opt = kt.Adam(model.parameters(), learning_rate=0.01)
    if key == "amsgrad" or key not in opt.param_groups[0]:
        pass
    _backward(model, 0)
    opt.step()
    opt.param_groups[0][key] = value
    _backward(model, 1)
    before = _snapshot(model, opt)
    with pytest.raises((TypeError, ValueError), match=r"param group 0") as error:
        opt.step()
    assert key.rstrip("s") in str(error.value)
    _assert_unchanged(model, opt, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_two_clip_options_set_by_edits_are_refused():
    model = _model()
    opt = kt.Adam(model.parameters(), clipnorm=1.0)
    opt.param_groups[0]["global_clipnorm"] = 1.0
    _backward(model, 0)
    with pytest.raises(ValueError, match=r"param group 0.*Only one of"):
        opt.step()
    assert opt.raw_iterations == 0 and not opt.state


def test_a_tensor_rate_filled_with_nan_in_place_is_refused():
    model = _model()
    rate = torch.tensor(0.01)
    opt = kt.Adam(model.parameters(), learning_rate=rate)
    _backward(model, 0)
    opt.step()
    rate.fill_(float("nan"))
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"param group 0.*lr=tensor\(nan\)"):
        opt.step()
    _assert_unchanged(model, opt, before)


def test_a_missing_hyperparameter_is_named():
    model = _model()
    opt = kt.Adam(model.parameters())
    del opt.param_groups[0]["epsilon"]
    _backward(model, 0)
    with pytest.raises(KeyError, match=r"param group 0 has no 'epsilon'"):
        opt.step()


def test_the_check_is_cached(monkeypatch):
    """Unchanged groups cost no validation; a scheduler's new rate (and betas) each step is
    checked key by key, never by checking the whole group again."""
    model = _model()
    opt = kt.Adam(model.parameters(), learning_rate=0.01)
    checks = []
    real = kt.KerasOptimizer._validate_groups
    monkeypatch.setattr(kt.KerasOptimizer, "_validate_groups",
                        lambda self, *a: checks.append(1) or real(self, *a))
    built = []
    monkeypatch.setattr(kt.KerasOptimizer, "_check_options",
                        lambda self, group: built.append(1))
    for step in range(5):
        _backward(model, step)
        opt.step()
    assert len(checks) == 1 and not built
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    for step in range(5):
        _backward(model, step)
        opt.step()
        scheduler.step()
    assert len(checks) == 6 and not built
    schedule_opt = kt.Adam(model.parameters(),
                           learning_rate=kerasopt.schedules.ExponentialDecay(0.1, 2, 0.5))
    before = len(checks)
    for step in range(5):
        _backward(model, step)
        schedule_opt.step()
    assert len(checks) - before == 1  # its own writes into "lr" are not edits


# The constructor's rules, and the same rules for an edit between steps, agree on every value
# (a rate written into group["lr"] follows the NumPy core's learning_rate setter).
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
    st.sampled_from(["abc", "lazy", "dense", (0.9, 0.99), torch.float32, torch.int32]),
)
KEYS = ["weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
        "ema_overwrite_frequency", "beta_1", "beta_2", "epsilon", "amsgrad", "state_dtype",
        "sparse_updates"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # huge values overflow float32
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from([*KEYS, "learning_rate"]), value=VALUES)
def test_group_edits_follow_the_constructors_rules(key, value):
    p = torch.nn.Parameter(torch.ones(3))
    try:
        if key == "learning_rate":
            kerasopt.Adam(learning_rate=0.1).learning_rate = value
        else:
            kt.Adam([p], **{key: value})
        constructor_accepts = True
    except (TypeError, ValueError):
        constructor_accepts = False
    opt = kt.Adam([p])
    group_key = "lr" if key == "learning_rate" else key
    opt.param_groups[0][group_key] = value
    p.grad = torch.ones(3)
    try:
        opt.step()
        edit_accepted = True
    except (TypeError, ValueError):
        edit_accepted = False
    assert edit_accepted == constructor_accepts, (key, value)


# ------------------------------------------------------------ 11. concurrent steps


@pytest.mark.parametrize("make", [
    lambda ps: kt.Adam(ps, learning_rate=1e-3),
    lambda ps: kt.Adamax(ps, learning_rate=1e-3, use_ema=True, gradient_accumulation_steps=2),
    lambda ps: kt.LossScaleOptimizer(kt.Adam(ps, learning_rate=1e-3)),
], ids=["Adam", "Adamax-ema-accumulation", "LossScaleOptimizer"])
def test_two_threads_stepping_one_optimizer_lose_nothing(make):
    steps, threads = 150, 4
    params = [torch.nn.Parameter(torch.randn(64)) for _ in range(8)]
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in twin:
        p.grad = torch.full_like(p, 0.5)
    opt, ref = make(params), make(twin)
    barrier = threading.Barrier(threads)
    errors = []

    def work():
        try:
            barrier.wait()
            for _ in range(steps):
                opt.step()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors and not any(w.is_alive() for w in workers)
    for _ in range(steps * threads):
        ref.step()
    assert opt.raw_iterations == ref.raw_iterations == steps * threads
    for p, q in zip(params, twin):
        assert torch.equal(p, q)  # the same constant gradient: order does not matter


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_the_lock_survives_copies(how):
    params = [torch.nn.Parameter(torch.randn(8))]
    opt = kt.Adam(params)
    lso = kt.LossScaleOptimizer(kt.Adam([torch.nn.Parameter(torch.randn(8))]))
    for o in (opt, lso):
        clone = copy.deepcopy(o) if how == "deepcopy" else pickle.loads(pickle.dumps(o))
        assert clone._step_lock is not o._step_lock
        assert clone._step_lock.acquire(blocking=False)
        clone._step_lock.release()
