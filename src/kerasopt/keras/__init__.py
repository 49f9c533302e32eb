"""``kerasopt.keras``: Keras 3's Adam, Adamax and AdamW as Keras optimizers with kerasopt's step.

One class per registered algorithm (:mod:`kerasopt.specs`) that Keras also has.

``kerasopt.keras.Adam(...)`` is a ``keras.optimizers.Adam`` (a subclass: the same arguments,
defaults, variables, ``get_config`` and saved files), plus ``sparse_updates``; use it where
Keras takes an optimizer: ``model.compile(optimizer=...)``, ``model.fit``,
``keras.optimizers.LossScaleOptimizer(...)``, ``model.save(".keras")`` /
``keras.models.load_model`` (the classes are registered as ``"kerasopt>Adam"`` ...; import
``kerasopt.keras`` before loading). Its ``apply()`` is kerasopt's: one fused kernel launch on
the torch backend, one traced XLA computation on JAX, kerasopt's pipeline with lazy sparse
updates on TensorFlow (see :mod:`kerasopt.keras.optimizers` and ``docs/keras.md``).

Importing this module imports Keras (``import kerasopt`` does not); Keras's backend is
whatever ``KERAS_BACKEND`` selects.
"""

from kerasopt.keras.optimizers import CLASSES, FusedOptimizer, keras_class

globals().update(CLASSES)

__all__ = ["CLASSES", "FusedOptimizer", "keras_class", *CLASSES]
