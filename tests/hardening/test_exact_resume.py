"""Exact resume, property-tested: train N steps, ``kerasopt.save``, restore in a fresh
process (a subprocess that never saw the optimizer), train M more; the weights and the whole
optimizer state equal the uninterrupted N+M run bit for bit -- for NumPy, torch and optax,
under random feature combinations (accumulation saved mid-cycle, EMA with overwrite,
schedules, dynamic loss scaling with skipped steps, skip_nonfinite, amsgrad, clipping, weight
decay, a fixed loss-scale factor) and a random save step."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from hardening_helpers import PYTHON, ROOT, child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resume_worker import Run

import kerasopt
from optimizer_db import ALGORITHMS, has_amsgrad

WORKER = str(ROOT / "tests" / "hardening" / "resume_worker.py")

SCHEDULES = [
    kerasopt.schedules.serialize(kerasopt.schedules.ExponentialDecay(0.05, 3, 0.5)),
    kerasopt.schedules.serialize(kerasopt.schedules.PiecewiseConstantDecay([2, 5],
                                                                           [0.05, 0.02, 0.01])),
    kerasopt.schedules.serialize(kerasopt.schedules.CosineDecay(0.05, 10, warmup_target=0.1,
                                                                warmup_steps=3)),
]


@st.composite
def specs(draw, frontend):
    algo = draw(st.sampled_from(ALGORITHMS))
    kwargs: dict = {"learning_rate": draw(st.sampled_from([0.01, *SCHEDULES]))}
    if draw(st.booleans()):
        kwargs["gradient_accumulation_steps"] = draw(st.integers(2, 3))
    if draw(st.booleans()):
        kwargs["use_ema"] = True
        kwargs["ema_overwrite_frequency"] = draw(st.sampled_from([None, 1, 2, 3]))
    if has_amsgrad(algo) and draw(st.booleans()):
        kwargs["amsgrad"] = True
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip:
        kwargs[clip] = 1.0
    if draw(st.booleans()):
        kwargs["weight_decay"] = 0.05
    scaling = draw(st.sampled_from(["none", "dynamic", "skip", "factor"]))
    wrap = None
    if scaling == "dynamic":
        wrap = {"initial_scale": 2.0 ** draw(st.integers(4, 12)),
                "dynamic_growth_steps": draw(st.integers(1, 3))}
    elif scaling == "skip":
        kwargs["skip_nonfinite"] = True
    elif scaling == "factor":
        kwargs["loss_scale_factor"] = 8.0
    total = draw(st.integers(4, 12))
    bad = (sorted(draw(st.sets(st.integers(0, total - 1), max_size=3)))
           if scaling in ("dynamic", "skip") else [])
    return {"frontend": frontend, "algo": algo, "kwargs": kwargs, "wrap": wrap,
            "seed": draw(st.integers(0, 2**31 - 1)), "total": total,
            "save_step": draw(st.integers(1, total - 1)), "bad_steps": bad}


def _check_resume(spec, tmp_path, count):
    straight = Run(spec)
    straight.train(0, spec["total"])
    expected = straight.arrays()

    first = Run(spec)
    first.train(0, spec["save_step"])
    spec = {**spec, "checkpoint": str(tmp_path / "resume.ckpt"),
            "out": str(tmp_path / "resumed.npz")}
    first.save(spec["checkpoint"])
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    result = subprocess.run([PYTHON, WORKER, str(spec_path)], env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(spec["out"], allow_pickle=False) as data:
        resumed = {k: data[k] for k in data.files}
    assert sorted(resumed) == sorted(expected)
    for key, value in expected.items():
        assert resumed[key].dtype == value.dtype, key
        assert np.array_equal(resumed[key], value, equal_nan=True), (key, spec)
    count(f"exact resumes checked in a fresh process ({spec['frontend']})")
    count("state arrays compared bit for bit after resume", len(expected))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])


@settings(max_examples=10, **SETTINGS)
@given(spec=specs("numpy"))
def test_exact_resume_numpy(spec, tmp_path, hardening_count):
    _check_resume(spec, tmp_path, hardening_count)


@settings(max_examples=5, **SETTINGS)
@given(spec=specs("torch"))
def test_exact_resume_torch(spec, tmp_path, hardening_count):
    _check_resume(spec, tmp_path, hardening_count)


@settings(max_examples=5, **SETTINGS)
@given(spec=specs("optax"))
def test_exact_resume_optax(spec, tmp_path, hardening_count):
    _check_resume(spec, tmp_path, hardening_count)
