"""Shared helpers of the kerasopt.optax tests: problems, the Keras-on-JAX oracle (run in a
subprocess, since the test session's Keras runs on torch) and the parity measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ORACLE = HERE / "keras_jax_oracle.py"
STEPS = 100
ATOL, RTOL = 1e-6, 1e-5

# Keras variable name -> path in the params pytree {"dense": {"kernel", "bias"}, "emb"}.
VARS = {"kernel": ("dense", "kernel"), "bias": ("dense", "bias"), "emb": ("emb",)}
SHAPES = {"kernel": (4, 3), "bias": (3,), "emb": (6, 2)}

# Keras slot names -> fields of AdamState / AdamaxState.
SLOT_FIELDS = {
    "momentum": "momentum",
    "velocity": "velocity",
    "velocity_hat": "velocity_hat",
    "norm": "norm",
    "average": "average",
    "gradient_accumulator": "accumulator",
}


def make_problem(seed: int, steps: int = STEPS, grad_scale: float = 1.0):
    """Initial values and a gradient sequence per variable (float32), with a varying
    magnitude so that clipping is active on some steps only."""
    rng = np.random.default_rng(seed)
    w0 = {v: rng.normal(size=s).astype(np.float32) for v, s in SHAPES.items()}
    magnitude = (0.2 + 3.0 * rng.random(steps)).astype(np.float32)
    grads = {
        v: (rng.normal(size=(steps, *s)) * magnitude.reshape(-1, *[1] * len(s)) * grad_scale)
        .astype(np.float32)
        for v, s in SHAPES.items()
    }
    return w0, grads


def to_tree(per_var: dict):
    return {"dense": {"kernel": per_var["kernel"], "bias": per_var["bias"]}, "emb": per_var["emb"]}


def from_tree(tree) -> dict:
    return {"kernel": tree["dense"]["kernel"], "bias": tree["dense"]["bias"], "emb": tree["emb"]}


def run_keras(cases: list[dict], problems: dict[str, dict]) -> dict[str, np.ndarray]:
    """Run every case through Keras 3 (JAX backend) in one subprocess.

    ``problems[name] = (w0, grads)``; returns ``{f"{name}/{var}": trajectory,
    f"{name}/state/{keras_var_name}": final value}``.
    """
    arrays = {}
    for case in cases:
        w0, grads = problems[case["name"]]
        for v in SHAPES:
            arrays[f"{case['name']}/{v}/w0"] = w0[v]
            arrays[f"{case['name']}/{v}/grads"] = grads[v]
    cases = [{**c, "vars": list(SHAPES)} for c in cases]
    with tempfile.TemporaryDirectory() as tmp:
        problems_path, cases_path, out_path = (
            os.path.join(tmp, n) for n in ("p.npz", "c.json", "o.npz")
        )
        np.savez(problems_path, **arrays)
        Path(cases_path).write_text(json.dumps(cases))
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        result = subprocess.run(
            [sys.executable, str(ORACLE), problems_path, cases_path, out_path],
            env=env, capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Keras oracle failed:\n{result.stderr[-4000:]}")
        with np.load(out_path) as data:
            return dict(data)


def normalized_error(
    ours: np.ndarray, reference: np.ndarray, w0: np.ndarray
) -> tuple[float, float]:
    """Largest ``|diff| / (1e-6 + 1e-5 * (|w| + distance travelled))`` over every step and
    element, and the largest absolute difference. Trajectories are (steps, *shape)."""
    previous = np.concatenate([w0[None].astype(np.float64), reference[:-1].astype(np.float64)])
    travel = np.cumsum(np.abs(reference.astype(np.float64) - previous), axis=0)
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    bound = ATOL + RTOL * (np.abs(reference.astype(np.float64)) + travel)
    return float(np.max(diff / bound)), float(np.max(diff))
