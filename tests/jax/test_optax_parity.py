"""kerasopt.optax vs Keras 3 on its JAX backend: after every one of 100 steps, under
``jax.jit``, |diff| <= 1e-6 + 1e-5 * (|w| + distance travelled), per feature, for every
registered algorithm, and the final state under the same rule (:mod:`kerasopt.cli.oracle`).
Keras runs once, in the oracle's subprocess (``KERAS_BACKEND=jax``), for every case; the
largest normalized error per feature is recorded (conftest's summary table and
``/tmp/kerasopt_optax_parity.json``)."""

from __future__ import annotations

import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_cases import (
    SHAPES,
    SLOT_FIELDS,
    STEPS,
    VARS,
    from_tree,
    make_problem,
    normalized_error,
    run_keras,
    to_tree,
)

import kerasopt
import kerasopt.optax as kx
from kerasopt.cli import oracle
from optimizer_db import ALGORITHMS, spec

pytest.importorskip("keras")

FLOAT = {"type": "float", "value": 0.01}
FEATURES = {
    "defaults": {"lr": {"type": "float", "value": 0.001}, "kwargs": {}},
    "amsgrad": {"lr": FLOAT, "kwargs": {"amsgrad": True}, "amsgrad": True},
    "betas_epsilon": {"lr": FLOAT, "kwargs": {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-3}},
    "schedule_exponential": {
        "lr": {"type": "schedule", "class": "ExponentialDecay",
               "config": {"initial_learning_rate": 0.02, "decay_steps": 10, "decay_rate": 0.8}},
        "kwargs": {},
    },
    "schedule_cosine": {
        "lr": {"type": "schedule", "class": "CosineDecay",
               "config": {"initial_learning_rate": 0.02, "decay_steps": 80, "alpha": 0.1}},
        "kwargs": {},
    },
    "callable_lr": {"lr": {"type": "callable", "initial": 0.005}, "kwargs": {}},
    "weight_decay_exclude_regex": {
        "lr": FLOAT, "kwargs": {"weight_decay": 0.1}, "exclude_names": ["bias"],
        "ours": {"exclude_from_weight_decay": ["bias"]},
    },
    "weight_decay_mask": {
        "lr": FLOAT, "kwargs": {"weight_decay": 0.1}, "exclude_names": ["bias"],
        "ours": {"weight_decay_mask": {"dense": {"kernel": True, "bias": False}, "emb": True}},
    },
    "clipnorm": {"lr": FLOAT, "kwargs": {"clipnorm": 1.0}},
    "global_clipnorm": {"lr": FLOAT, "kwargs": {"global_clipnorm": 1.5}},
    "clipvalue": {"lr": FLOAT, "kwargs": {"clipvalue": 0.5}},
    "ema_overwrite": {
        "lr": FLOAT,
        "kwargs": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 7},
    },
    "accumulation": {"lr": FLOAT, "kwargs": {"gradient_accumulation_steps": 3}},
    "ema_accumulation": {
        "lr": FLOAT,
        "kwargs": {"gradient_accumulation_steps": 3, "use_ema": True, "ema_momentum": 0.8,
                   "ema_overwrite_frequency": 2},
    },
    "loss_scale_factor": {"lr": FLOAT, "kwargs": {"loss_scale_factor": 128.0}, "grad_scale": 128.0},
}


def _combo(rng: random.Random) -> dict:
    kwargs: dict = {}
    if rng.random() < 0.5:
        kwargs["weight_decay"] = rng.choice([0.01, 0.1])
    clip = rng.choice([None, ("clipnorm", 1.0), ("global_clipnorm", 2.0), ("clipvalue", 0.7)])
    if clip:
        kwargs[clip[0]] = clip[1]
    if rng.random() < 0.5:
        kwargs.update(use_ema=True, ema_momentum=rng.choice([0.5, 0.9]),
                      ema_overwrite_frequency=rng.choice([None, 3, 5]))
    if rng.random() < 0.5:
        kwargs["gradient_accumulation_steps"] = rng.choice([2, 4])
    if rng.random() < 0.5:
        kwargs["loss_scale_factor"] = 64.0
    lr = rng.choice([FLOAT, FEATURES["schedule_exponential"]["lr"]])
    case = {"lr": lr, "kwargs": kwargs, "grad_scale": kwargs.get("loss_scale_factor", 1.0)}
    if "weight_decay" in kwargs and rng.random() < 0.5:
        case.update(exclude_names=["emb"], ours={"exclude_from_weight_decay": ["emb"]})
    return case


_rng = random.Random(1234)
for _i in range(4):
    FEATURES[f"combo_{_i}"] = _combo(_rng)

CASES = []
for _algo in ALGORITHMS:
    _amsgrad = "amsgrad" in spec(_algo).defaults()
    for _feature, _spec in FEATURES.items():
        if _spec.get("amsgrad") and not _amsgrad:
            continue
        _kwargs = dict(_spec["kwargs"])
        if _amsgrad and _feature.startswith("combo") and int(_feature[-1]) % 2:
            _kwargs["amsgrad"] = True
        CASES.append({
            "name": f"{_algo}/{_feature}", "algo": _algo, "keras_name": spec(_algo).keras_name,
            "feature": _feature, "lr": _spec["lr"],
            "kwargs": _kwargs, "exclude_names": _spec.get("exclude_names"),
            "ours": _spec.get("ours", {}), "grad_scale": _spec.get("grad_scale", 1.0),
        })


def run_ours(case: dict, w0: dict, grads: dict):
    """Our trajectory under jax.jit (lax.scan over the steps) and the final state."""
    factory = kx.FACTORIES[case["algo"]]
    rate = oracle.resolve(case["lr"], kerasopt.schedules, oracle.Counter())
    tx = factory(learning_rate=rate, **case["kwargs"], **case["ours"])
    params = to_tree({k: jnp.asarray(v) for k, v in w0.items()})
    grads = to_tree({k: jnp.asarray(v) for k, v in grads.items()})

    @jax.jit
    def run(params, grads):
        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        (_, state), trajectory = jax.lax.scan(step, (params, tx.init(params)), grads)
        return trajectory, state

    trajectory, state = run(params, grads)
    return {k: np.asarray(v) for k, v in from_tree(trajectory).items()}, state


def _state_errors(state, reference: oracle.Trajectory) -> oracle.Measure:
    """The final optimizer state under the oracle's rule (scale: the largest magnitude the
    Keras state variable held); the iteration counter exactly."""
    result = oracle.Measure()
    for keras_name, ref in reference.state.items():
        if keras_name == "learning_rate":
            continue
        if keras_name == "iteration":
            ours = np.asarray(state.count)
        else:
            var, slot = keras_name.split("_", 1)
            ours = np.asarray(from_tree(getattr(state, SLOT_FIELDS[slot]))[var])
        result.add(oracle.measure(ref, ours, reference.state_scale[keras_name],
                                  label=f"state {keras_name}"))
    return result


@pytest.fixture(scope="module")
def keras_results():
    problems = {c["name"]: make_problem(_seed(c), grad_scale=c["grad_scale"]) for c in CASES}
    return problems, run_keras(CASES, problems)


def _seed(case: dict) -> int:
    return sum(map(ord, case["name"])) * 7919 % 100_003


RESULTS: dict[str, dict] = {}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_parity_with_keras_jax(case, keras_results, parity_record):
    problems, keras_out = keras_results
    w0, grads = problems[case["name"]]
    ours, state = run_ours(case, w0, grads)
    keras_run = keras_out[case["name"]]
    worst_norm = worst_abs = 0.0
    for var in SHAPES:
        reference = keras_run.weights[var]
        assert reference.shape == (STEPS, *SHAPES[var])
        norm, absolute = normalized_error(ours[var], reference, w0[var])
        worst_norm, worst_abs = max(worst_norm, norm), max(worst_abs, absolute)
    state_errors = _state_errors(state, keras_run)
    state_norm, state_abs = state_errors.normalized, state_errors.abs_diff
    stats = {"steps": STEPS, "weight_norm": worst_norm, "weight_abs": worst_abs,
             "state_norm": state_norm, "state_abs": state_abs}
    parity_record(f"optax/{case['name']}", stats)
    RESULTS[case["name"]] = stats
    with open("/tmp/kerasopt_optax_parity.json", "w") as f:
        json.dump(RESULTS, f, indent=1, sort_keys=True)
    assert worst_norm <= 1.0, (case["name"], worst_norm, worst_abs)
    # The final state (m, v / u, v_hat, accumulators, averages, the count) meets the same
    # rule (scale: the largest magnitude the Keras state held).
    assert not state_errors.failures, (case["name"], state_errors.failures)


def test_cases_cover_every_feature():
    features = {c["feature"] for c in CASES}
    for required in ("defaults", "amsgrad", "schedule_exponential", "callable_lr",
                     "weight_decay_exclude_regex", "weight_decay_mask", "clipnorm",
                     "global_clipnorm", "clipvalue", "ema_overwrite", "accumulation",
                     "loss_scale_factor"):
        assert required in features
    assert set(VARS) == set(SHAPES)
