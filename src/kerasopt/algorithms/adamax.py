"""Adamax, as Keras 3 computes it (Kingma & Ba, 2015, section 7.1).

With ``t`` the 1-based step and every scalar cast to the variable's dtype::

    m <- m + (g - m) * (1 - beta_1)
    u <- max(beta_2 * u, |g|)
    w <- w - lr * m / ((1 - beta_1 ** t) * (u + epsilon))

Unlike ``torch.optim.Adamax``, epsilon is added *after* the max, and the bias correction
divides the step rather than scaling the learning rate.
"""

from __future__ import annotations

from typing import Any

from kerasopt.backend import cast_scalar, namespace

SLOTS = ("momentum", "norm")


def adamax_update(
    w: Any,
    g: Any,
    m: Any,
    u: Any,
    *,
    learning_rate: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: Any,
) -> tuple[Any, Any, Any]:
    """One Adamax step; returns new ``(w, m, u)`` and leaves the inputs untouched."""
    xp = namespace(w)
    lr = cast_scalar(learning_rate, w)
    t = cast_scalar(step, w)
    beta_1_power = cast_scalar(beta_1, w) ** t
    m = m + (g - m) * cast_scalar(1 - beta_1, w)
    u = xp.maximum(cast_scalar(beta_2, w) * u, xp.abs(g))
    w = w - lr * m / ((1 - beta_1_power) * (u + cast_scalar(epsilon, w)))
    return w, m, u
