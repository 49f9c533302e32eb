"""Comparing two floating-point paths in ulps of the operands, not of the result.

A step computes ``x_new = x_old + delta`` (the weight before the step and its update; a
slot before the step and its change). When the step nearly cancels ``x_old``, ``x_new`` is
tiny and an ulp of it says nothing about how well either path computed it: two correct
paths differ by ulps of ``x_old`` and ``delta``, whatever ``x_new`` is. So each step adds
``ulps`` ulps of ``max(|x_old|, |delta|)`` (taken from the reference) to the allowed
difference, and the differences carried from earlier steps stay allowed.

This is the one rule the suite uses to compare a fused path with the reference path over a
trajectory; it passes on every CPU (Intel and AMD round ``sqrt``/``pow`` differently in the
last place in torch), yet fails on any real disagreement of more than a few ulps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _eps(dtype: np.dtype) -> float:
    """The machine epsilon of ``dtype``; 0 for integers (which must match exactly)."""
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.inexact) else 0.0


def assert_trajectories_close(
    got: Sequence[Sequence[Any]],
    want: Sequence[Sequence[Any]],
    initial: Sequence[Any],
    *,
    ulps: float = 16,
    what: str = "array",
) -> None:
    """``got[k][i]`` equals the reference ``want[k][i]`` to within, summed over the steps
    ``j <= k``, ``ulps`` ulps of ``max(|want[j-1][i]|, |want[j][i] - want[j-1][i]|)`` (with
    ``want[-1] = initial``), elementwise; NaN only where the reference has NaN."""
    previous = [_numpy(x).astype(np.float64) for x in initial]
    allowed = [np.zeros_like(p) for p in previous]
    for k, (got_step, want_step) in enumerate(zip(got, want, strict=True)):
        for i, (a, b) in enumerate(zip(got_step, want_step, strict=True)):
            a, b = _numpy(a), _numpy(b)
            eps = _eps(b.dtype)
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            assert a64.shape == b64.shape, f"step {k}, {what} {i}: shapes differ"
            with np.errstate(invalid="ignore", over="ignore"):
                delta = np.abs(b64 - previous[i])
                operand = np.maximum(np.abs(previous[i]), np.where(np.isnan(delta), 0, delta))
                allowed[i] = allowed[i] + ulps * eps * operand + 1e-30
                diff = np.abs(a64 - b64)
            nan = np.isnan(b64)
            assert np.array_equal(np.isnan(a64), nan), f"step {k}, {what} {i}: NaN differs"
            finite = np.isfinite(b64)
            assert np.array_equal(a64[~finite & ~nan], b64[~finite & ~nan]), (
                f"step {k}, {what} {i}: infinities differ"
            )
            excess = np.where(finite, diff - allowed[i], 0.0)
            assert np.all(excess <= 0), (
                f"step {k}, {what} {i}: differs by {diff[finite].max():.3g}, allowed "
                f"{allowed[i][np.argmax(excess)]:.3g} ({ulps} ulps of the operands per step)"
            )
            previous[i] = b64
