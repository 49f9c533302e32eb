"""``kerasopt.LossScaleOptimizer``: dynamic loss scaling around another optimizer.

Per step: if every gradient is finite, the inner optimizer applies ``g / scale`` and a
counter advances; after ``dynamic_growth_steps`` finite steps in a row the scale doubles.
If any gradient holds a NaN or an infinity, nothing is applied (no weight, no inner state,
no inner iteration changes), the counter resets and the scale halves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kerasopt import config, pipeline, serialization, validation
from kerasopt.backend import cast_scalar, ops_for
from kerasopt.optimizer import Optimizer
from kerasopt.sparse import values_of, with_values
from kerasopt.variable import Variable

# The inner optimizer's options: Keras 3.0-3.11 wrote them (at their defaults) into every
# LossScaleOptimizer config, so they are accepted at their defaults, as Keras does.
_INNER_ONLY = {o.name: o.default for o in (*config.OPTIONS, *config.EXTENSIONS)
               if o.name != "learning_rate"}


@serialization.builtin("optimizer")
class LossScaleOptimizer(Optimizer):
    """Wrap ``inner_optimizer`` with dynamic loss scaling (Keras 3's algorithm).

    Args:
        inner_optimizer: The optimizer that applies the unscaled gradients.
        initial_scale: The first loss scale. Defaults to ``2 ** 15``.
        dynamic_growth_steps: Double the scale after this many finite steps in a row.
    """

    def __init__(
        self,
        inner_optimizer: Optimizer,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(inner_optimizer, Optimizer):
            raise TypeError(
                "Argument `inner_optimizer` must be a kerasopt optimizer; received "
                f"inner_optimizer={inner_optimizer!r}."
            )
        for key, default in _INNER_ONLY.items():
            if key in kwargs and (kwargs[key] is not default and kwargs[key] != default):
                raise ValueError(
                    f"LossScaleOptimizer does not take `{key}` (received {key}="
                    f"{kwargs[key]!r}); set it on the inner optimizer instead."
                )
            kwargs.pop(key, None)
        if kwargs.pop("dynamic", True) is not True:
            raise ValueError(
                "LossScaleOptimizer supports only dynamic scaling (dynamic=True); for a fixed "
                "scale set `loss_scale_factor` on the inner optimizer."
            )
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.inner_optimizer = inner_optimizer
        self.initial_scale = validation.real(
            "initial_scale", initial_scale, minimum=0.0, min_inclusive=False,
            allowed="a finite float > 0",
        )
        self.dynamic_growth_steps = validation.integer(
            "dynamic_growth_steps", dynamic_growth_steps, minimum=1,
            allowed="an integer >= 1",
        )
        self.inner_optimizer.loss_scale_factor = None

    def build(self, var_list: Sequence[Variable]) -> None:
        if self.built:
            return
        self.step_counter = self.add_variable((), dtype=np.int64, name="step_counter")
        self.dynamic_scale = self.add_variable(
            (), initializer=self.initial_scale, dtype=np.float32, name="dynamic_scale"
        )
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self) -> list[Variable]:
        """Own state (iteration, learning rate, step_counter, dynamic_scale), then the inner
        optimizer's, as in Keras."""
        return self._variables + self.inner_optimizer.variables

    def apply(self, grads: Sequence[Any], trainable_variables: Iterable[Variable] | None = None):
        grads = list(grads)
        if not grads:
            return
        with self._lock, self.inner_optimizer._lock:
            self._apply_scaled(grads, trainable_variables)

    def _apply_scaled(self, grads: list[Any], trainable_variables: Any) -> None:
        inner = self.inner_optimizer
        grads, variables = inner._checked_call(grads, trainable_variables)
        if not self.built:
            self.build(variables)
        present = [values_of(g) for g in grads if g is not None]
        finite = ops_for(present[0]).all_finite(present)
        scale = self.dynamic_scale.value
        if finite:
            inner._apply_checked([None if g is None else _divide(g, scale) for g in grads],
                                 variables)
        new_scale, counter = pipeline.next_loss_scale(finite, scale, self.step_counter.value,
                                                      self.dynamic_growth_steps)
        self.dynamic_scale.assign(new_scale)
        self.step_counter.assign(counter)

    def _apply_checked(self, grads: list[Any], variables: list[Variable]) -> None:
        self.apply(grads, variables)

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Variable:
        return self.inner_optimizer.iterations

    def scale_loss(self, loss: Any) -> Any:
        """``loss * current scale``."""
        scale = self.dynamic_scale.value if self.built else self.initial_scale
        return loss * scale

    def finalize_variable_values(self, var_list: Sequence[Variable]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner_optimizer": serialization.serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], custom_objects: Mapping | None = None):
        config = dict(config)
        if "inner_optimizer" not in config:
            raise ValueError("A LossScaleOptimizer config needs an `inner_optimizer` entry.")
        inner = serialization.deserialize(config.pop("inner_optimizer"), custom_objects)
        return cls(inner, **config)


def _divide(gradient: Any, scale: Any) -> Any:
    """``gradient / scale`` in the gradient's dtype (the scale is a power of two)."""
    values = values_of(gradient)
    return with_values(gradient, values / cast_scalar(scale, values))
