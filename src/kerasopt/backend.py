"""Array namespaces: which library an array belongs to, and how to make scalars in it.

The update rules in :mod:`kerasopt.algorithms` and :mod:`kerasopt.pipeline` are written
once, with arithmetic operators and a handful of namespace functions (``sqrt``,
``maximum``, ``abs``, ``clip``, ``sum``, ``where``) that NumPy, PyTorch and
``jax.numpy`` all provide. This module finds the namespace of an array and casts Python
numbers to an array's dtype the way Keras does (``ops.cast(value, variable.dtype)``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_jax(x: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


_REGISTERED: list[tuple[Callable[[Any], bool], Any]] = []


def register_namespace(is_member: Callable[[Any], bool], xp: Any) -> None:
    """Teach :func:`namespace`, :func:`cast_scalar` and :func:`float32_scalar` another array
    library (``kerasopt.keras`` registers TensorFlow's, so that the pure rules run on
    ``tf.Tensor`` s): ``is_member(x)`` says whether ``x`` is one of its arrays; ``xp`` has the
    namespace functions the rules use plus ``cast_scalar(value, like)`` and
    ``float32_scalar(value)``."""
    if all(xp is not known for _, known in _REGISTERED):
        _REGISTERED.append((is_member, xp))


def _registered(*values: Any) -> Any:
    for is_member, xp in _REGISTERED:
        if any(is_member(v) for v in values):
            return xp
    return None


def namespace(x: Any) -> ModuleType:
    """The array library of ``x``: ``numpy``, ``torch`` or ``jax.numpy`` (or a library added
    with :func:`register_namespace`)."""
    if is_torch(x):
        return sys.modules["torch"]
    if is_jax(x):
        import jax.numpy as jnp

        return jnp
    if _REGISTERED and (xp := _registered(x)) is not None:
        return xp
    return np


def cast_scalar(value: Any, like: Any) -> Any:
    """``value`` as a 0-d array of ``like``'s dtype (Keras: ``ops.cast(value, var.dtype)``).

    Scalar hyperparameter arithmetic (``beta_1 ** t``, ``1 - beta_2 ** t``) is done on these,
    so it rounds in the variable's precision exactly as Keras's does.
    """
    if is_torch(like):
        torch = sys.modules["torch"]
        if isinstance(value, torch.Tensor):
            return value.to(dtype=like.dtype)
        return torch.tensor(value, dtype=like.dtype)
    if _REGISTERED and (xp := _registered(like)) is not None:
        return xp.cast_scalar(value, like)
    if is_jax(like) or is_jax(value):
        import jax.numpy as jnp

        return jnp.asarray(value, dtype=like.dtype)
    return np.asarray(value, dtype=like.dtype)


def float32_scalar(value: Any) -> Any:
    """``value`` as a float32 scalar (a JAX array when ``value`` is one, e.g. under jit)."""
    if is_jax(value):
        import jax.numpy as jnp

        return jnp.asarray(value, dtype=jnp.float32)
    if is_torch(value):
        return float32_scalar(float(value))
    if _REGISTERED and (xp := _registered(value)) is not None:
        return xp.float32_scalar(value)
    return np.float32(value)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array with the values of ``x`` (a copy for torch and JAX arrays)."""
    if is_torch(x):
        x = x.detach()
        if x.dtype == sys.modules["torch"].bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


class Ops:
    """What :mod:`kerasopt.engine` needs from an array library besides arithmetic and the
    namespace functions: control flow and row access. One instance per library
    (:func:`ops_for`); NumPy and torch branch in Python and write rows in place, JAX traces
    both branches (``lax.cond``) and returns new arrays."""

    name = "numpy"
    traced = False

    @staticmethod
    def cond(predicate: Any, if_true: Any, if_false: Any, operand: Any) -> Any:
        """``if_true(operand)`` where ``predicate`` holds, else ``if_false(operand)``."""
        return if_true(operand) if predicate else if_false(operand)

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        return np.where(condition, x, y)

    @staticmethod
    def zeros_like(x: Any) -> Any:
        return np.zeros_like(x)

    @staticmethod
    def ones_like(x: Any) -> Any:
        return np.ones_like(x)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return x.astype(dtype, copy=False)

    @staticmethod
    def take_rows(x: Any, rows: Any) -> Any:
        return x[rows]

    @staticmethod
    def put_rows(x: Any, rows: Any, values: Any) -> Any:
        """``x`` with ``x[rows] = values`` (in place for NumPy and torch)."""
        x[rows] = values
        return x

    @staticmethod
    def to_dense(values: Any, rows: Any, shape: tuple[int, ...]) -> Any:
        dense = np.zeros(shape, dtype=values.dtype)
        np.add.at(dense, np.asarray(rows), values)
        return dense

    @staticmethod
    def all_finite(arrays: list[Any]) -> Any:
        return all(bool(np.all(np.isfinite(a))) for a in arrays)


class _TorchOps(Ops):
    name = "torch"

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        return sys.modules["torch"].where(condition, x, y)

    @staticmethod
    def zeros_like(x: Any) -> Any:
        return sys.modules["torch"].zeros_like(x)

    @staticmethod
    def ones_like(x: Any) -> Any:
        return sys.modules["torch"].ones_like(x)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return x.to(dtype)

    @staticmethod
    def take_rows(x: Any, rows: Any) -> Any:
        return x.index_select(0, rows)

    @staticmethod
    def put_rows(x: Any, rows: Any, values: Any) -> Any:
        with sys.modules["torch"].no_grad():
            return x.index_copy_(0, rows, values.to(x.dtype))

    @staticmethod
    def to_dense(values: Any, rows: Any, shape: tuple[int, ...]) -> Any:
        torch = sys.modules["torch"]
        dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
        return dense.index_add_(0, rows.long(), values)

    @staticmethod
    def all_finite(arrays: list[Any]) -> Any:
        torch = sys.modules["torch"]
        return all(bool(torch.isfinite(a).all()) for a in arrays)


class _JaxOps(Ops):
    name = "jax"
    traced = True

    @staticmethod
    def cond(predicate: Any, if_true: Any, if_false: Any, operand: Any) -> Any:
        if isinstance(predicate, (bool, np.bool_)):  # known now: no need to trace both
            return if_true(operand) if predicate else if_false(operand)
        import jax

        return jax.lax.cond(predicate, if_true, if_false, operand)

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        import jax.numpy as jnp

        return jnp.where(condition, x, y)

    @staticmethod
    def zeros_like(x: Any) -> Any:
        import jax.numpy as jnp

        return jnp.zeros_like(x)

    @staticmethod
    def ones_like(x: Any) -> Any:
        import jax.numpy as jnp

        return jnp.ones_like(x)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return x.astype(dtype)

    @staticmethod
    def take_rows(x: Any, rows: Any) -> Any:
        # Rows padded with the out-of-range row ``len(x)`` (fixed-size deduplication) read 0.
        return x.at[rows].get(mode="fill", fill_value=0)

    @staticmethod
    def put_rows(x: Any, rows: Any, values: Any) -> Any:
        return x.at[rows].set(values.astype(x.dtype), mode="drop")

    @staticmethod
    def to_dense(values: Any, rows: Any, shape: tuple[int, ...]) -> Any:
        import jax.numpy as jnp

        return jnp.zeros(shape, values.dtype).at[rows].add(values, mode="drop")

    @staticmethod
    def all_finite(arrays: list[Any]) -> Any:
        import jax.numpy as jnp

        checks = [jnp.all(jnp.isfinite(a)) for a in arrays]
        return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


_OPS = {"numpy": Ops(), "torch": _TorchOps(), "jax": _JaxOps()}


def ops_for(x: Any) -> Ops:
    """The :class:`Ops` of ``x``'s library."""
    if is_torch(x):
        return _OPS["torch"]
    if is_jax(x):
        return _OPS["jax"]
    return _OPS["numpy"]
