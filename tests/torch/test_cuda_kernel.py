"""The Triton kernels (kerasopt.kernels.cuda) agree with the numba kernels and the reference.

Every feature of ``fused_step`` (plain, amsgrad, clipvalue, clipnorm, global_clipnorm,
masked weight decay, EMA with and without overwrite, accumulation micro and update steps,
loss_scale_factor, all at once, NaN / inf gradients, unaligned tensors, hundreds of tiny
tensors) runs for Adam and Adamax in float32 and float64, over several steps, on tensors
whose sizes are and are not multiples of the kernel's block, and is compared after every
step with

* ``numba``: :func:`kerasopt.kernels.fused.fused_step` on CPU copies (itself checked bit for
  bit against the NumPy reference by ``tests/test_kernels.py``), with the same scalars
  (both compute them on 0-d CPU torch tensors). Bit-identical (NaN == NaN), except under
  clipnorm / global_clipnorm: both sum the squares in float64, in different orders.
* ``reference``: the pure functions of :mod:`kerasopt.algorithms` and
  :mod:`kerasopt.pipeline` on CPU torch copies, within ``MAX_ULP`` ulps of each array's
  scale (torch's own CPU ``sqrt`` is not always correctly rounded, as in test_kernels.py).

Observed (Triton 3.9.0, interpreter): bit-identical to numba in every case, clipnorm and
global_clipnorm included (the float64 sums round to the same norms here); from the torch
reference under 1 ulp of an array's scale (0.79) (elementwise up to 2**15 ulps of an element
near zero, where a float32 clipnorm's norm, summed in float32 by the reference, differs).

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors. The variable decides how Triton builds the kernels when their module is imported,
and a pytest(-xdist) worker runs many test files in one process, so it must not be set
here: every run happens in a fresh subprocess, this file run as a script (``python
test_cuda_kernel.py RESULTS.json [--device cuda]``), which runs every case and writes the
largest disagreement per case; the tests read that. A further subprocess compiles the
kernels for an sm_90 GPU without one (Triton ships ``ptxas``) and checks the PTX: no fused
multiply-add, IEEE division and square root, no flush-to-zero. The ``cuda`` tests run the
cases on a real GPU, with larger tensors, and are skipped where there is none.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (pip install triton)", allow_module_level=True)
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from fused_reference import reference_step  # noqa: E402  (the shared kernel reference)

MAX_ULP = 4
"""Bound on |triton - reference| in ulps of the array's scale (max(1, max |reference|))."""

SIZES = (7, 1, 1500, 64, 2048)  # the block is 1024 elements: tails, full blocks, tiny
CUDA_SIZES = (7, 1, 1500, 64, 2048, 100_003, 1 << 20)


def _cases():
    """name -> (algorithm, dtype name, options); options as for ``run_case``."""
    features = {
        "plain": {},
        "amsgrad": {"amsgrad": True},
        "clipvalue": {"clipvalue": 0.5},
        "clipnorm": {"clipnorm": 1.0},
        "global_clipnorm": {"global_clipnorm": 2.0},
        "weight_decay_mask": {"weight_decay": 0.004, "decay_every": 2},
        "ema": {"use_ema": True},
        "ema_overwrite": {"use_ema": True, "ema_overwrite_frequency": 2},
        "accumulation": {"accumulation_steps": 2, "steps": 4},
        "accumulation_ema_overwrite": {"accumulation_steps": 3, "steps": 6, "use_ema": True,
                                       "ema_overwrite_frequency": 1},
        "loss_scale": {"loss_scale_factor": 128.0, "grad_scale": 128.0},
        "loss_scale_accumulation_clipnorm": {"loss_scale_factor": 64.0, "grad_scale": 64.0,
                                             "accumulation_steps": 2, "steps": 4,
                                             "clipnorm": 0.5},
        "everything_clipnorm": {"amsgrad": True, "loss_scale_factor": 32.0, "grad_scale": 32.0,
                                "accumulation_steps": 2, "steps": 6, "clipnorm": 1.0,
                                "weight_decay": 0.01, "decay_every": 2, "use_ema": True,
                                "ema_overwrite_frequency": 2},
        "everything_global_clipnorm": {"amsgrad": True, "loss_scale_factor": 8.0,
                                       "grad_scale": 8.0, "accumulation_steps": 3,
                                       "steps": 6, "global_clipnorm": 1.0,
                                       "weight_decay": 0.01, "decay_every": 3,
                                       "use_ema": True, "ema_overwrite_frequency": 1},
        "everything_clipvalue": {"amsgrad": True, "loss_scale_factor": 4.0,
                                 "grad_scale": 4.0, "accumulation_steps": 2, "steps": 4,
                                 "clipvalue": 0.3, "weight_decay": 0.01, "use_ema": True},
        "nan_inf": {"amsgrad": True, "clipvalue": 0.5, "nonfinite": True},
        "nan_inf_clipnorm": {"clipnorm": 1.0, "nonfinite": True},
        "unaligned": {"unaligned": True, "weight_decay": 0.004, "use_ema": True},
        "many_small": {"sizes": tuple(i % 17 for i in range(120)), "global_clipnorm": 1.0,
                       "weight_decay": 0.004, "decay_every": 2},
        "many_small_clipnorm": {"sizes": tuple(1 + i % 13 for i in range(80)),
                                "clipnorm": 0.5, "use_ema": True},
    }
    cases = {}
    for algorithm in ("adam", "adamax"):
        for dtype in ("float32", "float64"):
            for name, options in features.items():
                if algorithm == "adamax" and options.get("amsgrad"):
                    options = {k: v for k, v in options.items() if k != "amsgrad"}
                cases[f"{algorithm}-{dtype}-{name}"] = (algorithm, dtype, options)
    return cases


CASES = _cases()
NORM_FEATURES = ("clipnorm", "global_clipnorm")


# ------------------------------------------------------------------------------ comparison


def compare(x: np.ndarray, y: np.ndarray) -> dict:
    """``exact`` (bits equal, any NaN equal to any NaN), ``ulps`` (largest distance in
    units in the last place, elementwise) and ``scaled`` (largest |x - y| in ulps of the
    array's scale max(1, max |y|))."""
    assert x.dtype == y.dtype and x.shape == y.shape
    both_nan = np.isnan(x) & np.isnan(y)
    ints = np.int32 if x.dtype == np.float32 else np.int64
    bits_x, bits_y = x.view(ints), y.view(ints)
    exact = bool(np.all((bits_x == bits_y) | both_nan))
    if exact:
        return {"exact": True, "ulps": 0.0, "scaled": 0.0}
    same = (x == y) | both_nan
    if np.any(np.isnan(x) != np.isnan(y)) or np.any(~same & ~(np.isfinite(x) &
                                                               np.isfinite(y))):
        return {"exact": False, "ulps": math.inf, "scaled": math.inf}
    # Distance in ulps: the floats' bit patterns as integers ordered like the floats.
    top = np.array(np.iinfo(ints).max, ints)
    ox = np.where(bits_x < 0, -(bits_x & top), bits_x).astype(np.int64)
    oy = np.where(bits_y < 0, -(bits_y & top), bits_y).astype(np.int64)
    same_sign = (ox < 0) == (oy < 0)
    ulps = np.where(same_sign, np.abs(np.where(same_sign, ox - oy, 0)).astype(np.float64),
                    np.abs(ox).astype(np.float64) + np.abs(oy).astype(np.float64))
    ulps = np.where(same, 0.0, ulps)
    finite = np.abs(y[np.isfinite(y)])
    scale = max(1.0, float(finite.max(initial=0.0)))
    diff = np.where(same, 0.0, np.abs(x.astype(np.float64) - y.astype(np.float64)))
    return {
        "exact": False,
        "ulps": float(ulps.max()),
        "scaled": float(diff.max() / (np.finfo(x.dtype).eps * scale)),
    }


def _merge(total: dict, new: dict) -> None:
    total["exact"] = total.get("exact", True) and new["exact"]
    for key in ("ulps", "scaled"):
        total[key] = max(total.get(key, 0.0), new[key])


# ---------------------------------------------------------------------------- the worker


def run_case(algorithm, dtype, options, device, sizes):
    """Run one case through Triton (on ``device``), numba and the reference; returns the
    largest disagreement with each over all steps and arrays."""
    from kerasopt import kernels, pipeline
    from kerasopt.kernels import cuda

    np_dtype = np.dtype(dtype)
    sizes = options.get("sizes", sizes)
    steps = options.get("steps", 3)
    amsgrad = options.get("amsgrad", False)
    n_acc = options.get("accumulation_steps")
    use_ema = options.get("use_ema", False)
    overwrite_every = options.get("ema_overwrite_frequency")
    rng = np.random.default_rng(len(sizes) * 7919 + steps)

    params = [rng.standard_normal(s).astype(np_dtype) for s in sizes]
    n_slots = 3 if amsgrad else 2

    def state(where, unaligned=False):
        def tensor(a):
            if not unaligned:
                return torch.tensor(a, device=where)
            # A contiguous view one element into a buffer: not 16-byte aligned.
            buffer = torch.zeros(a.size + 1, dtype=getattr(torch, dtype), device=where)
            view = buffer[1:]
            view.copy_(torch.from_numpy(a))
            return view

        return {
            "params": [tensor(p) for p in params],
            "slots": [[tensor(np.zeros_like(p)) for p in params] for _ in range(n_slots)],
            "accumulators": [tensor(np.zeros_like(p)) for p in params] if n_acc else None,
            "ema_averages": [tensor(p) for p in params] if use_ema else None,
        }

    states = {"triton": state(device, options.get("unaligned", False)),
              "reference": state("cpu")}
    if kernels.available():
        states["numba"] = state("cpu")
    mask = None
    if "decay_every" in options:
        mask = [i % options["decay_every"] == 0 for i in range(len(sizes))]
    common = dict(learning_rate=np.float32(0.01), beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                  weight_decay=options.get("weight_decay"), weight_decay_mask=mask,
                  clipnorm=options.get("clipnorm"),
                  global_clipnorm=options.get("global_clipnorm"),
                  clipvalue=options.get("clipvalue"),
                  loss_scale_factor=options.get("loss_scale_factor"),
                  accumulation_steps=n_acc)
    results = {name: {} for name in states if name != "triton"}
    for raw in range(steps):
        grads = [(rng.standard_normal(s) * options.get("grad_scale", 1.0)).astype(np_dtype)
                 for s in sizes]
        if options.get("nonfinite"):
            for g in grads:
                if g.size > 3:
                    g[rng.integers(0, g.size, 3)] = [np.nan, np.inf, -np.inf]
        iterations = raw // n_acc if n_acc else raw
        kwargs = dict(common, step=iterations + 1)
        if n_acc:
            kwargs["accumulation_phase"] = "update" if (raw + 1) % n_acc == 0 else "micro"
        if use_ema:
            kwargs["ema_momentum"] = pipeline.ema_momentum_at(iterations, 0.99)
            kwargs["ema_overwrite"] = bool(
                overwrite_every and (iterations + 1) % overwrite_every == 0
            )
        for name, s in states.items():
            step = {"triton": cuda.fused_step, "numba": kernels.fused_step,
                    "reference": reference_step}[name]
            where = device if name == "triton" else "cpu"
            step(algorithm, s["params"], [torch.tensor(g, device=where) for g in grads],
                 s["slots"], accumulators=s["accumulators"], ema_averages=s["ema_averages"],
                 **kwargs)
        for name, total in results.items():
            for x, y in zip(_arrays(states["triton"]), _arrays(states[name])):
                _merge(total, compare(x, y))
    return results


def _arrays(state):
    out = list(state["params"]) + [t for s in state["slots"] for t in s]
    for key in ("accumulators", "ema_averages"):
        out += state[key] or []
    return [t.detach().cpu().numpy() for t in out]


def _worker(out_path: str, device: str) -> None:
    from kerasopt.kernels import cuda

    sizes = CUDA_SIZES if device == "cuda" else SIZES
    results = {"available": cuda.available(), "cases": {}, "not_fusable": {}}
    for name, (algorithm, dtype, options) in CASES.items():
        try:
            results["cases"][name] = run_case(algorithm, dtype, options, device, sizes)
        except Exception:  # report, do not stop the other cases
            results["cases"][name] = {"error": traceback.format_exc()}
    results["not_fusable"] = _check_not_fusable(device)
    try:
        results["table_entry"] = _check_table_entry(device)
    except Exception:
        results["table_entry"] = traceback.format_exc()
    Path(out_path).write_text(json.dumps(results, indent=1))


def _check_not_fusable(device):
    """Inputs that do not fit raise NotFusable before anything is modified."""
    from kerasopt.kernels import cuda
    from kerasopt.kernels.fused import NotFusable

    def tensors(dtype=torch.float32, size=5, where=device):
        return [torch.ones(size, dtype=dtype, device=where)]

    w = tensors()
    slots = [tensors(), tensors()]
    bad = {
        "float16": dict(grads=tensors(torch.float16)),
        "mixed dtypes": dict(grads=tensors(torch.float64)),
        "size mismatch": dict(grads=tensors(size=6)),
        "not contiguous": dict(grads=[torch.ones(10, device=device)[::2]]),
        "numpy gradient": dict(grads=[np.ones(5, np.float32)]),
        "numpy weights": dict(params=[np.ones(5, np.float32)], grads=[np.ones(5, np.float32)]),
        "wrong device": dict(grads=tensors(where="meta")),
        "float64 slot": dict(slots=[tensors(), tensors(torch.float64)]),
        "clipnorm and float16 accumulator": dict(
            clipnorm=1.0, accumulators=tensors(torch.float16), accumulation_phase="update",
            accumulation_steps=2),
    }
    outcome = {}
    for name, change in bad.items():
        kwargs = dict(params=w, grads=tensors(), slots=slots, learning_rate=0.1, beta_1=0.9,
                      beta_2=0.999, epsilon=1e-7, step=1)
        kwargs.update(change)
        before = [t.clone() for t in [*w, *slots[0], *slots[1]]]
        try:
            cuda.fused_step("adam", **kwargs)
            outcome[name] = "no error"
        except NotFusable:
            after = [*w, *slots[0], *slots[1]]
            same = all(torch.equal(a, b) for a, b in zip(before, after))
            outcome[name] = "NotFusable" if same else "NotFusable after modifying"
        except Exception as error:
            outcome[name] = f"{type(error).__name__}: {error}"
    return outcome


def _check_table_entry(device):
    """``fused_step_table`` on a table of the tensors' addresses gives ``fused_step``'s
    results bit for bit (Adam with amsgrad, accumulation update, global_clipnorm, EMA)."""
    from kerasopt.kernels import cuda, layout

    rng = np.random.default_rng(5)
    sizes = (3, 1500, 1, 2048)

    def tensors(scale=1.0, power=1):
        return [torch.tensor((rng.standard_normal(s) * scale) ** power, device=device)
                for s in sizes]

    params, grads = tensors(), tensors()
    slots = [tensors(0.1), tensors(0.1, 2), tensors(0.1, 2)]
    accumulators, averages = tensors(), tensors()
    copies = [[t.clone() for t in group]
              for group in (params, *slots, accumulators, averages)]
    options = dict(learning_rate=np.float32(0.01), beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                   step=3, weight_decay=None, weight_decay_mask=None, clipnorm=None,
                   global_clipnorm=1.5, clipvalue=None, loss_scale_factor=2.0,
                   accumulation_steps=2, ema_momentum=0.9, ema_overwrite=False)
    cuda.fused_step("adam", params, grads, slots, accumulators=accumulators,
                    ema_averages=averages, accumulation_phase="update", **options)
    w, m, v, vhat, acc, avg = copies
    table = np.zeros((len(sizes), layout.COLUMNS), np.int64)
    for column, group in ((layout.W, w), (layout.G, grads), (layout.M, m), (layout.V, v),
                          (layout.VHAT, vhat), (layout.ACC, acc), (layout.EMA, avg)):
        table[:, column] = [t.data_ptr() for t in group]
    cuda.fused_step_table("adam", table, np.array(sizes), torch.zeros((), dtype=w[0].dtype),
                          w, amsgrad=True, accumulation_phase="update", averaging=True,
                          **options)
    same = all(torch.equal(a, b) for a, b in zip(
        [*params, *slots[0], *slots[1], *slots[2], *accumulators, *averages],
        [*w, *m, *v, *vhat, *acc, *avg]))
    return "exact" if same else "differs"


def _aot_worker(out_path: str) -> None:
    """Compile every kernel for sm_90 (no GPU needed) with the launch options of
    ``kerasopt.kernels.cuda`` and write the PTX instructions that matter."""
    import re
    from collections import Counter

    import triton
    from triton.backends.compiler import GPUTarget

    from kerasopt.kernels import cuda, layout

    target = GPUTarget("cuda", 90, 32)
    found = {}
    everything = (layout.UNSCALE | layout.ACCUMULATE | layout.CLIP_NORM | layout.DECAY
                  | layout.AVERAGE | layout.OVERWRITE | layout.AMSGRAD)
    # fma, division, square root, reciprocal, flush-to-zero, approximations, vector memory
    # accesses, and float add / sub / mul without an explicit rounding mode (only those may
    # be contracted into an fma by ptxas).
    pattern = re.compile(r"\b(fma\.[\w.]+|div\.[\w.]+|sqrt\.[\w.]+|rcp\.[\w.]+|\w+\.ftz[\w.]*"
                         r"|\w+\.approx[\w.]*|[ls][dt]\.global\.v\d[\w.]*"
                         r"|(?:add|sub|mul)\.f(?:32|64)\b)")
    step_signature = {"table": "*i64", "blocks": "*i64", "hyper": None, "n": "i32",
                      "FEATURES": "constexpr", "ADAMAX": "constexpr", "ALIGNED": "constexpr",
                      "BLOCK": "constexpr"}
    for dtype in ("fp32", "fp64"):
        variants = [
            (cuda._step_kernel, step_signature, dict(FEATURES=everything, ADAMAX=False)),
            (cuda._step_kernel, step_signature,
             dict(FEATURES=layout.CLIP_VALUE | layout.CLIP_GLOBAL | layout.DECAY, ADAMAX=True)),
            (cuda._micro_kernel, {"table": "*i64", "blocks": "*i64", "hyper": None,
                                  "FEATURES": "constexpr", "ALIGNED": "constexpr",
                                  "BLOCK": "constexpr"},
             dict(FEATURES=layout.UNSCALE | layout.AVERAGE | layout.OVERWRITE)),
            (cuda._squares_kernel, {"table": "*i64", "blocks": "*i64", "hyper": None,
                                    "partial": "*fp64", "FEATURES": "constexpr",
                                    "ALIGNED": "constexpr", "BLOCK": "constexpr"},
             dict(FEATURES=layout.UNSCALE | layout.ACCUMULATE)),
        ]
        for kernel, signature, constants in variants:
            signature = {k: (f"*{dtype}" if v is None else v) for k, v in signature.items()}
            aligned = {}
            for is_aligned in (False, True):
                source = triton.compiler.ASTSource(
                    kernel, signature,
                    constexprs=dict(constants, ALIGNED=is_aligned, BLOCK=cuda.BLOCK))
                compiled = triton.compile(source, target=target,
                                          options={"enable_fp_fusion": False})
                aligned[str(is_aligned)] = dict(Counter(pattern.findall(compiled.asm["ptx"])))
            found[f"{kernel.__name__}-{dtype}-{constants['FEATURES']}"] = aligned
    # Control: with Triton's default (fp fusion on), the same check sees the fma.
    source = triton.compiler.ASTSource(
        cuda._step_kernel, {k: (v or "*fp32") for k, v in step_signature.items()},
        constexprs=dict(FEATURES=everything, ADAMAX=False, ALIGNED=False, BLOCK=cuda.BLOCK))
    compiled = triton.compile(source, target=target, options={"enable_fp_fusion": True})
    found["control"] = dict(Counter(pattern.findall(compiled.asm["ptx"])))
    source = triton.compiler.ASTSource(
        cuda._segment_sum_kernel,
        {"partial": "*fp64", "segments": "*i64", "sums": "*fp64", "BLOCK": "constexpr"},
        constexprs={"BLOCK": cuda._SUM_BLOCK})
    triton.compile(source, target=target, options={"enable_fp_fusion": False})
    # Without the interpreter, CPU tensors are refused (before anything moves).
    found["cpu"] = {"available": cuda.available(), "cuda": torch.cuda.is_available(),
                    "not_fusable": _check_not_fusable("cpu").get("numpy gradient")}
    w = [torch.ones(3)]
    try:
        cuda.fused_step("adam", w, [torch.ones(3)], [[torch.ones(3)], [torch.ones(3)]],
                        learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
        found["cpu"]["plain"] = "no error"
    except Exception as error:
        unchanged = torch.equal(w[0], torch.ones(3))
        found["cpu"]["plain"] = type(error).__name__ if unchanged else "modified"
    Path(out_path).write_text(json.dumps(found, indent=1))


def _subprocess(args, tmp_path, interpret: bool, timeout: float):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env.setdefault("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, __file__, *args, str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------- the tests


def _has_cuda() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    return _subprocess(["cases", "cpu"], tmp_path_factory.mktemp("interpreted"),
                       interpret=True, timeout=600)


@pytest.fixture(scope="module")
def on_cuda(tmp_path_factory):
    if not _has_cuda():
        pytest.skip("no CUDA device")
    return _subprocess(["cases", "cuda"], tmp_path_factory.mktemp("cuda"), interpret=False,
                       timeout=600)


def _check_case(results, name):
    result = results["cases"][name]
    assert "error" not in result, result.get("error")
    options = CASES[name][2]
    norms = any(options.get(k) for k in NORM_FEATURES)
    numba = result.get("numba")
    if numba is not None:
        if norms:  # float64 sums in another order: the clip scale may move by an ulp
            assert numba["scaled"] <= MAX_ULP, numba
        else:
            assert numba["exact"], numba
    reference = result["reference"]
    assert reference["scaled"] <= MAX_ULP, reference


@pytest.mark.parametrize("name", sorted(CASES))
def test_interpreter_matches_numba_and_reference(interpreted, name):
    assert interpreted["available"]
    _check_case(interpreted, name)


def test_interpreter_not_fusable(interpreted):
    bad = interpreted["not_fusable"]
    assert bad and all(v == "NotFusable" for v in bad.values()), bad


def test_interpreter_table_entry(interpreted):
    assert interpreted["table_entry"] == "exact"


def test_compiles_for_sm90_without_fma(tmp_path):
    """Compiled for a GPU (no GPU needed): separate mul / add (no fma), IEEE division and
    square root (div.rn / sqrt.rn, no approximations), no flush-to-zero, and vector loads
    and stores of full blocks when the addresses are aligned."""
    pytest.importorskip("triton.backends.nvidia")
    found = _subprocess(["aot"], tmp_path, interpret=False, timeout=300)
    control = found.pop("control")
    cpu = found.pop("cpu")
    assert cpu["available"] == cpu["cuda"]
    if not cpu["cuda"]:
        assert cpu["plain"] == cpu["not_fusable"] == "NotFusable", cpu
    assert any(op.startswith("fma") for op in control), control
    assert found
    for kernel, variants in found.items():
        for aligned, ops in variants.items():
            bad = {op for op in ops if op.startswith(("fma", "rcp")) or ".approx" in op
                   or ".ftz" in op or (".rn." not in op and not op.startswith(("ld", "st")))}
            assert not bad, (kernel, aligned, ops)
            vector = any(op.startswith(("ld.global.v", "st.global.v")) for op in ops)
            assert vector == (aligned == "True"), (kernel, aligned, ops)
        if "_step_kernel" in kernel:
            assert any(op.startswith("div.rn") for op in variants["False"]), variants


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA device")
def test_cuda_matches_numba_and_reference(on_cuda):
    """Every case on the GPU (bigger tensors: up to 2**20 elements), checked as above."""
    assert on_cuda["available"]
    failures = {}
    for name in sorted(CASES):
        try:
            _check_case(on_cuda, name)
        except AssertionError as error:
            failures[name] = str(error)[:500]
    assert not failures, failures


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA device")
def test_cuda_not_fusable(on_cuda):
    bad = on_cuda["not_fusable"]
    assert bad and all(v == "NotFusable" for v in bad.values()), bad
    assert on_cuda["table_entry"] == "exact"


if __name__ == "__main__":
    if sys.argv[1] == "aot":
        _aot_worker(sys.argv[2])
    else:
        _worker(sys.argv[3], sys.argv[2])
