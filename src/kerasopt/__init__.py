"""kerasopt: Keras 3's Adam, Adamax and AdamW, with Keras's exact numerics, for NumPy,
PyTorch and JAX.

``kerasopt.Adam``, ``Adamax``, ``AdamW``: one class per registered algorithm
(:mod:`kerasopt.specs`). ``kerasopt.torch``, ``kerasopt.optax`` and ``kerasopt.keras`` hold
the PyTorch, JAX and Keras front ends; they are imported on first use so that
``import kerasopt`` needs only NumPy.
"""

from kerasopt import schedules
from kerasopt.checkpoint import CheckpointError, load, save
from kerasopt.loss_scale import LossScaleOptimizer
from kerasopt.optimizer import Optimizer
from kerasopt.optimizers import CLASSES as _CLASSES
from kerasopt.serialization import register_serializable
from kerasopt.serialization_api import deserialize, get, serialize
from kerasopt.sparse import IndexedSlices
from kerasopt.variable import Variable

__version__ = "0.1.0"

globals().update(_CLASSES)

__all__ = [
    *_CLASSES,
    "CheckpointError",
    "IndexedSlices",
    "LossScaleOptimizer",
    "Optimizer",
    "Variable",
    "deserialize",
    "get",
    "load",
    "register_serializable",
    "save",
    "schedules",
    "serialize",
]


def __getattr__(name: str):
    if name in ("torch", "optax", "keras"):
        import importlib

        return importlib.import_module(f"kerasopt.{name}")
    raise AttributeError(f"module 'kerasopt' has no attribute {name!r}")
