"""State save/restore, stateless_apply, configs and (de)serialization, including hostile
configs that must never import anything."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import kerasopt
from kerasopt import schedules
from optimizer_db import KERAS_NAMES

os.environ.setdefault("KERAS_BACKEND", "torch")

F = np.float32


def _features(**extra):
    return dict(
        learning_rate=schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7),
        use_ema=True,
        ema_momentum=0.8,
        ema_overwrite_frequency=3,
        gradient_accumulation_steps=3,
        weight_decay=0.01,
        clipnorm=1.5,
        **extra,
    )


OPTIMIZER_FACTORIES = {
    "adam": lambda: kerasopt.Adam(**_features()),
    "adam_amsgrad": lambda: kerasopt.Adam(amsgrad=True, **_features()),
    "adamax": lambda: kerasopt.Adamax(**_features()),
    "adam_plain": lambda: kerasopt.Adam(learning_rate=0.01),
    "adamax_global_clip": lambda: kerasopt.Adamax(
        learning_rate=0.02, global_clipnorm=0.5, use_ema=True,
        gradient_accumulation_steps=2),
}


def _grads(rng, n):
    return [[rng.normal(size=(4, 3)).astype(F), rng.normal(size=(5,)).astype(F)]
            for _ in range(n)]


def _new_vars():
    rng = np.random.default_rng(123)
    return [kerasopt.Variable(rng.normal(size=(4, 3)).astype(F), name="kernel"),
            kerasopt.Variable(rng.normal(size=(5,)).astype(F), name="bias")]


@pytest.mark.parametrize("kind", sorted(OPTIMIZER_FACTORIES))
@pytest.mark.parametrize("split", [4, 7, 8])  # 4 and 7 are mid accumulation cycle
def test_save_load_resume_is_bit_exact(kind, split):
    total = 13
    grads = _grads(np.random.default_rng(0), total)

    straight_vars = _new_vars()
    straight = OPTIMIZER_FACTORIES[kind]()
    for g in grads:
        straight.apply(g, straight_vars)

    first_vars = _new_vars()
    first = OPTIMIZER_FACTORIES[kind]()
    for g in grads[:split]:
        first.apply(g, first_vars)
    store = {}
    first.save_own_variables(store)
    assert sorted(store, key=int) == [str(i) for i in range(len(first.variables))]
    saved_weights = [v.numpy() for v in first_vars]
    del first

    resumed_vars = [kerasopt.Variable(w, name=v.name)
                    for w, v in zip(saved_weights, _new_vars(), strict=True)]
    resumed = OPTIMIZER_FACTORIES[kind]()
    resumed.build(resumed_vars)
    resumed.load_own_variables(store)
    for g in grads[split:]:
        resumed.apply(g, resumed_vars)

    for a, b in zip(straight_vars, resumed_vars, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    for a, b in zip(straight.variables, resumed.variables, strict=True):
        assert a.numpy().dtype == b.numpy().dtype
        assert np.array_equal(a.numpy(), b.numpy()), a.name
    assert int(straight.iterations.numpy()) == int(resumed.iterations.numpy())


def test_load_into_unbuilt_or_wrong_optimizer_raises():
    store = {}
    opt = kerasopt.Adam()
    v = _new_vars()
    opt.apply([np.ones((4, 3), F), np.ones(5, F)], v)
    opt.save_own_variables(store)
    with pytest.raises(ValueError):
        kerasopt.Adam().load_own_variables(store)
    fresh = kerasopt.Adam(amsgrad=True)
    fresh.build(_new_vars())
    before = [x.numpy() for x in fresh.variables]
    with pytest.raises(ValueError):
        fresh.load_own_variables(store)
    for x, y in zip(before, fresh.variables, strict=True):
        assert np.array_equal(x, y.numpy())
    bad = dict(store)
    bad["3"] = np.ones((2, 2), F)
    fresh = kerasopt.Adam()
    fresh.build(_new_vars())
    before = [x.numpy() for x in fresh.variables]
    with pytest.raises(ValueError):
        fresh.load_own_variables(bad)
    for x, y in zip(before, fresh.variables, strict=True):
        assert np.array_equal(x, y.numpy())


def test_set_weights():
    opt = kerasopt.Adamax(learning_rate=0.1)
    vars_ = _new_vars()
    opt.build(vars_)
    weights = [np.full(v.shape, i, dtype=v.numpy().dtype) for i, v in enumerate(opt.variables)]
    opt.set_weights(weights)
    for w, v in zip(weights, opt.variables, strict=True):
        assert np.array_equal(w, v.numpy())
    assert int(opt.iterations.numpy()) == 0
    assert float(opt.learning_rate) == 1.0
    # hand-check one step from the loaded state: m=2, u=3 on kernel (slots 2, 3)
    opt.set_weights([np.array(5), np.array(0.1, F), np.full((4, 3), 2.0, F),
                     np.full((4, 3), 3.0, F), np.zeros(5, F), np.zeros(5, F)])
    w0 = vars_[0].numpy()
    g = np.full((4, 3), 1.0, F)
    opt.apply([g, np.zeros(5, F)], vars_)
    m = F(2.0) + (g - F(2.0)) * F(1 - 0.9)
    u = np.maximum(F(0.999) * F(3.0), np.abs(g))
    expected = w0 - F(0.1) * m / ((F(1) - F(0.9) ** F(6)) * (u + F(1e-7)))
    np.testing.assert_allclose(vars_[0].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        opt.set_weights(weights[:-1])
    with pytest.raises(ValueError):
        kerasopt.Adam().set_weights([])


@pytest.mark.parametrize("kind", sorted(OPTIMIZER_FACTORIES))
def test_stateless_apply(kind):
    grads = _grads(np.random.default_rng(1), 5)
    stateful_vars = _new_vars()
    stateful = OPTIMIZER_FACTORIES[kind]()
    stateful.build(stateful_vars)

    vars_ = _new_vars()
    opt = OPTIMIZER_FACTORIES[kind]()
    opt.build(vars_)
    own_before = [v.numpy() for v in opt.variables]
    vars_before = [v.numpy() for v in vars_]

    trainable = [v.numpy() for v in vars_]
    opt_values = [v.numpy() for v in opt.variables]
    for g in grads:
        g_copies = [x.copy() for x in g]
        inputs = ([x.copy() for x in trainable], [x.copy() for x in opt_values])
        new_trainable, new_opt = opt.stateless_apply(inputs[1], g, inputs[0])
        # inputs untouched
        for a, b in zip(inputs[0], trainable, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(inputs[1], opt_values, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(g, g_copies, strict=True):
            assert np.array_equal(a, b)
        # new arrays, not aliases of the inputs
        for new, old in zip(new_trainable + new_opt, inputs[0] + inputs[1], strict=True):
            assert not np.shares_memory(np.asarray(new), old)
        trainable, opt_values = [np.asarray(x) for x in new_trainable], [
            np.asarray(x) for x in new_opt]
        stateful.apply(g, stateful_vars)
        for a, b in zip(trainable, stateful_vars, strict=True):
            assert np.array_equal(a, b.numpy())
        for a, b in zip(opt_values, stateful.variables, strict=True):
            assert np.array_equal(a, b.numpy())
    # the optimizer's own variables and the model variables never changed
    for a, b in zip(own_before, opt.variables, strict=True):
        assert np.array_equal(a, b.numpy())
    for a, b in zip(vars_before, vars_, strict=True):
        assert np.array_equal(a, b.numpy())


def test_stateless_apply_errors_leave_state():
    opt = kerasopt.Adam()
    vars_ = _new_vars()
    with pytest.raises(ValueError):
        opt.stateless_apply([], [np.ones((4, 3), F), np.ones(5, F)], [v.numpy() for v in vars_])
    opt.build(vars_)
    own = [v.numpy() for v in opt.variables]
    with pytest.raises(ValueError):
        opt.stateless_apply(own[:-1], [np.ones((4, 3), F), np.ones(5, F)],
                            [v.numpy() for v in vars_])
    with pytest.raises(ValueError):
        opt.stateless_apply(own, [np.ones((4, 3), F), np.ones(6, F)],
                            [v.numpy() for v in vars_])
    for a, b in zip(own, opt.variables, strict=True):
        assert np.array_equal(a, b.numpy())


# --------------------------------------------------------------------------- configs


CONFIG_CASES = [
    lambda: kerasopt.Adam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5,
                          amsgrad=True),
    lambda: kerasopt.Adamax(learning_rate=0.5, beta_1=0.8, beta_2=0.95, epsilon=1e-5),
    lambda: kerasopt.Adamax(weight_decay=0.1, clipnorm=2.0, use_ema=True, ema_momentum=0.5,
                            ema_overwrite_frequency=4, loss_scale_factor=128.0,
                            gradient_accumulation_steps=2, name="custom"),
    lambda: kerasopt.Adam(learning_rate=schedules.CosineDecay(0.1, 100, alpha=0.1),
                          global_clipnorm=1.0),
    lambda: kerasopt.Adam(clipvalue=0.5, name="x"),
]


@pytest.mark.parametrize("make", CONFIG_CASES)
def test_config_round_trips(make):
    opt = make()
    config = opt.get_config()
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    serialized = kerasopt.serialize(opt)
    assert serialized["class_name"] == type(opt).__name__
    assert serialized["config"] == config
    again = kerasopt.deserialize(serialized)
    assert type(again) is type(opt)
    assert again.get_config() == config
    got = kerasopt.get(serialized)
    assert type(got) is type(opt) and got.get_config() == config
    assert kerasopt.get(opt) is opt


@pytest.mark.parametrize("name,cls", [("adam", kerasopt.Adam), ("Adam", kerasopt.Adam),
                                      ("adamax", kerasopt.Adamax),
                                      ("Adamax", kerasopt.Adamax)])
def test_get_by_name(name, cls):
    opt = kerasopt.get(name)
    assert type(opt) is cls
    assert opt.get_config()["learning_rate"] == float(np.float32(0.001))


def test_learning_rate_reported_as_float32():
    config = kerasopt.Adam(learning_rate=0.001).get_config()
    assert config["learning_rate"] == 0.0010000000474974513
    assert type(config["learning_rate"]) is float
    assert kerasopt.Adamax(learning_rate=0.1).get_config()["learning_rate"] == float(F(0.1))


@pytest.mark.parametrize("make", CONFIG_CASES)
def test_config_matches_keras_both_ways(make):
    keras = pytest.importorskip("keras")
    opt = make()
    k_opt = keras.optimizers.deserialize(kerasopt.serialize(opt))
    assert type(k_opt).__name__ == type(opt).__name__ or (
        type(k_opt).__name__.lower().endswith(type(opt).__name__.lower()))
    k_config = k_opt.get_config()
    config = opt.get_config()
    if isinstance(config["learning_rate"], dict):
        assert k_config["learning_rate"]["class_name"] == config["learning_rate"]["class_name"]
        assert k_config["learning_rate"]["config"] == config["learning_rate"]["config"]
        k_config = {k: v for k, v in k_config.items() if k != "learning_rate"}
        config = {k: v for k, v in config.items() if k != "learning_rate"}
    assert k_config == config
    # and from Keras to kerasopt
    back = kerasopt.deserialize(keras.optimizers.serialize(k_opt))
    assert type(back) is type(opt)
    assert back.get_config() == opt.get_config()


def test_keras_torch_backend_config_deserializes():
    keras = pytest.importorskip("keras")
    k_opt = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.7, amsgrad=True)
    serialized = keras.optimizers.serialize(k_opt)
    if keras.backend.backend() == "torch":
        assert serialized["module"] == "keras.src.backend.torch.optimizers.torch_adam"
        assert serialized["registered_name"] == "Adam"
    opt = kerasopt.deserialize(serialized)
    assert type(opt) is kerasopt.Adam
    assert opt.get_config() == k_opt.get_config()
    hand = {"module": "keras.src.backend.torch.optimizers.torch_adamax", "class_name": "Adamax",
            "config": {"name": "adamax", "learning_rate": 0.25}, "registered_name": "Adamax"}
    opt = kerasopt.deserialize(hand)
    assert type(opt) is kerasopt.Adamax and float(opt.learning_rate) == 0.25
    hand = {"module": "keras.optimizers", "class_name": "Adam",
            "config": {"learning_rate": 0.25}, "registered_name": None}
    assert type(kerasopt.deserialize(hand)) is kerasopt.Adam


# --------------------------------------------------------------------------- hostile configs


HOSTILE = [
    ({"module": "os", "class_name": "system", "config": {"command": "true"},
      "registered_name": None}, "os"),
    ({"module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]},
      "registered_name": "Popen"}, "subprocess"),
    ({"module": "kerasopt_evil_module_xyz", "class_name": "Adam2", "config": {},
      "registered_name": None}, "kerasopt_evil_module_xyz"),
    ({"module": "http.server", "class_name": "function", "config": "test",
      "registered_name": "test"}, "http.server"),
    ({"module": "ctypes", "class_name": "function", "config": "CDLL",
      "registered_name": None}, "ctypes"),
    ({"module": "antigravity", "class_name": "Adam",
      "config": {"learning_rate": {"module": "antigravity", "class_name": "fly",
                                   "config": {}, "registered_name": None}},
      "registered_name": None}, "antigravity"),
    ({"module": "keras.optimizers", "class_name": "Adam",
      "config": {"learning_rate": {"module": "webbrowser", "class_name": "function",
                                   "config": "open", "registered_name": "open"}},
      "registered_name": None}, "webbrowser"),
    ({"module": "keras.optimizers", "class_name": "Adam",
      "config": {"beta_1": {"module": "smtplib", "class_name": "function",
                            "config": "SMTP", "registered_name": None}},
      "registered_name": None}, "smtplib"),
]


@pytest.mark.parametrize("config,module", HOSTILE, ids=[m for _, m in HOSTILE])
def test_hostile_config_never_imports(config, module, monkeypatch):
    import builtins
    import importlib

    attempted = []
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def spy_import(name, *args, **kwargs):
        attempted.append(name)
        return real_import(name, *args, **kwargs)

    def spy_import_module(name, *args, **kwargs):
        attempted.append(name)
        return real_import_module(name, *args, **kwargs)

    was_loaded = module in sys.modules
    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(importlib, "import_module", spy_import_module)
    with pytest.raises((ValueError, TypeError)):
        kerasopt.deserialize(config)
    monkeypatch.undo()
    assert not [n for n in attempted if n == module or n.startswith(module + ".")], attempted
    if not was_loaded:
        assert module not in sys.modules


BAD_CONFIGS = [
    "not_an_optimizer",
    "SGD",
    42,
    None,
    [1, 2],
    {"class_name": "Adam"},  # no config -> not a dict
    {"class_name": "Adam", "config": "garbage"},
    {"class_name": 5, "config": {}},
    {"class_name": "Adam", "config": {}, "registered_name": 7},
    {"class_name": "Adam", "config": {"learning_rate": "fast"}},
    {"class_name": "Adam", "config": {"learning_rate": 1e400}},
    {"class_name": "Adam", "config": {"learning_rate": -1.0}},
    {"class_name": "Adam", "config": {"beta_1": [0.9]}},
    {"class_name": "Adam", "config": {"beta_2": 1e308 * 10}},
    {"class_name": "Adam", "config": {"epsilon": None}},
    {"class_name": "Adam", "config": {"unknown_key": 1}},
    {"class_name": "Adam", "config": {"gradient_accumulation_steps": 2**70 * 1.0}},
    {"class_name": "Adam", "config": {"learning_rate": {"class_name": "ExponentialDecay",
                                                       "config": {"bogus": 1}}}},
    {"class_name": "Adam", "config": {"learning_rate": {"class_name": "Nope", "config": {}}}},
    {"class_name": "Adam", "config": {"learning_rate": {"class_name": "function",
                                                       "config": "print",
                                                       "registered_name": "print"}}},
    {"class_name": "function", "config": "eval", "registered_name": "eval"},
    {"class_name": "function", "config": "exec"},
    {"class_name": "function", "config": ["x"]},
    {"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1,
                                                  "decay_steps": 1, "decay_rate": 0.5}},
    {"class_name": "LossScaleOptimizer", "config": {"inner_optimizer": "garbage"}},
    {"class_name": "LossScaleOptimizer", "config": {}},
    {"class_name": "__import__", "config": {}},
    {"class_name": "Adam", "config": {"name": ["list"]}},
]


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=[repr(c)[:60] for c in BAD_CONFIGS])
def test_bad_configs_raise_clear_errors(config):
    with pytest.raises((ValueError, TypeError)):
        kerasopt.deserialize(config)


@pytest.mark.parametrize("key", ["learning_rate", "weight_decay", "epsilon"])
def test_huge_int_in_config_raises_value_error(key):
    with pytest.raises((ValueError, TypeError)):
        kerasopt.deserialize({"class_name": "Adam", "config": {key: 10**400}})


def test_get_rejects_garbage():
    for bad in (3, 1.5, [kerasopt.Adam()], object()):
        with pytest.raises((ValueError, TypeError)):
            kerasopt.get(bad)


def test_unknown_class_error_is_clear():
    with pytest.raises(ValueError, match="Lion"):
        kerasopt.deserialize({"module": "keras.optimizers", "class_name": "Lion",
                              "config": {}, "registered_name": None})


def test_register_serializable_custom_schedule():
    @kerasopt.register_serializable(package="TestPkg")
    class HalvingSchedule(schedules.LearningRateSchedule):
        def __init__(self, initial):
            self.initial = initial

        def __call__(self, step):
            return np.float32(self.initial) * np.float32(0.5) ** np.float32(step)

        def get_config(self):
            return {"initial": self.initial}

    opt = kerasopt.Adamax(learning_rate=HalvingSchedule(0.4))
    serialized = kerasopt.serialize(opt)
    lr_config = serialized["config"]["learning_rate"]
    assert lr_config["registered_name"] == "TestPkg>HalvingSchedule"
    assert lr_config["config"] == {"initial": 0.4}
    clone = kerasopt.deserialize(serialized)
    assert isinstance(clone._learning_rate, HalvingSchedule)
    assert clone._learning_rate.initial == 0.4
    # the schedule sees the raw iteration count
    w = kerasopt.Variable(np.zeros(2, F))
    for step in range(3):
        assert np.isclose(float(clone.learning_rate), 0.4 * 0.5**step)
        clone.apply([np.ones(2, F)], [w])
    # custom_objects also resolves
    unregistered = {"module": "x", "class_name": "Other", "config": {"initial": 0.2},
                    "registered_name": "Elsewhere>Other"}
    assert kerasopt.schedules.deserialize(unregistered, custom_objects={
        "Elsewhere>Other": HalvingSchedule}).initial == 0.2
    with pytest.raises(ValueError):
        kerasopt.schedules.deserialize(unregistered)


def test_register_serializable_function_learning_rate():
    @kerasopt.register_serializable(package="TestPkg")
    def constant_rate():
        return 0.125

    opt = kerasopt.Adam(learning_rate=constant_rate)
    clone = kerasopt.deserialize(kerasopt.serialize(opt))
    assert float(clone.learning_rate) == 0.125


@pytest.mark.parametrize("method", ["set_weights", "load_own_variables"])
def test_set_weights_uncastable_dtype_changes_nothing(method):
    opt = kerasopt.Adam()
    w = kerasopt.Variable(np.ones(3, F))
    opt.apply([np.ones(3, F)], [w])
    before = [v.numpy() for v in opt.variables]
    weights = [np.array(7), np.array(0.5, F), np.zeros(3, F), np.array(["a", "b", "c"])]
    with pytest.raises((ValueError, TypeError)):
        if method == "set_weights":
            opt.set_weights(weights)
        else:
            opt.load_own_variables({str(i): x for i, x in enumerate(weights)})
    for x, y in zip(before, opt.variables, strict=True):
        assert np.array_equal(x, y.numpy())


@pytest.mark.parametrize("name", KERAS_NAMES)
def test_load_keras_saved_state_and_continue(name):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(4, 2)).astype(F)
    grads = [rng.normal(size=(4, 2)).astype(F) for _ in range(6)]
    k_var = keras.Variable(w0.copy())
    k_opt = getattr(keras.optimizers, name)(learning_rate=0.05)
    for g in grads[:3]:
        k_opt.apply([keras.ops.convert_to_tensor(g)], [k_var])
    store = {}
    k_opt.save_own_variables(store)
    var = kerasopt.Variable(np.asarray(keras.ops.convert_to_numpy(k_var.value)).copy())
    opt = getattr(kerasopt, name)(learning_rate=0.05)
    opt.build([var])
    opt.load_own_variables({k: np.asarray(keras.ops.convert_to_numpy(v))
                            for k, v in store.items()})
    assert int(opt.iterations.numpy()) == 3
    for g in grads[3:]:
        k_opt.apply([keras.ops.convert_to_tensor(g)], [k_var])
        opt.apply([g], [var])
    np.testing.assert_allclose(var.numpy(), keras.ops.convert_to_numpy(k_var.value),
                               rtol=1e-6, atol=1e-7)
    # and back: Keras loads kerasopt's state
    out = {}
    opt.save_own_variables(out)
    k_opt2 = getattr(keras.optimizers, name)(learning_rate=0.05)
    k_opt2.build([k_var])
    k_opt2.load_own_variables(out)
    for a, b in zip(k_opt2.variables, opt.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), b.numpy())


@pytest.mark.parametrize("cls", [kerasopt.Adam, kerasopt.Adamax])
def test_ema_under_accumulation_hand_derived(cls):
    """SPEC: the average is updated on every micro-step, with momentum 0 while iterations is
    still 0, and the overwrite check (iterations + 1) % freq == 0 holds on every micro-step of
    the matching group."""
    opt = cls(learning_rate=0.1, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2,
              gradient_accumulation_steps=2, epsilon=1e-12)
    v = kerasopt.Variable(np.zeros(1, F))
    # A constant gradient of 1: every Adam/Adamax update step moves w by -lr (m/u = m/|m|
    # after bias correction, up to epsilon).
    w = avg = 0.0
    for micro in range(8):
        update = (micro + 1) % 2 == 0
        iterations = micro // 2  # before this micro-step's increment
        if update:
            w -= 0.1
        mom = 0.0 if iterations == 0 else 0.5
        avg = mom * avg + (1 - mom) * w
        if (iterations + 1) % 2 == 0:
            w = avg
        opt.apply([np.ones(1, F)], [v])
        # float32 bias correction 1 - beta_2**t loses ~1e-5 relative; the EMA/overwrite
        # alternatives differ by >= 0.05
        np.testing.assert_allclose(v.numpy(), [w], atol=2e-5, err_msg=str(micro))
        np.testing.assert_allclose(opt._ema_averages[0].numpy(), [avg], atol=2e-5)
