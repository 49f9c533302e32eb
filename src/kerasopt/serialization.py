"""Keras's dict format for optimizers, schedules and registered functions.

A serialized object is ``{"module": ..., "class_name": ..., "config": {...},
"registered_name": ...}``. Deserializing resolves ``class_name`` (or ``registered_name``)
against kerasopt's own registry only: built-in classes, objects registered with
:func:`register_serializable`, and the ``custom_objects`` the caller passes. The
``module`` field is never imported, so a config from an untrusted source is data, not code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

_BUILTINS: dict[str, Any] = {}
_REGISTERED: dict[str, Any] = {}
_REGISTERED_NAMES: dict[int, str] = {}

_MODULES = {"optimizer": "keras.optimizers", "schedule": "keras.optimizers.schedules"}


def builtin(kind: str) -> Callable[[type], type]:
    """Class decorator: a kerasopt class that Keras knows under the same name."""

    def register(cls: type) -> type:
        cls._keras_module = _MODULES[kind]
        _BUILTINS[cls.__name__] = cls
        return cls

    return register


def register_serializable(package: str = "Custom", name: str | None = None):
    """Decorator registering a class or function for ``deserialize`` as ``"package>name"``.

    Only registered objects (and kerasopt's own classes) can be named by a config.
    """
    if not isinstance(package, str) or ">" in package:
        raise ValueError(
            f"Argument `package` must be a string without '>'; received package={package!r}."
        )

    def register(obj: Any) -> Any:
        registered_name = f"{package}>{name or obj.__name__}"
        _REGISTERED[registered_name] = obj
        _REGISTERED_NAMES[id(obj)] = registered_name
        return obj

    return register


def registered_name_of(obj: Any) -> str | None:
    return _REGISTERED_NAMES.get(id(obj))


def serialize(obj: Any) -> Any:
    """``obj`` in Keras's dict format (``None`` stays ``None``)."""
    if obj is None:
        return None
    if hasattr(obj, "get_config"):
        cls = type(obj)
        registered = registered_name_of(cls)
        return {
            "module": getattr(cls, "_keras_module", cls.__module__) if not registered
            else cls.__module__,
            "class_name": cls.__name__,
            "config": obj.get_config(),
            "registered_name": registered,
        }
    if callable(obj):
        name = getattr(obj, "__name__", type(obj).__name__)
        return {
            "module": getattr(obj, "__module__", None),
            "class_name": "function",
            "config": name,
            "registered_name": registered_name_of(obj) or name,
        }
    raise TypeError(f"Cannot serialize {obj!r}: it has no get_config() and is not callable.")


MAX_DEPTH = 32
"""How deeply serialized objects may nest (an optimizer in a LossScaleOptimizer with a
schedule as its rate is 3 levels); deeper configs are refused, not recursed into."""
_depth = threading.local()


def serialize_if_callable(value: Any) -> Any:
    """A number as is; a callable hyperparameter (e.g. a callable beta) in Keras's format."""
    return serialize(value) if callable(value) else value


def deserialize(
    config: Any, custom_objects: Mapping[str, Any] | None = None, *, kind: str | None = None
) -> Any:
    """The object that ``config`` (a Keras dict or a built-in class name) describes."""
    depth = getattr(_depth, "value", 0)
    if depth >= MAX_DEPTH:
        raise ValueError(
            f"A serialized object is nested more than {MAX_DEPTH} levels deep; kerasopt "
            "refuses it (a corrupted or hostile config)."
        )
    _depth.value = depth + 1
    try:
        return _deserialize(config, custom_objects, kind)
    finally:
        _depth.value = depth


def _deserialize(config: Any, custom_objects: Mapping[str, Any] | None, kind: str | None) -> Any:
    custom_objects = dict(custom_objects or {})
    if isinstance(config, str):
        return _resolve(config, None, custom_objects, kind)()
    if not isinstance(config, Mapping):
        raise TypeError(
            f"A serialized object must be a dict or a class name string; received {config!r}."
        )
    class_name = config.get("class_name")
    registered = config.get("registered_name")
    if not isinstance(class_name, str) or not isinstance(registered, (str, type(None))):
        raise ValueError(
            "A serialized object needs a string `class_name` (and `registered_name`, when "
            f"present, must be a string); received class_name={class_name!r}, "
            f"registered_name={registered!r}."
        )
    inner = config.get("config")
    if class_name == "function":
        key = registered if registered is not None else inner
        if not isinstance(key, str):
            raise ValueError(f"A serialized function needs a name; received config={inner!r}.")
        function = custom_objects.get(key) or _REGISTERED.get(key)
        if function is None or not callable(function):
            raise ValueError(
                f"Unknown function {key!r}: kerasopt resolves only functions registered with "
                "kerasopt.register_serializable() or passed in `custom_objects`."
            )
        return function
    if not isinstance(inner, Mapping):
        raise TypeError(
            f"The `config` of a serialized {class_name!r} must be a dict; received {inner!r}."
        )
    cls = _resolve(class_name, registered, custom_objects, kind)
    return cls.from_config(dict(inner))


def _resolve(class_name: str, registered: str | None, custom: dict, kind: str | None) -> Any:
    candidates = [custom.get(registered), custom.get(class_name), _REGISTERED.get(registered)]
    builtin_cls = _BUILTINS.get(class_name) or _case_insensitive(class_name)
    if builtin_cls is not None and (kind is None or builtin_cls._keras_module == _MODULES[kind]):
        candidates.append(builtin_cls)
    for candidate in candidates:
        if candidate is not None:
            return candidate
    known = sorted(n for n, c in _BUILTINS.items() if kind is None or c._keras_module ==
                   _MODULES[kind])
    raise ValueError(
        f"Unknown {kind or 'object'} class {class_name!r} (registered_name={registered!r}). "
        f"kerasopt knows {known} and classes registered with kerasopt.register_serializable(); "
        "it never imports the module a config names."
    )


def _case_insensitive(name: str) -> Any:
    lowered = name.lower()
    for key, cls in _BUILTINS.items():
        if key.lower() == lowered:
            return cls
    return None
