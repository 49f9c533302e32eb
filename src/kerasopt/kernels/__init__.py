"""Fused, single-pass optimizer steps: numba for NumPy arrays and CPU torch tensors
(multi-threaded), Triton for CUDA torch tensors (:mod:`kerasopt.kernels.cuda`).

``available()`` says whether the CPU fast path can run (it needs numba: ``pip install
kerasopt[fast]``); ``fused_step`` runs one whole in-place step over many tensors at once,
``fused_rows_step`` the lazy sparse update of an embedding's touched rows;
``for_device(device)`` picks the kernels for a torch device.
The pure functions in :mod:`kerasopt.algorithms` and :mod:`kerasopt.pipeline` stay the
reference and the fallback; ``tests/test_kernels.py`` checks that both agree.
"""

import sys
from types import ModuleType
from typing import Any

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
    thread_count,
)


def for_device(device: Any) -> ModuleType | None:
    """The kernels for tensors on a torch ``device``: this module (numba) for the CPU, the
    Triton kernels of :mod:`kerasopt.kernels.cuda` for CUDA, None where they cannot run
    (numba or Triton missing, another device type). Both offer ``fused_step`` and
    ``fused_step_table`` with the same arguments."""
    kind = getattr(device, "type", device)
    if kind == "cpu":
        return sys.modules[__name__] if available() else None
    if kind == "cuda":
        from kerasopt.kernels import cuda

        return cuda if cuda.available() else None
    return None


__all__ = [
    "NotFusable",
    "available",
    "for_device",
    "chunk_table",
    "fusable",
    "fused_rows_step",
    "fused_step",
    "fused_step_table",
    "same_numpy_layouts",
    "sum_rows",
    "thread_count",
]
