"""What ``kerasopt.keras`` needs to know about each algorithm, keyed by Keras's class name.

A local table until :mod:`kerasopt.specs` (the registry: one spec per algorithm with its
Keras class name, slots, hyperparameters, pure rule and kernel id) lands; then
:func:`algorithm` reads the registry instead and nothing else in this package names an
algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kerasopt.algorithms import adam_update, adamax_update


@dataclass(frozen=True)
class KerasAlgorithm:
    """One algorithm as ``kerasopt.keras`` runs it inside a Keras optimizer."""

    keras_class: str
    """The ``keras.optimizers`` class it subclasses (``"Adam"``)."""
    kernel: str
    """The id of the fused kernels and of ``kerasopt.optax``'s factory (``"adam"``)."""
    slots: tuple[str, ...]
    """The attributes of the Keras class that hold the slot variables (one list per slot,
    one variable per trainable variable), in the kernels' slot order."""
    optional_slot: tuple[str, str] | None
    """``(flag attribute, slot attribute)``: a further slot, used when the flag is true
    (Adam's ``amsgrad`` and ``_velocity_hats``)."""
    hyperparameters: tuple[str, ...]
    """The rule's hyperparameters, read from the optimizer's attributes of the same name."""
    rule: Callable[..., tuple[Any, ...]]
    """The pure update rule ``rule(w, g, *slots, learning_rate=, step=, **hyper)``, returning
    ``(w, *slots)``."""
    flags: tuple[str, ...] = ()
    """Boolean options passed on to ``kerasopt.optax``'s factory (``amsgrad``)."""

    def slot_attributes(self, optimizer: Any) -> tuple[str, ...]:
        """The slot attributes ``optimizer`` uses (with the optional slot when it is on)."""
        if self.optional_slot is not None and getattr(optimizer, self.optional_slot[0]):
            return (*self.slots, self.optional_slot[1])
        return self.slots


def _adam_rule(w, g, m, v, v_hat=None, **hyper):
    return adam_update(w, g, m, v, v_hat, **hyper)


_ADAM = dict(
    kernel="adam",
    slots=("_momentums", "_velocities"),
    optional_slot=("amsgrad", "_velocity_hats"),
    hyperparameters=("beta_1", "beta_2", "epsilon"),
    rule=_adam_rule,
    flags=("amsgrad",),
)

_TABLE = {
    "Adam": KerasAlgorithm(keras_class="Adam", **_ADAM),
    # Keras's AdamW is its Adam with a required weight decay (default 0.004): the same
    # variables, rule and kernels.
    "AdamW": KerasAlgorithm(keras_class="AdamW", **_ADAM),
    "Adamax": KerasAlgorithm(
        keras_class="Adamax",
        kernel="adamax",
        slots=("_m", "_u"),
        optional_slot=None,
        hyperparameters=("beta_1", "beta_2", "epsilon"),
        rule=adamax_update,
    ),
}


def algorithm(keras_class: str) -> KerasAlgorithm:
    """The algorithm behind ``keras.optimizers.<keras_class>``."""
    return _TABLE[keras_class]


def names() -> tuple[str, ...]:
    """The Keras class names ``kerasopt.keras`` provides."""
    return tuple(_TABLE)
