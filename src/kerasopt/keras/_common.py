"""What the JAX and TensorFlow paths of ``kerasopt.keras`` share: the engine's inputs for one
Keras optimizer step, in the forms of Keras's JAX and TensorFlow backends.

Keras's backends do not all round alike. Those two decay weights as Keras's base optimizer
writes it, ``w - w * wd * lr`` (``lr`` and ``wd`` cast to the variable's dtype); Keras's
torch backend, the engine's default and the fused kernels use ``w * (1 - wd * lr)`` (the
factor in float32). So on JAX and TensorFlow the engine runs with ``weight_decay=None`` and
the rule given to it decays first, in Keras's form: the engine calls the rule exactly where
Keras decays (on an update step, for each variable with a gradient, after clipping; on the
touched rows only for a lazy sparse gradient).
"""

from __future__ import annotations

from typing import Any

from kerasopt import engine
from kerasopt.backend import cast_scalar


def positive(value: Any) -> Any:
    """Keras clips only when the option is set and > 0."""
    return value if value and value > 0 else None


def keras_step_needed(optimizer: Any) -> bool:
    """Whether Keras's own step must run: a variable with ``overwrite_with_gradient``
    (float8 training), which Keras's ``apply`` handles before the optimizer's pipeline."""
    return any(getattr(v, "overwrite_with_gradient", False)
               for v in optimizer._trainable_variables)


def decaying_rule(rule: engine.Rule, decay_mask: list[bool], weight_decay: Any) -> engine.Rule:
    """``rule`` preceded by Keras's weight decay ``w - w * wd * lr`` where ``decay_mask``
    says so."""
    if weight_decay is None or not any(decay_mask):
        return rule

    def decayed(index: int, w: Any, g: Any, slots: tuple, arguments: Any):
        if decay_mask[index]:
            lr = cast_scalar(arguments["learning_rate"], w)
            w = w - w * cast_scalar(weight_decay, w) * lr
        return rule(index, w, g, slots, arguments)

    return decayed


def engine_inputs(optimizer: Any, raw: Any, learning_rate: Any
                  ) -> tuple[engine.Step, engine.Group, engine.Rule]:
    """The engine's :class:`~kerasopt.engine.Step`, single :class:`~kerasopt.engine.Group`
    and rule for one step of ``optimizer`` (a ``kerasopt.keras`` optimizer) over all of its
    trainable variables, at the raw counter ``raw`` with this step's ``learning_rate``."""
    step = engine.Step(raw=raw, loss_scale_factor=optimizer.loss_scale_factor,
                       accumulation_steps=optimizer.gradient_accumulation_steps or None,
                       sparse_updates=optimizer.sparse_updates)
    group = engine.Group(
        learning_rate=learning_rate,
        hyperparameters=optimizer.kerasopt_hyperparameters(),
        weight_decay=None,  # in the rule, in Keras's form
        clipnorm=positive(optimizer.clipnorm),
        clipvalue=positive(optimizer.clipvalue),
        global_clipnorm=positive(optimizer.global_clipnorm),
        use_ema=bool(optimizer.use_ema),
        ema_momentum=optimizer.ema_momentum,
        ema_overwrite_frequency=optimizer.ema_overwrite_frequency or None,
    )
    mask = [optimizer._use_weight_decay(v) for v in optimizer._trainable_variables]
    rule = decaying_rule(engine.spec_rule(optimizer.spec), mask, optimizer.weight_decay)
    return step, group, rule
