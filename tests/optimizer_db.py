"""The test database: every registered algorithm, for the tests that run over all of them
(as torch's ``OptimizerInfo`` list drives its generic optimizer tests).

A test parametrizes over ``ALGORITHMS`` (registry names: ``"adam"``, ``"adamax"``,
``"adamw"``) or ``KERAS_NAMES`` (class names, the same in Keras and every kerasopt
frontend) and gets the frontend's class or factory from the helpers below, so an algorithm
added to :mod:`kerasopt.algorithms` is tested everywhere without editing a test.
"""

from __future__ import annotations

from typing import Any

from kerasopt import algorithms, specs

SPECS = list(algorithms.registered())
ALGORITHMS = [spec.name for spec in SPECS]
KERAS_NAMES = [spec.keras_name for spec in SPECS]
KERNELS = sorted({spec.kernel for spec in SPECS if spec.kernel})
"""The fused kernel bodies the registered algorithms run on."""


def spec(name: str) -> specs.AlgorithmSpec:
    return algorithms.get(name)


def core_class(name: str) -> type:
    """``kerasopt.<KerasName>``."""
    import kerasopt

    return getattr(kerasopt, algorithms.get(name).keras_name)


def torch_class(name: str) -> type:
    """``kerasopt.torch.<KerasName>``."""
    import kerasopt.torch

    return getattr(kerasopt.torch, algorithms.get(name).keras_name)


def optax_factory(name: str) -> Any:
    """``kerasopt.optax.<name>``."""
    import kerasopt.optax

    return kerasopt.optax.FACTORIES[algorithms.get(name).name]


def with_slot_flags(name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, extra config)`` for the algorithm alone and with each flag that adds a slot
    switched on (Adam and AdamW with ``amsgrad``)."""
    s = algorithms.get(name)
    return [(name, {})] + [(name, {h.name: True}) for h in s.hyperparameters if h.adds_slot]


ALGORITHM_VARIANTS = [variant for name in ALGORITHMS for variant in with_slot_flags(name)]
"""Every algorithm, and again with each slot flag on: ``[("adam", {}), ("adam",
{"amsgrad": True}), ("adamax", {}), ...]``."""


def has_amsgrad(name: str) -> bool:
    """Whether the algorithm takes ``amsgrad`` (Adam and AdamW)."""
    return "amsgrad" in specs_of(name).defaults()


def specs_of(name: str) -> specs.AlgorithmSpec:
    return algorithms.get(name)


AMSGRAD = tuple(s.keras_name for s in SPECS if "amsgrad" in s.defaults())
"""The Keras names of the algorithms that take ``amsgrad``."""


def no_decay(name: str) -> dict[str, Any]:
    """The arguments that switch weight decay off: none, or ``weight_decay=0.0`` for an
    algorithm that refuses None (AdamW; a factor of exactly 1)."""
    return {"weight_decay": 0.0} if "weight_decay" in specs_of(name).required else {}
