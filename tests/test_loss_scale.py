"""kerasopt.LossScaleOptimizer: Keras 3's dynamic loss scaling, checked by hand."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kerasopt

F = np.float32


def _adamax_step(w, g, m, u, t, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    m = m + (g - m) * F(1 - b1)
    u = np.maximum(F(b2) * u, np.abs(g))
    w = w - F(lr) * m / ((F(1) - F(b1) ** F(t)) * (u + F(eps)))
    return w, m, u


def _make(initial_scale=8.0, growth=3):
    inner = kerasopt.Adamax(learning_rate=0.01)
    return inner, kerasopt.LossScaleOptimizer(
        inner, initial_scale=initial_scale, dynamic_growth_steps=growth
    )


def _state(opt):
    return [v.numpy() for v in opt.variables]


def test_variables_order():
    inner, opt = _make()
    a = kerasopt.Variable(np.ones(3, F), name="a")
    b = kerasopt.Variable(np.ones(2, F), name="b")
    opt.build([a, b])
    names = [v.name for v in opt.variables]
    assert names[0].endswith("iteration")
    assert names[1].endswith("learning_rate")
    assert names[2].endswith("step_counter")
    assert names[3].endswith("dynamic_scale")
    assert names[4:] == [v.name for v in inner.variables]
    assert len(inner.variables) == 2 + 2 * 2  # iteration, lr, (m, u) per variable
    values = _state(opt)
    assert values[1] == 0.0
    assert values[1].dtype == np.float32
    assert int(values[2]) == 0
    assert values[3] == 8.0 and values[3].dtype == np.float32


def test_variables_order_matches_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    k_opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adamax(learning_rate=0.01), initial_scale=8.0
    )
    k_opt.build([keras.Variable(np.ones(3, F), name="a")])
    _, opt = _make()
    opt.build([kerasopt.Variable(np.ones(3, F), name="a")])
    assert len(k_opt.variables) == len(opt.variables)
    for kv, v in zip(k_opt.variables, opt.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(kv.numpy()), v.numpy())
        assert kv.path.split("/")[-1].split("_")[-1] == v.name.split("/")[-1].split("_")[-1]


def test_finite_steps_unscale_and_grow():
    inner, opt = _make(initial_scale=8.0, growth=3)
    w = kerasopt.Variable(np.array([1.0, -2.0], F))
    ref_w, m, u = w.numpy(), np.zeros(2, F), np.zeros(2, F)
    scale = 8.0
    g_true = [np.array([0.5, -0.25], F), np.array([1.0, 2.0], F), np.array([-0.5, 0.125], F),
              np.array([0.25, 0.75], F)]
    for t, g in enumerate(g_true, start=1):
        opt.apply([g * F(scale)], [w])
        ref_w, m, u = _adamax_step(ref_w, g, m, u, t)
        np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6)
        if t % 3 == 0:
            scale *= 2
        assert float(opt.dynamic_scale.numpy()) == scale
        assert int(opt.step_counter.numpy()) == t % 3
        assert int(inner.iterations.numpy()) == t
        assert int(opt.iterations.numpy()) == t
    assert float(opt.dynamic_scale.numpy()) == 16.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [0, 1])
def test_non_finite_gradient_skips_step_and_halves(bad, position):
    inner, opt = _make(initial_scale=8.0, growth=3)
    a = kerasopt.Variable(np.array([1.0, -2.0], F))
    b = kerasopt.Variable(np.array([[0.5]], F))
    opt.apply([np.array([1.0, 1.0], F), np.array([[2.0]], F)], [a, b])
    opt.apply([np.array([1.0, 1.0], F), np.array([[2.0]], F)], [a, b])
    assert int(opt.step_counter.numpy()) == 2
    weights = [a.numpy(), b.numpy()]
    inner_state = [v.numpy() for v in inner.variables]
    grads = [np.array([1.0, 1.0], F), np.array([[2.0]], F)]
    grads[position] = grads[position].copy()
    grads[position].flat[0] = bad
    opt.apply(grads, [a, b])
    assert np.array_equal(a.numpy(), weights[0])
    assert np.array_equal(b.numpy(), weights[1])
    for before, after in zip(inner_state, inner.variables, strict=True):
        assert np.array_equal(before, after.numpy())
    assert int(inner.iterations.numpy()) == 2
    assert int(opt.step_counter.numpy()) == 0
    assert float(opt.dynamic_scale.numpy()) == 4.0
    # again: halves again
    opt.apply(grads, [a, b])
    assert float(opt.dynamic_scale.numpy()) == 2.0
    assert int(inner.iterations.numpy()) == 2
    # counter restarts: 3 more finite steps needed to grow
    for k in range(3):
        opt.apply([np.array([1.0, 1.0], F), np.array([[2.0]], F)], [a, b])
        assert float(opt.dynamic_scale.numpy()) == (2.0 if k < 2 else 4.0)
    assert int(inner.iterations.numpy()) == 5


def test_non_finite_with_none_gradient():
    inner, opt = _make()
    a = kerasopt.Variable(np.ones(2, F))
    b = kerasopt.Variable(np.ones(2, F))
    opt.apply([np.ones(2, F), np.ones(2, F)], [a, b])
    before = _state(opt)
    # Skipped step: as in Keras, the inner optimizer is not called at all.
    opt.apply([None, np.array([np.nan, 1.0], F)], [a, b])
    after = _state(opt)
    assert float(after[3]) == float(before[3]) / 2
    for i in [0, 1] + list(range(4, len(before))):
        assert np.array_equal(before[i], after[i])
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_growth_steps_one_doubles_every_step():
    _, opt = _make(initial_scale=1.0, growth=1)
    w = kerasopt.Variable(np.ones(2, F))
    for k in range(4):
        opt.apply([np.ones(2, F)], [w])
        assert float(opt.dynamic_scale.numpy()) == 2.0 ** (k + 1)
        assert int(opt.step_counter.numpy()) == 0


def test_scale_loss():
    _, opt = _make(initial_scale=8.0, growth=1)
    assert float(opt.scale_loss(F(1.5))) == 12.0
    w = kerasopt.Variable(np.ones(2, F))
    opt.apply([np.ones(2, F)], [w])  # scale -> 16
    assert float(opt.scale_loss(F(1.5))) == 24.0
    np.testing.assert_array_equal(opt.scale_loss(np.array([1.0, 2.0], F)), [16.0, 32.0])


def test_inner_loss_scale_factor_disabled():
    inner = kerasopt.Adamax(learning_rate=0.01, loss_scale_factor=4.0)
    kerasopt.LossScaleOptimizer(inner)
    assert inner.loss_scale_factor is None


def test_learning_rate_delegates_to_inner():
    inner, opt = _make()
    assert np.isclose(float(opt.learning_rate), 0.01)
    opt.learning_rate = 0.5
    assert float(inner.learning_rate) == 0.5


def test_get_config_from_config_round_trip():
    inner, opt = _make(initial_scale=64.0, growth=7)
    config = opt.get_config()
    assert config["initial_scale"] == 64.0
    assert config["dynamic_growth_steps"] == 7
    assert config["inner_optimizer"]["class_name"] == "Adamax"
    clone = kerasopt.LossScaleOptimizer.from_config(config)
    assert isinstance(clone.inner_optimizer, kerasopt.Adamax)
    assert clone.get_config() == config
    again = kerasopt.deserialize(kerasopt.serialize(opt))
    assert isinstance(again, kerasopt.LossScaleOptimizer)
    assert again.get_config() == config


def test_deserialize_keras_config():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    k_opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adamax(learning_rate=0.01, beta_1=0.8), initial_scale=128.0,
        dynamic_growth_steps=3,
    )
    config = keras.optimizers.serialize(k_opt)
    opt = kerasopt.deserialize(config)
    assert isinstance(opt, kerasopt.LossScaleOptimizer)
    assert isinstance(opt.inner_optimizer, kerasopt.Adamax)
    assert opt.initial_scale == 128.0
    assert opt.dynamic_growth_steps == 3
    assert opt.inner_optimizer.beta_1 == 0.8
    assert np.isclose(float(opt.inner_optimizer.learning_rate), 0.01)
    ours = opt.get_config()
    theirs = k_opt.get_config()
    assert ours["initial_scale"] == theirs["initial_scale"]
    assert ours["dynamic_growth_steps"] == theirs["dynamic_growth_steps"]
    assert ours["inner_optimizer"]["config"] == theirs["inner_optimizer"]["config"]
    # and the other way: Keras reads kerasopt's config
    back = keras.optimizers.deserialize(kerasopt.serialize(opt))
    assert isinstance(back, keras.optimizers.LossScaleOptimizer)
    assert back.inner_optimizer.get_config() == theirs["inner_optimizer"]["config"]


def test_matches_keras_trajectory_with_skips():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    k_opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(learning_rate=0.01), initial_scale=4.0, dynamic_growth_steps=2
    )
    _, opt = None, kerasopt.LossScaleOptimizer(
        kerasopt.Adam(learning_rate=0.01), initial_scale=4.0, dynamic_growth_steps=2
    )
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2)).astype(F)
    kv = keras.Variable(w0.copy())
    v = kerasopt.Variable(w0.copy())
    for step in range(8):
        g = rng.normal(size=(3, 2)).astype(F)
        if step in (2, 5):
            g[1, 1] = np.inf if step == 2 else np.nan
        k_opt.apply([keras.ops.convert_to_tensor(g)], [kv])
        opt.apply([g], [v])
        np.testing.assert_allclose(v.numpy(), np.asarray(kv.numpy()), rtol=1e-6, atol=1e-7)
        for a, b in zip(k_opt.variables, opt.variables, strict=True):
            np.testing.assert_allclose(b.numpy(), np.asarray(a.numpy()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_scale": 0.0},
        {"initial_scale": -1.0},
        {"initial_scale": float("nan")},
        {"initial_scale": float("inf")},
        {"dynamic_growth_steps": 0},
        {"dynamic_growth_steps": 1.5},
        {"clipnorm": 1.0},
        {"dynamic": False},
    ],
)
def test_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises((ValueError, TypeError), match=name):
        kerasopt.LossScaleOptimizer(kerasopt.Adam(), **kwargs)


def test_inner_must_be_optimizer():
    with pytest.raises(TypeError, match="inner_optimizer"):
        kerasopt.LossScaleOptimizer("adam")


def test_save_load_round_trip_bit_exact():
    def run(n, opt, w, rng):
        for _ in range(n):
            g = rng.normal(size=(4,)).astype(F) * F(8)
            if rng.random() < 0.2:
                g[0] = np.inf
            opt.apply([g], [w])

    rng_a = np.random.default_rng(5)
    _, straight = _make(initial_scale=8.0, growth=2)
    w_a = kerasopt.Variable(np.ones(4, F))
    run(10, straight, w_a, rng_a)

    rng_b = np.random.default_rng(5)
    _, first = _make(initial_scale=8.0, growth=2)
    w_b = kerasopt.Variable(np.ones(4, F))
    run(6, first, w_b, rng_b)
    store = {}
    first.save_own_variables(store)
    _, second = _make(initial_scale=8.0, growth=2)
    second.build([w_b])
    second.load_own_variables(store)
    run(4, second, w_b, rng_b)
    assert np.array_equal(w_a.numpy(), w_b.numpy())
    for x, y in zip(straight.variables, second.variables, strict=True):
        assert np.array_equal(x.numpy(), y.numpy())
