"""kerasopt.schedules against keras.optimizers.schedules: values at steps 0..300, configs,
serialization, invalid arguments."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kerasopt  # noqa: E402
from kerasopt import schedules  # noqa: E402

keras = pytest.importorskip("keras")

CASES = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 50,
                          "decay_rate": 0.5}),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 37,
                          "decay_rate": 0.9, "staircase": True}),
    ("ExponentialDecay", {"initial_learning_rate": 1.0, "decay_steps": 1,
                          "decay_rate": 0.99, "name": "my_decay"}),
    ("PiecewiseConstantDecay", {"boundaries": [10, 100, 200], "values": [1.0, 0.5, 0.1, 0.01]}),
    ("PiecewiseConstantDecay", {"boundaries": [0], "values": [0.3, 0.2]}),
    ("PiecewiseConstantDecay", {"boundaries": [150.5], "values": [0.3, 0.2]}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 100}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 70,
                         "end_learning_rate": 0.01, "power": 2.0}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 70,
                         "end_learning_rate": 0.001, "power": 0.5, "cycle": True}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 2.0,
                          "staircase": True}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 200}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 150, "alpha": 0.1}),
    ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 100, "alpha": 0.05,
                     "warmup_target": 0.2, "warmup_steps": 50}),
    ("CosineDecay", {"initial_learning_rate": 0.01, "decay_steps": 1000,
                     "warmup_target": 0.1, "warmup_steps": 100}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 20}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 30,
                             "t_mul": 1.0, "m_mul": 0.8, "alpha": 0.1}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.5, "first_decay_steps": 13,
                             "t_mul": 1.5, "m_mul": 0.5}),
]

STEPS = list(range(0, 301))
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _keras_values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in steps])


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_values_match_keras(name, config):
    ours = getattr(schedules, name)(**config)
    theirs = getattr(keras.optimizers.schedules, name)(**config)
    expected = _keras_values(theirs, STEPS)
    got = np.array([np.asarray(ours(step)) for step in STEPS])
    assert got.dtype == np.float32
    # float32 rounding: a few ulps relative to each value, and, where 1 + cos(x) cancels near
    # x = pi (libm's float32 cos differs between NumPy and torch by an ulp), a few ulps of the
    # schedule's scale.
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=4e-7 * 8, atol=4 * 2.0**-24 * scale)


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_numpy_integer_steps(name, config):
    ours = getattr(schedules, name)(**config)
    for step in (0, 1, 50, 299):
        a = np.asarray(ours(step))
        b = np.asarray(ours(np.int64(step)))
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_config_equals_keras(name, config):
    ours = getattr(schedules, name)(**config)
    theirs = getattr(keras.optimizers.schedules, name)(**config)
    assert ours.get_config() == theirs.get_config()


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_serialize_round_trip(name, config):
    ours = getattr(schedules, name)(**config)
    serialized = schedules.serialize(ours)
    assert serialized["class_name"] == name
    clone = schedules.deserialize(serialized)
    assert type(clone) is type(ours)
    assert clone.get_config() == ours.get_config()
    for step in (0, 17, 100, 300):
        assert np.array_equal(np.asarray(clone(step)), np.asarray(ours(step)))
    # Keras reads ours, and we read Keras's
    k_clone = keras.optimizers.schedules.deserialize(serialized)
    assert k_clone.get_config() == ours.get_config()
    theirs = getattr(keras.optimizers.schedules, name)(**config)
    from_keras = schedules.deserialize(keras.optimizers.schedules.serialize(theirs))
    assert type(from_keras) is type(ours)
    assert from_keras.get_config() == ours.get_config()


@pytest.mark.parametrize("name,config", CASES[:4], ids=IDS[:4])
def test_schedule_drives_optimizer_with_raw_iterations(name, config):
    sched = getattr(schedules, name)(**config)
    opt = kerasopt.Adamax(learning_rate=sched, gradient_accumulation_steps=2)
    w = kerasopt.Variable(np.zeros(2, np.float32))
    for raw in range(6):
        assert np.isclose(float(opt.learning_rate), float(sched(raw)), rtol=0, atol=0)
        opt.apply([np.ones(2, np.float32)], [w])


def test_schedule_in_keras_optimizer_config_round_trip():
    opt = kerasopt.Adam(learning_rate=schedules.PolynomialDecay(0.1, 100, power=2.0))
    k_opt = keras.optimizers.deserialize(kerasopt.serialize(opt))
    assert type(k_opt._learning_rate).__name__ == "PolynomialDecay"
    back = kerasopt.deserialize(keras.optimizers.serialize(k_opt))
    assert back.get_config() == opt.get_config()


BAD = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5},
     "decay_steps"),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": -5, "decay_rate": 0.5},
     "decay_steps"),
    ("ExponentialDecay", {"initial_learning_rate": "0.1", "decay_steps": 5, "decay_rate": 0.5},
     "initial_learning_rate"),
    ("ExponentialDecay", {"initial_learning_rate": float("nan"), "decay_steps": 5,
                          "decay_rate": 0.5}, "initial_learning_rate"),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": None},
     "decay_rate"),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": 0.5,
                          "staircase": "yes"}, "staircase"),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 5}, "decay_rate"),
    ("PiecewiseConstantDecay", {"boundaries": [10, 20], "values": [1.0, 0.5]}, "boundaries"),
    ("PiecewiseConstantDecay", {"boundaries": [20, 10], "values": [1.0, 0.5, 0.1]},
     "boundaries"),
    ("PiecewiseConstantDecay", {"boundaries": [10, 10], "values": [1.0, 0.5, 0.1]},
     "boundaries"),
    ("PiecewiseConstantDecay", {"boundaries": 10, "values": [1.0, 0.5]}, "boundaries"),
    ("PiecewiseConstantDecay", {"boundaries": [10], "values": [1.0, "x"]}, "values"),
    ("PiecewiseConstantDecay", {"boundaries": [float("nan")], "values": [1.0, 0.5]},
     "boundaries"),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 0}, "decay_steps"),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "power": "2"},
     "power"),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "cycle": 1},
     "cycle"),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5},
     "decay_steps"),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 0}, "decay_steps"),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "warmup_steps": -1},
     "warmup_steps"),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 10,
                     "warmup_target": "x"}, "warmup_target"),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 0},
     "first_decay_steps"),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 10,
                             "t_mul": 0.0}, "t_mul"),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 10,
                             "m_mul": float("inf")}, "m_mul"),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 10,
                             "bogus": 1}, "bogus"),
]


@pytest.mark.parametrize("name,config,argument", BAD,
                         ids=[f"{n}-{a}-{i}" for i, (n, _, a) in enumerate(BAD)])
def test_invalid_arguments(name, config, argument):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(schedules, name)(**config)
    assert argument in str(info.value)


def test_deserialize_by_class_name_rejects_optimizers_and_unknown():
    with pytest.raises(ValueError):
        schedules.deserialize({"class_name": "Adam", "config": {}, "module": "keras.optimizers",
                               "registered_name": None})
    with pytest.raises(ValueError):
        schedules.deserialize({"class_name": "LinearWarmup", "config": {},
                               "module": "keras.optimizers.schedules",
                               "registered_name": None})


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        schedules.LearningRateSchedule()(0)
