"""The steps Keras's base optimizer runs around every update rule, as small pure functions.

Each works on NumPy, torch or JAX arrays alike and returns new arrays. The order in which they
run is Keras 3's, written once in :mod:`kerasopt.engine`::

    unscale -> accumulate -> clip -> decay -> update rule -> EMA

:func:`next_loss_scale` is the rule of Keras's ``LossScaleOptimizer`` around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasopt.backend import cast_scalar, float32_scalar, is_jax, namespace


def keras_float(value: float) -> float:
    """A Python float as Keras's ops see it: converted to a float32 tensor first.

    Keras passes ``clipnorm``, ``clipvalue``, ``ema_momentum`` and the weight-decay product
    through ``ops.*``, which turn Python floats into float32 tensors; for float64 variables
    that rounding is visible (about 1e-8 relative), so kerasopt reproduces it.
    """
    return float(np.float32(value))


def unscale(g: Any, loss_scale_factor: float) -> Any:
    """``g / loss_scale_factor``: the gradient of the unscaled loss."""
    return g / loss_scale_factor


def accumulate(grads: Sequence[Any], accumulators: Sequence[Any]) -> list[Any]:
    """``acc + g``: a micro-step's contribution to the accumulators."""
    return [acc + g for g, acc in zip(grads, accumulators)]


def accumulated_mean(grads: Sequence[Any], accumulators: Sequence[Any], steps: int) -> list[Any]:
    """``(g + acc) / steps``: the gradient used on the last micro-step of a cycle."""
    return [(g + acc) / steps for g, acc in zip(grads, accumulators)]


def clip_by_norm(g: Any, clipnorm: float) -> Any:
    """``g * clipnorm / max(||g||, clipnorm)``, with Keras's guard for an all-zero ``g``.

    Keras's ``ops.maximum(norm, clipnorm)`` with a Python float returns float32 on its torch
    backend, so the divisor is rounded to float32 (visible only for float64 gradients).
    """
    xp = namespace(g)
    l2sum = xp.sum(g * g)
    positive = l2sum > 0
    l2norm = xp.where(positive, xp.sqrt(xp.where(positive, l2sum, 1)), l2sum)
    clipnorm = keras_float(clipnorm)
    divisor = xp.maximum(l2norm, cast_scalar(clipnorm, l2norm))
    return g * clipnorm / cast_scalar(float32_scalar(divisor), g)


def global_norm(grads: Sequence[Any]) -> Any:
    """``sqrt(sum over tensors of sum(g * g))``."""
    xp = namespace(grads[0])
    total = sum(xp.sum(g * g) for g in grads)
    return xp.sqrt(total)


def clip_by_global_norm(grads: Sequence[Any], clipnorm: float, norm: Any = None) -> list[Any]:
    """Scale every gradient by ``clipnorm / max(norm, clipnorm)``.

    As in Keras, the scale is ``clipnorm * min(1 / norm, 1 / clipnorm) + (norm - norm)``, so a
    non-finite global norm turns every gradient into NaN instead of being silently ignored.
    The ``min`` is rounded to float32, as Keras's torch backend returns it.
    ``norm`` may be passed in when it was computed elsewhere (for example across processes).
    """
    if norm is None:
        norm = global_norm(grads)
    xp = namespace(norm)
    inverse_norm = cast_scalar(1.0, norm) / norm
    inverse_clipnorm = cast_scalar(keras_float(1.0 / clipnorm), norm)
    smaller = cast_scalar(float32_scalar(xp.minimum(inverse_norm, inverse_clipnorm)), norm)
    scale = clipnorm * smaller + (norm - norm)
    return [g * cast_scalar(scale, g) for g in grads]


def clip_by_value(g: Any, clipvalue: float) -> Any:
    """Every element of ``g`` into ``[-clipvalue, clipvalue]``."""
    xp = namespace(g)
    clipvalue = keras_float(clipvalue)
    if xp.__name__ == "torch":
        return xp.clamp(g, -clipvalue, clipvalue)
    return xp.clip(g, -clipvalue, clipvalue)


def decay_factor(weight_decay: float, learning_rate: Any) -> Any:
    """``1 - weight_decay * lr``, computed as Keras's torch backend computes it: in float32
    when the learning rate is a float32 value (the optimizer's learning-rate variable, a
    schedule's value), in double precision when it is a Python float (what a callable
    learning rate returns)."""
    if isinstance(learning_rate, float) and isinstance(weight_decay, (float, int)):
        return 1 - weight_decay * learning_rate
    return 1 - float32_scalar(weight_decay) * float32_scalar(learning_rate)


def decay(w: Any, weight_decay: float, learning_rate: Any) -> Any:
    """Decoupled weight decay: ``w * (1 - weight_decay * lr)``, i.e. ``w -= w * wd * lr``,
    the factor (:func:`decay_factor`) applied in ``w``'s dtype."""
    return w * cast_scalar(decay_factor(weight_decay, learning_rate), w)


def ema_momentum_at(iterations: Any, ema_momentum: float) -> Any:
    """The EMA momentum for a step: 0 while ``iterations == 0`` (the average starts at ``w``)."""
    not_first = iterations != 0
    if not isinstance(not_first, (bool, np.bool_)):  # an array: as a number (TensorFlow's
        not_first = float32_scalar(not_first)         # bool tensor * float is a bool)
    return not_first * keras_float(ema_momentum)


def ema(average: Any, w: Any, momentum: Any) -> Any:
    """``momentum * average + (1 - momentum) * w``, the momentum in ``w``'s dtype."""
    momentum = cast_scalar(momentum, w)
    return momentum * average + (1 - momentum) * w


def next_loss_scale(finite: Any, scale: Any, counter: Any, growth_steps: int) -> tuple[Any, Any]:
    """Keras's dynamic loss scaling after a step: ``(scale, counter)``.

    A step with a NaN or inf gradient (``finite`` false) was not applied: the scale halves
    and the counter restarts. After ``growth_steps`` finite steps in a row the scale
    doubles and the counter restarts; otherwise the counter advances. The scale is a
    float32 value (a JAX array under ``jit``, where both outcomes are computed).
    """
    if is_jax(finite) or is_jax(scale) or is_jax(counter):
        import jax.numpy as jnp

        scale = jnp.asarray(scale, jnp.float32)
        grow = jnp.logical_and(finite, counter == growth_steps - 1)
        new_scale = jnp.where(finite, jnp.where(grow, scale * jnp.float32(2.0), scale),
                              scale * jnp.float32(0.5))
        new_counter = jnp.where(finite, jnp.where(grow, 0, counter + 1), 0)
        return new_scale, new_counter.astype(jnp.asarray(counter).dtype)
    scale = np.float32(scale)
    if not finite:
        return scale * np.float32(0.5), 0
    if int(counter) == growth_steps - 1:
        return scale * np.float32(2.0), 0
    return scale, int(counter) + 1


def is_finite(grads: Sequence[Any]) -> bool:
    """True when no gradient holds a NaN or an infinity."""
    for g in grads:
        xp = namespace(g)
        if not bool(xp.all(xp.isfinite(g))):
            return False
    return True
