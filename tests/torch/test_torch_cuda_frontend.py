"""kerasopt.torch on CUDA tensors runs the Triton kernels (kerasopt.kernels.cuda) through
both of its fused paths (the general step that creates the state, then the cached plans),
and agrees with its reference path (the pure functions) on every feature.

Without a GPU the wiring is checked in Triton's interpreter: in a subprocess with
``TRITON_INTERPRET=1``, ``kernels.for_device`` hands the Triton kernels to CPU tensors, so
every argument the frontend passes goes through the same code as on a GPU. With a GPU the
same script runs on ``cuda`` tensors (skipped here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (pip install triton)", allow_module_level=True)
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "plain": {},
    "amsgrad+clipnorm": {"amsgrad": True, "clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 1.0},
    "clipvalue+decay": {"clipvalue": 0.1, "weight_decay": 0.05},
    "ema_overwrite": {"use_ema": True, "ema_overwrite_frequency": 3},
    "everything": {"global_clipnorm": 1.0, "weight_decay": 0.05, "use_ema": True,
                   "ema_overwrite_frequency": 4, "gradient_accumulation_steps": 2,
                   "loss_scale_factor": 8.0},
}


def _trajectory(cls, config, device, dtype):
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 40), (1500,), (), (3, 3)]
    params = [torch.randn(s, generator=generator, dtype=dtype).to(device).requires_grad_()
              for s in shapes]
    one_group = "global_clipnorm" in config  # a norm spanning groups takes the reference
    groups = ([{"params": params}] if one_group
              else [{"params": params[:2]}, {"params": params[2:], "weight_decay": None}])
    opt = cls(groups, learning_rate=0.01, **config)
    out = []
    for _ in range(8):
        for p, s in zip(params, shapes):
            p.grad = (torch.randn(s, generator=generator, dtype=dtype) * 3).to(device)
        opt.step()
        out.append([p.detach().cpu().clone() for p in params])
    return out


def _worker(out_path: str, device: str) -> None:
    import kerasopt.torch as kt
    from kerasopt import kernels
    from kerasopt.kernels import cuda

    assert cuda.available()
    calls = {"fused_step": 0, "fused_step_table": 0}
    for name in calls:
        real = getattr(cuda, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(cuda, name, counted)
    real_for_device = kernels.for_device
    results = {}
    for cls in (kt.Adam, kt.Adamax):
        for name, config in CONFIGS.items():
            if cls is kt.Adamax:
                config = {k: v for k, v in config.items() if k != "amsgrad"}
            for dtype in (torch.float32, torch.float64):
                if device == "cpu":  # the interpreter: Triton kernels for CPU tensors
                    kernels.for_device = lambda d: cuda
                before = dict(calls)
                fused = _trajectory(cls, config, device, dtype)
                used = {k: calls[k] - before[k] for k in calls}
                kernels.for_device = lambda d: None  # the reference path
                reference = _trajectory(cls, config, device, dtype)
                kernels.for_device = real_for_device
                eps = torch.finfo(dtype).eps
                worst = 0.0
                for got, want in zip(fused, reference):
                    for a, b in zip(got, want):
                        scale = max(1.0, float(b.abs().max()))
                        worst = max(worst, float((a - b).abs().max()) / (eps * scale))
                results[f"{cls.__name__} {name} {dtype}"] = {"ulps": worst, "calls": used}
    Path(out_path).write_text(json.dumps(results))


def _run(tmp_path, device, interpret):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__, str(out), device], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check(results):
    assert len(results) == 2 * len(CONFIGS) * 2
    for case, found in results.items():
        # The first step creates the state (general path), the others run cached plans.
        assert found["calls"]["fused_step"] >= 1, case
        assert found["calls"]["fused_step_table"] >= 7, case
        assert found["ulps"] <= 16, f"{case}: {found['ulps']} ulps of the array's scale"


def test_frontend_runs_triton_kernels_in_interpreter(tmp_path):
    _check(_run(tmp_path, "cpu", interpret=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frontend_runs_triton_kernels_on_cuda(tmp_path):
    _check(_run(tmp_path, "cuda", interpret=False))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
