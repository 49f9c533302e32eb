"""``kerasopt.serialize`` / ``deserialize`` / ``get`` for optimizers (Keras's dict format)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kerasopt import algorithms, serialization
from kerasopt.optimizer import Optimizer


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """``optimizer`` as ``{"module", "class_name", "config", "registered_name"}``."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"serialize() expects a kerasopt optimizer; received {optimizer!r}.")
    return serialization.serialize(optimizer)


def deserialize(config: Any, custom_objects: Mapping[str, Any] | None = None) -> Optimizer:
    """An optimizer from a Keras/kerasopt dict or a class name ("adam", "Adamax").

    Only kerasopt's classes, registered classes and ``custom_objects`` are resolved; the
    dict's ``module`` is never imported.
    """
    return serialization.deserialize(config, custom_objects, kind="optimizer")


def get(identifier: Any) -> Optimizer | None:
    """An optimizer from an instance (returned as is), a class name, or a config dict;
    ``None`` stays ``None``, as in ``keras.optimizers.get``."""
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, (str, Mapping)):
        return deserialize(identifier)
    raise ValueError(
        "Could not interpret optimizer identifier: expected a kerasopt optimizer, a name such "
        f"as {', '.join(repr(s.name) for s in algorithms.registered())}, a config dict or None; "
        f"received {identifier!r}."
    )
