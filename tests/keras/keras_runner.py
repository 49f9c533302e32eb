"""Runs ``keras_checks.py`` for one Keras backend in a subprocess (``KERAS_BACKEND`` is fixed
per process) and hands its measurements to the backend's test file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerasopt.cli import oracle

HERE = Path(__file__).resolve().parent
CHECKS = HERE / "keras_checks.py"

ATOL, RTOL = oracle.tolerance(np.float32)
"""Parity (issue 16): |ours - Keras| <= ATOL + RTOL * |Keras| after every epoch (the parity
rule of ``kerasopt.cli.oracle`` for float32, without its travel term)."""

PARITY_CASES = [
    "defaults/Adam", "defaults/Adamax", "defaults/AdamW",
    "schedule+clipnorm+weight_decay+exclude/Adam",
    "schedule+clipnorm+weight_decay+exclude/Adamax",
    "global_clipnorm+ema+overwrite/Adam", "global_clipnorm+ema+overwrite/Adamax",
    "accumulation+clipvalue/Adam", "accumulation+clipvalue/Adamax",
    "amsgrad/Adam",
    "loss_scale_optimizer/Adam", "loss_scale_optimizer/Adamax",
]


def run_checks(backend: str, out_dir: Path) -> dict:
    """Every check of ``keras_checks.py`` on ``backend``; each result is a dict with ``ok``
    (and ``error``, a traceback, when the check raised)."""
    for module in ("keras", backend):  # found, not imported: the backend runs in the child
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    if backend == "torch":  # the Triton kernels' check runs in Triton's interpreter
        env["TRITON_INTERPRET"] = "1"
    out = out_dir / f"keras_checks_{backend}.json"
    proc = subprocess.run([sys.executable, str(CHECKS), backend, str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and out.exists(), (
        f"keras_checks.py {backend} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def result(results: dict, name: str) -> dict:
    """One check's measurements; fails with the check's traceback if it raised."""
    outcome = results[name]
    assert outcome["ok"], f"check {name} raised:\n{outcome['error']}"
    return outcome


def assert_parity(comparison: dict, what: str) -> None:
    """Within tolerance after every epoch and after fit, and the weights did move."""
    ratios = comparison["ratio"]
    assert max(ratios) <= 1.0, (
        f"{what}: largest |ours - Keras| / ({ATOL} + {RTOL} |Keras|) per epoch (last: after "
        f"fit) {ratios}; absolute errors {comparison['abs']}")
    assert comparison["moved"] > 1e-3, f"{what}: the weights hardly moved ({comparison})"
