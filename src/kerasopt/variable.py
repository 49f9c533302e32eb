"""``kerasopt.Variable``: a named, mutable array that optimizers update.

Over a NumPy array the update is in place: the array the user passed in *is* the storage,
so every reference to it sees each step. A torch tensor is also updated in place
(``copy_`` under ``no_grad``); a JAX array is immutable, so ``assign`` replaces it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasopt.backend import is_jax, is_torch, to_numpy

_anonymous = itertools.count()


class Variable:
    """A named array that an optimizer can update in place.

    Args:
        value: A NumPy array (kept as the storage when its dtype is ``dtype`` or ``dtype`` is
            None), a torch tensor, a JAX array, or anything ``numpy.asarray`` accepts
            (Python floats become float32, as in Keras).
        name: The variable's name; ``exclude_from_weight_decay(var_names=...)`` matches it.
        dtype: Cast the value to this dtype first (makes a copy when it differs).
        constraint: A callable ``w -> w'`` applied after every optimizer step.
        trainable: Whether the variable is trained.
    """

    def __init__(
        self,
        value: Any,
        name: str | None = None,
        dtype: Any = None,
        constraint: Callable[[Any], Any] | None = None,
        trainable: bool = True,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Argument `name` must be a string or None; received name={name!r}.")
        if constraint is not None and not callable(constraint):
            raise TypeError(
                "Argument `constraint` must be a callable (w -> constrained w) or None; "
                f"received constraint={constraint!r}."
            )
        self._value = _as_storage(value, dtype)
        self.name = name if name is not None else f"variable_{next(_anonymous)}"
        if isinstance(self._value, np.ndarray) and not self._value.flags.writeable:
            raise ValueError(
                f"kerasopt.Variable '{self.name}': the NumPy array is read-only (for example "
                "np.asarray(jax_array)), so it cannot be updated in place; pass a writable "
                "copy: kerasopt.Variable(np.array(value))."
            )
        self.constraint = constraint
        self.trainable = bool(trainable)

    @property
    def value(self) -> Any:
        """The current array (for NumPy and torch, the storage itself)."""
        return self._value

    @property
    def path(self) -> str:
        return self.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    @property
    def dtype(self) -> Any:
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the value."""
        return np.array(to_numpy(self._value))

    def assign(self, value: Any) -> Variable:
        """Overwrite the value (in place for NumPy and torch); the shape must match."""
        if tuple(np.shape(value)) != self.shape and not _is_scalar(value):
            raise ValueError(
                f"Cannot assign a value of shape {tuple(np.shape(value))} to variable "
                f"'{self.name}' of shape {self.shape}."
            )
        storage = self._value
        if isinstance(storage, np.ndarray):
            np.copyto(storage, to_numpy(value), casting="unsafe")
        elif is_torch(storage):
            import torch

            with torch.no_grad():
                storage.copy_(torch.as_tensor(value, device=storage.device))
        elif is_jax(storage):
            import jax.numpy as jnp

            self._value = jnp.broadcast_to(jnp.asarray(value, dtype=storage.dtype), storage.shape)
        return self

    def scatter_update(self, rows: Any, values: Any) -> Variable:
        """Overwrite the rows ``rows`` (first axis) with ``values``."""
        storage = self._value
        if isinstance(storage, np.ndarray):
            storage[rows] = values
        elif is_torch(storage):
            import torch

            with torch.no_grad():
                storage[rows] = values.to(dtype=storage.dtype)
        else:
            self._value = storage.at[rows].set(values.astype(storage.dtype))
        return self

    def assign_add(self, value: Any) -> Variable:
        return self.assign(self._value + value)

    def assign_sub(self, value: Any) -> Variable:
        return self.assign(self._value - value)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = to_numpy(self._value)
        return array.astype(dtype) if dtype is not None else array

    def __int__(self) -> int:
        return int(to_numpy(self._value))

    def __float__(self) -> float:
        return float(to_numpy(self._value))

    def __index__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return (
            f"<kerasopt.Variable name={self.name!r} shape={self.shape} "
            f"dtype={self.dtype} value={to_numpy(self._value)!r}>"
        )

    # Arithmetic reads the value, as Keras variables do.
    def __add__(self, other: Any) -> Any:
        return self._value + _unwrap(other)

    def __radd__(self, other: Any) -> Any:
        return _unwrap(other) + self._value

    def __sub__(self, other: Any) -> Any:
        return self._value - _unwrap(other)

    def __rsub__(self, other: Any) -> Any:
        return _unwrap(other) - self._value

    def __mul__(self, other: Any) -> Any:
        return self._value * _unwrap(other)

    def __rmul__(self, other: Any) -> Any:
        return _unwrap(other) * self._value

    def __truediv__(self, other: Any) -> Any:
        return self._value / _unwrap(other)

    def __floordiv__(self, other: Any) -> Any:
        return self._value // _unwrap(other)

    def __mod__(self, other: Any) -> Any:
        return self._value % _unwrap(other)

    def __neg__(self) -> Any:
        return -self._value

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        return self._value == _unwrap(other)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        return self._value != _unwrap(other)

    def __lt__(self, other: Any) -> Any:
        return self._value < _unwrap(other)

    def __le__(self, other: Any) -> Any:
        return self._value <= _unwrap(other)

    def __gt__(self, other: Any) -> Any:
        return self._value > _unwrap(other)

    def __ge__(self, other: Any) -> Any:
        return self._value >= _unwrap(other)

    __hash__ = object.__hash__


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, Variable) else x


def _is_scalar(x: Any) -> bool:
    return np.ndim(x) == 0


def _as_storage(value: Any, dtype: Any) -> Any:
    if isinstance(value, Variable):
        value = value.value
    if is_torch(value):
        return value if dtype is None else value.to(dtype=_torch_dtype(dtype))
    if is_jax(value):
        return value if dtype is None else value.astype(dtype)
    if isinstance(value, np.ndarray):
        if dtype is None or np.dtype(dtype) == value.dtype:
            return value
        return value.astype(dtype)
    array = np.asarray(value)
    if dtype is not None:
        return np.array(array, dtype=dtype)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return np.array(array)


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, np.dtype(dtype).name if not isinstance(dtype, str) else dtype)
