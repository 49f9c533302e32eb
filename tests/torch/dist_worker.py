"""Worker for the multi-process tests: ``run(rank, world_size, port, scenario, out_dir)``.

Each scenario trains the same small MLP on the same global batches, distributed (gloo on
127.0.0.1), and rank 0 compares the final weights with a single-process run of the same
global batch, writing ``{"max_abs_diff": ..., "max_rel_diff": ...}`` to
``out_dir/<scenario>.json``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

import kerasopt.torch as kt

STEPS = 6
GLOBAL_BATCH = 8

CONFIGS = {
    "ddp": ("Adam", {"learning_rate": 0.01, "amsgrad": True, "global_clipnorm": 0.1,
                     "weight_decay": 0.01, "use_ema": True, "ema_overwrite_frequency": 3}),
    "fsdp2": ("Adam", {"learning_rate": 0.01, "amsgrad": True, "global_clipnorm": 0.1,
                       "weight_decay": 0.01, "use_ema": True, "ema_overwrite_frequency": 3}),
    "fsdp2_clipnorm": ("Adamax", {"learning_rate": 0.01, "clipnorm": 0.05,
                                  "gradient_accumulation_steps": 2, "use_ema": True}),
    "zero": ("Adamax", {"learning_rate": 0.01, "global_clipnorm": 0.1, "weight_decay": 0.01}),
    "dcp": ("Adam", {"learning_rate": 0.01, "global_clipnorm": 0.1, "use_ema": True,
                     "gradient_accumulation_steps": 2}),
}


def model_fn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
    )


def batches():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_BATCH, 8, generator=g), torch.randn(GLOBAL_BATCH, 4, generator=g))
        for _ in range(STEPS)
    ]


def train(model, opt, data, rank=0, world=1):
    for x, y in data:
        local = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[local]), y[local])
        loss.backward()
        opt.step()


def reference(scenario):
    cls, config = CONFIGS[scenario]
    config = {k: v for k, v in config.items()}
    model = model_fn()
    opt = getattr(kt, cls)(model.parameters(), **config)
    train(model, opt, batches())
    return [p.detach() for p in model.parameters()]


def full(p):
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def compare(params, ref):
    got = [full(p).detach() for p in params]
    abs_diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
    rel = max(float(((a - b).abs() / (b.abs() + 1e-12)).max()) for a, b in zip(got, ref))
    return abs_diff, rel


def _fsdp(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def run(rank, world, port, scenarios, out_dir):
    """Run every scenario in one process group (one spawn for all of them)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for scenario in scenarios:
            try:
                result = _run(rank, world, scenario, out_dir)
            except Exception as error:  # reported by the test, not fatal to the others
                result = {"error": f"{type(error).__name__}: {error}"}
                if rank == 0:
                    Path(out_dir, f"{scenario}.json").write_text(json.dumps(result))
                raise
            dist.barrier()
            if rank == 0:
                result["world_size"] = world
                Path(out_dir, f"{scenario}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _run(rank, world, scenario, out_dir):
    cls_name, config = CONFIGS[scenario]
    cls = getattr(kt, cls_name)
    ref = reference(scenario)
    data = batches()
    result = {}
    if scenario == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        opt = cls(model.parameters(), **config)
        train(model, opt, data, rank, world)
        params = list(model.module.parameters())
    elif scenario.startswith("fsdp2"):
        from torch.distributed.tensor import DTensor

        model = _fsdp(model_fn())
        opt = cls(model.parameters(), **config)
        train(model, opt, data, rank, world)
        params = list(model.parameters())
        p0 = params[0]
        state = opt.state[p0]
        result["params_are_dtensors"] = all(isinstance(p, DTensor) for p in params)
        result["state_is_sharded"] = all(
            isinstance(s, DTensor) and s.placements == p0.placements
            and s.to_local().shape == p0.to_local().shape
            for s in state.values()
        )
        result["local_shard_shape"] = list(p0.to_local().shape)
    elif scenario == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        opt = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=cls,
            norm_process_group=dist.group.WORLD, **config
        )
        train(model, opt, data, rank, world)
        params = list(model.module.parameters())
        result["local_params"] = sum(len(g["params"]) for g in opt.optim.param_groups)
    elif scenario == "dcp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        half = 3  # mid accumulation cycle (n = 2)
        model = _fsdp(model_fn())
        opt = cls(model.parameters(), **config)
        train(model, opt, data[:half], rank, world)
        checkpoint = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, opt),
        }
        path = str(Path(out_dir, "checkpoint"))
        dcp.save(checkpoint, checkpoint_id=path)
        dist.barrier()
        model2 = _fsdp(copy.deepcopy(model_fn()))
        opt2 = cls(model2.parameters(), **config)
        loaded = {
            "model": get_model_state_dict(model2),
            "optim": get_optimizer_state_dict(model2, opt2),
        }
        dcp.load(loaded, checkpoint_id=path)
        set_model_state_dict(model2, loaded["model"])
        set_optimizer_state_dict(model2, opt2, loaded["optim"])
        result["resumed_raw_iterations"] = opt2.raw_iterations
        train(model2, opt2, data[half:], rank, world)
        train(model, opt, data[half:], rank, world)
        params = list(model2.parameters())
        straight = [full(p).detach() for p in model.parameters()]
        result["resume_vs_straight_max_abs"] = compare(params, straight)[0]
    else:  # pragma: no cover
        raise ValueError(scenario)
    abs_diff, rel = compare(params, ref)
    result.update(max_abs_diff=abs_diff, max_rel_diff=rel)
    return result
