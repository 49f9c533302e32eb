"""Long runs in CI: scripts/long_run.py reduced to 2,000 steps per run (the 100,000-step
results are recorded in docs/reliability.md), and the bias correction at huge iteration
counts on every frontend."""

from __future__ import annotations

import importlib.util
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hardening_helpers import ROOT

import kerasopt
import kerasopt.optax as ko
from optimizer_db import ALGORITHMS, core_class, no_decay, torch_class


def _long_run_module():
    spec = importlib.util.spec_from_file_location("long_run", ROOT / "scripts" / "long_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_long_run(hardening_count, capsys):
    long_run = _long_run_module()
    long_run.PHASE = 300  # every phase (zeros, flips, extremes) several times in 2,000 steps
    results = long_run.main(["--steps", "2000"])
    assert len(results) == 8
    for r in results:
        assert r["bitwise_equal_to_keras_math"], r
        assert r["iterations"] == 2000 and r["iterations_dtype"] == "int64"
        c1 = r["bias_correction_1_minus_beta1_pow_t"]
        c2 = r["bias_correction_sqrt_1_minus_beta2_pow_t"]
        assert 0 < c1[0] <= c1[1] <= 1 and 0 < c2[0] <= c2[1] <= 1
        if r["regime"] == "representable":
            assert r["first_nonfinite_step"] is None and r["finite_at_end"], r
        hardening_count("long-run steps checked against Keras's math (CI)", r["steps"])
    by_key = {(r["algorithm"], r["dtype"], r["regime"]): r for r in results}
    # 1e30 fits in float32 and Adamax never squares it: finite even in the extreme regime
    assert by_key[("adamax", "float32", "extreme")]["first_nonfinite_step"] is None
    # Keras's own math overflows here (g*g in Adam; 1e30 -> inf in float16): kerasopt too
    assert by_key[("adam", "float32", "extreme")]["first_nonfinite_step"] is not None
    assert by_key[("adamax", "float16", "extreme")]["first_nonfinite_step"] is not None


HUGE = [2**31 - 2, 2**31 + 5, 2**53 + 1, 2**62]


@pytest.mark.parametrize("iterations", HUGE)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("cls", [core_class(a) for a in ALGORITHMS])
def test_bias_correction_at_huge_iteration_counts(cls, dtype, iterations):
    var = kerasopt.Variable(np.array([1.0, -1.0, 0.5], dtype))
    opt = cls(learning_rate=0.01, **no_decay(cls.spec.name))
    opt.build([var])
    opt._iterations.assign(np.int64(iterations))
    with warnings.catch_warnings():
        # float32: no overflow/invalid warning at all. float16: t > 65504 is inf once cast
        # to the variable's dtype (as in Keras), which NumPy reports as a cast overflow;
        # beta ** inf == 0 and the corrections are exactly 1.
        warnings.simplefilter("error" if dtype == np.float32 else "ignore")
        opt.apply([np.array([0.1, -3.0, 0.0], dtype)], [var])
    assert np.isfinite(var.numpy()).all()
    assert int(opt.iterations.numpy()) == iterations + 1  # int64: no wrap-around
    # t huge: beta**t == 0 exactly, so the corrections are exactly 1 (their limit) and the
    # first step from zero state is lr*(1-b1)/sqrt(1-b2) ~ 3.2*lr (Adam), lr*(1-b1) (Adamax)
    step = var.numpy().astype(np.float64) - np.array([1.0, -1.0, 0.5])
    assert np.all(np.abs(step) <= 0.04) and step[2] == 0


@pytest.mark.parametrize("cls", [torch_class(a) for a in ALGORITHMS])
def test_torch_bias_correction_at_huge_iteration_counts(cls):
    for iterations in HUGE:
        p = torch.tensor([1.0, -1.0], requires_grad=True)
        opt = cls([p], learning_rate=0.01)
        for group in opt.param_groups:
            group["iterations"] = iterations
        p.grad = torch.tensor([0.1, -3.0])
        opt.step()
        assert torch.isfinite(p).all() and opt.raw_iterations == iterations + 1


@pytest.mark.parametrize("tx", [ko.adam, ko.adamax])
def test_optax_bias_correction_near_counter_limit(tx):
    t = tx(learning_rate=0.01)
    params = {"w": jnp.array([1.0, -1.0])}
    state = t.init(params)
    state = state._replace(count=jnp.asarray(2**31 - 2, state.count.dtype))
    updates, state = t.update({"w": jnp.array([0.1, -3.0])}, state, params)
    assert np.isfinite(np.asarray(updates["w"])).all()
    assert int(state.count) == 2**31 - 1
