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
