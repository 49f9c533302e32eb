"""Keras parity of the NumPy core: kerasopt's Adam and Adamax against Keras 3 (torch backend).

Every case feeds the same seeded gradient sequence to ``keras.optimizers.<Name>`` and to
``kerasopt.<Name>`` and requires, after every one of the steps, the same weights (float32:
``|diff| <= 1e-6 + 1e-5 * (|w| + travel)``; float64: 1e-12 in the same form), the same
optimizer state after every step and at the end (count, order, names, values; iteration
counters by value), and the same EMA-finalized weights. Keras is the only source of truth
here: nothing is compared to kerasopt's own output.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("torch")

import kerasopt  # noqa: E402
from keras_oracle import (  # noqa: E402
    Schedule,
    StepCallable,
    compare_runs,
    make_gradients,
    make_weights,
    raise_on_failures,
    run_keras,
    run_kerasopt,
    to_torch,
)
from optimizer_db import KERAS_NAMES, spec  # noqa: E402

SHAPES = [(3, 4), (5,), ()]
N_STEPS = 100
OPTIMIZERS = tuple(KERAS_NAMES)
# The algorithms with amsgrad (its flag adds a slot).
AMSGRAD = tuple(n for n in KERAS_NAMES if "amsgrad" in spec(n).defaults())


def _grads(dtype=np.float32, n_steps=N_STEPS, seed=0, **kwargs):
    return make_gradients(SHAPES, n_steps, seed=seed, dtype=dtype, **kwargs)


def _weights(dtype=np.float32, seed=1):
    return make_weights(SHAPES, seed=seed, dtype=dtype)


def check_parity(record, feature, optimizer, config, *, dtype=np.float32, grads=None,
                 weights=None, tol=None, **run_kwargs):
    """Run Keras and kerasopt on the same inputs, assert parity, record the errors."""
    grads = _grads(dtype) if grads is None else grads
    weights = _weights(dtype) if weights is None else weights
    ref = run_keras(optimizer, config, weights, grads, **run_kwargs)
    got = run_kerasopt(optimizer, config, weights, grads, **run_kwargs)
    stats = compare_runs(ref, got, tol=tol)
    record(f"{optimizer}/{feature}", stats)
    raise_on_failures(stats)
    return ref, got, stats


# --------------------------------------------------------------------------- the cases

SCHEDULES = {
    "ExponentialDecay": Schedule("ExponentialDecay", initial_learning_rate=0.02,
                                 decay_steps=10, decay_rate=0.8),
    "ExponentialDecay-staircase": Schedule("ExponentialDecay", initial_learning_rate=0.02,
                                           decay_steps=7, decay_rate=0.7, staircase=True),
    "PiecewiseConstantDecay": Schedule("PiecewiseConstantDecay", boundaries=[10, 40, 70],
                                       values=[0.02, 0.01, 0.005, 0.001]),
    "PolynomialDecay": Schedule("PolynomialDecay", initial_learning_rate=0.02,
                                decay_steps=60, end_learning_rate=0.001, power=2.0),
    "PolynomialDecay-cycle": Schedule("PolynomialDecay", initial_learning_rate=0.02,
                                      decay_steps=30, end_learning_rate=0.001, power=0.5,
                                      cycle=True),
    "InverseTimeDecay": Schedule("InverseTimeDecay", initial_learning_rate=0.02,
                                 decay_steps=10, decay_rate=0.5),
    "InverseTimeDecay-staircase": Schedule("InverseTimeDecay", initial_learning_rate=0.02,
                                           decay_steps=9, decay_rate=0.5, staircase=True),
    "CosineDecay": Schedule("CosineDecay", initial_learning_rate=0.02, decay_steps=70,
                            alpha=0.1),
    "CosineDecay-warmup": Schedule("CosineDecay", initial_learning_rate=0.001,
                                   decay_steps=60, alpha=0.05, warmup_target=0.02,
                                   warmup_steps=20),
    "CosineDecayRestarts": Schedule("CosineDecayRestarts", initial_learning_rate=0.02,
                                    first_decay_steps=15, t_mul=2.0, m_mul=0.7, alpha=0.05),
}

# feature -> (config, run kwargs, gradient kwargs, optimizers)
CASES: dict[str, tuple[dict, dict, dict, tuple[str, ...]]] = {
    "defaults": ({}, {}, {}, OPTIMIZERS),
    "betas-epsilon": (
        {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-3}, {}, {},
        OPTIMIZERS),
    "amsgrad": ({"learning_rate": 0.01, "amsgrad": True}, {}, {}, AMSGRAD),
    "amsgrad-betas": (
        {"learning_rate": 0.01, "amsgrad": True, "beta_1": 0.5, "beta_2": 0.9}, {}, {},
        AMSGRAD),
    "callable-lr": (
        {"learning_rate": StepCallable(lambda s: 0.02 * 0.97**s, "0.02*0.97**step")}, {}, {},
        OPTIMIZERS),
    "weight-decay": ({"learning_rate": 0.01, "weight_decay": 0.5}, {}, {}, OPTIMIZERS),
    "weight-decay-exclude-names": (
        {"learning_rate": 0.01, "weight_decay": 0.5},
        {"exclude_names": ["bias", "^sc"]}, {}, OPTIMIZERS),
    "weight-decay-exclude-vars": (
        {"learning_rate": 0.01, "weight_decay": 0.5}, {"exclude_vars": [0]}, {}, OPTIMIZERS),
    "weight-decay-schedule": (
        {"learning_rate": SCHEDULES["CosineDecay-warmup"], "weight_decay": 0.3}, {}, {},
        OPTIMIZERS),
    "clipnorm": ({"learning_rate": 0.01, "clipnorm": 1.0}, {}, {}, OPTIMIZERS),
    "global-clipnorm": ({"learning_rate": 0.01, "global_clipnorm": 2.0}, {}, {}, OPTIMIZERS),
    "clipvalue": ({"learning_rate": 0.01, "clipvalue": 0.5}, {}, {}, OPTIMIZERS),
    "ema": ({"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9}, {}, {}, OPTIMIZERS),
    "ema-overwrite": (
        {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9,
         "ema_overwrite_frequency": 7}, {}, {}, OPTIMIZERS),
    "loss-scale-factor": (
        {"learning_rate": 0.01, "loss_scale_factor": 1024.0}, {}, {}, OPTIMIZERS),
    "loss-scale-factor-small": (
        {"learning_rate": 0.01, "loss_scale_factor": 0.3}, {}, {}, OPTIMIZERS),
    "accumulation-2": (
        {"learning_rate": 0.01, "gradient_accumulation_steps": 2}, {}, {}, OPTIMIZERS),
    "accumulation-3": (
        {"learning_rate": 0.01, "gradient_accumulation_steps": 3}, {}, {}, OPTIMIZERS),
    "accumulation-3-schedule-clip-decay": (
        {"learning_rate": SCHEDULES["PiecewiseConstantDecay"], "gradient_accumulation_steps": 3,
         "global_clipnorm": 1.0, "weight_decay": 0.2}, {}, {}, OPTIMIZERS),
    "ema-accumulation-2": (
        {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.8,
         "gradient_accumulation_steps": 2}, {}, {}, OPTIMIZERS),
    "ema-accumulation-3-overwrite-2": (
        {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.8,
         "ema_overwrite_frequency": 2, "gradient_accumulation_steps": 3}, {}, {}, OPTIMIZERS),
    "ema-accumulation-2-overwrite-3": (
        {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.95,
         "ema_overwrite_frequency": 3, "gradient_accumulation_steps": 2}, {}, {}, OPTIMIZERS),
    "none-gradients": ({"learning_rate": 0.01}, {}, {"none_every": 3}, OPTIMIZERS),
    "none-gradients-accumulation-2": (
        {"learning_rate": 0.01, "gradient_accumulation_steps": 2}, {}, {"none_every": 3},
        OPTIMIZERS),
    "none-gradients-ema-decay-clip": (
        {"learning_rate": 0.01, "use_ema": True, "ema_overwrite_frequency": 5,
         "weight_decay": 0.3, "global_clipnorm": 1.0}, {}, {"none_every": 2}, OPTIMIZERS),
    "constraint": (
        {"learning_rate": 0.05}, {"constraints": [(-0.5, 0.5), None, (-0.5, 0.5)]}, {},
        OPTIMIZERS),
    "constraint-ema-accumulation": (
        {"learning_rate": 0.05, "use_ema": True, "ema_overwrite_frequency": 4,
         "gradient_accumulation_steps": 2},
        {"constraints": [(-0.5, 0.5), (-0.3, 0.3), None]}, {}, OPTIMIZERS),
    "set-learning-rate": (
        {"learning_rate": 0.01}, {"lr_changes": {30: 0.05, 60: 0.002}}, {}, OPTIMIZERS),
    "set-learning-rate-accumulation": (
        {"learning_rate": 0.01, "gradient_accumulation_steps": 2},
        {"lr_changes": {31: 0.05, 64: 0.002}}, {}, OPTIMIZERS),
    "apply-gradients": ({"learning_rate": 0.01}, {"use_apply_gradients": True}, {}, OPTIMIZERS),
}
CASES.update(
    {f"schedule-{name}": ({"learning_rate": spec}, {}, {}, OPTIMIZERS)
     for name, spec in SCHEDULES.items()}
)


def _case_params():
    for feature, (_, _, _, optimizers) in CASES.items():
        for optimizer in optimizers:
            yield pytest.param(optimizer, feature, id=f"{optimizer}-{feature}")


@pytest.mark.parametrize(("optimizer", "feature"), list(_case_params()))
def test_parity(optimizer, feature, parity_record):
    config, run_kwargs, grad_kwargs, _ = CASES[feature]
    grads = _grads(**grad_kwargs)
    check_parity(parity_record, feature, optimizer, config, grads=grads, **run_kwargs)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_none_gradient_warns_like_keras(optimizer):
    """Keras warns naming the variables without a gradient, and updates the others; so does
    kerasopt. All-None gradients are an error in both."""
    weights = _weights()
    grads = _grads(n_steps=1)[0]
    grads[1] = None
    k_vars = [keras.Variable(w.copy(), name=n) for w, n in zip(weights, ["kernel", "bias", "s"])]
    o_vars = [kerasopt.Variable(w.copy(), name=n) for w, n in zip(weights, ["kernel", "bias", "s"])]
    k_opt = getattr(keras.optimizers, optimizer)()
    o_opt = getattr(kerasopt, optimizer)()
    with pytest.warns(UserWarning, match="bias") as k_warnings:
        k_opt.apply([None if g is None else to_torch(g) for g in grads], k_vars)
    with pytest.warns(UserWarning, match="bias") as o_warnings:
        o_opt.apply(grads, o_vars)
    assert not any("kernel" in str(w.message) for w in k_warnings)
    assert not any("kernel" in str(w.message) for w in o_warnings)
    np.testing.assert_array_equal(o_vars[1].numpy(), weights[1])
    np.testing.assert_array_equal(k_vars[1].numpy(), weights[1])
    assert not np.array_equal(o_vars[0].numpy(), weights[0])
    with pytest.raises(ValueError):
        k_opt.apply([None, None, None], k_vars)
    with pytest.raises(ValueError):
        o_opt.apply([None, None, None], o_vars)


# --------------------------------------------------------------------------- non-vacuous


def test_gradients_make_clipping_bite():
    """The shared gradients exceed every clip threshold used above on many steps (and stay
    below it on some), so the clip cases exercise clipping."""
    grads = _grads()
    norms = np.array([[np.linalg.norm(g) for g in step] for step in grads])
    global_norms = np.sqrt((norms**2).sum(axis=1))
    largest = np.array([[np.abs(g).max() for g in step] for step in grads])
    assert 10 < (norms > 1.0).sum() < norms.size - 10
    assert 10 < (global_norms > 2.0).sum() < len(global_norms) - 10
    assert 10 < (largest > 0.5).sum() < largest.size - 10


def test_features_change_the_keras_trajectory():
    """Sanity of the cases: each optional feature moves Keras's weights away from plain Adam,
    so agreeing with Keras on them is not agreeing on a no-op."""
    grads = _grads(n_steps=30)
    weights = _weights()
    base = run_keras("Adam", {"learning_rate": 0.01}, weights, grads).weights[-1]
    for feature in ("weight-decay", "clipnorm", "global-clipnorm", "clipvalue", "ema-overwrite",
                    "accumulation-2", "constraint", "amsgrad", "loss-scale-factor-small"):
        config, run_kwargs, _, _ = CASES[feature]
        other = run_keras("Adam", config, weights, grads, **run_kwargs).weights[-1]
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(base, other))
        assert moved > 1e-4, feature


# --------------------------------------------------------------------------- loss scaling


LSO_INNER = {
    "plain": {"learning_rate": 0.01},
    "accumulation-ema-clipnorm": {"learning_rate": 0.01, "gradient_accumulation_steps": 2,
                                  "use_ema": True, "ema_overwrite_frequency": 3,
                                  "clipnorm": 1.0},
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("inner", list(LSO_INNER))
def test_loss_scale_optimizer(optimizer, inner, parity_record):
    """Dynamic loss scaling with growth every 3 finite steps and inf/NaN gradients on some
    steps: the skipped steps leave weights and the inner optimizer's state untouched."""
    skipped = [5, 6, 7, 20, 41, 42, 77, 99]
    grads = _grads(nonfinite_steps=skipped)
    grads = [[None if g is None else g * np.float32(256.0) for g in step] for step in grads]
    # a None gradient on some steps too (Keras skips it in the finiteness check)
    for k in (10, 30, 41):
        grads[k][1] = None
    ref, got, _ = check_parity(
        parity_record, f"LossScaleOptimizer-{inner}", optimizer, LSO_INNER[inner], grads=grads,
        loss_scale={"initial_scale": 2.0**10, "dynamic_growth_steps": 3},
    )
    n_own = 4  # iteration, learning_rate, step_counter, dynamic_scale
    for run in (ref, got):
        scales = [float(state[3]) for state in run.states]
        assert min(scales) < 2.0**10 < max(scales)  # the scale both shrank and grew
        for k in skipped:
            for before, after in zip(run.states[k - 1][n_own:], run.states[k][n_own:]):
                np.testing.assert_array_equal(after, before)
            for before, after in zip(run.weights[k - 1], run.weights[k]):
                np.testing.assert_array_equal(after, before)


# --------------------------------------------------------------------------- float64

FLOAT64_CASES = {
    "defaults": ({}, {}, {}),
    "amsgrad-clipnorm-schedule": (
        {"learning_rate": SCHEDULES["PolynomialDecay-cycle"], "clipnorm": 1.0,
         "amsgrad": True}, {}, {}),
    "schedule-PiecewiseConstantDecay": (
        {"learning_rate": SCHEDULES["PiecewiseConstantDecay"]}, {}, {}),
    "schedule-InverseTimeDecay-staircase": (
        {"learning_rate": SCHEDULES["InverseTimeDecay-staircase"]}, {}, {}),
    "ema-accumulation-overwrite": (
        {"learning_rate": 0.01, "use_ema": True, "ema_overwrite_frequency": 2,
         "gradient_accumulation_steps": 3}, {}, {}),
    "global-clipnorm-none-gradients": (
        {"learning_rate": 0.01, "global_clipnorm": 2.0}, {}, {"none_every": 3}),
    "clipvalue-loss-scale-factor-constraint": (
        {"learning_rate": 0.05, "clipvalue": 0.5, "loss_scale_factor": 8.0},
        {"constraints": [(-0.5, 0.5), None, None]}, {}),
    "betas-callable-lr": (
        {"learning_rate": StepCallable(lambda s: 0.02 / (1 + 0.1 * s), "0.02/(1+0.1*step)"),
         "beta_1": 0.7, "beta_2": 0.99}, {}, {}),
    "weight-decay": ({"learning_rate": 0.01, "weight_decay": 0.5}, {}, {}),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("feature", list(FLOAT64_CASES))
def test_parity_float64(optimizer, feature, parity_record):
    config, run_kwargs, grad_kwargs = FLOAT64_CASES[feature]
    if optimizer not in AMSGRAD and "amsgrad" in config:
        config = {k: v for k, v in config.items() if k != "amsgrad"}
    grads = _grads(np.float64, **grad_kwargs)
    check_parity(parity_record, f"float64-{feature}", optimizer, config, dtype=np.float64,
                 grads=grads, **run_kwargs)


TRANSCENDENTAL_SCHEDULES = ["ExponentialDecay", "CosineDecay", "CosineDecay-warmup",
                            "CosineDecayRestarts"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", TRANSCENDENTAL_SCHEDULES)
def test_parity_float64_transcendental_schedule(optimizer, schedule, parity_record):
    """Keras evaluates schedules in float32 even for float64 variables (so does kerasopt), and
    ``pow``/``cos`` in float32 differ by one ulp between torch and NumPy on some steps. The
    learning rate is then only float32-exact, so these runs meet the float32 tolerance, not
    1e-12 (the float64 cases above use schedules without transcendental functions)."""
    grads = _grads(np.float64)
    check_parity(parity_record, f"float64-schedule-{schedule}", optimizer,
                 {"learning_rate": SCHEDULES[schedule]}, dtype=np.float64, grads=grads,
                 tol=(1e-6, 1e-5))


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_set_learning_rate_to_schedule_and_callable(optimizer, parity_record):
    """Replacing a float learning rate by a schedule, then a callable, mid-run (Keras drops
    the learning-rate variable from ``optimizer.variables``)."""
    check_parity(
        parity_record, "set-learning-rate-schedule-callable", optimizer, {"learning_rate": 0.01},
        lr_changes={40: SCHEDULES["ExponentialDecay"],
                    70: StepCallable(lambda s: 0.001 + 0.0001 * (s % 5), "sawtooth")},
    )


# --------------------------------------------------------------------------- random combos

SCHEDULE_NAMES = sorted(SCHEDULES)


@st.composite
def option_sets(draw):
    optimizer = draw(st.sampled_from(OPTIMIZERS))
    config: dict = {}
    lr = draw(st.one_of(st.sampled_from([0.001, 0.01, 0.03]), st.sampled_from(SCHEDULE_NAMES)))
    config["learning_rate"] = SCHEDULES[lr] if isinstance(lr, str) else lr
    clip = draw(st.sampled_from([None, "clipnorm", "global_clipnorm", "clipvalue"]))
    if clip is not None:
        config[clip] = draw(st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    if draw(st.booleans()):
        config["weight_decay"] = draw(st.sampled_from([0.004, 0.1, 0.5]))
    if draw(st.booleans()):
        config["use_ema"] = True
        config["ema_momentum"] = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        config["ema_overwrite_frequency"] = draw(st.sampled_from([None, 1, 2, 3, 5]))
    accumulation = draw(st.sampled_from([None, 2, 3]))
    if accumulation:
        config["gradient_accumulation_steps"] = accumulation
    scale = draw(st.sampled_from([None, 0.25, 8.0, 1024.0]))
    if scale is not None:
        config["loss_scale_factor"] = scale
    if optimizer in AMSGRAD and draw(st.booleans()):
        config["amsgrad"] = True
    if draw(st.booleans()):
        config["beta_1"] = draw(st.sampled_from([0.0, 0.5, 0.9]))
        config["beta_2"] = draw(st.sampled_from([0.9, 0.99, 0.999]))
        config["epsilon"] = draw(st.sampled_from([1e-7, 1e-3]))
    none_every = draw(st.sampled_from([None, 2, 3]))
    seed = draw(st.integers(0, 2**16))
    return optimizer, config, none_every, seed


@settings(max_examples=int(os.environ.get("KERASOPT_PARITY_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(options=option_sets())
def test_parity_random_combinations(options, parity_record):
    optimizer, config, none_every, seed = options
    note(f"{optimizer}({config}), none_every={none_every}, seed={seed}")
    grads = _grads(n_steps=24, seed=seed, none_every=none_every)
    weights = _weights(seed=seed + 1)
    check_parity(parity_record, "random-combinations", optimizer, config, grads=grads,
                 weights=weights)
