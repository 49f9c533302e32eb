"""Bad constructor arguments and bad calls: clear ValueError/TypeError naming the argument and
the value, raised before anything is modified."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kerasopt
from optimizer_db import ALGORITHMS, core_class

F = np.float32
NAN = float("nan")
INF = float("inf")

CLASSES = [core_class(name) for name in ALGORITHMS]

BAD_ARGUMENTS = [
    # (argument, value, expected exception type(s))
    ("learning_rate", -0.1, ValueError),
    ("learning_rate", -1e-30, ValueError),
    ("learning_rate", NAN, ValueError),
    ("learning_rate", INF, ValueError),
    ("learning_rate", -INF, ValueError),
    ("learning_rate", 1, TypeError),
    ("learning_rate", 0, TypeError),
    ("learning_rate", np.int64(1), TypeError),
    ("learning_rate", True, TypeError),
    ("learning_rate", "0.001", TypeError),
    ("learning_rate", None, TypeError),
    ("learning_rate", [0.1], TypeError),
    ("learning_rate", np.float32("nan"), ValueError),
    ("beta_1", 1.0, ValueError),
    ("beta_1", 1, ValueError),
    ("beta_1", -0.1, ValueError),
    ("beta_1", NAN, ValueError),
    ("beta_1", INF, ValueError),
    ("beta_1", 1.5, ValueError),
    ("beta_1", "0.9", TypeError),
    ("beta_1", True, TypeError),
    ("beta_1", None, TypeError),
    ("beta_2", 1.0, ValueError),
    ("beta_2", -0.1, ValueError),
    ("beta_2", NAN, ValueError),
    ("beta_2", np.float64(1.0), ValueError),
    ("beta_2", "x", TypeError),
    ("beta_2", False, TypeError),
    ("epsilon", 0.0, ValueError),
    ("epsilon", 0, ValueError),
    ("epsilon", -1e-7, ValueError),
    ("epsilon", NAN, ValueError),
    ("epsilon", INF, ValueError),
    ("epsilon", "1e-7", TypeError),
    ("epsilon", None, TypeError),
    ("epsilon", True, TypeError),
    ("weight_decay", -0.01, ValueError),
    ("weight_decay", NAN, ValueError),
    ("weight_decay", "0.1", TypeError),
    ("weight_decay", True, TypeError),
    ("clipnorm", -1.0, ValueError),
    ("clipnorm", NAN, ValueError),
    ("clipnorm", INF, ValueError),
    ("clipnorm", "1", TypeError),
    ("clipvalue", -1.0, ValueError),
    ("clipvalue", NAN, ValueError),
    ("global_clipnorm", -1.0, ValueError),
    ("global_clipnorm", INF, ValueError),
    ("global_clipnorm", [1.0], TypeError),
    ("use_ema", "yes", TypeError),
    ("use_ema", 1, TypeError),
    ("use_ema", None, TypeError),
    ("ema_momentum", -0.1, ValueError),
    ("ema_momentum", 1.1, ValueError),
    ("ema_momentum", NAN, ValueError),
    ("ema_momentum", "0.9", TypeError),
    ("ema_momentum", None, TypeError),
    ("ema_momentum", True, TypeError),
    ("ema_overwrite_frequency", 0, ValueError),
    ("ema_overwrite_frequency", -3, ValueError),
    ("ema_overwrite_frequency", 1.5, TypeError),
    ("ema_overwrite_frequency", 2.0, TypeError),
    ("ema_overwrite_frequency", "2", TypeError),
    ("ema_overwrite_frequency", True, TypeError),
    ("loss_scale_factor", 0.0, ValueError),
    ("loss_scale_factor", -128.0, ValueError),
    ("loss_scale_factor", NAN, ValueError),
    ("loss_scale_factor", INF, ValueError),
    ("loss_scale_factor", "128", TypeError),
    ("gradient_accumulation_steps", 1, ValueError),
    ("gradient_accumulation_steps", 0, ValueError),
    ("gradient_accumulation_steps", -2, ValueError),
    ("gradient_accumulation_steps", 2.0, TypeError),
    ("gradient_accumulation_steps", 2.5, TypeError),
    ("gradient_accumulation_steps", "4", TypeError),
    ("gradient_accumulation_steps", True, TypeError),
    ("name", 5, TypeError),
]


def _value_text(value):
    return repr(value)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("argument,value,error", BAD_ARGUMENTS,
                         ids=[f"{a}={v!r}" for a, v, _ in BAD_ARGUMENTS])
def test_bad_constructor_argument(cls, argument, value, error):
    with pytest.raises(error) as info:
        cls(**{argument: value})
    message = str(info.value)
    assert argument in message
    assert _value_text(value) in message or str(value) in message, message


@pytest.mark.parametrize("value", ["yes", 1, None, 0.0])
def test_bad_amsgrad(value):
    with pytest.raises(TypeError) as info:
        kerasopt.Adam(amsgrad=value)
    assert "amsgrad" in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "clip",
    [{"clipnorm": 1.0, "clipvalue": 1.0}, {"clipnorm": 1.0, "global_clipnorm": 1.0},
     {"clipvalue": 0.5, "global_clipnorm": 2.0},
     {"clipnorm": 1.0, "clipvalue": 1.0, "global_clipnorm": 1.0}],
)
def test_two_clip_options(cls, clip):
    with pytest.raises(ValueError) as info:
        cls(**clip)
    message = str(info.value)
    for key, value in clip.items():
        assert key in message and repr(value) in message


@pytest.mark.parametrize("cls", CLASSES)
def test_unknown_keyword(cls):
    with pytest.raises(TypeError) as info:
        cls(learning_rate=0.1, lr_decay=0.5)
    assert "lr_decay" in str(info.value) and "0.5" in str(info.value)
    with pytest.raises(TypeError, match="decay"):
        cls(decay=0.1)


def test_adamax_has_no_amsgrad():
    with pytest.raises(TypeError, match="amsgrad"):
        kerasopt.Adamax(amsgrad=True)


@pytest.mark.parametrize("cls", CLASSES)
def test_learning_rate_setter_validates(cls):
    opt = cls(learning_rate=0.1)
    for bad in (-1.0, NAN, "x"):
        with pytest.raises((ValueError, TypeError), match="learning_rate"):
            opt.learning_rate = bad
    assert float(opt.learning_rate) == float(F(0.1))


@pytest.mark.parametrize("argument", ["learning_rate", "weight_decay", "beta_1", "clipnorm"])
def test_huge_int_argument(argument):
    with pytest.raises((ValueError, TypeError), match=argument):
        kerasopt.Adam(**{argument: 10**400})


# --------------------------------------------------------------------------- fuzz

FUZZ_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=3.0),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-3, max_value=5),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.sampled_from([np.float32(0.5), np.float64(0.9), np.float32("nan"), np.float16(1.0),
                     np.int64(3), np.int32(1), np.float64(-0.0), np.float32(1e-8),
                     np.bool_(True), np.float64(np.inf)]),
    st.lists(st.floats(), max_size=2),
)


def _real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _finite(x):
    return _real(x) and math.isfinite(float(x))


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


# argument -> validity oracle from SPEC.md "Reliability" (True: must be accepted; False: must
# be rejected; None: either is acceptable).
ORACLES = {
    # A float rate is stored in float32 (as Keras does): it must stay finite there.
    "learning_rate": lambda x: (_finite(x) and float(x) >= 0 and not _is_int(x)
                                and bool(np.isfinite(np.float32(float(x))))),
    "beta_1": lambda x: _finite(x) and 0 <= float(x) < 1,
    "beta_2": lambda x: _finite(x) and 0 <= float(x) < 1,
    "epsilon": lambda x: _finite(x) and float(x) > 0,
    "weight_decay": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "clipnorm": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "clipvalue": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "global_clipnorm": lambda x: x is None or (_finite(x) and float(x) >= 0),
    "ema_momentum": lambda x: _finite(x) and 0 <= float(x) <= 1,
    "ema_overwrite_frequency": lambda x: x is None or (_is_int(x) and x >= 1),
    "gradient_accumulation_steps": lambda x: x is None or (_is_int(x) and x >= 2),
    "loss_scale_factor": lambda x: x is None or (_finite(x) and float(x) > 0),
    "use_ema": lambda x: True if isinstance(x, bool) else (None if isinstance(x, np.bool_)
                                                            else False),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argument=st.sampled_from(sorted(ORACLES)), value=FUZZ_VALUES,
       cls=st.sampled_from(CLASSES))
def test_fuzz_constructor_arguments(argument, value, cls):
    expected = ORACLES[argument](value)
    if value is None and argument in cls.spec.required:
        expected = False  # AdamW refuses weight_decay=None, as Keras does
    try:
        opt = cls(**{argument: value})
    except (ValueError, TypeError) as error:
        assert expected is not True, f"{argument}={value!r} is valid but raised {error!r}"
        assert argument in str(error), str(error)
        return
    assert expected is not False, f"{argument}={value!r} is invalid but was accepted"
    # a valid optimizer takes a step without error (values may overflow, e.g. a tiny
    # loss_scale_factor, as in Keras)
    var = kerasopt.Variable(np.array([1.0, -1.0], F))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.apply([np.array([0.5, 0.25], F)], [var])
    assert int(opt.iterations.numpy()) == (0 if opt.gradient_accumulation_steps else 1)


# --------------------------------------------------------------------------- bad calls


def _setup(cls=kerasopt.Adam, **kwargs):
    a = kerasopt.Variable(np.arange(6, dtype=F).reshape(2, 3), name="a")
    b = kerasopt.Variable(np.array([1.0, -1.0, 0.5], F), name="b")
    opt = cls(learning_rate=0.1, **kwargs)
    return opt, a, b


def _snapshot(opt, variables):
    return ([v.numpy() for v in variables], [v.numpy() for v in opt.variables],
            int(opt.iterations.numpy()))


def _assert_unchanged(before, after):
    assert before[2] == after[2]
    assert len(before[1]) == len(after[1])
    for x, y in zip(before[0] + before[1], after[0] + after[1], strict=True):
        assert x.dtype == y.dtype
        assert np.array_equal(x, y, equal_nan=True)


GOOD = [np.ones((2, 3), F), np.ones(3, F)]

BAD_CALLS = {
    "too_many_grads": lambda a, b: ([GOOD[0], GOOD[1], GOOD[1]], [a, b]),
    "too_few_grads": lambda a, b: ([GOOD[0]], [a, b]),
    "shape_first": lambda a, b: ([np.ones((3, 2), F), GOOD[1]], [a, b]),
    "shape_second": lambda a, b: ([GOOD[0], np.ones(4, F)], [a, b]),
    "shape_second_scalar": lambda a, b: ([GOOD[0], np.float32(1.0)], [a, b]),
    "shape_second_broadcastable": lambda a, b: ([GOOD[0], np.ones((1, 3), F)], [a, b]),
    "complex_second": lambda a, b: ([GOOD[0], np.ones(3, np.complex64)], [a, b]),
    "string_second": lambda a, b: ([GOOD[0], np.array(["a", "b", "c"])], [a, b]),
    "object_second": lambda a, b: ([GOOD[0], np.array([object()] * 3)], [a, b]),
    "python_string": lambda a, b: ([GOOD[0], "abc"], [a, b]),
    "all_none": lambda a, b: ([None, None], [a, b]),
    "unknown_variable": lambda a, b: ([GOOD[1]], [kerasopt.Variable(np.ones(3, F))]),
    "unknown_with_known": lambda a, b: (
        [GOOD[0], GOOD[1]], [a, kerasopt.Variable(np.ones(3, F), name="b")]),
    "not_a_variable": lambda a, b: ([GOOD[0], GOOD[1]], [a, np.ones(3, F)]),
}

OPT_KWARGS = [
    {},
    {"use_ema": True, "ema_overwrite_frequency": 2},
    {"gradient_accumulation_steps": 3},
    {"weight_decay": 0.1, "global_clipnorm": 1.0, "loss_scale_factor": 2.0},
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kwargs", OPT_KWARGS, ids=lambda k: ",".join(k) or "plain")
@pytest.mark.parametrize("bad", sorted(BAD_CALLS))
def test_bad_call_changes_nothing(cls, kwargs, bad):
    opt, a, b = _setup(cls, **kwargs)
    opt.apply(GOOD, [a, b])  # built, state non-trivial (mid-cycle under accumulation)
    before = _snapshot(opt, [a, b])
    grads, variables = BAD_CALLS[bad](a, b)
    with pytest.raises((ValueError, TypeError)):
        opt.apply(grads, variables)
    _assert_unchanged(before, _snapshot(opt, [a, b]))
    # and the next good step equals a never-failed optimizer's
    ref, ra, rb = _setup(cls, **kwargs)
    ref.apply(GOOD, [ra, rb])
    ref.apply(GOOD, [ra, rb])
    opt.apply(GOOD, [a, b])
    _assert_unchanged(_snapshot(ref, [ra, rb]), _snapshot(opt, [a, b]))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", sorted(set(BAD_CALLS) - {"unknown_variable",
                                                          "unknown_with_known"}))
def test_bad_call_on_unbuilt_optimizer(cls, bad):
    opt, a, b = _setup(cls)
    weights = [a.numpy(), b.numpy()]
    grads, variables = BAD_CALLS[bad](a, b)
    with pytest.raises((ValueError, TypeError)):
        opt.apply(grads, variables)
    assert np.array_equal(a.numpy(), weights[0]) and np.array_equal(b.numpy(), weights[1])
    assert int(opt.iterations.numpy()) == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_apply_gradients_bad_pairs(cls):
    opt, a, b = _setup(cls)
    opt.apply(GOOD, [a, b])
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError):
        opt.apply_gradients([(GOOD[0], a), (np.ones(5, F), b)])
    _assert_unchanged(before, _snapshot(opt, [a, b]))


@pytest.mark.parametrize("cls", CLASSES)
def test_shape_error_names_variable(cls):
    opt, a, b = _setup(cls)
    with pytest.raises(ValueError) as info:
        opt.apply([GOOD[0], np.ones(4, F)], [a, b])
    assert "'b'" in str(info.value) and "(4,)" in str(info.value)


@pytest.mark.parametrize("cls", CLASSES)
def test_unbuilt_apply_without_variables(cls):
    opt = cls()
    with pytest.raises(ValueError, match="build"):
        opt.apply([np.ones(3, F)])
    assert not opt.built
    assert int(opt.iterations.numpy()) == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_apply_with_built_variables_default(cls):
    opt, a, b = _setup(cls)
    opt.build([a, b])
    opt.apply(GOOD)
    assert int(opt.iterations.numpy()) == 1
    assert not np.array_equal(b.numpy(), [1.0, -1.0, 0.5])


@pytest.mark.parametrize("cls", CLASSES)
def test_integer_gradient_is_cast(cls):
    opt, a, b = _setup(cls)
    ref, ra, rb = _setup(cls)
    opt.apply([np.ones((2, 3), np.int32), np.ones(3, np.int64)], [a, b])
    ref.apply(GOOD, [ra, rb])
    assert np.array_equal(a.numpy(), ra.numpy()) and np.array_equal(b.numpy(), rb.numpy())
    assert a.numpy().dtype == F


def test_loss_scale_optimizer_bad_call_changes_nothing():
    inner = kerasopt.Adam(learning_rate=0.1)
    opt = kerasopt.LossScaleOptimizer(inner, initial_scale=4.0)
    a = kerasopt.Variable(np.ones(3, F), name="a")
    b = kerasopt.Variable(np.ones(2, F), name="b")
    opt.apply([np.ones(3, F), np.ones(2, F)], [a, b])
    before = [v.numpy() for v in opt.variables] + [a.numpy(), b.numpy()]
    for grads in ([np.ones(3, F), np.ones(3, F)], [np.ones(3, F)],
                  [np.ones(3, F), np.ones(2, np.complex64)]):
        with pytest.raises((ValueError, TypeError)):
            opt.apply(grads, [a, b])
    after = [v.numpy() for v in opt.variables] + [a.numpy(), b.numpy()]
    for x, y in zip(before, after, strict=True):
        assert np.array_equal(x, y)


def test_exclude_from_weight_decay_bad_input():
    opt = kerasopt.Adam(weight_decay=0.1)
    with pytest.raises(ValueError, match="var_names"):
        opt.exclude_from_weight_decay(var_names=["("])
    with pytest.raises(TypeError, match="var_names"):
        opt.exclude_from_weight_decay(var_names=[3])
    v = kerasopt.Variable(np.ones(2, F))
    opt.apply([np.ones(2, F)], [v])
    with pytest.raises(ValueError):
        opt.exclude_from_weight_decay(var_names=["x"])


def test_callable_beta_returning_bad_value_raises_before_change():
    opt = kerasopt.Adam(learning_rate=0.1, beta_1=lambda: 1.5)
    v = kerasopt.Variable(np.ones(2, F))
    with pytest.raises(ValueError, match="beta_1"):
        opt.apply([np.ones(2, F)], [v])
    assert np.array_equal(v.numpy(), np.ones(2, F))


@pytest.mark.parametrize("cls", CLASSES)
def test_integer_variable_is_rejected(cls):
    var = kerasopt.Variable(np.ones(3, np.int32), name="counts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, TypeError), match="counts"):
            cls().apply([np.ones(3, F)], [var])
    assert np.array_equal(var.numpy(), np.ones(3, np.int32))
