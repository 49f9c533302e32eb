"""The algorithms: each module here writes one update rule once, as a pure function over
NumPy, torch or JAX arrays, and registers its :class:`kerasopt.specs.AlgorithmSpec`.

Every module of this package is imported here, so a new algorithm is one new module;
:func:`registered` and :func:`get` read the registry with all of them loaded.
"""

import importlib
import pkgutil
from collections.abc import Iterator

from kerasopt.algorithms.adam import adam_update
from kerasopt.algorithms.adamax import adamax_update
from kerasopt.specs import REGISTRY, AlgorithmSpec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def registered() -> Iterator[AlgorithmSpec]:
    """Every registered algorithm, in registration order."""
    return iter(list(REGISTRY.values()))


def get(name: str) -> AlgorithmSpec:
    """The algorithm registered as ``name``: its registry name (``"adam"``) or its Keras
    class name (``"Adam"``), case-insensitive."""
    wanted = str(name).lower()
    for spec in REGISTRY.values():
        if wanted in (spec.name, spec.keras_name.lower()):
            return spec
    known = ", ".join(spec.keras_name for spec in REGISTRY.values())
    raise KeyError(f"No algorithm named {name!r}; the registered ones are {known}.")


__all__ = ["adam_update", "adamax_update", "get", "registered"]
