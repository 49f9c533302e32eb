"""Sparse (row) gradients and the lazy update: only the rows a gradient touches move.

A gradient for an embedding table of shape ``(rows, ...)`` is often a few rows. Keras 3
densifies it; tf.keras's Adamax documented the *lazy* behaviour that kerasopt implements:
the touched rows of the parameter and of every state slot get the ordinary update rule,
every other row keeps its value and its state. Duplicate indices are summed first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kerasopt.backend import namespace, to_numpy


class IndexedSlices:
    """A gradient given as rows: ``dense[indices[i]] += values[i]``.

    Args:
        values: Array of shape ``(n, *dense_shape[1:])``.
        indices: Integer array of shape ``(n,)``; repeats are allowed and summed.
        dense_shape: The shape of the dense gradient (the variable's shape).
    """

    def __init__(self, values: Any, indices: Any, dense_shape: Sequence[int]) -> None:
        self.values = values
        self.indices = indices
        self.dense_shape = tuple(int(d) for d in dense_shape)

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dense_shape

    def with_values(self, values: Any) -> IndexedSlices:
        """The same rows with new values (for element-wise transformations)."""
        return IndexedSlices(values, self.indices, self.dense_shape)

    def to_dense(self) -> Any:
        """The dense gradient, duplicates summed."""
        xp = namespace(self.values)
        if xp is np:
            dense = np.zeros(self.dense_shape, dtype=self.values.dtype)
            np.add.at(dense, np.asarray(self.indices), self.values)
            return dense
        if xp.__name__ == "torch":
            dense = xp.zeros(self.dense_shape, dtype=self.values.dtype, device=self.values.device)
            return dense.index_add_(0, self.indices.long(), self.values)
        return xp.zeros(self.dense_shape, dtype=self.values.dtype).at[self.indices].add(self.values)

    def __repr__(self) -> str:
        return (
            f"IndexedSlices(values shape={tuple(self.values.shape)}, "
            f"indices shape={tuple(np.shape(self.indices))}, dense_shape={self.dense_shape})"
        )


def values_of(gradient: Any) -> Any:
    """The array a pipeline step works on: the rows' values, or the dense gradient itself."""
    return gradient.values if isinstance(gradient, IndexedSlices) else gradient


def with_values(gradient: Any, values: Any) -> Any:
    """``gradient`` with its values replaced (same rows for an ``IndexedSlices``)."""
    return gradient.with_values(values) if isinstance(gradient, IndexedSlices) else values


def map_values(fn: Callable[[Any], Any], gradient: Any) -> Any:
    """Apply an element-wise step to a dense gradient or to a sparse gradient's values."""
    return with_values(gradient, fn(values_of(gradient)))


def validate_indexed_slices(gradient: IndexedSlices, variable_shape: tuple[int, ...], where: str):
    """Raise ``ValueError`` when the rows do not fit the variable (before anything moves)."""
    if gradient.dense_shape != tuple(variable_shape):
        raise ValueError(
            f"{where}: IndexedSlices dense_shape {gradient.dense_shape} does not match the "
            f"variable's shape {tuple(variable_shape)}."
        )
    indices = to_numpy(gradient.indices)
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: IndexedSlices indices must be a 1-D integer array; received dtype "
            f"{indices.dtype} and shape {indices.shape}."
        )
    expected = (indices.shape[0], *variable_shape[1:])
    if tuple(gradient.values.shape) != expected:
        raise ValueError(
            f"{where}: IndexedSlices values have shape {tuple(gradient.values.shape)}; "
            f"expected {expected} ({indices.shape[0]} rows of the variable's row shape)."
        )
    if indices.size and (indices.min() < 0 or indices.max() >= variable_shape[0]):
        raise ValueError(
            f"{where}: IndexedSlices indices must lie in [0, {variable_shape[0]}); received "
            f"indices from {indices.min()} to {indices.max()}."
        )


def _sum_rows(inverse: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """``summed[inverse[i]] += values[i]``: the fused kernel when it applies, else np.add.at
    (both add in the same order, so the sums are identical)."""
    from kerasopt import kernels

    if kernels.available():
        try:
            return kernels.sum_rows(inverse, values, n_rows)
        except kernels.NotFusable:
            pass
    summed = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    np.add.at(summed, inverse, values)
    return summed


def canonical(gradient: IndexedSlices) -> IndexedSlices:
    """The same gradient with each touched row once, in increasing order, duplicates summed."""
    xp = namespace(gradient.values)
    row_shape = tuple(gradient.values.shape[1:])
    if xp is np:
        rows, inverse = np.unique(np.asarray(gradient.indices), return_inverse=True)
        summed = _sum_rows(inverse.reshape(-1), gradient.values, len(rows))
        return IndexedSlices(summed, rows, gradient.dense_shape)
    if xp.__name__ == "torch":
        rows, inverse = xp.unique(gradient.indices.long(), return_inverse=True)
        summed = xp.zeros(
            (len(rows), *row_shape), dtype=gradient.values.dtype, device=gradient.values.device
        )
        summed.index_add_(0, inverse, gradient.values)
        return IndexedSlices(summed, rows, gradient.dense_shape)
    return canonical_fixed_size(gradient)


def canonical_fixed_size(gradient: IndexedSlices) -> IndexedSlices:
    """The JAX form of :func:`canonical`, traceable under ``jit``: the array sizes stay as
    they are (``k`` rows in, ``k`` rows out), so each touched row appears once (sorted,
    duplicates summed) and the ``k`` slots left over hold the out-of-range row
    ``dense_shape[0]`` with zero values, which the row reads fill with 0 and the row writes
    drop."""
    import jax.numpy as jnp

    k = gradient.indices.shape[0]
    n_rows = gradient.dense_shape[0]
    rows, inverse = jnp.unique(gradient.indices, size=k, fill_value=n_rows,
                               return_inverse=True)
    summed = jnp.zeros_like(gradient.values).at[inverse.reshape(-1)].add(gradient.values)
    return IndexedSlices(summed, rows, gradient.dense_shape)
