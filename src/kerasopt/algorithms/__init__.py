"""The algorithms: each module here writes one update rule once, as a pure function over
NumPy, torch or JAX arrays, and registers its :class:`kerasopt.specs.AlgorithmSpec`.

Every module of this package is imported here, so a new algorithm is one new module.
"""

import importlib
import pkgutil

from kerasopt.algorithms.adam import adam_update
from kerasopt.algorithms.adamax import adamax_update

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["adam_update", "adamax_update"]
