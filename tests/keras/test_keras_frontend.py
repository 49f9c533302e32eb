"""kerasopt.keras's constructor, config and errors (backend-independent; run on the test
process's Keras backend), and that ``import kerasopt`` does not import Keras."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

keras = pytest.importorskip("keras")

import kerasopt  # noqa: E402
import kerasopt.keras as kk  # noqa: E402
from kerasopt import algorithms  # noqa: E402

NAMES = ("Adam", "Adamax", "AdamW")


def test_one_class_per_registered_algorithm():
    expected = {spec.keras_name for spec in algorithms.registered()
                if hasattr(keras.optimizers, spec.keras_name)}
    assert set(kk.CLASSES) == expected and set(NAMES) <= expected
    for name, cls in kk.CLASSES.items():
        assert getattr(kk, name) is cls and cls.spec is algorithms.get(name)


def test_import_kerasopt_does_not_import_keras():
    code = ("import sys, kerasopt; assert 'keras' not in sys.modules, 'keras imported'; "
            "assert 'kerasopt.keras' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"KERAS_BACKEND": "torch", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_kerasopt_keras_attribute():
    assert kerasopt.keras is kk


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_keras_plus_sparse_updates(name):
    ours = inspect.signature(getattr(kk, name)).parameters
    theirs = dict(inspect.signature(getattr(keras.optimizers, name)).parameters)
    assert list(ours) == [*list(theirs)[:-1], "sparse_updates", "kwargs"]
    for key, parameter in theirs.items():
        assert ours[key].default == parameter.default, key
    assert ours["sparse_updates"].default == "lazy"


@pytest.mark.parametrize("name", NAMES)
def test_is_a_keras_optimizer_with_keras_config(name):
    ours = getattr(kk, name)(learning_rate=0.01, clipnorm=1.0, use_ema=True)
    theirs = getattr(keras.optimizers, name)(learning_rate=0.01, clipnorm=1.0, use_ema=True)
    assert isinstance(ours, keras.optimizers.Optimizer)
    assert isinstance(ours, getattr(keras.optimizers, name))
    config = ours.get_config()
    assert config.pop("sparse_updates") == "lazy"
    expected = theirs.get_config()
    config.pop("name"), expected.pop("name")
    assert config == expected


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_and_keras_get(name):
    cls = getattr(kk, name)
    opt = cls(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
              gradient_accumulation_steps=3, sparse_updates="dense")
    again = cls.from_config(opt.get_config())
    assert type(again) is cls and again.get_config() == opt.get_config()
    via_keras = keras.optimizers.get(keras.optimizers.serialize(opt))
    assert type(via_keras) is cls and via_keras.sparse_updates == "dense"
    assert keras.optimizers.serialize(opt)["registered_name"] == f"kerasopt>{name}"


def test_compile_accepts_it():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=kk.Adamax(), loss="mse")
    assert type(model.optimizer) is kk.Adamax


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sparse_updates": "sparse"}, ValueError, "sparse_updates.*'lazy'.*'dense'"),
    ({"lr": 0.1}, TypeError, "`learning_rate` for `lr`"),
    ({"betas": (0.9, 0.99)}, TypeError, "`beta_1` and `beta_2` for `betas`"),
    ({"eps": 1e-8}, TypeError, "`epsilon` for `eps`"),
    ({"learning_rate": -0.1}, ValueError, "learning_rate=-0.1"),
    ({"beta_1": 1.0}, ValueError, "beta_1=1.0"),
    ({"epsilon": 0.0}, ValueError, "epsilon=0.0"),
    ({"clipnorm": -1.0}, ValueError, "clipnorm=-1.0"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "Only one of"),
    ({"gradient_accumulation_steps": 1}, ValueError, "gradient_accumulation_steps"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        kk.Adam(**kwargs)


def test_keras_decay_argument_still_accepted():
    with pytest.warns(UserWarning, match="decay"):
        kk.Adamax(decay=0.1)
