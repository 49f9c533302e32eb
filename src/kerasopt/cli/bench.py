"""``kerasopt bench``: the optimizer step, timed side by side against torch.optim, Keras 3,
optax and the machine's memory-bandwidth roofline, in one run.

Workloads (float32): (a) one 16M-element tensor, (b) ~200 tensors of mixed sizes totalling
16M, (c) 2,000 tensors of 1,024 elements, and a sparse step (1% of the rows of a 1M x 64
embedding, ``kerasopt.IndexedSlices`` through ``kerasopt.Adamax``).

The in-process contenders are timed round-robin, one step each per round, so slow drifts of
the machine's bandwidth hit them alike; the table gives each one's median over the rounds.
The order is shuffled each round, and before each timed call the bench sleeps 20 ms, so
that the threads another contender left spinning (torch's OpenMP threads spin for
milliseconds after each parallel region) do not run into the next one's time. Keras (torch
and JAX backends) and optax run in subprocesses (``KERAS_BACKEND`` is fixed at import),
right after the in-process rounds of the same workload.

The roofline: streaming kernels with the access pattern of each pass of the fused step
(``kerasopt.kernels.fused.roofline_pass``: the update pass reads w, g, m, v and writes w, m,
v, 28 bytes per float32 parameter, 36 with the EMA average or the accumulator, 44 with both;
the micro-step's, the norm pass's), with trivial arithmetic, on kerasopt's threads and chunks,
timed in the same rounds. A contender's roofline time is the sum of its passes' times;
"of roofline" is that divided by its own time (100% at most, but for noise). A STREAM-like
triad (``a = b + s * c``, 12 bytes per element) is kept as a second reference ("vs triad":
the contender's model bytes at the triad's rate, divided by its time). The cold start (the
first ``kerasopt.torch.Adamax`` step with an empty numba cache) runs in subprocesses.
Only ratios within one run mean much: on a shared machine the bandwidth drifts by up to 2x
between runs.

Needs numba (the fused kernels), torch, and for the subprocess contenders keras, jax and
optax; tqdm and matplotlib for progress and the chart. What is missing is skipped and said.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerasopt._install import fix_command
from kerasopt.cli.common import check_output_directory, positive_int
from kerasopt.cli.workloads import describe, workload_sizes

BYTES_PER_PARAM = 28
BYTES_PER_PARAM_EMA = 36
SETTLE = 0.02
"""Seconds to sleep before each timed call (see the module docstring): libgomp's threads
spin for up to ~300,000 pause instructions (several ms) after each parallel region."""
WORKLOADS = ("a", "b", "c", "sparse", "cold")
ANCHOR_FUSED = "torch Adam fused"
ANCHOR_FOREACH = "torch Adamax foreach"
SPARSE_FUSED = "kerasopt fused_rows_step Adamax 1% rows (incl. dedup)"
DENSE_FUSED = "kerasopt fused (numpy) Adamax dense"
SUB_FUSED = "kerasopt fused (numpy) Adamax"
SUB_FUSED_ADAM = "kerasopt fused (numpy) Adam"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``kerasopt`` command line."""
    parser = subparsers.add_parser(
        "bench",
        help="time the fused Adam/Adamax step against torch.optim, Keras, optax and the "
        "memory-bandwidth roofline; print a table and write a chart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument(
        "--output",
        default="bench-results",
        metavar="DIR",
        help="where to write bench.json, bench.md and bench.png (default: bench-results)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        metavar="N",
        help="timed steps per contender (default: 40, or 3 with --quick)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        metavar="LIST",
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--no-subprocess",
        action="store_true",
        help="skip the contenders that need a subprocess (Keras on torch and JAX, optax)",
    )
    parser.set_defaults(func=run)
    return parser


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    workload: str
    name: str
    ms: float | None
    params: int
    bytes_per_param: int = BYTES_PER_PARAM
    extra_bytes_per_param: float | None = None
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)
    passes: tuple[str, ...] = ()
    """The roofline passes (``ROOFLINE_PASSES``) this contender's traffic is made of."""
    calls: int = 1
    """Optimizer calls per timed call (the passes' times are divided by it too)."""
    roofline_ms: float | None = None

    def gbps(self) -> float | None:
        if not self.ms or not self.bytes_per_param:
            return None
        return self.params * self.bytes_per_param / (self.ms * 1e-3) / 1e9


# --------------------------------------------------------------------------- timing


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
    except ImportError:  # pragma: no cover

        class _Null:
            def update(self, n=1):
                pass

            def close(self):
                pass

        return _Null()


def time_round_robin(contenders: dict[str, Callable[[], None]], repeats: int, desc: str,
                     settle: float = SETTLE):
    """Median milliseconds per call of each contender, timed one call each per round, in a
    new order each round, after ``settle`` seconds of sleep before each call."""
    for fn in contenders.values():  # warm up (compiles, allocator pools)
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    bar = _progress(repeats, desc)
    order = list(contenders.items())
    shuffle = np.random.default_rng(0).permutation
    for _ in range(repeats):
        for k in shuffle(len(order)):  # a new order each round: no one always follows
            name, fn = order[k]         # the same neighbour
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
        bar.update(1)
    bar.close()
    return {name: float(np.median(s)) * 1e3 for name, s in samples.items()}


def extra_memory_numpy(fn: Callable[[], None], params: int) -> float:
    """Peak bytes allocated through NumPy (tracemalloc) during one call, per parameter."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return max(0, peak - base) / params


def extra_memory_rss(fn: Callable[[], None], params: int, calls: int = 3) -> float | None:
    """Peak growth of the resident set while ``fn`` runs (sampled every ~0.2 ms), per
    parameter: catches torch's temporaries, which tracemalloc does not see."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return None
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(calls):
        fn()
    done.set()
    thread.join()
    return max(0, peak[0] - base) / params


# --------------------------------------------------------------------------- roofline


TRIAD = "STREAM-like triad a = b + s*c (second reference)"
ROOFLINE_PASSES = {
    # name: (kind, with accumulators, with EMA averages, model bytes per float32 parameter)
    "update": ("update", False, False, 28),
    "update +EMA": ("update", False, True, 36),
    "update +acc": ("update", True, False, 36),
    "update +acc +EMA": ("update", True, True, 44),
    "norm": ("norm", False, False, 4),
    "norm +acc": ("norm", True, False, 8),
    "micro": ("micro", True, False, 12),
    "micro +EMA": ("micro", True, True, 24),
}
"""The streaming passes the fused step's traffic is made of (``roofline_pass``)."""


def roofline_label(name: str) -> str:
    return f"roofline: {name} pass"


def roofline_contenders(sizes: list[int], names) -> dict[str, tuple[Callable[[], None], int]]:
    """``{label: (call, bytes per parameter)}`` of the streaming passes ``names`` over scratch
    float32 arrays of ``sizes`` (kerasopt's kernels, threads and chunks)."""
    from kerasopt.kernels import fused

    rng = np.random.default_rng(2)
    arrays = {role: [rng.random(s, dtype=np.float32) for s in sizes]
              for role in ("w", "g", "m", "v", "acc", "avg")}
    out = {}
    for name in names:
        kind, acc, ema, nbytes = ROOFLINE_PASSES[name]
        call = fused.roofline_pass(kind, arrays["w"], arrays["g"], arrays["m"], arrays["v"],
                                   accumulators=arrays["acc"] if acc else None,
                                   ema_averages=arrays["avg"] if ema else None)
        out[roofline_label(name)] = (call, nbytes)
    return out


def make_triad(quick: bool) -> tuple[Callable[[], None], int, int]:
    """``(step, elements, bytes per element)`` of ``a = b + s * c`` over float32 arrays far
    larger than the caches, on kerasopt's kernel threads (NumPy's two passes without
    numba)."""
    n = (1 << 20) if quick else 32_000_000
    b = np.random.default_rng(1).random(n, dtype=np.float32)
    c = b.copy()
    a = np.empty_like(b)
    from kerasopt import kernels

    if not kernels.available():
        tmp = np.empty_like(b)

        def step():
            np.multiply(c, np.float32(3.0), out=tmp)
            np.add(b, tmp, out=a)

        return step, n, 20  # two passes, with the temporary

    return kernels.fused.roofline_pass("triad", [a], [b], [c]), n, 12


def measure_roofline(repeats: int, quick: bool) -> float:
    """Bytes per second of the triad, timed alone (the machine line; every workload also
    times the triad in its own rounds and uses that)."""
    step, n, nbytes = make_triad(quick)
    ms = time_round_robin({"triad": step}, max(repeats, 10), "triad")["triad"]
    return n * nbytes / (ms * 1e-3)


# --------------------------------------------------------------------------- contenders


HYPER = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7)


def kerasopt_contenders(sizes, backend):
    """Direct calls of the fused kernel (the optimizer's inner loop), per feature set."""
    from kerasopt import kernels

    rng = np.random.default_rng(0)
    make = (lambda a: a) if backend == "numpy" else _torch_from_numpy
    params = [make(rng.standard_normal(s, dtype=np.float32)) for s in sizes]
    grads = [make(rng.standard_normal(s, dtype=np.float32) * 1e-2) for s in sizes]

    def zeros():
        return [make(np.zeros(s, np.float32)) for s in sizes]

    m, v, acc, avg = zeros(), zeros(), zeros(), zeros()
    lr = np.float32(1e-3)
    step = [0]

    def call(algorithm, **options):
        def fn():
            step[0] += 1
            kernels.fused_step(
                algorithm,
                params,
                grads,
                [m, v],
                learning_rate=lr,
                step=step[0],
                **HYPER,
                **options,
            )

        return fn

    ema = dict(ema_averages=avg, ema_momentum=0.99)
    clip_decay = dict(global_clipnorm=1.0, weight_decay=0.004)
    accum = dict(accumulators=acc, accumulation_steps=2, accumulation_phase="update")
    everything = dict(**clip_decay, **ema, loss_scale_factor=2.0)
    tag = f"kerasopt fused ({backend})"
    # name: (call, model bytes per parameter, roofline passes)
    out = {
        f"{tag} Adam": (call("adam"), BYTES_PER_PARAM, ("update",)),
        f"{tag} Adamax": (call("adamax"), BYTES_PER_PARAM, ("update",)),
    }
    if backend == "numpy":
        out.update(
            {
                # global_clipnorm's norm pass reads the gradients once more: 4 bytes
                f"{tag} Adamax +clip +decay": (call("adamax", **clip_decay), 32,
                                               ("update", "norm")),
                f"{tag} Adamax +EMA": (call("adamax", **ema), BYTES_PER_PARAM_EMA,
                                       ("update +EMA",)),
                f"{tag} Adamax +accum (update step)": (
                    call("adamax", **accum), BYTES_PER_PARAM + 8, ("update +acc",)),
                f"{tag} Adamax +accum (micro-step)": (
                    call("adamax", **dict(accum, accumulation_phase="micro")), 12,
                    ("micro",)),
                # update 44 (w, g, m, v, acc, avg read; w, m, v, acc, avg written) + norm 8
                f"{tag} {ALL_FEATURES}": (
                    call("adamax", **everything, **accum), 52, ("update +acc +EMA", "norm +acc")),
                f"{tag} {ALL_FEATURES_CYCLE}": (
                    _cycle(
                        call("adamax", **everything, **dict(accum, accumulation_phase="micro")),
                        call("adamax", **everything, **accum),
                    ),
                    # micro-step 24 (acc, w, avg), update step 52: per call (24 + 52) / 2
                    38,
                    ("micro +EMA", "update +acc +EMA", "norm +acc"),
                ),
            }
        )
    return out


ALL_FEATURES = "Adamax all features (update step)"
ALL_FEATURES_CYCLE = "Adamax all features, per call of an accumulation cycle"


def _cycle(*calls: Callable[[], None]) -> Callable[[], None]:
    """One accumulation cycle (its micro-steps, then its update step) in one call; its time
    is divided by the cycle's length (``fn.calls``) to give the time per optimizer call."""

    def fn():
        for call in calls:
            call()

    fn.calls = len(calls)  # type: ignore[attr-defined]
    return fn


def _torch_from_numpy(a):
    import torch

    return torch.from_numpy(a)


def reference_contender(sizes):
    """kerasopt's pure reference path (algorithms.adamax_update per tensor, NumPy)."""
    from kerasopt.algorithms import adamax_update

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in sizes]
    m = [np.zeros(s, np.float32) for s in sizes]
    u = [np.zeros(s, np.float32) for s in sizes]
    step = [0]

    def fn():
        step[0] += 1
        for i in range(len(params)):
            w, mi, ui = adamax_update(
                params[i],
                grads[i],
                m[i],
                u[i],
                learning_rate=np.float32(1e-3),
                step=step[0],
                **HYPER,
            )
            params[i][...] = w
            m[i][...] = mi
            u[i][...] = ui

    return fn


def optimizer_api_contender(sizes):
    """``kerasopt.Adamax.apply`` through the public API (whatever path optimizer.py takes)."""
    import kerasopt

    rng = np.random.default_rng(0)
    variables = [kerasopt.Variable(rng.standard_normal(s, dtype=np.float32)) for s in sizes]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in sizes]
    opt = kerasopt.Adamax(learning_rate=1e-3)
    opt.build(variables)
    return lambda: opt.apply(grads, variables)


def torch_optimizer_api_contender(sizes):
    """``kerasopt.torch.Adamax.step`` through the public API (whatever path torch.py takes)."""
    import torch

    import kerasopt.torch as kt

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    opt = kt.Adamax(params, learning_rate=1e-3)
    return opt.step


def torch_contenders(sizes):
    import torch

    out = {}
    for name, cls, kwargs in (
        (ANCHOR_FUSED, torch.optim.Adam, {"fused": True}),
        ("torch Adam foreach", torch.optim.Adam, {"foreach": True}),
        (ANCHOR_FOREACH, torch.optim.Adamax, {"foreach": True}),
    ):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in sizes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        opt = cls(params, lr=1e-3, **kwargs)
        out[name] = opt.step
    return out


# --------------------------------------------------------------------------- subprocesses

_SUBPROCESS = r"""
import json, sys, time, os
import numpy as np
sizes, repeats, which = json.loads(sys.argv[1])
out = {}
rng = np.random.default_rng(0)
ws = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
gs = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in sizes]
def keras_step(name):
    import keras
    vs = [keras.Variable(w) for w in ws]
    grads = [keras.ops.convert_to_tensor(g) for g in gs]
    opt = getattr(keras.optimizers, name)(learning_rate=1e-3)
    opt.build(vs)
    if keras.backend.backend() == "jax":
        import jax
        f = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
        state = {"o": [v.value for v in opt.variables], "t": [v.value for v in vs]}
        def fn():
            state["t"], state["o"] = f(state["o"], grads, state["t"])
        return fn, lambda: jax.block_until_ready(state["t"])
    return (lambda: opt.apply(grads, vs)), (lambda: None)
def apply_alone():
    import jax, optax
    params = [jax.numpy.asarray(w) for w in ws]
    grads = [jax.numpy.asarray(g) for g in gs]
    state = {"p": params}
    step = jax.jit(optax.apply_updates, donate_argnums=(0,))
    def fn():
        state["p"] = step(state["p"], grads)
    return fn, lambda: jax.block_until_ready(state["p"])
def optax_step(make):
    import jax, optax
    tx = make(1e-3)
    params = [jax.numpy.asarray(w) for w in ws]
    grads = [jax.numpy.asarray(g) for g in gs]
    state = {"p": params, "s": tx.init(params)}
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    step = jax.jit(step, donate_argnums=(0, 1))
    def fn():
        state["p"], state["s"] = step(state["p"], state["s"], grads)
    return fn, lambda: jax.block_until_ready(state["p"])
def fused_step(algorithm):
    from kerasopt import kernels
    p = [w.copy() for w in ws]
    m = [np.zeros_like(w) for w in ws]
    v = [np.zeros_like(w) for w in ws]
    n = [0]
    def fn():
        n[0] += 1
        kernels.fused_step(algorithm, p, gs, [m, v], learning_rate=np.float32(1e-3),
                           beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=n[0])
    return fn, lambda: None
contenders = {}
first = {}
for label in which:
    try:
        if label.startswith("optax.apply_updates"):
            contenders[label] = apply_alone()
        elif label.startswith("Keras"):
            contenders[label] = keras_step(label.split()[-1])
        elif label.startswith("optax"):
            import optax
            contenders[label] = optax_step(getattr(optax, label.split(".")[1].split()[0]))
        elif label.startswith("kerasopt.optax"):
            import functools
            import kerasopt.optax as ko
            make = getattr(ko, label.split(".")[2].split()[0])
            if "packed=True" in label:
                make = functools.partial(make, packed=True)
            contenders[label] = optax_step(make)
        else:
            contenders[label] = fused_step("adamax" if "Adamax" in label else "adam")
        start = time.perf_counter()
        contenders[label][0]()
        contenders[label][1]()
        first[label] = time.perf_counter() - start  # tracing and compiling included
        contenders[label][0]()
        contenders[label][1]()
    except Exception as e:
        contenders.pop(label, None)
        out[label] = "error: " + type(e).__name__ + ": " + str(e)[:200]
samples = {label: [] for label in contenders}
order = list(contenders.items())
shuffle = np.random.default_rng(0).permutation
for _ in range(repeats):  # round robin, shuffled, with a pause: as in the main process
    for k in shuffle(len(order)):
        label, (fn, sync) = order[k]
        time.sleep(SETTLE)
        t = time.perf_counter(); fn(); sync(); samples[label].append(time.perf_counter() - t)
for label, ts in samples.items():
    out[label] = {"ms": float(np.median(ts)) * 1e3, "first_call_s": first[label]}
print("RESULT" + json.dumps(out))
"""


OPTAX_PACKED = "kerasopt.optax.adamax packed=True (jit)"
OPTAX_FLOOR = "optax.apply_updates alone (jit)"


def subprocess_rows(label: str, backend: str, labels: list[str], sizes: list[int],
                    repeats: int) -> list[Row]:
    """The rows of one subprocess: each against kerasopt's fused Adamax measured there, the
    optax rows also against optax.adamax, with the first call's time (compilation)."""
    n = sum(sizes)
    results = run_subprocess(backend, labels, sizes, repeats)

    def ms(key):
        value = results.get(key)
        return value["ms"] if isinstance(value, dict) else None

    own = ms(SUB_FUSED + f" [{'torch' if backend == 'torch' else 'JAX'} subprocess]")
    optax_ms = ms("optax.adamax (jit)")
    rows = []
    for key, value in results.items():
        if isinstance(value, str):
            rows.append(Row(label, key, None, n, note=value))
            continue
        note = f"{backend} subprocess"
        if own:
            note += f"; {value['ms'] / own:.2f}x the time of kerasopt fused Adamax there"
        if optax_ms and key.startswith(("kerasopt.optax", "optax.apply_updates")):
            note += f"; {value['ms'] / optax_ms:.2f}x optax.adamax"
        if key.startswith(("kerasopt.optax", "optax.")):
            note += f"; first call (compile) {value['first_call_s']:.1f} s"
        rows.append(Row(label, key, value["ms"], n, note=note))
    return rows


def run_subprocess(backend: str, labels: list[str], sizes, repeats) -> dict[str, Any]:
    env = dict(os.environ, KERAS_BACKEND=backend, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(
        [sys.executable, "-c", f"SETTLE = {SETTLE!r}\n" + _SUBPROCESS,
         json.dumps([sizes, repeats, labels])],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
    return {label: f"error: {tail[0][:200]}" for label in labels}


# --------------------------------------------------------------------------- CUDA


CUDA_TRIAD = "torch triad a = b + s*c on the GPU (roofline)"


def cuda_rows(label: str, sizes: list[int], repeats: int, device: str = "cuda",
              triad_elements: int = 64_000_000) -> list[Row]:
    """The workload on the GPU (when torch sees one): kerasopt.torch's step (the Triton
    kernels) against torch.optim's fused and foreach steps and a device triad, round-robin.
    Each sample times ``CUDA_CALLS`` calls between two synchronizations. (``device`` is
    for the tests, which run this on the CPU.)"""
    import torch

    import kerasopt.torch as kt

    def optimizer(cls, **kwargs):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in sizes]
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(device)
        return cls(params, **kwargs).step

    b = torch.rand(triad_elements, device=device)
    c, a = b.clone(), torch.empty_like(b)
    contenders = {
        "kerasopt.torch.Adam.step (Triton)": optimizer(kt.Adam, learning_rate=1e-3),
        "kerasopt.torch.Adamax.step (Triton)": optimizer(kt.Adamax, learning_rate=1e-3),
        ANCHOR_FUSED: optimizer(torch.optim.Adam, lr=1e-3, fused=True),
        "torch Adam foreach": optimizer(torch.optim.Adam, lr=1e-3, foreach=True),
        ANCHOR_FOREACH: optimizer(torch.optim.Adamax, lr=1e-3, foreach=True),
        CUDA_TRIAD: lambda: torch.add(b, c, alpha=3.0, out=a),
    }

    def batched(fn):
        def run():
            for _ in range(CUDA_CALLS):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    times = time_round_robin({k: batched(fn) for k, fn in contenders.items()}, repeats,
                             f"{label} ({device})")
    total = sum(sizes)
    out = []
    for name, ms in times.items():
        ms /= CUDA_CALLS
        if name == CUDA_TRIAD:
            out.append(Row(label + " on CUDA", name, ms, triad_elements, 12, note="roofline"))
        else:
            out.append(Row(label + " on CUDA", name, ms, total))
    return out


CUDA_CALLS = 10


# --------------------------------------------------------------------------- sparse


def sparse_rows(quick: bool, repeats: int) -> list[Row]:
    import kerasopt
    from kerasopt import kernels
    from kerasopt.sparse import canonical

    rows_, dim = (2000, 16) if quick else (1_000_000, 64)
    touched = max(1, rows_ // 100)
    rng = np.random.default_rng(0)
    table = kerasopt.Variable(rng.standard_normal((rows_, dim), dtype=np.float32))
    sparse_opt = kerasopt.Adamax(learning_rate=1e-3)
    sparse_opt.build([table])
    indices = rng.integers(0, rows_, touched)
    values = rng.standard_normal((touched, dim), dtype=np.float32) * 1e-2
    slices = kerasopt.IndexedSlices(values, indices, (rows_, dim))

    w = rng.standard_normal((rows_, dim), dtype=np.float32)
    g = rng.standard_normal((rows_, dim), dtype=np.float32) * 1e-2
    m, u = np.zeros_like(w), np.zeros_like(w)
    state = [0]

    def dense():
        state[0] += 1
        kernels.fused_step(
            "adamax", [w], [g], [[m], [u]], learning_rate=np.float32(1e-3), step=state[0], **HYPER
        )

    contenders = {
        "kerasopt.Adamax IndexedSlices 1% rows": lambda: sparse_opt.apply([slices], [table]),
    }
    if kernels.available():
        w2 = rng.standard_normal((rows_, dim), dtype=np.float32)
        m2, u2 = np.zeros_like(w2), np.zeros_like(w2)

        def fused_rows():
            state[0] += 1
            rows = canonical(slices)  # deduplicate and sum, as the optimizer does
            kernels.fused_rows_step(
                "adamax", w2, rows.indices, rows.values, [m2, u2],
                learning_rate=np.float32(1e-3), step=state[0], **HYPER,
            )

        contenders[SPARSE_FUSED] = fused_rows
        contenders[DENSE_FUSED] = dense
    times = time_round_robin(contenders, repeats, "sparse")
    label = "sparse" if quick else "sparse 1M x 64"
    out = []
    for name, ms in times.items():
        params = rows_ * dim if name == DENSE_FUSED else touched * dim
        row = Row(label, name, ms, params)
        if DENSE_FUSED in times and name != DENSE_FUSED:
            row.note = f"{ms / times[DENSE_FUSED]:.3f}x the dense fused step (goal <= 0.05)"
        out.append(row)
    return out


# --------------------------------------------------------------------------- cold start

_COLD = r"""
import json, sys, time
kind = sys.argv[1]
if kind == "torch":
    import torch
    t1 = time.perf_counter()
    import kerasopt.torch as kt
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1_000_000, generator=gen))
    p.grad = torch.randn(1_000_000, generator=gen) * 1e-2
    step = kt.Adamax([p], learning_rate=1e-3).step
else:
    import numpy as np
    t1 = time.perf_counter()
    import kerasopt
    t2 = time.perf_counter()
    variables = [kerasopt.Variable(np.ones(1000, np.float32))]
    grads = [np.full(1000, 0.01, np.float32)]
    opt = kerasopt.Adamax(learning_rate=1e-3)
    def step():
        opt.apply(grads, variables)
c0, t3 = time.process_time(), time.perf_counter()
step()
t4, c1 = time.perf_counter(), time.process_time()
warm = []
for _ in range(21):
    s = time.perf_counter(); step(); warm.append(time.perf_counter() - s)
print("RESULT" + json.dumps({"import_s": t2 - t1, "first_s": t4 - t3, "first_cpu_s": c1 - c0,
                             "warm_ms": sorted(warm)[10] * 1e3}))
"""

COLD_STARTS = {
    "torch": "kerasopt.torch.Adamax first step, 1M params",
    "numpy": "kerasopt.Adamax.apply first call, 1K params",
}
COLD_GOAL_S = 1.5


def cold_start_rows(runs: int = 3) -> list[Row]:
    """The first step in a fresh process with an empty numba cache (``NUMBA_CACHE_DIR`` a new
    directory: what a fresh install meets), then in another process with the cache that
    the first one filled; ``runs`` times each, medians and ranges."""
    import shutil
    import tempfile

    rows = []
    for kind, name in COLD_STARTS.items():
        if kind == "torch" and importlib.util.find_spec("torch") is None:
            continue
        results: dict[str, list[dict]] = {"empty": [], "filled": []}
        notices = 0
        for _ in range(runs):
            cache = tempfile.mkdtemp(prefix="kerasopt-bench-numba-")
            try:
                env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                for state in ("empty", "filled"):
                    proc = subprocess.run([sys.executable, "-c", _COLD, kind],
                                          capture_output=True, text=True, env=env, timeout=900)
                    found = [json.loads(line[len("RESULT"):]) for line in
                             proc.stdout.splitlines() if line.startswith("RESULT")]
                    if not found:
                        tail = (proc.stderr or "no output").strip().splitlines()[-1:]
                        return rows + [Row("cold start", name, None, 0, 0,
                                           note=f"error: {tail[0][:200] if tail else ''}")]
                    results[state].append(found[0])
                    notices += state == "empty" and "kerasopt: compiling" in proc.stderr
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        params = 1_000_000 if kind == "torch" else 1000
        for state, label in (("empty", "empty numba cache"), ("filled", "numba cache filled")):
            first = sorted(r["first_s"] for r in results[state])
            cpu = float(np.median([r["first_cpu_s"] for r in results[state]]))
            warm = float(np.median([r["warm_ms"] for r in results[state]]))
            imported = float(np.median([r["import_s"] for r in results[state]]))
            note = (f"median of {runs} processes, {first[0]:.2f}-{first[-1]:.2f} s, CPU "
                    f"{cpu:.2f} s; warm step {warm:.2f} ms; import {imported:.2f} s")
            if state == "empty":
                note += f"; compile notice shown {notices}/{runs}"
                if kind == "torch":
                    note += f" (goal <= {COLD_GOAL_S} s)"
            row = Row("cold start", f"{name} ({label})", float(np.median(first)) * 1e3,
                      params, 0, note=note)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- run


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    for module in ("torch", "jax", "optax", "keras", "numba", "triton"):
        try:
            info[module] = metadata.version(module)
        except metadata.PackageNotFoundError:
            pass
    if "torch" in info and _has_cuda():
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    from kerasopt import kernels

    if kernels.available():
        info["numba_threads"] = kernels.thread_count()
    return info


def run(args: argparse.Namespace) -> int:
    quick = bool(args.quick)
    repeats = args.repeats or (3 if quick else 40)
    selected = [w.strip() for w in str(args.workloads).split(",") if w.strip()]
    unknown = [w for w in selected if w not in WORKLOADS]
    if unknown:
        print(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    output = Path(args.output)
    problem = check_output_directory(output)
    if problem:  # before any measurement: the results must have somewhere to go
        print(f"kerasopt bench: --output {output}: {problem}; choose another directory.",
              file=sys.stderr)
        return 2
    have_torch = importlib.util.find_spec("torch") is not None
    from kerasopt import kernels

    if not kernels.available():
        print(
            "note: numba is missing, so the fused kernels are not timed (install it with: "
            f"{fix_command('fast')})",
            file=sys.stderr,
        )

    info = machine()
    bandwidth = measure_roofline(repeats, quick)
    info["roofline_GBps"] = bandwidth / 1e9
    triad = make_triad(quick)
    bandwidths: dict[str, float] = {}
    rows: list[Row] = []
    for name in [w for w in selected if w not in ("sparse", "cold")]:
        sizes = workload_sizes(name, quick)
        label = describe(name, sizes)
        workload_rows, bandwidths[label] = measure_workload(label, sizes, repeats, quick,
                                                            have_torch, triad)
        rows.extend(workload_rows)
        if have_torch and not quick and _has_cuda():
            cuda = cuda_rows(label, sizes, repeats)
            rows.extend(cuda)
            triad = next(r for r in cuda if r.name == CUDA_TRIAD)
            bandwidths[triad.workload] = triad.gbps() * 1e9
        if not args.no_subprocess:
            sub_repeats = repeats
            jobs = [("torch", ["Keras 3 (torch) Adamax", SUB_FUSED + " [torch subprocess]"])]
            if importlib.util.find_spec("jax") is not None:
                jobs.append(
                    (
                        "jax",
                        [
                            "Keras 3 (JAX, jit) Adamax",
                            "optax.adam (jit)",
                            "optax.adamax (jit)",
                            "kerasopt.optax.adamax (jit)",
                            OPTAX_PACKED,
                            OPTAX_FLOOR,
                            SUB_FUSED_ADAM + " [JAX subprocess]",
                            SUB_FUSED + " [JAX subprocess]",
                        ],
                    )
                )
            for backend, labels in jobs:
                rows.extend(subprocess_rows(label, backend, labels, sizes, sub_repeats))
    if "sparse" in selected:
        rows.extend(sparse_rows(quick, repeats))
    if "cold" in selected and kernels.available() and not args.no_subprocess:
        rows.extend(cold_start_rows(1 if quick else 3))

    keras_rows, keras_table = [], ""
    workloads = [w for w in selected if w in ("a", "b", "c")]
    if workloads and not args.no_subprocess:
        keras_rows, keras_table = keras_optimizer_rows(workloads, repeats, quick)
    _add_ratios(rows)
    table = format_table(rows, bandwidths, bandwidth)
    if keras_table:
        table += "\n\n" + keras_table
    print(_machine_line(info))
    print(table)
    print()
    print(LEGEND)
    (output / "bench.md").write_text(
        _machine_line(info) + "\n\n" + table + "\n\n" + LEGEND + "\n")
    (output / "bench.json").write_text(
        json.dumps(
            {
                "machine": info,
                "triad_GBps": {k: v / 1e9 for k, v in bandwidths.items()},
                "rows": [r.__dict__ | {"GBps": r.gbps()} for r in rows],
                "keras_rows": keras_rows,
            },
            indent=1,
        )
    )
    chart = write_chart(rows, output / "bench.png")
    print(
        f"wrote {output / 'bench.md'}, {output / 'bench.json'}"
        + (f", {chart}" if chart else " (no chart: matplotlib missing)")
    )
    return 0


def measure_workload(label: str, sizes: list[int], repeats: int, quick: bool,
                     have_torch: bool, triad: tuple[Callable[[], None], int, int]
                     ) -> tuple[list[Row], float]:
    """The in-process contenders of one workload, the roofline passes they need and the
    triad, timed in the same rounds: ``(rows, the triad's bytes per second)``."""
    from kerasopt import kernels

    n = sum(sizes)
    triad_step, triad_n, triad_bytes = triad
    # name: (call, model bytes per parameter, roofline passes)
    contenders: dict[str, tuple[Callable[[], None], int, tuple[str, ...]]] = {}
    if kernels.available():
        contenders.update(kerasopt_contenders(sizes, "numpy"))
        if have_torch:
            contenders.update(kerasopt_contenders(sizes, "torch"))
    plain = ("update",)
    contenders["kerasopt reference (pure NumPy functions) Adamax"] = (
        reference_contender(sizes), BYTES_PER_PARAM, plain)
    contenders["kerasopt.Adamax.apply (optimizer API)"] = (
        optimizer_api_contender(sizes), BYTES_PER_PARAM, plain)
    if have_torch:
        contenders["kerasopt.torch.Adamax.step (optimizer API)"] = (
            torch_optimizer_api_contender(sizes), BYTES_PER_PARAM, plain)
        for key, fn in torch_contenders(sizes).items():
            contenders[key] = (fn, BYTES_PER_PARAM, plain)
    passes: dict[str, tuple[Callable[[], None], int]] = {}
    if kernels.available():
        needed = dict.fromkeys(p for _, _, ps in contenders.values() for p in ps)
        passes = roofline_contenders(sizes, needed)
    timed = {k: fn for k, (fn, _, _) in contenders.items()}
    timed.update({k: fn for k, (fn, _) in passes.items()})
    timed[TRIAD] = triad_step
    times = time_round_robin(timed, repeats, label)
    rows = []
    for key, (fn, nbytes, row_passes) in contenders.items():
        calls = getattr(fn, "calls", 1)
        row = Row(label, key, times[key] / calls, n, nbytes, passes=row_passes, calls=calls)
        if passes:
            row.roofline_ms = sum(times[roofline_label(p)] for p in row_passes) / calls
        if key.startswith("kerasopt") and "torch" not in key:
            row.extra_bytes_per_param = extra_memory_numpy(fn, n)
        else:
            row.extra_bytes_per_param = extra_memory_rss(fn, n)
        rows.append(row)
    for key, (_, nbytes) in passes.items():
        rows.append(Row(label, key, times[key], n, nbytes, note="roofline",
                        roofline_ms=times[key]))
    rows.append(Row(label, TRIAD, times[TRIAD], triad_n, triad_bytes, note="second reference"))
    return rows, triad_n * triad_bytes / (times[TRIAD] * 1e-3)


def keras_optimizer_rows(workloads: list[str], repeats: int, quick: bool
                         ) -> tuple[list[dict], str]:
    """Keras 3's optimizer step against ``kerasopt.keras``'s per Keras backend
    (:mod:`kerasopt.cli.bench_keras`, when this install has it): its rows and table."""
    if importlib.util.find_spec("kerasopt.cli.bench_keras") is None:
        return [], ""
    from kerasopt.cli import bench_keras

    rows = bench_keras.measure(workloads=workloads, repeats=repeats, quick=quick)
    return rows, ("Keras 3's optimizer step vs kerasopt.keras's (one subprocess per backend):"
                  "\n\n" + bench_keras.format_table(rows))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _add_ratios(rows: list[Row]) -> None:
    by_workload: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_workload.setdefault(row.workload, {})[row.name] = row
    for workload_rows in by_workload.values():
        for anchor in (ANCHOR_FUSED, ANCHOR_FOREACH):
            base = workload_rows.get(anchor)
            if base is None or not base.ms:
                continue
            for row in workload_rows.values():
                if row.ms:
                    row.ratios[anchor] = row.ms / base.ms


def _machine_line(info: dict[str, Any]) -> str:
    keys = ("cpu", "cores", "numba_threads", "gpu", "numpy", "numba", "triton", "torch", "jax",
            "optax", "keras")
    parts = [f"{k}={info[k]}" for k in keys if k in info]
    load = info.get("load_average")
    if load:
        parts.append("load=" + "/".join(f"{x:.1f}" for x in load))
    parts.append(f"triad alone={info['roofline_GBps']:.1f} GB/s")
    return "machine: " + ", ".join(parts)


LEGEND = """\
Columns: ms/step is the median time of one optimizer step (lower is faster); GB/s the model
traffic (28 bytes per parameter, 36 with EMA) moved per second; of roofline = the time of
streaming passes with the row's own access pattern (same threads, same rounds) / the row's
time (higher is better; at most ~100%); vs triad = the time that traffic takes at the STREAM
triad's bandwidth measured in the same rounds / the row's time (a second reference). "vs
torch Adam fused" and "vs torch Adamax foreach" = this row's time / that anchor's time in
the same workload: below 1.00 the row is faster than the anchor (0.50 = twice as fast),
above 1.00 slower. extra B/param: the peak of the temporary memory one step allocates, per
parameter (NumPy's allocations for kerasopt's NumPy rows, the growth of the process's
resident memory for the others)."""


def format_table(rows: list[Row], bandwidths: dict[str, float], bandwidth: float) -> str:
    """The markdown table. "of roofline": the time of the contender's streaming passes
    (measured in the same rounds), divided by its time; "vs triad": the time its model
    traffic would take at the triad's bandwidth measured in the same workload's rounds,
    divided by its time."""
    header = (
        "| workload | implementation | ms/step | GB/s | of roofline | vs triad "
        "| vs torch Adam fused (time ratio) | vs torch Adamax foreach (time ratio) "
        "| extra B/param | note |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        gbps = r.gbps()
        bw = bandwidths.get(r.workload, bandwidth)
        roof = (r.params * r.bytes_per_param / bw) * 1e3 if r.ms else None

        def fmt(x, spec):
            return format(x, spec) if x is not None else "-"

        lines.append(
            f"| {r.workload} | {r.name} | {fmt(r.ms, '.2f')} | {fmt(gbps, '.1f')} | "
            f"{fmt(r.roofline_ms / r.ms if r.roofline_ms and r.ms else None, '.0%')} | "
            f"{fmt(roof / r.ms if roof else None, '.0%')} | "
            f"{fmt(r.ratios.get(ANCHOR_FUSED), '.2f')} | "
            f"{fmt(r.ratios.get(ANCHOR_FOREACH), '.2f')} | "
            f"{fmt(r.extra_bytes_per_param, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


LABEL_WIDTH = 46  # characters per line of a bar's label; longer names wrap


def chart_figure(rows: list[Row]) -> Any:
    """The chart as a matplotlib ``Figure`` (Agg canvas, no pyplot): one panel per workload,
    a bar per timed row; long names wrap onto several lines and the constrained layout
    makes room for every label."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = list(dict.fromkeys(r.workload for r in rows))
    panels = [[r for r in rows if r.workload == w and r.ms] for w in workloads]
    heights = [0.9 + 0.3 * max(1, len(items)) for items in panels]
    figure = Figure(figsize=(12, 0.5 + sum(heights)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(workloads), 1, squeeze=False, height_ratios=heights)
    for ax, workload, items in zip(axes[:, 0], workloads, panels):
        names = [r.name for r in items]
        colors = ["tab:blue" if n.startswith("kerasopt fused") else "tab:gray" for n in names]
        ax.barh(range(len(items)), [r.ms for r in items], color=colors)
        ax.set_yticks(range(len(items)), [textwrap.fill(n, LABEL_WIDTH) for n in names],
                      fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per step (median, log scale; shorter is faster)")
        ax.set_title(workload, fontsize=9)
    return figure


def write_chart(rows: list[Row], path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover
        return None
    chart_figure(rows).savefig(path, dpi=110)
    return path
