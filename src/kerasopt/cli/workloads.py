"""The workloads that ``kerasopt bench`` and ``kerasopt.cli.bench_keras`` time: (a) one
16M-element tensor, (b) ~200 tensors of lognormal sizes totalling 16M, (c) 2,000 tensors of
1,024 elements (tiny versions with ``quick``)."""

from __future__ import annotations

import numpy as np

__all__ = ["describe", "workload_sizes"]


def workload_sizes(name: str, quick: bool) -> list[int]:
    """The tensor sizes of workload ``name`` (``"a"``, ``"b"`` or ``"c"``)."""
    total = (1 << 16) if quick else 16_000_000
    if name == "a":
        return [total]
    if name == "b":
        count = 20 if quick else 200
        rng = np.random.default_rng(0)
        weights = rng.lognormal(0.0, 1.5, count)
        sizes = np.maximum(1, (weights / weights.sum() * total).astype(np.int64))
        sizes[0] += total - sizes.sum()
        return [int(s) for s in sizes]
    if name == "c":
        return [64] * 200 if quick else [1024] * 2000
    raise ValueError(name)


def describe(name: str, sizes: list[int]) -> str:
    """The workload's row label in the tables."""
    total = sum(sizes)
    if name == "a":
        return f"(a) one tensor of {total:,}"
    if name == "b":
        return f"(b) {len(sizes)} mixed tensors, {total:,} total"
    return f"(c) {len(sizes):,} tensors of {sizes[0]:,}"
