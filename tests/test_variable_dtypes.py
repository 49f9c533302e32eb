"""kerasopt.Variable: in-place NumPy storage, dtypes of variables and state, the Variable API,
None gradients."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import kerasopt
from optimizer_db import ALGORITHMS, core_class

os.environ.setdefault("KERAS_BACKEND", "torch")

CLASSES = [core_class(name) for name in ALGORITHMS]


def _adam_ref(w, grads, dtype, lr=0.1, b1=0.9, b2=0.999, eps=1e-7, wd=None):
    """Keras's Adam in ``dtype``; the learning rate is a float32 variable cast to ``dtype``.
    With ``wd`` (AdamW), each step first multiplies ``w`` by ``1 - wd * lr`` computed in
    float32, as Keras's torch backend does."""
    f = np.dtype(dtype).type
    lr = np.float32(lr)
    w = np.array(w, dtype)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype)
        if wd is not None:
            w = w * f(np.float32(1) - np.float32(wd) * lr)
        alpha = f(lr) * np.sqrt(f(1) - f(b2) ** f(t)) / (f(1) - f(b1) ** f(t))
        m = m + (g - m) * f(1 - b1)
        v = v + (g * g - v) * f(1 - b2)
        w = w - m * alpha / (np.sqrt(v) + f(eps))
    return w, m, v


def _adamax_ref(w, grads, dtype, lr=0.1, b1=0.9, b2=0.999, eps=1e-7):
    f = np.dtype(dtype).type
    lr = np.float32(lr)
    w = np.array(w, dtype)
    m = np.zeros_like(w)
    u = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype)
        m = m + (g - m) * f(1 - b1)
        u = np.maximum(f(b2) * u, np.abs(g))
        w = w - f(lr) * m / ((f(1) - f(b1) ** f(t)) * (u + f(eps)))
    return w, m, u


def _adamw_ref(*args, **kwargs):
    return _adam_ref(*args, wd=0.004, **kwargs)  # AdamW: Adam with weight_decay=0.004


REFS = {kerasopt.Adam: _adam_ref, kerasopt.Adamax: _adamax_ref, kerasopt.AdamW: _adamw_ref}


@pytest.mark.parametrize("cls", CLASSES)
def test_numpy_storage_updated_in_place(cls):
    array = np.array([1.0, 2.0, 3.0], np.float32)
    alias = array
    view = array[1:]
    var = kerasopt.Variable(array)
    assert var.value is array
    opt = cls(learning_rate=0.5)
    opt.apply([np.array([1.0, 1.0, 1.0], np.float32)], [var])
    expected, _, _ = REFS[cls]([1.0, 2.0, 3.0], [[1.0, 1.0, 1.0]], np.float32, lr=0.5)
    np.testing.assert_allclose(alias, expected, rtol=1e-6)
    np.testing.assert_allclose(view, expected[1:], rtol=1e-6)
    assert var.value is array


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.float32])
def test_dtype_kept_for_variable_and_state(cls, dtype):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4,)).astype(dtype)
    grads = [rng.normal(size=(4,)).astype(dtype) for _ in range(5)]
    array = w0.copy()
    var = kerasopt.Variable(array)
    opt = cls(learning_rate=0.1)
    for g in grads:
        opt.apply([g], [var])
    assert var.dtype == dtype
    assert var.value is array
    slots = [v for v in opt.variables if v.shape == (4,)]
    assert len(slots) == 2
    assert all(s.dtype == dtype for s in slots)
    expected_w, expected_m, expected_2 = REFS[cls](w0, grads, dtype)
    rtol = {np.float64: 1e-13, np.float32: 1e-6, np.float16: 2e-3}[dtype]
    np.testing.assert_allclose(var.numpy(), expected_w, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(slots[0].numpy(), expected_m, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(slots[1].numpy(), expected_2, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_dtype_matches_keras(cls, dtype):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 2)).astype(dtype)
    k_var = keras.Variable(w0.copy(), dtype=dtype)
    k_opt = getattr(keras.optimizers, cls.__name__)(learning_rate=0.05)
    var = kerasopt.Variable(w0.copy())
    opt = cls(learning_rate=0.05)
    for _ in range(4):
        g = rng.normal(size=(3, 2)).astype(dtype)
        k_opt.apply([keras.ops.convert_to_tensor(g)], [k_var])
        opt.apply([g], [var])
    rtol = 1e-12 if dtype == "float64" else 2e-3
    np.testing.assert_allclose(var.numpy(), np.asarray(k_var.numpy()), rtol=rtol, atol=rtol)
    for a, b in zip(opt.variables[2:], k_opt.variables[2:], strict=True):
        assert a.numpy().dtype == np.asarray(b.numpy()).dtype
        np.testing.assert_allclose(a.numpy(), np.asarray(b.numpy()), rtol=rtol, atol=rtol)


def test_python_values_become_float32():
    assert kerasopt.Variable([1.0, 2.0]).dtype == np.float32
    assert kerasopt.Variable(3.0).dtype == np.float32
    assert kerasopt.Variable(np.array([1.0, 2.0])).dtype == np.float64  # kept as given
    v = kerasopt.Variable(np.array([1.0, 2.0]), dtype="float32")
    assert v.dtype == np.float32


def test_dtype_argument_copies():
    array = np.ones(3, np.float64)
    v = kerasopt.Variable(array, dtype=np.float32)
    v.assign(np.zeros(3))
    assert np.array_equal(array, np.ones(3))
    same = kerasopt.Variable(array, dtype=np.float64)
    assert same.value is array


def test_variable_api():
    array = np.array([1.0, 2.0], np.float32)
    v = kerasopt.Variable(array, name="weights", trainable=False)
    assert v.name == "weights"
    assert v.shape == (2,)
    assert v.dtype == np.float32
    assert v.trainable is False
    out = v.numpy()
    assert isinstance(out, np.ndarray)
    out[0] = 99.0
    assert array[0] == 1.0  # numpy() is a copy
    assert v.assign(np.array([3.0, 4.0])) is v
    assert array.tolist() == [3.0, 4.0]  # in place, cast to float32
    v.assign_add(np.array([1.0, 1.0], np.float32))
    assert array.tolist() == [4.0, 5.0]
    v.assign_sub(np.array([0.5, 0.5], np.float32))
    assert array.tolist() == [3.5, 4.5]
    assert v.dtype == np.float32
    v.assign(0.0)  # scalar broadcasts
    assert array.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="weights"):
        v.assign(np.ones(3, np.float32))
    assert np.asarray(v).tolist() == [0.0, 0.0]
    assert kerasopt.Variable(np.ones(1)).name != kerasopt.Variable(np.ones(1)).name


def test_variable_bad_arguments():
    with pytest.raises(TypeError, match="name"):
        kerasopt.Variable(np.ones(2), name=3)
    with pytest.raises(TypeError, match="constraint"):
        kerasopt.Variable(np.ones(2), constraint="non_neg")


@pytest.mark.parametrize("cls", CLASSES)
def test_constraint_applied_after_step(cls):
    var = kerasopt.Variable(np.array([0.05, 1.0], np.float32), constraint=lambda w: np.maximum(
        w, 0.0))
    opt = cls(learning_rate=0.5)
    opt.apply([np.array([1.0, 1.0], np.float32)], [var])
    expected, _, _ = REFS[cls]([0.05, 1.0], [[1.0, 1.0]], np.float32, lr=0.5)
    assert expected[0] < 0
    np.testing.assert_allclose(var.numpy(), np.maximum(expected, 0.0), rtol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_none_gradient_warns_with_name_and_skips(cls):
    a = kerasopt.Variable(np.ones(2, np.float32), name="alpha_kernel")
    b = kerasopt.Variable(np.ones(2, np.float32), name="beta_bias")
    opt = cls(learning_rate=0.1)
    opt.apply([np.ones(2, np.float32), np.ones(2, np.float32)], [a, b])
    b_before = b.numpy()
    state_b = [v.numpy() for v in opt.variables if "beta_bias" in v.name]
    with pytest.warns(UserWarning, match="beta_bias"):
        opt.apply([np.ones(2, np.float32), None], [a, b])
    assert np.array_equal(b.numpy(), b_before)
    assert all(np.array_equal(x, y.numpy()) for x, y in zip(
        state_b, [v for v in opt.variables if "beta_bias" in v.name], strict=True))
    assert int(opt.iterations.numpy()) == 2
    # the step of `a` used the global t = 2
    expected, _, _ = REFS[cls]([1.0, 1.0], [[1.0, 1.0]] * 2, np.float32)
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_all_none_raises_and_changes_nothing(cls):
    a = kerasopt.Variable(np.ones(2, np.float32), name="a")
    opt = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            opt.apply([None], [a])
    assert int(opt.iterations.numpy()) == 0
    opt.apply([np.ones(2, np.float32)], [a])
    before = [v.numpy() for v in opt.variables]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            opt.apply([None], [a])
    for x, y in zip(before, opt.variables, strict=True):
        assert np.array_equal(x, y.numpy())


def test_none_gradient_on_accumulation_update_step_drops_partial_sum():
    """SPEC: a None gradient on an accumulation update step resets that variable's
    accumulator with the others, dropping its partial sum."""
    a = kerasopt.Variable(np.ones(2, np.float32), name="a")
    b = kerasopt.Variable(np.ones(2, np.float32), name="b")
    opt = kerasopt.Adamax(learning_rate=0.1, gradient_accumulation_steps=2)
    opt.apply([np.ones(2, np.float32), np.full(2, 3.0, np.float32)], [a, b])
    with pytest.warns(UserWarning, match="'b'"):
        opt.apply([np.ones(2, np.float32), None], [a, b])
    accumulators = [v for v in opt.variables if "gradient_accumulator" in v.name]
    assert all(np.array_equal(x.numpy(), np.zeros(2)) for x in accumulators)
    assert np.array_equal(b.numpy(), np.ones(2, np.float32))
    expected, _, _ = _adamax_ref([1.0, 1.0], [[1.0, 1.0]], np.float32)
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-6)


def test_state_variable_names_follow_keras():
    var = kerasopt.Variable(np.ones(2, np.float32), name="dense/kernel")
    opt = kerasopt.Adam(name="adam", amsgrad=True, use_ema=True, gradient_accumulation_steps=2)
    opt.build([var])
    names = [v.name for v in opt.variables]
    assert names == ["adam/iteration", "adam/learning_rate", "adam/dense_kernel_average",
                     "adam/dense_kernel_gradient_accumulator", "adam/dense_kernel_momentum",
                     "adam/dense_kernel_velocity", "adam/dense_kernel_velocity_hat"]
