"""The comparison rule of ``operand_ulps``: ulps of the operands of the step, carried over
steps, never ulps of a result that cancelled."""

import numpy as np
import pytest

from operand_ulps import assert_trajectories_close


def test_a_cancelled_result_is_judged_by_its_operands():
    # The Intel case of issue 13: float64, the weight 1.0 brought to 7.27e-4 by one step,
    # the two paths 6.9e-18 apart: 64 ulps of the result, far below one ulp of the weight.
    w0 = np.array([1.0])
    want = np.array([7.27e-4])
    got = want + 6.9e-18
    assert abs(got - want)[0] > 16 * np.finfo(np.float64).eps * want[0]  # the old rule failed
    assert_trajectories_close([[got]], [[want]], [w0])


def test_a_real_disagreement_fails():
    w0 = np.array([1.0, 2.0], np.float32)
    want = np.array([0.99, 1.98], np.float32)
    got = want.copy()
    got[1] = np.nextafter(want[1], np.float32(3))
    assert_trajectories_close([[got]], [[want]], [w0])  # one ulp: fine
    got[1] = want[1] + 1e-4  # hundreds of ulps of every operand
    with pytest.raises(AssertionError, match="step 0, array 0"):
        assert_trajectories_close([[got]], [[want]], [w0])


def test_differences_carry_over_steps_but_do_not_grow_unbounded():
    eps = np.finfo(np.float32).eps
    w0 = np.array([1.0], np.float32)
    want = [[np.array([1.0], np.float32)] for _ in range(3)]
    # Each step may add 16 ulps of |w| = 1: 16, 32, then 48.
    growing = [[w + np.float32(15 * (k + 1) * eps)] for k, [w] in enumerate(want)]
    assert_trajectories_close(growing, want, [w0])
    growing[2] = [want[2][0] + np.float32(60 * eps)]
    with pytest.raises(AssertionError, match="step 2"):
        assert_trajectories_close(growing, want, [w0])


def test_nan_inf_and_integers_must_match_exactly():
    with pytest.raises(AssertionError, match="NaN"):
        assert_trajectories_close([[np.array([np.nan])]], [[np.array([1.0])]], [np.ones(1)])
    with pytest.raises(AssertionError, match="infinities"):
        assert_trajectories_close([[np.array([-np.inf])]], [[np.array([np.inf])]],
                                  [np.ones(1)])
    assert_trajectories_close([[np.array([3])]], [[np.array([3])]], [np.array([2])])
    with pytest.raises(AssertionError):
        assert_trajectories_close([[np.array([4])]], [[np.array([3])]], [np.array([2])])
