"""The NumPy optimizers of the registered algorithms: ``kerasopt.Adam``, ``kerasopt.Adamax``,
``kerasopt.AdamW``... one class per :class:`~kerasopt.specs.AlgorithmSpec`, each with
exactly Keras's constructor (arguments, order, defaults) plus kerasopt's own options.

A class is :class:`AlgorithmOptimizer` bound to its spec: its state is the spec's slots
(Keras's variable order), its ``update_step`` is the spec's rule, and its steps run through
the fused kernel named by the spec when one applies. Subclass it as you would Keras's
(override ``update_step`` to change the rule; the pipeline around it stays).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from kerasopt import algorithms, config, engine, serialization, specs
from kerasopt.backend import ops_for
from kerasopt.optimizer import Optimizer
from kerasopt.sparse import IndexedSlices
from kerasopt.variable import Variable


class AlgorithmOptimizer(Optimizer):
    """An optimizer whose algorithm is a registered spec (see the class of each one)."""

    spec: ClassVar[specs.AlgorithmSpec]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = self.spec
        bound = _signature(spec).bind(*args, **kwargs)
        values = {k: v for k, v in bound.arguments.items() if k != "kwargs"}
        values.update(bound.arguments.get("kwargs", {}))
        name = values.pop("name", None)
        checked = config.checked_options(spec, values, owner=type(self).__name__)
        base = {k: checked[k] for k in checked if k not in spec.defaults()}
        super().__init__(name=name, **base)
        for h in spec.hyperparameters:
            setattr(self, h.name, checked[h.name])

    # ----------------------------------------------------------------- state

    def build(self, var_list: Sequence[Variable]) -> None:
        if self.built:
            return
        super().build(var_list)
        spec = self.spec
        # Keras's order: the slots every variable has, interleaved per variable, then each
        # optional slot (amsgrad's velocity_hat) in a pass of its own.
        required = self.add_optimizer_variables(var_list, list(spec.slots))
        self._slots: dict[str, list[Variable]] = dict(zip(spec.slots, required))
        for name in spec.slot_names(self._hyperparameter_values())[len(spec.slots):]:
            self._slots[name] = self.add_optimizer_variables(var_list, name)

    def _slot_lists(self) -> list[list[Variable]]:
        return list(self._slots.values())

    def _hyperparameter_values(self) -> dict[str, Any]:
        return {h.name: getattr(self, h.name) for h in self.spec.hyperparameters}

    def _hyperparameters(self) -> dict[str, Any]:
        return self.spec.resolved(self._hyperparameter_values())

    def _uses_spec_rule(self) -> bool:
        return type(self).update_step is AlgorithmOptimizer.update_step

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        """Keras's per-variable step: the spec's rule on ``variable`` and its slots (only the
        touched rows for an ``IndexedSlices`` gradient), with ``t = iterations + 1``."""
        i = self._get_variable_index(variable)
        slots = [s[i] for s in self._slot_lists()]
        arguments = {"learning_rate": learning_rate, "step": self._iteration_count() + 1,
                     **self._hyperparameters()}
        rule = engine.spec_rule(self.spec)
        values = tuple(s.value for s in slots)
        if isinstance(gradient, IndexedSlices):
            rows_rule = engine.lazy_rows(rule, ops_for(variable.value))
            w, new_slots = rows_rule(i, variable.value, gradient, values, arguments, None)
        else:
            w, new_slots = rule(i, variable.value, gradient, values, arguments)
        for target, value in zip((variable, *slots), (w, *new_slots)):
            if value is not target.value:
                target.assign(value)

    # ----------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        config_ = super().get_config()
        for h in self.spec.hyperparameters:
            config_[h.name] = serialization.serialize_if_callable(getattr(self, h.name))
        return config_


def _signature(spec: specs.AlgorithmSpec) -> inspect.Signature:
    """Keras's constructor signature for ``spec`` (then ``name`` and ``**kwargs``)."""
    defaults = config.defaults(spec)
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=defaults[name])
                  for name in config.argument_order(spec)]
    parameters.insert(len(parameters) - len(config.EXTENSIONS),
                      inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=None))
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def optimizer_class(spec: specs.AlgorithmSpec) -> type[AlgorithmOptimizer]:
    """The NumPy optimizer class of ``spec``: Keras's ``keras.optimizers.<keras_name>``."""
    doc = (f"Keras 3's {spec.keras_name}, with Keras's exact numerics.\n\n"
           f"{inspect.cleandoc(spec.doc)}\n\n{config.arguments_doc(spec)}\n")

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        AlgorithmOptimizer.__init__(self, *args, **kwargs)

    __init__.__signature__ = _signature(spec).replace(parameters=[
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *_signature(spec).parameters.values()])
    cls = type(spec.keras_name, (AlgorithmOptimizer,), {
        "spec": spec, "__init__": __init__, "__doc__": doc, "__module__": __name__,
        "__qualname__": spec.keras_name,
    })
    return serialization.builtin("optimizer")(cls)


CLASSES: dict[str, type[AlgorithmOptimizer]] = {
    spec.keras_name: optimizer_class(spec) for spec in algorithms.registered()
}
"""Every registered algorithm's class by Keras class name (``kerasopt.Adam`` ...)."""

globals().update(CLASSES)
__all__ = ["CLASSES", "AlgorithmOptimizer", "optimizer_class", *CLASSES]
