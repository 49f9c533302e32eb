"""Non-finite gradients on every frontend.

* Default: Keras's semantics -- a NaN/inf gradient propagates into the weights and state
  exactly as in Keras (compared with Keras itself).
* ``LossScaleOptimizer`` (NumPy), ``kerasopt.torch.LossScaleOptimizer`` and
  ``kerasopt.optax.loss_scale``: a non-finite step changes nothing but the scale (halved)
  and the counter (reset); the three agree step by step.
* ``skip_nonfinite=True``: a non-finite step changes nothing but ``skipped_steps``; the run
  equals the run without the bad steps, bit for bit; one warning.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kerasopt  # noqa: E402
import kerasopt.optax as ko  # noqa: E402
import kerasopt.torch as kt  # noqa: E402
from optimizer_db import ALGORITHMS, core_class, has_amsgrad, optax_factory, spec, torch_class

F = np.float32
SHAPES = [(3, 2), (4,)]


def _grads(rng, bad=None):
    grads = [rng.normal(size=s).astype(F) for s in SHAPES]
    if bad is not None:
        which, value = bad
        grads[which].flat[rng.integers(grads[which].size)] = value
    return grads


def _init():
    return [np.linspace(-1, 1, int(np.prod(s)), dtype=F).reshape(s) for s in SHAPES]


# --------------------------------------------------------------------------- runners


def run_numpy(algo, kwargs, grads_seq, wrap=None):
    variables = [kerasopt.Variable(w) for w in _init()]
    opt = core_class(algo)(**kwargs)
    if wrap is not None:
        opt = kerasopt.LossScaleOptimizer(opt, **wrap)
    trace = []
    for grads in grads_seq:
        scale = np.float32(opt.scale_loss(1.0)) if wrap is not None else 1.0
        opt.apply([g * scale for g in grads], variables)
        trace.append(([v.numpy().copy() for v in variables],
                      float(opt.scale_loss(1.0)) if wrap is not None else None))
    return opt, trace


def run_torch(algo, kwargs, grads_seq, wrap=None):
    params = [torch.tensor(w, requires_grad=True) for w in _init()]
    opt = torch_class(algo)(params, **kwargs)
    if wrap is not None:
        opt = kt.LossScaleOptimizer(opt, **wrap)
    trace = []
    for grads in grads_seq:
        scale = np.float32(opt.dynamic_scale) if wrap is not None else 1.0
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g * scale)
        opt.step()
        trace.append(([p.detach().numpy().copy() for p in params],
                      opt.dynamic_scale if wrap is not None else None))
    return opt, trace


def run_optax(algo, kwargs, grads_seq, wrap=None):
    tx = optax_factory(algo)(**kwargs)
    if wrap is not None:
        tx = ko.loss_scale(tx, **wrap)
    params = [jnp.asarray(w) for w in _init()]
    state = tx.init(params)
    update = jax.jit(tx.update)
    trace = []
    for grads in grads_seq:
        scale = float(ko.scale_loss(jnp.float32(1.0), state)) if wrap is not None else 1.0
        updates, state = update([jnp.asarray(g * np.float32(scale)) for g in grads], state,
                                params)
        params = optax.apply_updates(params, updates)
        trace.append(([np.asarray(p) for p in params],
                      float(ko.scale_loss(jnp.float32(1.0), state)) if wrap is not None
                      else None))
    return state, trace


RUNNERS = {"numpy": run_numpy, "torch": run_torch, "optax": run_optax}


# --------------------------------------------------------------------------- Keras semantics


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_default_propagates_like_keras(algo, value, hardening_count):
    import keras

    rng = np.random.default_rng(0)
    seq = [_grads(rng), _grads(rng, (1, value)), _grads(rng)]
    cls = getattr(keras.optimizers, spec(algo).keras_name)
    k_opt = cls(learning_rate=0.01)
    k_vars = [keras.Variable(w) for w in _init()]
    for grads in seq:
        k_opt.apply([keras.ops.convert_to_tensor(g) for g in grads], k_vars)
    expected = [keras.ops.convert_to_numpy(v) for v in k_vars]
    assert not np.isfinite(expected[1]).all()  # Keras lets it through
    for frontend, runner in RUNNERS.items():
        _, trace = runner(algo, {"learning_rate": 0.01}, seq)
        for ours, theirs in zip(trace[-1][0], expected):
            assert np.array_equal(np.isnan(ours), np.isnan(theirs)), frontend
            assert np.array_equal(np.isinf(ours), np.isinf(theirs)), frontend
            finite = np.isfinite(theirs)
            np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-7)
        hardening_count("non-finite: default propagation compared with Keras")


# --------------------------------------------------------------------------- loss scaling


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(algo=st.sampled_from(ALGORITHMS), seed=st.integers(0, 2**31 - 1),
       growth=st.integers(1, 3), pattern=st.lists(st.sampled_from(
           [None, None, (0, np.nan), (1, np.inf), (0, -np.inf)]), min_size=4, max_size=9),
       features=st.sampled_from([{}, {"use_ema": True}, {"gradient_accumulation_steps": 2},
                                 {"weight_decay": 0.05, "clipnorm": 1.0}]))
def test_loss_scaling_agrees_across_frontends(algo, seed, growth, pattern, features):
    rng = np.random.default_rng(seed)
    seq = [_grads(rng, bad) for bad in pattern]
    wrap = {"initial_scale": 2.0**10, "dynamic_growth_steps": growth}
    kwargs = {"learning_rate": 0.01, **features}
    _, reference = run_numpy(algo, kwargs, seq, wrap)
    for frontend in ("torch", "optax"):
        _, trace = RUNNERS[frontend](algo, kwargs, seq, wrap)
        previous = _init()
        for step, ((ours, scale), (theirs, ref_scale), bad) in enumerate(
                zip(trace, reference, pattern)):
            assert scale == ref_scale, (frontend, step)
            if bad is not None:  # skipped: exactly the previous weights
                for x, y in zip(ours, previous):
                    assert np.array_equal(x, y), (frontend, step)
            for x, y in zip(ours, theirs):
                np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7)
            previous = ours


def test_torch_loss_scale_skip_keeps_state_and_counters():
    params = [torch.ones(3, requires_grad=True)]
    opt = kt.LossScaleOptimizer(kt.Adam(params, use_ema=True, gradient_accumulation_steps=2))
    params[0].grad = torch.ones(3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    raw = opt.raw_iterations
    params[0].grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert opt.raw_iterations == raw and opt.dynamic_scale == 2.0**14 and opt.step_counter == 0
    for key, value in before.items():
        assert torch.equal(value, opt.state[params[0]][key])


# --------------------------------------------------------------------------- skip_nonfinite


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frontend=st.sampled_from(sorted(RUNNERS)), algo=st.sampled_from(ALGORITHMS),
       seed=st.integers(0, 2**31 - 1),
       pattern=st.lists(st.sampled_from([None, None, (0, np.nan), (1, np.inf)]),
                        min_size=3, max_size=10),
       features=st.sampled_from([{}, {"use_ema": True, "ema_overwrite_frequency": 2},
                                 {"gradient_accumulation_steps": 3},
                                 {"amsgrad": True, "global_clipnorm": 0.5}]))
def test_skip_nonfinite_equals_run_without_bad_steps(frontend, algo, seed, pattern, features,
                                                     hardening_count):
    if not has_amsgrad(algo):
        features = {k: v for k, v in features.items() if k != "amsgrad"}
    rng = np.random.default_rng(seed)
    seq = [_grads(rng, bad) for bad in pattern]
    good = [g for g, bad in zip(seq, pattern) if bad is None]
    kwargs = {"learning_rate": 0.01, "skip_nonfinite": True, **features}
    n_bad = sum(bad is not None for bad in pattern)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt, trace = RUNNERS[frontend](algo, kwargs, seq)
    ours = [w for w, _ in trace][-1]
    if good:
        _, expected_trace = RUNNERS[frontend](algo, {**kwargs, "skip_nonfinite": False}, good)
        expected = expected_trace[-1][0]
    else:
        expected = _init()
    for x, y in zip(ours, expected):
        assert np.array_equal(x, y)
    skipped = (int(opt.skipped_steps) if frontend != "optax" else int(opt.skipped_steps))
    assert skipped == n_bad
    ours_warnings = [w for w in caught if "skip_nonfinite" in str(w.message)]
    assert len(ours_warnings) == min(n_bad, 1)
    hardening_count("non-finite: skip_nonfinite runs compared", 1)
    hardening_count("non-finite: steps skipped", n_bad)


def test_skip_nonfinite_count_survives_save_and_load(tmp_path):
    path = tmp_path / "s.ckpt"
    rng = np.random.default_rng(1)
    seq = [_grads(rng), _grads(rng, (0, np.nan)), _grads(rng, (1, np.inf))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt, _ = run_numpy("adam", {"skip_nonfinite": True}, seq)
        kerasopt.save(path, opt)
        fresh = kerasopt.Adam(skip_nonfinite=True)
        fresh.build([kerasopt.Variable(w) for w in _init()])
        kerasopt.load(path, fresh)
        assert fresh.skipped_steps == 2 and int(fresh.iterations.numpy()) == 1
        assert kerasopt.Adam.from_config(fresh.get_config()).skip_nonfinite is True
        topt, _ = run_torch("adamax", {"skip_nonfinite": True}, seq)
        kerasopt.save(path, topt)
        params = [torch.zeros(s, requires_grad=True) for s in SHAPES]
        tfresh = kt.Adamax(params, skip_nonfinite=True)
        kerasopt.load(path, tfresh)
        assert tfresh.skipped_steps == 2 and tfresh.raw_iterations == 1
        tfresh.load_state_dict(topt.state_dict())  # torch's own way carries it too
        assert tfresh.skipped_steps == 2
