"""``kerasopt.Adam``: Keras 3's Adam optimizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kerasopt import serialization, validation
from kerasopt.algorithms.adam import AMSGRAD_SLOT, SLOTS, adam_update
from kerasopt.optimizer import Optimizer
from kerasopt.variable import Variable


@serialization.builtin("optimizer")
class Adam(Optimizer):
    """Adam exactly as Keras 3 computes it (epsilon is "epsilon hat")::

        alpha = lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        v_hat = max(v_hat, v)                 # amsgrad only, then used in place of v
        w = w - m * alpha / (sqrt(v) + epsilon)

    Args:
        learning_rate: float, schedule, or zero-argument callable. Defaults to 0.001.
        beta_1: Decay of the first moment, in [0, 1), or a zero-argument callable.
        beta_2: Decay of the second moment, in [0, 1), or a zero-argument callable.
        epsilon: Added to ``sqrt(v)``, > 0. Defaults to 1e-7.
        amsgrad: Use the maximum of past second moments (Reddi et al., 2018).
        The remaining arguments are those of :class:`kerasopt.Optimizer`.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str = "adam",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.beta_1 = validation.beta("beta_1", beta_1)
        self.beta_2 = validation.beta("beta_2", beta_2)
        self.epsilon = validation.real(
            "epsilon", epsilon, minimum=0.0, min_inclusive=False, allowed="a finite float > 0"
        )
        self.amsgrad = validation.boolean("amsgrad", amsgrad)

    def build(self, var_list: Sequence[Variable]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, list(SLOTS))
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(var_list, AMSGRAD_SLOT)

    def _fused_slots(self) -> tuple[str, list[list[Variable]]] | None:
        if type(self).update_step is not Adam.update_step:
            return None
        slots = [self._momentums, self._velocities]
        return "adam", slots + [self._velocity_hats] if self.amsgrad else slots

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        i = self._get_variable_index(variable)
        slots = [self._momentums[i], self._velocities[i]]
        if self.amsgrad:
            slots.append(self._velocity_hats[i])
        self._apply_rule(
            adam_update,
            gradient,
            variable,
            slots,
            learning_rate=learning_rate,
            beta_1=validation.resolved_beta("beta_1", self.beta_1),
            beta_2=validation.resolved_beta("beta_2", self.beta_2),
            epsilon=self.epsilon,
            step=self._iteration_count() + 1,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": serialization.serialize_if_callable(self.beta_1),
                "beta_2": serialization.serialize_if_callable(self.beta_2),
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        return config
