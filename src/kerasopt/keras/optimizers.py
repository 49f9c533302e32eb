"""``kerasopt.keras.Adam``, ``Adamax`` and ``AdamW``: Keras optimizers whose step is kerasopt's.

One class per registered algorithm (:mod:`kerasopt.specs`) that Keras has
(:func:`keras_class`), subclassing Keras's own (``keras.optimizers.Adam`` ...): the same
constructor arguments and defaults, the same variables (built by Keras's ``build``, so
checkpoints and ``.keras`` files have Keras's layout), Keras's ``get_config`` plus
``sparse_updates``, and Keras's readable ``update_step``. What changes is how one
``apply()`` runs, per backend:

* **torch**: the whole step (loss-scale division, accumulation, clipping, weight decay, the
  update rule, EMA and its overwrite) in one fused in-place kernel launch over every
  variable (:mod:`kerasopt.kernels`: numba on the CPU, Triton on CUDA), on the variables'
  own tensors (:mod:`kerasopt.keras._torch`); kept out of ``torch.compile``'s graph.
* **JAX**: ``stateless_apply`` is :func:`kerasopt.engine.apply` (Keras's ``apply()`` written
  once) with the spec's rule, traced into the trainer's ``jit``: one XLA computation per
  train step (:mod:`kerasopt.keras._jax`).
* **TensorFlow**: the same engine on ``tf.Tensor`` s inside ``fit``'s ``tf.function`` (XLA
  too), with lazy sparse updates of ``tf.IndexedSlices`` gradients
  (:mod:`kerasopt.keras._tensorflow`).

What a backend path does not cover runs Keras's own step (this class's parent), documented
in ``docs/keras.md``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import keras

from kerasopt import algorithms, config, specs, validation

__all__ = ["CLASSES", "FusedOptimizer", "keras_class"]

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
    """What every ``kerasopt.keras`` optimizer adds to its Keras class (mixed in before it).

    The class's algorithm is a registered :class:`~kerasopt.specs.AlgorithmSpec`
    (``spec``); Keras's ``build`` creates the variables (this class records which variable
    is which variable's slot, accumulator or average as they are made), ``sparse_updates``
    is added to Keras's arguments, and ``apply`` / ``stateless_apply`` run the backend's
    kerasopt step.
    """

    spec: ClassVar[specs.AlgorithmSpec]
    _keras_parameters: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        keras_parent = next(c for c in cls.__mro__[1:] if c.__module__.startswith("keras."))
        signature = inspect.signature(keras_parent.__init__)
        parameters = [p for name, p in signature.parameters.items() if name != "self"]
        cls._keras_parameters = frozenset(
            p.name for p in parameters if p.kind is not p.VAR_KEYWORD)
        sparse = inspect.Parameter("sparse_updates", inspect.Parameter.KEYWORD_ONLY,
                                   default=config.option("sparse_updates").default,
                                   annotation=str)
        position = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD),
                        len(parameters))
        parameters.insert(position, sparse)
        cls.__signature__ = signature.replace(parameters=parameters)

    def __init__(self, *args: Any, sparse_updates: str = "lazy", **kwargs: Any) -> None:
        owner = type(self).__name__
        unknown = {k: v for k, v in kwargs.items()
                   if k not in self._keras_parameters and k != "decay"}
        validation.unknown_keywords(owner, unknown)
        named = inspect.signature(type(self)).bind(*args, sparse_updates=sparse_updates,
                                                   **kwargs).arguments
        named = {k: v for k, v in named.items() if k not in ("name", "kwargs", "decay")}
        # kerasopt's checks of what Keras takes unchecked (a negative rate, beta_1 = 1,
        # epsilon = 0...): the same messages as every other frontend.
        config.checked_options(self.spec, named, owner=owner, arrays_ok=True)
        super().__init__(*args, **kwargs)
        self.sparse_updates = sparse_updates
        # Set past Keras's attribute tracking: backend objects, not state to save.
        object.__setattr__(self, "_kerasopt_made", {})
        object.__setattr__(self, "_kerasopt_plan", None)

    def add_variable_from_reference(self, reference_variable: Any, name: Any = None,
                                    initializer: Any = "zeros") -> Any:
        variable = super().add_variable_from_reference(reference_variable, name=name,
                                                       initializer=initializer)
        self._kerasopt_made[id(reference_variable), name] = variable
        return variable

    def kerasopt_state(self, variable: Any) -> tuple[tuple[Any, ...], Any, Any]:
        """``(slots, accumulator, average)`` of a trainable ``variable``: its slot variables
        in the spec's order (the optional ones where on), its gradient accumulator and its
        EMA average (None where off)."""
        made = self._kerasopt_made
        key = id(variable)
        names = self.spec.slot_names({h.name: getattr(self, h.name)
                                      for h in self.spec.hyperparameters})
        return (tuple(made.get((key, name)) for name in names),
                made.get((key, "gradient_accumulator")), made.get((key, "average")))

    def kerasopt_hyperparameters(self) -> dict[str, Any]:
        """The rule's hyperparameters for this step (callables resolved, tensors read)."""
        return {h.name: _number(h.resolved(getattr(self, h.name))) for h in self.spec.numeric}

    def get_config(self) -> dict[str, Any]:
        config_ = super().get_config()
        config_["sparse_updates"] = self.sparse_updates
        return config_

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
    """A Keras variable or 0-d tensor hyperparameter as the backend tensor Keras's ops would
    read (a Python number unchanged)."""
    return value.value if isinstance(value, keras.Variable) else value


def keras_class(spec: specs.AlgorithmSpec) -> type:
    """``kerasopt.keras.<Name>`` for a registered algorithm: ``keras.optimizers.<Name>`` with
    :class:`FusedOptimizer` mixed in, registered with Keras as ``"kerasopt>Name"``."""
    parent = getattr(keras.optimizers, spec.keras_name)
    doc = (f"Keras 3's {spec.keras_name} (``keras.optimizers.{spec.keras_name}``: the same "
           "arguments, defaults, variables and numerics), with kerasopt's step.\n\n"
           f"{inspect.cleandoc(spec.doc)}\n\nafter Keras's pipeline (loss-scale division, "
           "gradient accumulation, clipping, decoupled weight decay) and followed by the EMA "
           "of the weights.\n\nArgs:\n    sparse_updates: ``\"lazy\"`` (default): a "
           "``tf.IndexedSlices`` gradient (an embedding lookup on the TensorFlow backend) "
           "moves only the rows it touches, in the variable and in every slot, duplicate "
           "indices summed first; ``\"dense\"``: Keras 3's result. The torch and JAX "
           f"backends give dense gradients.\n    Every other argument is "
           f"``keras.optimizers.{spec.keras_name}``'s.\n")
    cls = type(spec.keras_name, (FusedOptimizer, parent), {
        "spec": spec, "__doc__": doc, "__module__": __name__,
        "__qualname__": spec.keras_name,
    })
    return keras.saving.register_keras_serializable(package="kerasopt")(cls)


CLASSES: dict[str, type] = {
    spec.keras_name: keras_class(spec) for spec in algorithms.registered()
    if hasattr(keras.optimizers, spec.keras_name)
}
"""Every registered algorithm that Keras has, by Keras class name (``Adam``, ``Adamax``,
``AdamW``)."""

globals().update(CLASSES)
__all__ += list(CLASSES)
