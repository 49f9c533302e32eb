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
from datetime import timedelta
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


# A collective that waits longer than this raises (a deadlock fails the scenario).
COLLECTIVE_TIMEOUT = timedelta(seconds=20)

# The finiteness matrix (issue 14, item 1): {DDP, FSDP2, ZeRO} x {skip_nonfinite,
# LossScaleOptimizer} x {no clip, global_clipnorm}; at BAD_STEP one element of one rank's
# gradient is +inf.
MATRIX = [f"{setup}-{guard}-{clip}" for setup in ("ddp", "fsdp2", "zero")
          for guard in ("skip", "lso") for clip in ("noclip", "gclip")]
BAD_STEP = 2
LSO_ARGS = {"initial_scale": 16.0, "dynamic_growth_steps": 2}
# Where the inf goes: (parameter index, flat index in the full parameter). Under FSDP2 it is
# row 8 of the first weight (16 rows sharded on dim 0: the first row of rank 1's shard);
# under DDP / ZeRO rank 1's local gradient of the last weight, before DDP averages it (so
# under ZeRO only the rank that owns that weight sees it).
INF_AT = {"fsdp2": (0, 8 * 8), "ddp": (2, 0), "zero": (2, 0)}


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
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
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


def _guarded(params, guard, clip, **extra):
    config = {"learning_rate": 0.01, "weight_decay": 0.01, **extra}
    if clip == "gclip":
        config["global_clipnorm"] = 0.1
    if guard == "skip":
        return kt.Adam(params, skip_nonfinite=True, **config)
    return kt.LossScaleOptimizer(kt.Adam(params, **config), **LSO_ARGS)


def _zero_guarded(params, guard, clip):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def local_optimizer(groups, **defaults):
        return _guarded(groups, guard, clip, **defaults)

    return ZeroRedundancyOptimizer(params, optimizer_class=local_optimizer,
                                   norm_process_group=dist.group.WORLD)


def _poison(grad):
    grad = grad.clone()
    grad.view(-1)[0] = float("inf")
    return grad


def train_guarded(model, opt, data, setup, rank=0, world=1):
    """Train with one +inf gradient element at BAD_STEP (see INF_AT)."""
    index, flat = INF_AT[setup]
    params = list(model.parameters())
    scaler = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer: its local optimizer
    for step, (x, y) in enumerate(data):
        local = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        opt.zero_grad()
        handle = None
        if step == BAD_STEP and world > 1 and rank == 1 and setup != "fsdp2":
            handle = params[index].register_hook(_poison)
        scaler.scale_loss(torch.nn.functional.mse_loss(model(x[local]), y[local])).backward()
        if handle is not None:
            handle.remove()
        if step == BAD_STEP:
            with torch.no_grad():
                if world == 1:
                    params[index].grad.view(-1)[flat] = float("inf")
                elif setup == "fsdp2" and rank == 1:
                    params[index].grad.to_local().view(-1)[0] = float("inf")
        opt.step()


def _counters(opt):
    inner = getattr(opt, "optim", opt)
    core = getattr(inner, "inner_optimizer", inner)
    return [core.raw_iterations, core.skipped_steps,
            getattr(inner, "dynamic_scale", None), getattr(inner, "step_counter", None)]


def _run_guarded(rank, world, scenario):
    setup, guard, clip = scenario.split("-")
    data = batches()
    ref_model = model_fn()
    ref_opt = _guarded(ref_model.parameters(), guard, clip)
    train_guarded(ref_model, ref_opt, data, setup)
    ref = [p.detach() for p in ref_model.parameters()]
    result = {"reference_counters": _counters(ref_opt)}
    if setup == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        opt = _guarded(model.parameters(), guard, clip)
        params = list(model.module.parameters())
    elif setup == "fsdp2":
        model = _fsdp(model_fn())
        opt = _guarded(model.parameters(), guard, clip)
        params = list(model.parameters())
    else:
        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        opt = _zero_guarded(model.parameters(), guard, clip)
        params = list(model.module.parameters())
        owned = {id(p) for g in opt.optim.param_groups for p in g["params"]}
        sees_inf = [None] * world
        dist.all_gather_object(sees_inf, id(params[INF_AT["zero"][0]]) in owned)
        result["ranks_seeing_the_inf"] = sum(sees_inf)
    train_guarded(model, opt, data, setup, rank, world)
    counters = [None] * world
    dist.all_gather_object(counters, _counters(opt))
    result["rank_counters"] = counters
    abs_diff, rel = compare(params, ref)
    result.update(max_abs_diff=abs_diff, max_rel_diff=rel)
    return result


def _state_diff(opt_a, params_a, opt_b, params_b):
    """Largest difference of any state tensor (full tensors) between two optimizers."""
    worst = 0.0
    for p, q in zip(params_a, params_b):
        a, b = opt_a.state[p], opt_b.state[q]
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        for key in a:
            worst = max(worst, float((full(a[key]) - full(b[key])).abs().max()))
    return worst


def _run_dcp_init(rank, world):
    """get_optimizer_state_dict on an optimizer without state calls step() with zero
    gradients and lr 0 to create it: that must count nothing and change nothing."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    cls_name, config = CONFIGS["dcp"]
    cls = getattr(kt, cls_name)
    data = batches()
    model, straight = _fsdp(model_fn()), _fsdp(model_fn())
    opt, straight_opt = cls(model.parameters(), **config), cls(straight.parameters(), **config)
    get_optimizer_state_dict(model, opt)
    result = {"raw_iterations_after_init": opt.raw_iterations,
              "lr_after_init": opt.param_groups[0]["lr"]}
    params = list(model.parameters())
    result["ema_is_the_weights"] = all(
        torch.equal(opt.state[p]["average"].to_local(), p.to_local()) for p in params)
    result["accumulators_are_zero"] = all(
        not torch.any(opt.state[p]["gradient_accumulator"].to_local()) for p in params)
    train(model, opt, data[:5], rank, world)
    train(straight, straight_opt, data[:5], rank, world)
    result["weights_vs_straight"] = compare(params, [full(p) for p in straight.parameters()])[0]
    result["state_vs_straight"] = _state_diff(opt, params, straight_opt,
                                              list(straight.parameters()))
    result["raw_iterations"] = [opt.raw_iterations, straight_opt.raw_iterations]
    return result


def _run_zero_empty_rank(rank, world):
    """ZeRO with one parameter tensor for two ranks: rank 1 holds nothing. With
    global_clipnorm it could not join the norm's all-reduce; it must refuse, not hang."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1, bias=False))
    try:
        ZeroRedundancyOptimizer(model.parameters(), optimizer_class=kt.Adam,
                                norm_process_group=dist.group.WORLD, global_clipnorm=1.0)
        outcome = "built"
    except ValueError as error:
        outcome = str(error)
    outcomes = [None] * world
    dist.all_gather_object(outcomes, outcome)
    return {"outcomes": outcomes}


def _run(rank, world, scenario, out_dir):
    if scenario == "zero_empty_rank":
        return _run_zero_empty_rank(rank, world)
    if scenario in MATRIX:
        return _run_guarded(rank, world, scenario)
    if scenario == "dcp_init":
        return _run_dcp_init(rank, world)
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
        result["resumed_state_vs_saved"] = _state_diff(opt2, list(model2.parameters()), opt,
                                                       list(model.parameters()))
        train(model2, opt2, data[half:], rank, world)
        train(model, opt, data[half:], rank, world)
        params = list(model2.parameters())
        straight = [full(p).detach() for p in model.parameters()]
        result["resume_vs_straight_max_abs"] = compare(params, straight)[0]
        # EMA averages, accumulators and moments continue bit for bit, and so do counters.
        result["state_vs_straight_max_abs"] = _state_diff(opt2, params, opt,
                                                          list(model.parameters()))
        result["raw_iterations"] = [opt2.raw_iterations, opt.raw_iterations]
    else:  # pragma: no cover
        raise ValueError(scenario)
    abs_diff, rel = compare(params, ref)
    result.update(max_abs_diff=abs_diff, max_rel_diff=rel)
    return result
