"""Fused, multi-threaded, single-pass optimizer steps for NumPy arrays and CPU torch tensors.

``available()`` says whether the fast path can run (it needs numba: ``pip install
kerasopt[fast]``); ``fused_step`` runs one whole in-place step over many tensors at once,
``fused_rows_step`` the lazy sparse update of an embedding's touched rows.
The pure functions in :mod:`kerasopt.algorithms` and :mod:`kerasopt.pipeline` stay the
reference and the fallback; ``tests/test_kernels.py`` checks that both agree.
"""

from kerasopt.kernels.fused import (
    NotFusable,
    available,
    chunk_table,
    fusable,
    fused_rows_step,
    fused_step,
    fused_step_table,
    same_numpy_layouts,
    sum_rows,
)

__all__ = [
    "NotFusable",
    "available",
    "chunk_table",
    "fusable",
    "fused_rows_step",
    "fused_step",
    "fused_step_table",
    "same_numpy_layouts",
    "sum_rows",
]
