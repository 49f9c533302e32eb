"""Multi-process CPU tests (gloo, 127.0.0.1, world size 2): DDP, FSDP2 with DTensor
parameters, ZeroRedundancyOptimizer, and torch.distributed.checkpoint resume; each compared
with a single-process run of the same global batch."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCENARIOS = ["ddp", "fsdp2", "fsdp2_clipnorm", "zero", "dcp"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Spawn the ranks once and run every scenario in them (process start-up dominates)."""
    import dist_worker
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("distributed")
    failure = None
    try:
        mp.start_processes(dist_worker.run, args=(WORLD, _free_port(), SCENARIOS, str(out)),
                           nprocs=WORLD, join=True, start_method="spawn")
    except Exception as error:  # the per-scenario tests report what is missing
        failure = error
    found = {}
    for scenario in SCENARIOS:
        path = out / f"{scenario}.json"
        if path.exists():
            found[scenario] = json.loads(path.read_text())
            print(f"{scenario}: {found[scenario]}")
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
    assert result["resume_vs_straight_max_abs"] == 0.0, result
    assert result["max_abs_diff"] <= 1e-6, result


def test_torch_has_cpu_fsdp2():
    from torch.distributed.fsdp import fully_shard  # noqa: F401

    assert torch.distributed.is_gloo_available()
