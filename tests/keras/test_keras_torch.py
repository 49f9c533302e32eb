"""kerasopt.keras on Keras's torch backend (in a subprocess: see keras_checks.py): parity with
keras.optimizers.X in fit, one fused kernel launch per step, torch.compile, save/load."""

from __future__ import annotations

import pytest
from keras_runner import PARITY_CASES, assert_parity, result, run_checks

BACKEND = "torch"


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    return run_checks(BACKEND, tmp_path_factory.mktemp(BACKEND))


@pytest.mark.parametrize("case", PARITY_CASES)
def test_fit_parity_with_keras(checks, case):
    cases = result(checks, "parity")["cases"]
    assert_parity(cases[case], f"{BACKEND} {case}")
    if case.startswith("loss_scale"):
        found = cases[case]
        assert found["applied_steps"] == 9, found  # the 3 NaN steps were skipped
        assert found["applied_steps"] == found["keras_applied_steps"], found
        assert found["final_scale"] == found["keras_final_scale"], found
        assert found["kerasopt_steps"] == 9, found
    else:  # one kernel launch per train step: the step is kerasopt's
        assert cases[case]["kerasopt_steps"] == 12, cases[case]


def test_one_kernel_launch_per_step(checks):
    found = result(checks, "one_computation_per_step")
    assert found["calls"] == found["steps"] == found["iterations"] == 12, found


def test_fit_finalizes_ema(checks):
    found = result(checks, "ema_finalized_by_fit")
    assert found["final_minus_average"] == 0.0, found
    assert found["last_epoch_minus_final"] > 1e-3, found  # finalizing changed the weights
    assert_parity(found["versus_keras"], "torch EMA finalize")


def test_torch_compile_keeps_the_step_out_of_the_graph(checks):
    found = result(checks, "jit_compiled")
    assert found["compiled"], found
    assert found["graph_breaks_at_apply"] >= 1, found
    assert "torch.compiler.disable" in found["graph_break_reason"], found
    assert found["kerasopt_steps"] == 4, found  # the fused step ran on every step
    assert_parity(found["Adamax"], "torch.compile Adamax")


def test_save_and_load_model(checks):
    found = result(checks, "save_and_load")
    assert found["loaded_class"] == "kerasopt.keras.optimizers.Adamax", found
    assert found["registered_name"] == "kerasopt>Adamax", found
    assert found["same_config"] and found["same_variables"], found
    assert found["sparse_updates"] == "dense", found
    assert found["continued_max_difference"] == 0.0, found
    assert found["evaluate_is_finite"], found


def test_custom_loop_with_missing_gradients(checks):
    found = result(checks, "custom_loop_with_missing_gradients")["Adamax"]
    assert found["ratio"] <= 1.0 and found["moved"] > 1e-2, found


def test_triton_kernels_through_the_plan(checks):
    found = result(checks, "triton_kernels")
    if "skipped" in found:
        pytest.skip(found["skipped"])
    assert found["launches"] == 4, found  # 2 epochs of 2 steps, one launch each
    assert_parity(found["versus_keras"], "Triton (interpreter) Adam, every feature")

