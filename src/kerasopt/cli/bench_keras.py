"""Keras 3's own optimizer step against ``kerasopt.keras``'s, per Keras backend, side by side.

For each backend (torch, JAX, TensorFlow; one subprocess each, as ``KERAS_BACKEND`` is fixed
at import), each workload of ``kerasopt bench`` ((a) one 16M tensor, (b) ~200 mixed tensors
totalling 16M, (c) 2,000 tensors of 1,024), Adam and Adamax, with the features off and on
(``global_clipnorm``, ``weight_decay``, EMA, ``loss_scale_factor`` and gradient accumulation
over 2 calls, so every other call is a micro-step for both), the two steps are timed round
robin, one call each per round, and the table gives each one's median and their ratio.

What is timed is the optimizer step as Keras's trainer calls it: ``optimizer.apply(grads,
variables)`` under ``torch.no_grad`` on torch; ``optimizer.stateless_apply`` in a
``jax.jit`` of the trainer's shape (the state in and out as one donated structure) on JAX;
``optimizer.apply`` in a ``tf.function`` on TensorFlow (and with ``jit_compile=True``).
Only ratios measured in one run mean much on a shared machine; the table's header gives the
load average.

``print_table(measure(...))`` is the whole job; ``python -m kerasopt.cli.bench_keras`` runs
it from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

from kerasopt.cli.workloads import describe, workload_sizes

__all__ = ["BACKENDS", "FEATURES", "format_table", "main", "measure", "print_table"]

BACKENDS = ("torch", "jax", "tensorflow")
FEATURES = {
    "off": {},
    "on": {"global_clipnorm": 1.0, "weight_decay": 0.004, "use_ema": True,
           "loss_scale_factor": 2.0, "gradient_accumulation_steps": 2},
}
ALGORITHMS = ("Adam", "Adamax")


def measure(backends: Sequence[str] = BACKENDS, workloads: Sequence[str] = ("a", "b", "c"),
            algorithms: Sequence[str] = ALGORITHMS, features: Sequence[str] = ("off", "on"),
            repeats: int = 20, quick: bool = False, timeout: float = 3600) -> list[dict]:
    """One row per (backend, workload, algorithm, features[, compilation]): the median
    milliseconds of Keras's step and of kerasopt.keras's, or an ``error``."""
    rows = []
    for backend in backends:
        job = {"workloads": list(workloads), "quick": bool(quick),
               "algorithms": list(algorithms), "features": list(features),
               "repeats": int(repeats)}
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        env.setdefault("JAX_PLATFORMS", "cpu")
        proc = subprocess.run(
            [sys.executable, "-m", "kerasopt.cli.bench_keras", "--worker", json.dumps(job)],
            capture_output=True, text=True, env=env, timeout=timeout)
        found = [json.loads(line[len("ROW"):]) for line in proc.stdout.splitlines()
                 if line.startswith("ROW")]
        if proc.returncode != 0 or not found:
            tail = (proc.stderr or "no output").strip().splitlines()[-1:] or ["no output"]
            found = [{"backend": backend, "error": tail[0][:300]}]
        rows.extend(found)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table; ``speed-up`` = Keras's time / kerasopt.keras's."""
    lines = [
        "| backend | workload | algorithm | features | Keras 3 ms/step | kerasopt.keras "
        "ms/step | speed-up |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['backend']} | | | | error: {row['error']} | | |")
            continue
        lines.append(
            f"| {row['backend']} | {row['workload']} | {row['algorithm']} | {row['features']} "
            f"| {row['keras_ms']:.3f} | {row['kerasopt_ms']:.3f} | "
            f"{row['keras_ms'] / row['kerasopt_ms']:.1f}x |")
    return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(f"Keras 3's optimizer step vs kerasopt.keras's (medians, round robin in one process "
          f"per backend); load average {' '.join(f'{x:.2f}' for x in load)}; features on = "
          f"{', '.join(f'{k}={v}' for k, v in FEATURES['on'].items())}")
    print(format_table(rows))


# --------------------------------------------------------------------------- the worker


def _contenders(backend: str, sizes: list[int], algorithm: str, options: dict):
    """``{label: (step, sync)}`` for Keras's optimizer and kerasopt.keras's, each over its
    own copy of the same variables and gradients."""
    import keras
    import numpy as np

    import kerasopt.keras

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    grads_np = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in sizes]
    out = {}
    for label, module in (("keras", keras.optimizers), ("kerasopt", kerasopt.keras)):
        variables = [keras.Variable(w) for w in weights]
        grads = [keras.ops.convert_to_tensor(g) for g in grads_np]
        optimizer = getattr(module, algorithm)(learning_rate=1e-3, **options)
        optimizer.build(variables)
        if backend == "torch":
            import torch

            def step(optimizer=optimizer, grads=grads, variables=variables):
                with torch.no_grad():
                    optimizer.apply(grads, variables)

            out[label] = (step, lambda: None)
        elif backend == "jax":
            import jax

            apply = jax.jit(_jax_train_step(optimizer), donate_argnums=0)
            state = {"s": ([v.value for v in variables],
                           [v.value for v in optimizer.variables])}

            def step(apply=apply, state=state, grads=grads):
                state["s"] = apply(state["s"], grads)

            out[label] = (step, lambda state=state: jax.block_until_ready(state["s"]))
        else:
            import tensorflow as tf

            for jit in (False, True):
                out[label + (" xla" if jit else "")] = (
                    _tf_step(tf, optimizer, grads, variables, jit), lambda: None)
    return out


def _jax_train_step(optimizer):
    """``(trainable, optimizer_variables), grads -> the same``, as Keras's JAX trainer calls
    ``stateless_apply`` (its state goes in and comes out in one structure, donated, so XLA
    updates the buffers in place; jitting ``stateless_apply`` itself with donated arguments
    would return them in another order, and XLA would copy every array)."""

    def step(state, grads):
        trainable, optimizer_variables = state
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable)
        return trainable, optimizer_variables

    return step


def _tf_step(tf, optimizer, grads, variables, jit):
    """``optimizer.apply(grads, variables)`` as a ``tf.function`` (XLA with ``jit``)."""
    return tf.function(lambda: optimizer.apply(grads, variables), jit_compile=jit)


def _worker(job: dict) -> None:
    import time

    import keras
    import numpy as np

    backend = keras.backend.backend()
    for name in job["workloads"]:
        sizes = workload_sizes(name, job["quick"])
        for algorithm in job["algorithms"]:
            for features in job["features"]:
                contenders = _contenders(backend, sizes, algorithm, FEATURES[features])
                for step, sync in contenders.values():  # warm up: compile, allocate
                    for _ in range(2):
                        step()
                    sync()
                samples = {label: [] for label in contenders}
                for _ in range(job["repeats"]):
                    for label, (step, sync) in contenders.items():
                        start = time.perf_counter()
                        step()
                        sync()
                        samples[label].append(time.perf_counter() - start)
                medians = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}
                for suffix in ("", " xla"):
                    if "keras" + suffix not in medians:
                        continue
                    print("ROW" + json.dumps({
                        "backend": backend + (" (XLA)" if suffix else ""),
                        "workload": describe(name, sizes), "algorithm": algorithm,
                        "features": features, "keras_ms": medians["keras" + suffix],
                        "kerasopt_ms": medians["kerasopt" + suffix],
                    }), flush=True)
                del contenders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kerasopt.cli.bench_keras",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--workloads", default="a,b,c")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--features", default="off,on")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    def split(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    print_table(measure(split(args.backends), split(args.workloads), split(args.algorithms),
                        split(args.features), repeats=args.repeats, quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())

