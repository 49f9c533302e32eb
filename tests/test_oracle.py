"""The one parity rule (:mod:`kerasopt.cli.oracle`), on hand-made values: what it accepts and
what it reports. Importing the oracle does not import Keras."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from kerasopt.cli import oracle


def test_the_bound_is_atol_plus_rtol_times_value_and_travel():
    ref = np.array([1.0, 0.0], np.float32)
    travel = np.array([0.0, 2.0])
    # float32: 1e-6 + 1e-5 * (1 + 0) = 1.1e-5 and 1e-6 + 1e-5 * (0 + 2) = 2.1e-5.
    inside = ref.astype(np.float64) + [1.0e-5, 2.0e-5]
    m = oracle.measure(ref, inside, travel)
    assert not m.failures
    assert np.isclose(m.normalized, 2.0e-5 / 2.1e-5)
    outside = ref.astype(np.float64) + [1.2e-5, 0.0]
    m = oracle.measure(ref, outside, travel, label="w")
    assert len(m.failures) == 1 and m.failures[0].startswith("w: |diff|")
    assert np.isclose(m.normalized, 1.2e-5 / 1.1e-5)
    assert oracle.tolerance(np.float64) == (1e-12, 1e-12)
    assert oracle.measure(np.float64(1.0), 1.0 + 3e-12).failures  # > 2e-12


def test_nans_must_match_and_equal_infinities_agree():
    ref = np.array([np.nan, np.inf, 1.0], np.float32)
    assert not oracle.measure(ref, ref.copy()).failures
    assert oracle.measure(ref, np.array([0.0, np.inf, 1.0], np.float32)).failures
    assert oracle.measure(ref, np.array([np.nan, 1.0, 1.0], np.float32)).failures
    assert oracle.measure(ref, np.array([np.nan, -np.inf, 1.0], np.float32)).failures


def test_integers_exactly_and_dtypes_when_asked():
    assert not oracle.measure(np.int32(7), np.int64(7)).failures
    assert oracle.measure(np.int32(7), np.int64(8)).failures
    ref = np.ones(3, np.float32)
    assert not oracle.measure(ref, ref.astype(np.float64)).failures
    assert oracle.measure(ref, ref.astype(np.float64), check_dtype=True).failures


def test_travel_adds_the_path_and_skips_non_finite_steps():
    steps = [np.array([1.0]), np.array([-1.0]), np.array([np.inf]), np.array([0.0])]
    assert [float(t[0]) for t in oracle.travel(np.array([0.0]), steps)] == [1.0, 3.0, 3.0, 3.0]


def test_compare_weights_reports_the_step_and_variable():
    initial = [np.zeros(2, np.float32)]
    ref = [[np.array([0.1, 0.2], np.float32)], [np.array([0.2, 0.4], np.float32)]]
    got = [[ref[0][0].copy()], [np.array([0.2, 0.41], np.float32)]]
    result, ends = oracle.compare_weights(initial, ref, got, names=["kernel"])
    assert result.failures and result.failures[0].startswith("step 2, kernel:")
    assert np.allclose(ends[0], [0.2, 0.4])


def test_learning_rate_specs_resolve_alike():
    import kerasopt

    counter = oracle.Counter()
    rate = oracle.resolve({"type": "callable", "initial": 0.5, "decay": 0.5},
                          kerasopt.schedules, counter)
    counter.step = 2
    assert rate() == 0.125
    schedule = oracle.resolve(oracle.Schedule("ExponentialDecay", initial_learning_rate=0.1,
                                              decay_steps=1, decay_rate=0.5),
                              kerasopt.schedules, counter)
    assert isinstance(schedule, kerasopt.schedules.ExponentialDecay)
    assert oracle.resolve({"type": "float", "value": 3}, None, counter) == 3.0
    assert oracle.resolve(0.01, None, counter) == 0.01


def test_importing_the_oracle_and_verify_does_not_import_keras():
    code = ("import sys, kerasopt.cli.verify, kerasopt.cli.oracle; "
            "print(sorted(m for m in ('keras', 'torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
