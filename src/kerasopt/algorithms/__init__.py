"""The update rules, each written once as a pure function over NumPy, torch or JAX arrays."""

from kerasopt.algorithms.adam import adam_update
from kerasopt.algorithms.adamax import adamax_update

__all__ = ["adam_update", "adamax_update"]
