"""Keras's published single-step values and golden trajectories (keras/src/optimizers/
adam_test.py and adamax_test.py), reproduced with kerasopt's NumPy core."""

from __future__ import annotations

import numpy as np
import pytest

import kerasopt

OPTIMIZERS = [kerasopt.Adam, kerasopt.Adamax]


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_single_step(cls):
    optimizer = cls(learning_rate=0.5)
    grads = np.array([1.0, 6.0, 7.0, 2.0], np.float32)
    var = kerasopt.Variable(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    optimizer.apply_gradients(zip([grads], [var]))
    np.testing.assert_allclose(var.numpy(), [0.5, 1.5, 2.5, 3.5], rtol=1e-4, atol=1e-4)
    assert int(optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_weight_decay(cls):
    grads = np.zeros((), np.float32)
    var1 = kerasopt.Variable(np.array(2.0, np.float32))
    var2 = kerasopt.Variable(np.array(2.0, np.float32), name="exclude")
    var3 = kerasopt.Variable(np.array(2.0, np.float32))
    optimizer_1 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients(zip([grads], [var1]))

    optimizer_2 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))

    optimizer_3 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))

    np.testing.assert_almost_equal(var1.numpy(), 1.9760959, decimal=6)
    np.testing.assert_almost_equal(var2.numpy(), 2.0, decimal=6)
    np.testing.assert_almost_equal(var3.numpy(), 2.0, decimal=6)
    # Hand-derived: each of the three steps multiplies by (1 - 0.004) (a zero gradient leaves
    # the Adam/Adamax update at 0 since m = 0).
    np.testing.assert_allclose(var1.numpy(), 2.0 * (1 - 0.004) ** 3, rtol=1e-6)


def test_adam_amsgrad_golden():
    optimizer = kerasopt.Adam(amsgrad=True)
    x = kerasopt.Variable(np.ones([10], dtype="float32"))
    grads = np.arange(0.1, 1.1, 0.1).astype(np.float32)[:10]
    first_grads = np.full((10,), 0.01, np.float32)
    golden = np.tile([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        np.testing.assert_allclose(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


def test_adamax_golden():
    optimizer = kerasopt.Adamax(learning_rate=0.2, beta_1=0.85, beta_2=0.95, epsilon=1e-6)
    x = kerasopt.Variable(np.ones([10], dtype="float32"))
    grads = np.arange(0.1, 1.1, 0.1).astype(np.float32)[:10]
    first_grads = np.full((10,), 0.01, np.float32)
    # fmt: off
    golden = np.array(
        [[0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
         [0.6827, 0.6873, 0.6888, 0.6896, 0.6901, 0.6904, 0.6906, 0.6908, 0.6909, 0.691],
         [0.5333, 0.5407, 0.5431, 0.5444, 0.5451, 0.5456, 0.546, 0.5462, 0.5464, 0.5466],
         [0.368, 0.3773, 0.3804, 0.382, 0.3829, 0.3835, 0.384, 0.3843, 0.3846, 0.3848],
         [0.1933, 0.204, 0.2076, 0.2094, 0.2105, 0.2112, 0.2117, 0.2121, 0.2124, 0.2126]]
    )
    # fmt: on
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        np.testing.assert_allclose(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_clip_norm(cls):
    optimizer = cls(clipnorm=1)
    clipped = optimizer._clip_gradients([np.array([100.0, 100.0])])
    np.testing.assert_allclose(clipped[0], [2**0.5 / 2, 2**0.5 / 2])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_clip_value(cls):
    optimizer = cls(clipvalue=1)
    clipped = optimizer._clip_gradients([np.array([100.0, 100.0])])
    np.testing.assert_allclose(clipped[0], [1.0, 1.0])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_clip_norm_through_apply(cls):
    """Through the public apply: a clipped gradient g*c/||g|| gives the same step as passing
    the clipped gradient directly to an unclipped optimizer (the first step of Adam/Adamax
    with lr=0.5 moves by ~lr*sign(g) regardless, so check the state instead)."""
    optimizer = cls(learning_rate=0.5, clipnorm=1.0)
    var = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    optimizer.apply([np.array([3.0, 4.0], np.float32)], [var])
    # m after one step = (1 - beta_1) * clipped g = 0.1 * [0.6, 0.8]
    m = optimizer.variables[2].numpy()
    np.testing.assert_allclose(m, 0.1 * np.array([0.6, 0.8]), rtol=1e-6)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_global_clipnorm_through_apply(cls):
    optimizer = cls(learning_rate=0.5, global_clipnorm=1.0)
    a = kerasopt.Variable(np.array([1.0], np.float32))
    b = kerasopt.Variable(np.array([1.0], np.float32))
    optimizer.apply([np.array([3.0], np.float32), np.array([4.0], np.float32)], [a, b])
    # Keras order: iteration, learning_rate, then (m, second) per variable.
    m_a, m_b = optimizer.variables[2].numpy(), optimizer.variables[4].numpy()
    np.testing.assert_allclose(m_a, [0.1 * 0.6], rtol=1e-6)
    np.testing.assert_allclose(m_b, [0.1 * 0.8], rtol=1e-6)


def test_ema():
    """Keras's test_ema, with the no-EMA trajectory computed by hand (Adam, lr=1)."""
    optimizer = kerasopt.Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    var = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    grads = np.array([0.1, 0.2], np.float32)
    optimizer.apply_gradients([(grads, var)])
    v1 = var.numpy()
    expected = _adam_reference([1.0, 2.0], [grads, grads], 1.0, 0.9, 0.999, 1e-7)
    np.testing.assert_allclose(v1, expected[0], rtol=1e-6, atol=1e-7)
    average = optimizer._ema_averages[0].numpy()
    np.testing.assert_allclose(average, v1)
    optimizer.apply_gradients([(grads, var)])
    v2 = var.numpy()
    np.testing.assert_allclose(v2, expected[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(optimizer._ema_averages[0].numpy(), 0.9 * v1 + 0.1 * v2, rtol=1e-6)
    optimizer.finalize_variable_values([var])
    np.testing.assert_allclose(var.numpy(), 0.9 * v1 + 0.1 * v2, rtol=1e-6)


def test_ema_overwrite_frequency():
    optimizer = kerasopt.Adam(
        learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2
    )
    plain = kerasopt.Adam(learning_rate=1.0)
    var = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    var_plain = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    grads = np.array([0.1, 0.2], np.float32)
    optimizer.apply_gradients([(grads, var)])
    plain.apply_gradients([(grads, var_plain)])
    v1 = var_plain.numpy()
    np.testing.assert_allclose(var.numpy(), v1)
    optimizer.apply_gradients([(grads, var)])
    plain.apply_gradients([(grads, var_plain)])
    v2 = var_plain.numpy()
    np.testing.assert_allclose(var.numpy(), 0.9 * v1 + 0.1 * v2, rtol=1e-6)


def _adam_reference(w, grads, lr, b1, b2, eps, amsgrad=False):
    """Keras's Adam in float32, written out from SPEC.md."""
    w = np.array(w, np.float32)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    vh = np.zeros_like(w)
    f = np.float32
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float32)
        alpha = f(lr) * np.sqrt(f(1) - f(b2) ** f(t)) / (f(1) - f(b1) ** f(t))
        m = m + (g - m) * f(1 - b1)
        v = v + (g * g - v) * f(1 - b2)
        den = v
        if amsgrad:
            vh = np.maximum(vh, v)
            den = vh
        w = w - m * alpha / (np.sqrt(den) + f(eps))
        out.append(w.copy())
    return out


def _adamax_reference(w, grads, lr, b1, b2, eps):
    w = np.array(w, np.float32)
    m = np.zeros_like(w)
    u = np.zeros_like(w)
    f = np.float32
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float32)
        m = m + (g - m) * f(1 - b1)
        u = np.maximum(f(b2) * u, np.abs(g))
        w = w - f(lr) * m / ((f(1) - f(b1) ** f(t)) * (u + f(eps)))
        out.append(w.copy())
    return out


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_long_trajectory_matches_formula(amsgrad):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(7, 3)).astype(np.float32) for _ in range(50)]
    w0 = rng.normal(size=(7, 3)).astype(np.float32)
    expected = _adam_reference(w0, grads, 0.01, 0.8, 0.95, 1e-6, amsgrad)
    var = kerasopt.Variable(w0.copy())
    opt = kerasopt.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6,
                        amsgrad=amsgrad)
    for g, e in zip(grads, expected):
        opt.apply([g], [var])
        np.testing.assert_allclose(var.numpy(), e, rtol=1e-6, atol=1e-7)


def test_adamax_long_trajectory_matches_formula():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(50)]
    w0 = rng.normal(size=(5,)).astype(np.float32)
    expected = _adamax_reference(w0, grads, 0.01, 0.8, 0.95, 1e-6)
    var = kerasopt.Variable(w0.copy())
    opt = kerasopt.Adamax(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    for g, e in zip(grads, expected):
        opt.apply([g], [var])
        np.testing.assert_allclose(var.numpy(), e, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_global_clipnorm_non_finite_norm_gives_nan(cls):
    """SPEC/Keras: a non-finite global norm turns every gradient into NaN."""
    optimizer = cls(learning_rate=0.1, global_clipnorm=1.0)
    a = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    b = kerasopt.Variable(np.array([3.0], np.float32))
    optimizer.apply([np.array([np.inf, 0.0], np.float32), np.array([1.0], np.float32)], [a, b])
    assert np.all(np.isnan(a.numpy()))
    assert np.all(np.isnan(b.numpy()))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_non_finite_gradient_propagates_by_default(cls):
    optimizer = cls(learning_rate=0.1)
    a = kerasopt.Variable(np.array([1.0, 2.0], np.float32))
    optimizer.apply([np.array([np.nan, 1.0], np.float32)], [a])
    assert np.isnan(a.numpy()[0]) and np.isfinite(a.numpy()[1])
    assert int(optimizer.iterations.numpy()) == 1
