"""Keras 3 as an independent oracle, for the NumPy core's parity tests.

The oracle itself (running Keras and kerasopt's NumPy core on a gradient sequence, the
:class:`Run` they return, the parity tolerance ``|got - ref| <= atol + rtol * (|ref| +
travel)`` and :func:`compare_runs`) is :mod:`kerasopt.cli.oracle`, shared with ``kerasopt
verify`` and the torch and optax parity tests; its docstring states the rule. This module
adds the test problems (seeded gradient sequences and weights) and re-exports the oracle's
names.

Import this module only after ``KERAS_BACKEND`` is set (``tests/conftest.py`` does it).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from kerasopt.cli.oracle import (  # noqa: E402, F401
    TOLERANCES,
    ParityStats,
    Run,
    Schedule,
    StepCallable,
    assert_parity,
    compare_runs,
    raise_on_failures,
    run_keras,
    run_kerasopt,
    tolerance,
)


def to_torch(g: np.ndarray) -> Any:
    """A NumPy gradient as a CPU torch tensor of the same dtype (what Keras on torch takes)."""
    import torch

    return torch.from_numpy(np.array(g, copy=True))


# --------------------------------------------------------------------------- gradients


def make_gradients(
    shapes: Sequence[tuple[int, ...]],
    n_steps: int,
    *,
    seed: int = 0,
    dtype: Any = np.float32,
    scale_range: tuple[float, float] = (1e-4, 1e2),
    none_every: int | None = None,
    nonfinite_steps: Sequence[int] = (),
) -> list[list[np.ndarray | None]]:
    """A seeded gradient sequence with varied scales.

    Each step and variable gets a standard-normal gradient times a scale drawn log-uniformly
    from ``scale_range`` (so some are near zero and some large enough for clipping to bite);
    about a tenth of the elements are shrunk by 1e-6, and variable 0 gets an all-zero
    gradient on step 3 (Keras's zero-norm guard in ``clipnorm``). ``none_every=n`` makes
    variable ``k % len(shapes)`` have a ``None`` gradient on every step ``k`` divisible by
    ``n`` (never all variables at once). ``nonfinite_steps`` put an inf or NaN into one
    gradient on those steps.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.log10(scale_range[0]), np.log10(scale_range[1])
    steps: list[list[np.ndarray | None]] = []
    for k in range(n_steps):
        grads: list[np.ndarray | None] = []
        for i, shape in enumerate(shapes):
            scale = 10.0 ** rng.uniform(lo, hi)
            g = rng.standard_normal(shape) * scale
            tiny = rng.random(shape) < 0.1
            g = np.where(tiny, g * 1e-6, g)
            if k == 3 and i == 0:
                g = np.zeros(shape)
            grads.append(np.asarray(g, dtype=dtype))
        if none_every and k % none_every == 0 and len(shapes) > 1:
            grads[k % len(shapes)] = None
        if k in nonfinite_steps:
            i = int(rng.integers(len(shapes)))
            g = grads[i] if grads[i] is not None else np.zeros(shapes[i], dtype)
            g = np.array(g, dtype=dtype)
            g.flat[int(rng.integers(max(g.size, 1)))] = np.inf if k % 2 else np.nan
            grads[i] = g
        steps.append(grads)
    return steps


def make_weights(
    shapes: Sequence[tuple[int, ...]], *, seed: int = 1, dtype: Any = np.float32
) -> list[np.ndarray]:
    """Seeded starting weights in roughly [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.uniform(-1.0, 1.0, shape), dtype=dtype) for shape in shapes]
