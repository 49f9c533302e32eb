"""Run kerasopt.optax on parameters sharded over 8 CPU devices and on one device; print a
JSON report. Executed in a subprocess by test_optax_sharding.py, since XLA_FLAGS must be set
before JAX initialises."""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kerasopt.optax as kx  # noqa: E402

STEPS = 20


def main():
    devices = np.array(jax.devices())
    assert devices.size == 8, devices
    mesh = Mesh(devices.reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    shapes = {"kernel": (16, 8), "bias": (8,), "emb": (32, 4)}
    specs = {"kernel": P("data", "model"), "bias": P(None), "emb": P("data", None)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: (rng.normal(size=s) * 3).astype(np.float32) for k, s in shapes.items()}
             for _ in range(STEPS)]
    report = {}
    for algo, factory in (("adam", kx.adam), ("adamax", kx.adamax)):
        tx = factory(learning_rate=0.02, global_clipnorm=1.0, weight_decay=0.01, use_ema=True,
                     ema_overwrite_frequency=5, gradient_accumulation_steps=2)
        step = jax.jit(lambda p, s, g, tx=tx: _step(tx, p, s, g))

        shardings = {k: NamedSharding(mesh, specs[k]) for k in shapes}
        sharded = {k: jax.device_put(v, shardings[k]) for k, v in params.items()}
        state = tx.init(sharded)
        init_kept = all(
            state.momentum[k].sharding.is_equivalent_to(shardings[k], len(shapes[k]))
            for k in shapes
        )
        for g in grads:
            g = {k: jax.device_put(v, shardings[k]) for k, v in g.items()}
            sharded, state = step(sharded, state, g)
        kept = init_kept and all(
            sharded[k].sharding.is_equivalent_to(shardings[k], len(shapes[k]))
            and state.momentum[k].sharding.is_equivalent_to(shardings[k], len(shapes[k]))
            and state.average[k].sharding.is_equivalent_to(shardings[k], len(shapes[k]))
            for k in shapes
        )
        n_shards = {k: len(sharded[k].addressable_shards) for k in shapes}

        single = {k: jax.device_put(v, jax.devices()[0]) for k, v in params.items()}
        single_state = tx.init(single)
        for g in grads:
            g = {k: jax.device_put(v, jax.devices()[0]) for k, v in g.items()}
            single, single_state = step(single, single_state, g)
        diff = max(
            float(np.max(np.abs(np.asarray(sharded[k]) - np.asarray(single[k])))) for k in shapes
        )
        travel = max(float(np.max(np.abs(np.asarray(single[k]) - params[k]))) for k in shapes)
        report[algo] = {"max_abs_diff": diff, "max_abs_travel": travel,
                        "sharding_kept": bool(kept), "shards": n_shards}
    print(json.dumps(report))


def _step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


if __name__ == "__main__":
    main()
