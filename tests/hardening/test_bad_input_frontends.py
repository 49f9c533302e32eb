"""Bad input across the three frontends (NumPy ``kerasopt.Adam/Adamax``,
``kerasopt.torch.Adam/Adamax``, ``kerasopt.optax.adam/adamax``), fuzzed with hypothesis.

For every argument value and every gradient: either it works as Keras would, or a
ValueError/TypeError names the argument (or the variable) and the value -- never another
exception from deep inside, and never a half-applied step: weights, state and counters are
compared bit for bit before and after. (tests/test_bad_input.py holds the NumPy tables;
this suite adds torch and optax, the gradient-kind fuzzer and the callable-hyperparameter
regressions.)
"""

from __future__ import annotations

import math
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hardening_helpers import assert_same_numpy, assert_same_torch, snapshot_numpy, snapshot_torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kerasopt
import kerasopt.optax as ko
import kerasopt.torch as kt
from optimizer_db import ALGORITHMS, core_class, has_amsgrad, optax_factory, spec, torch_class

F = np.float32
FRONTENDS = ["numpy", "torch", "optax"]
ALGOS = ALGORITHMS
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- constructors

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=3.0),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-3, max_value=5),
    st.sampled_from([10**400, -(10**400), 1e308, 5e-324, -0.0]),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.sampled_from([np.float32(0.5), np.float64(0.9), np.float32("nan"), np.float16(1.0),
                     np.int64(3), np.int32(1), np.float64(np.inf), np.bool_(True),
                     np.float32(1e-8), np.uint8(2)]),
    st.lists(st.floats(), max_size=2),
    st.just(object()),
)


def _real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _finite(x):
    try:
        return _real(x) and math.isfinite(float(x))
    except OverflowError:
        return False


def _overflows_float32(x):
    with np.errstate(over="ignore"):
        return not np.isfinite(np.float32(float(x)))


def _int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


# argument -> must it be accepted (True), refused (False), or either (None); SPEC.md
ORACLES = {
    # A finite rate that overflows float32 (the storage of a float rate, as in Keras) may be
    # refused.
    "learning_rate": lambda x: (
        None if _finite(x) and float(x) >= 0 and not _int(x) and _overflows_float32(x)
        else _finite(x) and float(x) >= 0 and not _int(x)
    ),
    "beta_1": lambda x: _finite(x) and 0 <= float(x) < 1,
    "beta_2": lambda x: _finite(x) and 0 <= float(x) < 1,
    "epsilon": lambda x: _finite(x) and float(x) > 0,
    "weight_decay": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "clipnorm": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "clipvalue": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "global_clipnorm": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "ema_momentum": lambda x: _finite(x) and 0 <= float(x) <= 1,
    "ema_overwrite_frequency": lambda x: x is None or (_int(x) and x >= 1),
    "gradient_accumulation_steps": lambda x: x is None or (_int(x) and x >= 2),
    "loss_scale_factor": lambda x: x is None or (_finite(x) and float(x) > 0),
    "use_ema": lambda x: True if isinstance(x, bool) else (None if isinstance(x, np.bool_)
                                                            else False),
    "skip_nonfinite": lambda x: True if isinstance(x, bool) else (
        None if isinstance(x, np.bool_) else False),
    "amsgrad": lambda x: True if isinstance(x, bool) else (None if isinstance(x, np.bool_)
                                                            else False),
}


def _construct(frontend, algo, kwargs):
    if not has_amsgrad(algo):
        kwargs.pop("amsgrad", None)
    if frontend == "numpy":
        return core_class(algo)(**kwargs)
    if frontend == "torch":
        p = torch.ones(2, requires_grad=True)
        return torch_class(algo)([p], **kwargs)
    return optax_factory(algo)(**kwargs)


def _one_step(frontend, opt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if frontend == "numpy":
            v = kerasopt.Variable(np.array([1.0, -1.0], F))
            opt.apply([np.array([0.5, 0.25], F)], [v])
        elif frontend == "torch":
            p = opt.param_groups[0]["params"][0]
            p.grad = torch.tensor([0.5, 0.25])
            opt.step()
        else:
            params = {"w": jnp.array([1.0, -1.0])}
            state = opt.init(params)
            opt.update({"w": jnp.array([0.5, 0.25])}, state, params)


@FUZZ
@given(frontend=st.sampled_from(FRONTENDS), algo=st.sampled_from(ALGOS),
       argument=st.sampled_from(sorted(ORACLES)), value=VALUES)
@example(frontend="numpy", algo="adamw", argument="weight_decay", value=None)
def test_fuzz_constructor_arguments_all_frontends(frontend, algo, argument, value,
                                                   hardening_count):
    if argument == "amsgrad" and not has_amsgrad(algo):
        algo = "adam"
    hardening_count(f"bad-input cases: constructor ({frontend})")
    expected = ORACLES[argument](value)
    if value is None and argument in spec(algo).required:
        expected = False  # AdamW refuses weight_decay=None, as Keras does
    if (frontend == "optax" and argument in ("gradient_accumulation_steps",
                                             "ema_overwrite_frequency")
            and _int(value) and value > np.iinfo(np.int32).max):
        expected = False  # compared with optax's int32 counter: refused (was a crash)
    try:
        opt = _construct(frontend, algo, {argument: value})
    except (ValueError, TypeError) as error:
        assert expected is not True, f"{argument}={value!r} is valid but raised {error!r}"
        assert argument in str(error), str(error)
        return
    assert expected is not False, f"{frontend}: {argument}={value!r} was accepted"
    _one_step(frontend, opt)  # a valid optimizer takes a step


# --------------------------------------------------------------------------- gradients

SHAPES = {"a": (2, 3), "b": (3,)}

# kind -> (factory of a NumPy gradient for a parameter of `shape`, oracle); oracle True: the
# step must work (as in Keras), False: it must be refused, None: either
KINDS = {
    "good": (lambda s: np.full(s, 0.5, F), True),
    "nan": (lambda s: np.full(s, np.nan, F), True),
    "inf": (lambda s: np.full(s, -np.inf, F), True),
    "huge": (lambda s: np.full(s, 3e38, F), True),
    "tiny": (lambda s: np.full(s, 1e-45, F), True),
    "zero": (lambda s: np.zeros(s, F), True),
    "int": (lambda s: np.ones(s, np.int32), True),
    "float64": (lambda s: np.full(s, 1e300, np.float64), True),
    "float16": (lambda s: np.full(s, 0.25, np.float16), True),
    "bool": (lambda s: np.ones(s, bool), None),
    "complex": (lambda s: np.ones(s, np.complex64), False),
    "scalar_0d": (lambda s: np.array(1.0, F), False),
    "empty": (lambda s: np.zeros((0,), F), False),
    "wrong_shape": (lambda s: np.ones(s[:-1] + (s[-1] + 1,), F), False),
    "extra_dim": (lambda s: np.ones((1, *s), F), False),
    "none": (lambda s: None, True),
}
NUMPY_ONLY = {
    "string": (lambda s: np.full(s, "x"), False),
    "object": (lambda s: np.full(s, object()), False),
    "numpy_scalar": (lambda s: np.float32(1.0), False),
    "python_list": (lambda s: np.full(s, 0.5).tolist(), True),
}


def _kinds(frontend):
    return sorted(KINDS) + (sorted(NUMPY_ONLY) if frontend == "numpy" else [])


def _factory(kind):
    return (KINDS | NUMPY_ONLY)[kind]


FEATURES = [
    {},
    {"use_ema": True, "ema_overwrite_frequency": 2},
    {"gradient_accumulation_steps": 3},
    {"weight_decay": 0.1, "global_clipnorm": 1.0, "loss_scale_factor": 4.0},
    {"clipvalue": 0.3, "skip_nonfinite": True},
]


def _numpy_case(algo, features):
    cls = core_class(algo)
    variables = [kerasopt.Variable(np.linspace(-1, 1, int(np.prod(s)), dtype=F).reshape(s),
                                   name=n) for n, s in SHAPES.items()]
    opt = cls(learning_rate=0.1, **features)
    opt.apply([np.ones(s, F) for s in SHAPES.values()], variables)
    return opt, variables


def _torch_case(algo, features):
    cls = torch_class(algo)
    params = [(n, torch.linspace(-1, 1, int(np.prod(s))).reshape(s).requires_grad_())
              for n, s in SHAPES.items()]
    opt = cls(params, learning_rate=0.1, **features)
    for _, p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt, [p for _, p in params]


def _set_torch_grad(p, g):
    if g is None:
        p.grad = None
        return
    p.grad = torch.zeros_like(p)
    p.grad.data = torch.from_numpy(np.array(g))  # bypasses torch's own shape/dtype checks


def _check_error(error, names):
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    message = str(error)
    assert any(n in message for n in names) or "gradient" in message, message


@FUZZ
@given(frontend=st.sampled_from(FRONTENDS), algo=st.sampled_from(ALGOS),
       features=st.sampled_from(range(len(FEATURES))), data=st.data())
def test_fuzz_gradients_all_frontends(frontend, algo, features, data, hardening_count):
    kinds = _kinds(frontend)
    kind_a = data.draw(st.sampled_from(kinds), label="kind_a")
    kind_b = data.draw(st.sampled_from(kinds), label="kind_b")
    hardening_count(f"bad-input cases: gradients ({frontend})")
    features = dict(FEATURES[features])
    if frontend == "optax" and "skip_nonfinite" in features:
        features.pop("skip_nonfinite")
    grads = [_factory(k)[0](s) for k, s in zip((kind_a, kind_b), SHAPES.values())]
    oracles = [_factory(k)[1] for k in (kind_a, kind_b)]
    no_gradient = all(g is None for g in grads)
    if no_gradient:  # no gradient at all: refused; torch.optim's convention: a no-op
        oracles = [True, True] if frontend == "torch" else [False, False]
    expected = False if False in oracles else (None if None in oracles else True)
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if frontend == "numpy":
            opt, variables = _numpy_case(algo, features)
            before = snapshot_numpy(opt, variables)
            try:
                opt.apply(grads, variables)
            except Exception as e:  # noqa: BLE001 - checked below
                error = e
                assert_same_numpy(before, snapshot_numpy(opt, variables))
            else:
                after = snapshot_numpy(opt, variables)
                assert after[2] + after[3] > before[2] + before[3] or (
                    features.get("gradient_accumulation_steps"))
        elif frontend == "torch":
            opt, params = _torch_case(algo, features)
            for p, g in zip(params, grads):
                _set_torch_grad(p, g)
            before = snapshot_torch(opt)
            raw = opt.raw_iterations
            try:
                opt.step()
            except Exception as e:  # noqa: BLE001
                error = e
                assert_same_torch(before, snapshot_torch(opt))
            else:
                assert opt.raw_iterations + opt.skipped_steps == raw + (not no_gradient)
                if no_gradient:
                    assert_same_torch(before, snapshot_torch(opt))
        else:
            tx = optax_factory(algo)(learning_rate=0.1, **features)
            params = {n: jnp.linspace(-1, 1, int(np.prod(s))).reshape(s)
                      for n, s in SHAPES.items()}
            state = tx.init(params)
            leaves_before = [np.array(x) for x in jax.tree_util.tree_leaves(state)]
            tree = {n: (None if g is None else (jnp.asarray(g) if np.asarray(g).dtype.kind
                                                  in "fiub" else np.asarray(g)))
                    for n, g in zip(SHAPES, grads)}
            try:
                _, new_state = tx.update(tree, state, params)
            except Exception as e:  # noqa: BLE001
                error = e
            else:
                assert int(ko.iterations(new_state)) == 1
            for x, y in zip(leaves_before, jax.tree_util.tree_leaves(state)):
                assert np.array_equal(x, np.asarray(y), equal_nan=True)  # input not touched
    if error is not None:
        assert expected is not True, f"{frontend} {kind_a}/{kind_b} refused: {error!r}"
        _check_error(error, list(SHAPES))
    else:
        assert expected is not False, f"{frontend} {kind_a}/{kind_b} was accepted"


# --------------------------------------------------------------------------- regressions


def _bad_rate():
    return "fast"


def _bad_beta():
    return 1.5


HALF_APPLY_CASES = [
    # (kwargs, what fails) -- before the fix, weight decay (NumPy) or the accumulator reset
    # (NumPy and torch) had already happened when the callable's bad value raised
    ({"beta_1": _bad_beta, "weight_decay": 0.1}, "beta_1"),
    ({"learning_rate": _bad_rate, "gradient_accumulation_steps": 2}, "learning_rate"),
    ({"learning_rate": _bad_rate, "weight_decay": 0.1, "use_ema": True}, "learning_rate"),
]


HALF_APPLY_IDS = ["beta_1+weight_decay", "lr+accumulation", "lr+decay+ema"]


@pytest.mark.parametrize("kwargs,argument", HALF_APPLY_CASES, ids=HALF_APPLY_IDS)
def test_bad_callable_hyperparameter_changes_nothing_numpy(kwargs, argument):
    variables = [kerasopt.Variable(np.ones(s, F), name=n) for n, s in SHAPES.items()]
    opt = kerasopt.Adam(**kwargs)
    opt.build(variables)
    for acc in getattr(opt, "_accumulators", []):
        acc.assign(np.full(acc.shape, 3.0, F))  # mid-cycle partial sums
    opt._iterations.assign(np.int64(1))
    before = snapshot_numpy(opt, variables)
    with pytest.raises((ValueError, TypeError), match=argument):
        opt.apply([np.ones(s, F) for s in SHAPES.values()], variables)
    assert_same_numpy(before, snapshot_numpy(opt, variables))


@pytest.mark.parametrize("kwargs,argument", HALF_APPLY_CASES, ids=HALF_APPLY_IDS)
def test_bad_callable_hyperparameter_changes_nothing_torch(kwargs, argument):
    params = [torch.ones(s, requires_grad=True) for s in SHAPES.values()]
    opt = kt.Adam(params, **kwargs)
    if "gradient_accumulation_steps" in kwargs:
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()  # a micro-step: the accumulators hold a partial sum
    for p in params:
        p.grad = torch.ones_like(p)
    before = snapshot_torch(opt)
    with pytest.raises((ValueError, TypeError), match=argument):
        opt.step()
    assert_same_torch(before, snapshot_torch(opt))


def test_torch_wrong_shape_on_second_param_first_step_creates_no_state():
    params = [torch.ones(s, requires_grad=True) for s in SHAPES.values()]
    opt = kt.Adam(params, use_ema=True, gradient_accumulation_steps=2)
    params[0].grad = torch.ones(SHAPES["a"])
    _set_torch_grad(params[1], np.ones(4, F))
    before = snapshot_torch(opt)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        opt.step()
    assert_same_torch(before, snapshot_torch(opt))
    assert len(opt.state) == 0  # not even the lazily created zeros


def test_torch_complex_gradient_is_refused_like_numpy():
    p = torch.ones(3, requires_grad=True)
    opt = kt.Adamax([p])
    _set_torch_grad(p, np.ones(3, np.complex64))
    with pytest.raises(TypeError, match="complex"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and opt.raw_iterations == 0
    with pytest.raises(TypeError, match="complex"):
        kerasopt.Adamax().apply([np.ones(3, np.complex64)], [kerasopt.Variable(np.ones(3, F))])


def test_optax_state_and_params_mismatches():
    params = {"w": jnp.ones(3)}
    adam, adamax = ko.adam(), ko.adamax()
    with pytest.raises(TypeError, match="AdamState"):
        adam.update({"w": jnp.ones(3)}, adamax.init(params), params)
    with pytest.raises(ValueError, match="params"):
        adam.update({"w": jnp.ones(3)}, adam.init(params), None)
    with pytest.raises(ValueError, match="structure"):
        adam.update({"v": jnp.ones(3)}, adam.init(params), params)
    with pytest.raises(TypeError, match="int32"):
        adam.init({"w": jnp.ones(3, jnp.int32)})
    wrapped = ko.loss_scale(ko.adam())
    with pytest.raises(TypeError, match="LossScaleState"):
        wrapped.update({"w": jnp.ones(3)}, adam.init(params), params)
    with pytest.raises(TypeError, match="inner"):
        ko.loss_scale("adam")
    for bad in ({"initial_scale": 0.0}, {"initial_scale": float("inf")},
                {"dynamic_growth_steps": 0}, {"dynamic_growth_steps": 1.5}):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            ko.loss_scale(ko.adam(), **bad)


def test_torch_loss_scale_optimizer_bad_arguments():
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="inner_optimizer"):
        kt.LossScaleOptimizer(torch.optim.Adam([p]))
    with pytest.raises(ValueError, match="loss_scale_factor"):
        kt.LossScaleOptimizer(kt.Adam([p], loss_scale_factor=4.0))
    for bad in ({"initial_scale": -1.0}, {"initial_scale": "big"},
                {"dynamic_growth_steps": 0}, {"dynamic_growth_steps": 2.0}):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            kt.LossScaleOptimizer(kt.Adam([p]), **bad)
    opt = kt.LossScaleOptimizer(kt.Adam([p]))
    with pytest.raises(ValueError, match="loss_scale"):
        opt.load_state_dict(kt.Adam([p]).state_dict())
    with pytest.raises(ValueError, match="skip_nonfinite"):
        kerasopt.LossScaleOptimizer(kerasopt.Adam(), skip_nonfinite=True)
