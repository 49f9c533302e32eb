"""Array namespaces: which library an array belongs to, and how to make scalars in it.

The update rules in :mod:`kerasopt.algorithms` and :mod:`kerasopt.pipeline` are written
once, with arithmetic operators and a handful of namespace functions (``sqrt``,
``maximum``, ``abs``, ``clip``, ``sum``, ``where``) that NumPy, PyTorch and
``jax.numpy`` all provide. This module finds the namespace of an array and casts Python
numbers to an array's dtype the way Keras does (``ops.cast(value, variable.dtype)``).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_jax(x: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def namespace(x: Any) -> ModuleType:
    """The array library of ``x``: ``numpy``, ``torch`` or ``jax.numpy``."""
    if is_torch(x):
        return sys.modules["torch"]
    if is_jax(x):
        import jax.numpy as jnp

        return jnp
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
    return np.float32(value)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array with the values of ``x`` (a copy for torch and JAX arrays)."""
    if is_torch(x):
        x = x.detach()
        if x.dtype == sys.modules["torch"].bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)
