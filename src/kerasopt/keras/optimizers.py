"""``kerasopt.keras.Adam``, ``Adamax`` and ``AdamW``: Keras optimizers whose step is kerasopt's.

Each class subclasses Keras's own (``keras.optimizers.Adam`` ...): the same constructor
arguments and defaults, the same variables (built by Keras's ``build``, so checkpoints and
``.keras`` files have Keras's layout), Keras's ``get_config`` plus ``sparse_updates``, and
Keras's readable ``update_step``. What changes is how one ``apply()`` runs, per backend:

* **torch**: the whole step (loss-scale division, accumulation, clipping, weight decay, the
  update rule, EMA and its overwrite) in one fused in-place kernel launch over every
  variable (:mod:`kerasopt.kernels`: numba on the CPU, Triton on CUDA), on the variables'
  own tensors (:mod:`kerasopt.keras._torch`); kept out of ``torch.compile``'s graph.
* **JAX**: ``stateless_apply`` is kerasopt's functional pipeline (today
  :mod:`kerasopt.optax`'s transformation), traced into the trainer's ``jit``: one XLA
  computation per train step (:mod:`kerasopt.keras._jax`).
* **TensorFlow**: kerasopt's pipeline and pure rules on ``tf.Tensor`` s inside ``fit``'s
  ``tf.function`` (XLA too), with lazy sparse updates of ``tf.IndexedSlices`` gradients
  (:mod:`kerasopt.keras._tensorflow`).

What a backend path does not cover runs Keras's own step (this class's parent), documented
in ``docs/keras.md``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import keras

from kerasopt import validation
from kerasopt.keras import _algorithms

__all__ = ["Adam", "AdamW", "Adamax", "FusedOptimizer"]

SPARSE_UPDATES = ("lazy", "dense")

_BACKEND = keras.backend.backend()


def _backend_module():
    """The module that runs the step on this process's Keras backend, or None (Keras's own
    step then runs, e.g. on the NumPy or OpenVINO backends)."""
    if _BACKEND == "torch":
        from kerasopt.keras import _torch

        return _torch
    if _BACKEND == "jax":
        from kerasopt.keras import _jax

        return _jax
    if _BACKEND == "tensorflow":
        from kerasopt.keras import _tensorflow

        return _tensorflow
    return None


def _outside_compiled_graph(method):
    """On the torch backend, ``method`` excluded from ``torch.compile`` (``jit_compile=True``):
    the compiled train step breaks its graph at the optimizer call and runs the step eagerly
    (the fused kernels are opaque to Dynamo)."""
    if _BACKEND == "torch":
        import torch

        return torch.compiler.disable(method)
    return method


class FusedOptimizer:
    """The part every ``kerasopt.keras`` optimizer shares (mixed in before the Keras class).

    Adds ``sparse_updates`` to the Keras class's arguments, and routes ``apply`` /
    ``stateless_apply`` to the backend's kerasopt step.
    """

    _algorithm: ClassVar[_algorithms.KerasAlgorithm]
    _keras_parameters: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        keras_class = next(c for c in cls.__mro__[1:] if c.__module__.startswith("keras."))
        cls._algorithm = _algorithms.algorithm(keras_class.__name__)
        signature = inspect.signature(keras_class.__init__)
        parameters = [p for name, p in signature.parameters.items() if name != "self"]
        cls._keras_parameters = frozenset(
            p.name for p in parameters if p.kind is not p.VAR_KEYWORD
        )
        sparse = inspect.Parameter("sparse_updates", inspect.Parameter.KEYWORD_ONLY,
                                   default="lazy", annotation=str)
        position = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD),
                        len(parameters))
        parameters.insert(position, sparse)
        cls.__signature__ = signature.replace(parameters=parameters)

    def __init__(self, *args: Any, sparse_updates: str = "lazy", **kwargs: Any) -> None:
        unknown = {k: v for k, v in kwargs.items()
                   if k not in self._keras_parameters and k != "decay"}
        validation.unknown_keywords(type(self).__name__, unknown)
        if sparse_updates not in SPARSE_UPDATES:
            raise ValueError(
                f"Argument `sparse_updates` must be 'lazy' or 'dense'; received "
                f"sparse_updates={sparse_updates!r}."
            )
        super().__init__(*args, **kwargs)
        _check_hyperparameters(self)
        self.sparse_updates = sparse_updates
        # The backend's cached step plan; set past Keras's attribute tracking (it holds
        # backend tensors, not state to save).
        object.__setattr__(self, "_kerasopt_plan", None)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["sparse_updates"] = self.sparse_updates
        return config

    @_outside_compiled_graph
    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        module = _backend_module()
        if module is not None and module.apply(self, grads, trainable_variables):
            return None
        return super().apply(grads, trainable_variables)

    def stateless_apply(self, optimizer_variables: Any, grads: Any,
                        trainable_variables: Any) -> tuple[list[Any], list[Any]]:
        module = _backend_module()
        if module is not None and hasattr(module, "stateless_apply"):
            result = module.stateless_apply(self, optimizer_variables, grads,
                                            trainable_variables)
            if result is not None:
                return result
        return super().stateless_apply(optimizer_variables, grads, trainable_variables)


def _number(value: Any) -> Any:
    """A 0-d tensor (Keras allows "a constant float tensor") as a Python float."""
    if not validation.is_real(value) and not callable(value) and hasattr(value, "__float__"):
        return float(value)
    return value


def _check_hyperparameters(optimizer: Any) -> None:
    """kerasopt's checks of the values Keras accepts without a check (a negative rate,
    ``beta_1 = 1``, ``epsilon = 0``): named errors at construction."""
    rate = optimizer._learning_rate
    if isinstance(rate, keras.Variable):
        validation.real("learning_rate", float(keras.ops.convert_to_numpy(rate.value)),
                        minimum=0.0,
                        allowed="a finite float >= 0, a LearningRateSchedule, or a callable")
    for name in ("beta_1", "beta_2"):
        validation.beta(name, _number(getattr(optimizer, name)))
    validation.real("epsilon", _number(optimizer.epsilon), minimum=0.0, min_inclusive=False,
                    allowed="a finite float > 0")
    for name in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"):
        value = getattr(optimizer, name)
        if value is not None:
            validation.real(name, value, minimum=0.0, allowed="None or a finite float >= 0")
    if optimizer.loss_scale_factor is not None:
        validation.real("loss_scale_factor", optimizer.loss_scale_factor, minimum=0.0,
                        min_inclusive=False, allowed="None or a finite float > 0")


@keras.saving.register_keras_serializable(package="kerasopt")
class Adam(FusedOptimizer, keras.optimizers.Adam):
    """Keras 3's Adam (``keras.optimizers.Adam``: same arguments, defaults, variables and
    numerics), with kerasopt's fused step.

    Per variable, with ``t = iterations + 1`` and every scalar cast to the variable's
    dtype::

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        v_hat = max(v_hat, v)                      # amsgrad; v_hat replaces v below
        w = w - m * alpha / (sqrt(v) + epsilon)

    after Keras's pipeline (loss-scale division, gradient accumulation, clipping, decoupled
    weight decay) and followed by the EMA of the weights.

    Args:
        sparse_updates: ``"lazy"`` (default): a ``tf.IndexedSlices`` gradient (an embedding
            lookup on the TensorFlow backend) moves only the rows it touches, in the
            variable and in every slot, duplicate indices summed first. ``"dense"``: Keras
            3's result (it densifies). The torch and JAX backends give dense gradients.
        Every other argument is ``keras.optimizers.Adam``'s.
    """


@keras.saving.register_keras_serializable(package="kerasopt")
class AdamW(FusedOptimizer, keras.optimizers.AdamW):
    """Keras 3's AdamW (``keras.optimizers.AdamW``: Adam with decoupled weight decay,
    ``weight_decay=0.004`` by default), with kerasopt's fused step: each step first does
    ``w = w - w * weight_decay * lr`` (excluding what ``exclude_from_weight_decay`` names),
    then :class:`Adam`'s update. ``sparse_updates`` as for :class:`Adam`."""


@keras.saving.register_keras_serializable(package="kerasopt")
class Adamax(FusedOptimizer, keras.optimizers.Adamax):
    """Keras 3's Adamax (``keras.optimizers.Adamax``: same arguments, defaults, variables and
    numerics), with kerasopt's fused step.

    Per variable, with ``t = iterations + 1`` and every scalar cast to the variable's
    dtype::

        m = m + (g - m) * (1 - beta_1)
        u = max(beta_2 * u, |g|)
        w = w - lr * m / ((1 - beta_1**t) * (u + epsilon))

    after Keras's pipeline and followed by the EMA, as for :class:`Adam`. With
    ``sparse_updates="lazy"`` (default) an embedding's ``tf.IndexedSlices`` gradient moves only
    the rows it touches (tf.keras's documented lazy Adamax); ``"dense"`` gives Keras 3's
    result.
    """
