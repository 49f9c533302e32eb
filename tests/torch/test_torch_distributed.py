"""Multi-process CPU tests (gloo, 127.0.0.1, world size 2): DDP, FSDP2 with DTensor
parameters, ZeroRedundancyOptimizer, and torch.distributed.checkpoint resume; each compared
with a single-process run of the same global batch.

All scenarios run in one spawn of the ranks (process start-up dominates), under bounded
timeouts: a collective that waits more than ``dist_worker.COLLECTIVE_TIMEOUT`` raises in the
worker, and the whole spawn is killed after ``DEADLINE`` seconds, so a deadlock fails the
tests instead of hanging CI.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)

WORLD = 2
DEADLINE = 110.0  # seconds for every scenario together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scenarios():
    import dist_worker

    return ["ddp", "fsdp2", "fsdp2_clipnorm", "zero", "dcp", "dcp_init", "zero_empty_rank",
            *dist_worker.MATRIX]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Spawn the ranks once and run every scenario in them."""
    import dist_worker
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("distributed")
    scenarios = _scenarios()
    failure = None
    started = time.monotonic()
    context = mp.start_processes(dist_worker.run, args=(WORLD, _free_port(), scenarios, str(out)),
                                 nprocs=WORLD, join=False, start_method="spawn")
    try:
        while not context.join(timeout=max(0.1, started + DEADLINE - time.monotonic())):
            if time.monotonic() > started + DEADLINE:
                raise TimeoutError(f"the ranks ran past {DEADLINE} s (a deadlock?)")
    except Exception as error:  # the per-scenario tests report what is missing
        failure = error
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    found = {}
    for scenario in scenarios:
        path = out / f"{scenario}.json"
        if path.exists():
            found[scenario] = json.loads(path.read_text())
            print(f"{scenario}: {found[scenario]}")
    print(f"all scenarios: {time.monotonic() - started:.1f} s")
    return found, failure


def _launch(scenario, results):
    found, failure = results
    if scenario not in found:
        raise AssertionError(f"scenario {scenario!r} produced no result: {failure}")
    assert "error" not in found[scenario], found[scenario]
    return found[scenario]


def test_ddp_matches_single_process(results):
    result = _launch("ddp", results)
    assert result["world_size"] == WORLD
    assert result["max_rel_diff"] <= 1e-5 and result["max_abs_diff"] <= 1e-6


@pytest.mark.parametrize("scenario", ["fsdp2", "fsdp2_clipnorm"])
def test_fsdp2_dtensors_match_single_process(scenario, results):
    result = _launch(scenario, results)
    assert result["params_are_dtensors"] and result["state_is_sharded"]
    assert result["local_shard_shape"][0] == 16 // WORLD
    assert result["max_abs_diff"] <= 1e-6, result


def test_zero_redundancy_optimizer_matches_single_process(results):
    result = _launch("zero", results)
    assert result["local_params"] < 4  # each rank holds part of the 4 parameters
    assert result["max_abs_diff"] <= 1e-6, result


def test_distributed_checkpoint_resume_is_exact(results):
    result = _launch("dcp", results)
    assert result["resumed_raw_iterations"] == 3
    assert result["resumed_state_vs_saved"] == 0.0, result  # EMA, accumulators, moments
    assert result["resume_vs_straight_max_abs"] == 0.0, result
    assert result["state_vs_straight_max_abs"] == 0.0, result
    assert result["raw_iterations"] == [6, 6]
    assert result["max_abs_diff"] <= 1e-6, result


def test_dcp_state_initialising_step_changes_nothing(results):
    result = _launch("dcp_init", results)
    assert result["raw_iterations_after_init"] == 0 and result["lr_after_init"] == 0.01
    assert result["ema_is_the_weights"] and result["accumulators_are_zero"]
    assert result["weights_vs_straight"] == 0.0 and result["state_vs_straight"] == 0.0
    assert result["raw_iterations"] == [5, 5]


def test_a_zero_rank_without_parameters_refuses_instead_of_hanging(results):
    outcomes = _launch("zero_empty_rank", results)["outcomes"]
    assert outcomes[0] == "built"
    assert "holds no parameter" in outcomes[1] and "norm_process_group" in outcomes[1]


def _matrix():
    import dist_worker

    return dist_worker.MATRIX


@pytest.mark.parametrize("scenario", _matrix())
def test_every_rank_agrees_on_a_nonfinite_gradient(scenario, results):
    """+inf in one element of one rank's gradient: every rank skips (or halves the scale)
    together, and the result equals the single-process run of the same global batch."""
    import dist_worker

    result = _launch(scenario, results)
    counters = result["rank_counters"]
    assert all(c == counters[0] for c in counters), counters  # ranks agree
    raw, skipped, scale, _ = result["reference_counters"]
    assert raw == dist_worker.STEPS - 1  # the single-process run skipped the bad step
    assert counters[0] == result["reference_counters"], result
    if scenario.startswith("zero"):
        assert result["ranks_seeing_the_inf"] == 1  # only the owner's shard held it
    assert result["max_abs_diff"] <= 1e-6, result


def test_torch_has_cpu_fsdp2():
    from torch.distributed.fsdp import fully_shard  # noqa: F401

    assert torch.distributed.is_gloo_available()
