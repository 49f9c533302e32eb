"""kerasopt.torch against Keras 3 (torch backend) and against kerasopt's NumPy core:
100 steps per feature, the tolerance checked after every step."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_helpers import Schedule, StepCallable, compare, problem, run_core, run_keras, run_torch

from optimizer_db import AMSGRAD, KERAS_NAMES

STEPS = 100
CLASSES = KERAS_NAMES

FEATURES = {
    "defaults": ({}, {}),
    "lr=0.01": ({"learning_rate": 0.01}, {}),
    "amsgrad": ({"amsgrad": True, "learning_rate": 0.01}, {"only": AMSGRAD}),
    "clipnorm": ({"clipnorm": 0.5, "learning_rate": 0.01}, {"scale": 3.0}),
    "clipvalue": ({"clipvalue": 0.3, "learning_rate": 0.01}, {}),
    "global_clipnorm": ({"global_clipnorm": 1.0, "learning_rate": 0.01}, {"scale": 3.0}),
    "weight_decay+exclude": (
        {"weight_decay": 0.05, "learning_rate": 0.01}, {"exclude": ["bias"]}),
    "ema+overwrite": (
        {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 7,
         "learning_rate": 0.01}, {}),
    "accumulation": ({"gradient_accumulation_steps": 3, "learning_rate": 0.01}, {}),
    "accumulation+ema": (
        {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3,
         "learning_rate": 0.01}, {}),
    "loss_scale_factor": ({"loss_scale_factor": 128.0, "learning_rate": 0.01}, {"scale": 128.0}),
    "none_gradients+accumulation": (
        {"gradient_accumulation_steps": 2, "learning_rate": 0.01}, {"none_every": 3}),
    "schedule:ExponentialDecay": (
        {"learning_rate": Schedule("ExponentialDecay", initial_learning_rate=0.02,
                                   decay_steps=10, decay_rate=0.8)}, {}),
    "schedule:CosineDecay+accumulation": (
        {"learning_rate": Schedule("CosineDecay", initial_learning_rate=0.02, decay_steps=80,
                                   alpha=0.1),
         "gradient_accumulation_steps": 2}, {}),
    "callable_lr": (
        {"learning_rate": StepCallable(lambda step: 0.02 * 0.97 ** step)}, {}),
    "all_features": (
        {"learning_rate": 0.01, "weight_decay": 0.01, "global_clipnorm": 2.0, "use_ema": True,
         "ema_overwrite_frequency": 5, "loss_scale_factor": 8.0,
         "gradient_accumulation_steps": 2}, {"exclude": ["bias"], "scale": 8.0}),
}


def _cases():
    for feature, (_, extra) in FEATURES.items():
        for cls in CLASSES:
            if cls in extra.get("only", (cls,)):
                yield pytest.param(cls, feature, id=f"{cls}-{feature}")


@pytest.mark.parametrize(("cls", "feature"), list(_cases()))
def test_matches_keras(cls, feature, torch_parity):
    config, extra = FEATURES[feature]
    w0, grads = problem(zlib.crc32(feature.encode()) % 1000, STEPS, extra.get("scale", 1.0),
                        extra.get("none_every"))
    ours, _, _ = run_torch(cls, config, w0, grads, extra.get("exclude"))
    reference = run_keras(cls, config, w0, grads, extra.get("exclude"))
    normalized, abs_error = compare(ours, reference, w0)
    torch_parity("keras", f"{cls} {feature}", normalized, abs_error, STEPS)
    assert normalized <= 1.0, (feature, normalized, abs_error)


@pytest.mark.parametrize(("cls", "feature"), list(_cases()))
def test_matches_numpy_core(cls, feature, torch_parity):
    config, extra = FEATURES[feature]
    w0, grads = problem(zlib.crc32(feature.encode()) % 1000 + 1, STEPS, extra.get("scale", 1.0),
                        extra.get("none_every"))
    ours, _, _ = run_torch(cls, config, w0, grads, extra.get("exclude"))
    reference = run_core(cls, config, w0, grads, extra.get("exclude"))
    normalized, abs_error = compare(ours, reference, w0)
    torch_parity("numpy core", f"{cls} {feature}", normalized, abs_error, STEPS)
    assert normalized <= 1.0, (feature, normalized, abs_error)


@st.composite
def _configs(draw):
    cls = draw(st.sampled_from(CLASSES))
    config = {"learning_rate": draw(st.sampled_from([0.001, 0.01, 0.05]))}
    config["beta_1"] = draw(st.sampled_from([0.0, 0.5, 0.9]))
    config["beta_2"] = draw(st.sampled_from([0.9, 0.999]))
    config["epsilon"] = draw(st.sampled_from([1e-7, 1e-3]))
    if cls == "Adam":
        config["amsgrad"] = draw(st.booleans())
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip:
        config[clip] = draw(st.sampled_from([0.1, 1.0]))
    if draw(st.booleans()):
        config["weight_decay"] = draw(st.sampled_from([0.001, 0.1]))
    if draw(st.booleans()):
        config["use_ema"] = True
        config["ema_momentum"] = draw(st.sampled_from([0.0, 0.9, 0.99]))
        config["ema_overwrite_frequency"] = draw(st.sampled_from([None, 1, 4]))
    if draw(st.booleans()):
        config["gradient_accumulation_steps"] = draw(st.sampled_from([2, 3]))
    if draw(st.booleans()):
        config["loss_scale_factor"] = draw(st.sampled_from([0.5, 1024.0]))
    # Keras on torch crashes (`_foreach_mul_` of an empty list) when every variable with a
    # gradient is excluded from weight decay, so only the bias is excluded here.
    exclude = draw(st.sampled_from([None, ["bias"]]))
    none_every = draw(st.sampled_from([None, 2, 5]))
    seed = draw(st.integers(0, 2**16))
    return cls, config, exclude, none_every, seed


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(case=_configs())
def test_random_feature_combinations_match_keras(case, torch_parity):
    cls, config, exclude, none_every, seed = case
    steps = 40
    scale = config.get("loss_scale_factor", 1.0)
    w0, grads = problem(seed, steps, scale, none_every)
    ours, _, _ = run_torch(cls, config, w0, grads, exclude)
    reference = run_keras(cls, config, w0, grads, exclude)
    normalized, abs_error = compare(ours, reference, w0)
    torch_parity("keras", "random combinations (hypothesis)", normalized, abs_error, steps)
    assert normalized <= 1.0, (case, normalized, abs_error)
