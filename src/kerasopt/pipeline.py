"""The steps Keras's base optimizer runs around every update rule, as small pure functions.

Each works on NumPy, torch or JAX arrays alike and returns new arrays. The order in which
:class:`kerasopt.Optimizer` calls them is Keras 3's::

    unscale -> accumulate -> clip -> decay -> update rule -> EMA
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kerasopt.backend import cast_scalar, namespace


def unscale(grads: Sequence[Any], loss_scale_factor: float) -> list[Any]:
    """``g / loss_scale_factor`` for every gradient."""
    return [g / loss_scale_factor for g in grads]


def accumulate(grads: Sequence[Any], accumulators: Sequence[Any]) -> list[Any]:
    """``acc + g``: a micro-step's contribution to the accumulators."""
    return [acc + g for g, acc in zip(grads, accumulators)]


def accumulated_mean(grads: Sequence[Any], accumulators: Sequence[Any], steps: int) -> list[Any]:
    """``(g + acc) / steps``: the gradient used on the last micro-step of a cycle."""
    return [(g + acc) / steps for g, acc in zip(grads, accumulators)]


def clip_by_norm(g: Any, clipnorm: float) -> Any:
    """``g * clipnorm / max(||g||, clipnorm)``, with Keras's guard for an all-zero ``g``."""
    xp = namespace(g)
    l2sum = xp.sum(g * g)
    positive = l2sum > 0
    l2norm = xp.where(positive, xp.sqrt(xp.where(positive, l2sum, 1)), l2sum)
    return g * clipnorm / xp.maximum(l2norm, cast_scalar(clipnorm, l2norm))


def global_norm(grads: Sequence[Any]) -> Any:
    """``sqrt(sum over tensors of sum(g * g))``."""
    xp = namespace(grads[0])
    total = sum(xp.sum(g * g) for g in grads)
    return xp.sqrt(total)


def clip_by_global_norm(grads: Sequence[Any], clipnorm: float, norm: Any = None) -> list[Any]:
    """Scale every gradient by ``clipnorm / max(norm, clipnorm)``.

    As in Keras, the scale is ``clipnorm * min(1 / norm, 1 / clipnorm) + (norm - norm)``, so a
    non-finite global norm turns every gradient into NaN instead of being silently ignored.
    ``norm`` may be passed in when it was computed elsewhere (for example across processes).
    """
    if norm is None:
        norm = global_norm(grads)
    xp = namespace(norm)
    inverse_norm = cast_scalar(1.0, norm) / norm
    scale = clipnorm * xp.minimum(inverse_norm, cast_scalar(1.0 / clipnorm, norm)) + (norm - norm)
    return [g * cast_scalar(scale, g) for g in grads]


def clip_by_value(g: Any, clipvalue: float) -> Any:
    """Every element of ``g`` into ``[-clipvalue, clipvalue]``."""
    xp = namespace(g)
    if xp.__name__ == "torch":
        return xp.clamp(g, -clipvalue, clipvalue)
    return xp.clip(g, -clipvalue, clipvalue)


def decay(w: Any, weight_decay: float, learning_rate: Any) -> Any:
    """Decoupled weight decay: ``w - w * weight_decay * lr`` (scalars in ``w``'s dtype)."""
    return w - w * cast_scalar(weight_decay, w) * cast_scalar(learning_rate, w)


def ema_momentum_at(iterations: Any, ema_momentum: float) -> Any:
    """The EMA momentum for a step: 0 while ``iterations == 0`` (the average starts at ``w``)."""
    return (iterations != 0) * ema_momentum


def ema(average: Any, w: Any, momentum: Any) -> Any:
    """``momentum * average + (1 - momentum) * w``, the momentum in ``w``'s dtype."""
    momentum = cast_scalar(momentum, w)
    return momentum * average + (1 - momentum) * w


def is_finite(grads: Sequence[Any]) -> bool:
    """True when no gradient holds a NaN or an infinity."""
    for g in grads:
        xp = namespace(g)
        if not bool(xp.all(xp.isfinite(g))):
            return False
    return True
