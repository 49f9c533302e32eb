"""The algorithm registry: every optimizer algorithm is one :class:`AlgorithmSpec`.

A spec holds everything about an algorithm that is not Keras's shared pipeline: its names,
its state (slots), its hyperparameters with their defaults and checks, its update rule as a
pure function, and the scalars its fused kernel body needs. Everything else reads the
registry (through :mod:`kerasopt.algorithms`, which loads the built-in algorithms): the
frontends build their classes and factories from it (``kerasopt.Adam``,
``kerasopt.torch.Adam``, ``kerasopt.optax.adam``, ``kerasopt.keras.Adam``), and checkpoints,
Keras interop, ``kerasopt verify``, the benchmarks, the R wrappers and the test database
iterate over it. Adding an algorithm is one module in :mod:`kerasopt.algorithms` that calls
:func:`register`.

This module depends on nothing else in kerasopt (the bottom layer, with ``validation`` and
``backend``); :mod:`kerasopt.algorithms` registers the built-in algorithms into it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hyperparameter:
    """One of an algorithm's own arguments (``beta_1``, ``epsilon``, ``amsgrad``...).

    Attributes:
        name: The Keras argument name.
        default: Keras's default.
        check: ``check(name, value) -> value``: raises TypeError/ValueError naming the
            argument, the value and what is allowed; returns the value to keep.
        doc: One line for the generated docstrings.
        callable_ok: The value may also be a zero-argument callable returning it (Keras
            documents this for Adam's betas), resolved and checked again at every step.
        adds_slot: For a boolean that adds an optional slot (amsgrad adds
            ``velocity_hat``), that slot's name; such a flag is not passed to the rule.
    """

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str
    callable_ok: bool = False
    adds_slot: str | None = None

    def validated(self, value: Any) -> Any:
        """``value`` checked (a callable is accepted as is where ``callable_ok``)."""
        if self.callable_ok and callable(value):
            return value
        return self.check(self.name, value)

    def resolved(self, value: Any) -> Any:
        """The value for this step: a callable is called and its result checked."""
        if not (self.callable_ok and callable(value)):
            return value
        result = value()
        try:
            return float(self.check(self.name, _as_number(result)))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"The callable given as `{self.name}` returned {result!r}: {error}"
            ) from error


def _as_number(value: Any) -> Any:
    """A 0-d array or tensor as a Python float (other values unchanged, for the check)."""
    if not isinstance(value, (bool, str, int, float)) and hasattr(value, "__float__"):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return value


@dataclass(frozen=True)
class AlgorithmSpec:
    """An optimizer algorithm: what kerasopt's frontends need to know about it.

    Attributes:
        name: Registry key, lower case (``"adam"``); also the optax factory's name and the
            optimizer's default ``name``.
        keras_name: The class name in Keras and in every kerasopt frontend (``"Adam"``).
        doc: The update rule's math, for the generated docstrings.
        slots: The per-variable state, in Keras's order (``("momentum", "velocity")``).
        hyperparameters: The algorithm's own arguments, in Keras's signature order.
        rule: ``rule(w, g, *slots, learning_rate, step, **numeric) -> (w, *slots)``: one
            step as a pure function over NumPy, torch or JAX arrays, every scalar cast to
            the variable's dtype as Keras does (``numeric``: the hyperparameters that add no
            slot, resolved).
        kernel: The fused kernel body (:mod:`kerasopt.kernels`) that runs ``rule`` in
            place, or None (the frontends then run ``rule``).
        kernel_scalars: ``kernel_scalars(s, learning_rate, step, **numeric) -> dict``: the
            per-step scalars of that kernel body, rounded exactly as ``rule`` rounds them
            (``s`` is :class:`kerasopt.kernels.scalars.ScalarMath`).
        base_defaults: Defaults of the shared options that differ from Keras's base
            optimizer (AdamW: ``{"weight_decay": 0.004}``).
        required: Shared options that may not be None (AdamW: ``("weight_decay",)``).
        signature: The leading arguments of Keras's constructor, in its order, when they
            are not ``learning_rate`` then the algorithm's own (AdamW puts
            ``weight_decay`` second); the other shared options follow in Keras's order.
        r_name: The keras3 R function (``"optimizer_adam"``).
    """

    name: str
    keras_name: str
    doc: str
    slots: tuple[str, ...]
    hyperparameters: tuple[Hyperparameter, ...]
    rule: Callable[..., tuple[Any, ...]]
    kernel: str | None = None
    kernel_scalars: Callable[..., dict[str, Any]] | None = None
    base_defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    signature: tuple[str, ...] = ()
    r_name: str = ""

    @property
    def default_name(self) -> str:
        """Keras's automatic name: the class name in snake case (``"adam_w"``)."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.keras_name).lower()

    @property
    def leading_arguments(self) -> tuple[str, ...]:
        """The constructor's arguments before the shared options, in Keras's order."""
        return self.signature or ("learning_rate", *(h.name for h in self.hyperparameters))

    @property
    def optional_slots(self) -> tuple[str, ...]:
        """Slots that a boolean hyperparameter adds (``velocity_hat`` with amsgrad)."""
        return tuple(h.adds_slot for h in self.hyperparameters if h.adds_slot)

    @property
    def all_slots(self) -> tuple[str, ...]:
        """Every slot the algorithm can have, optional ones last."""
        return self.slots + self.optional_slots

    def slot_names(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The slots for these hyperparameter values (an optional slot where its flag is
        set)."""
        extra = tuple(h.adds_slot for h in self.hyperparameters
                      if h.adds_slot and values.get(h.name, h.default))
        return self.slots + extra

    @property
    def numeric(self) -> tuple[Hyperparameter, ...]:
        """The hyperparameters the rule takes (those that add no slot)."""
        return tuple(h for h in self.hyperparameters if h.adds_slot is None)

    def hyperparameter(self, name: str) -> Hyperparameter:
        for h in self.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        """The algorithm's own arguments with their defaults."""
        return {h.name: h.default for h in self.hyperparameters}

    def validated(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every hyperparameter of ``values`` (defaults for the missing ones), checked."""
        return {h.name: h.validated(values.get(h.name, h.default))
                for h in self.hyperparameters}

    def resolved(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's keyword arguments for one step: the numeric hyperparameters of
        ``values``, callables resolved."""
        return {h.name: h.resolved(values[h.name]) for h in self.numeric}


REGISTRY: dict[str, AlgorithmSpec] = {}
"""Every registered algorithm by name. Read it through :func:`kerasopt.algorithms.registered`
and :func:`kerasopt.algorithms.get`, which first load the built-in algorithms."""


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add ``spec`` to the registry (its ``name`` and ``keras_name`` must be new)."""
    for existing in REGISTRY.values():
        if spec.name == existing.name or spec.keras_name == existing.keras_name:
            raise ValueError(
                f"An algorithm named {spec.name!r} / {spec.keras_name!r} is already "
                "registered."
            )
    REGISTRY[spec.name] = spec
    return spec
