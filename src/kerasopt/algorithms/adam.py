"""Adam, as Keras 3 computes it (Kingma & Ba, 2015, with "epsilon hat").

With ``t`` the 1-based step and every scalar cast to the variable's dtype::

    alpha <- lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    m     <- m + (g - m) * (1 - beta_1)
    v     <- v + (g * g - v) * (1 - beta_2)
    v_hat <- max(v_hat, v)                  (amsgrad only; v_hat replaces v below)
    w     <- w - m * alpha / (sqrt(v) + epsilon)

The bias correction is folded into the step size, so epsilon is the paper's "epsilon hat":
it is added to ``sqrt(v)`` of the *uncorrected* second moment. ``torch.optim.Adam`` and
``optax.adam`` add epsilon to the corrected ``sqrt(v_hat)`` instead.
"""

from __future__ import annotations

from typing import Any

from kerasopt.backend import cast_scalar, namespace

SLOTS = ("momentum", "velocity")
AMSGRAD_SLOT = "velocity_hat"


def adam_update(
    w: Any,
    g: Any,
    m: Any,
    v: Any,
    v_hat: Any = None,
    *,
    learning_rate: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: Any,
) -> tuple[Any, ...]:
    """One Adam step; returns new ``(w, m, v)``, or ``(w, m, v, v_hat)`` with amsgrad."""
    xp = namespace(w)
    lr = cast_scalar(learning_rate, w)
    t = cast_scalar(step, w)
    beta_1_power = cast_scalar(beta_1, w) ** t
    beta_2_power = cast_scalar(beta_2, w) ** t
    alpha = lr * xp.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    m = m + (g - m) * cast_scalar(1 - beta_1, w)
    v = v + (g * g - v) * cast_scalar(1 - beta_2, w)
    denominator_v = v
    if v_hat is not None:
        v_hat = xp.maximum(v_hat, v)
        denominator_v = v_hat
    w = w - m * alpha / (xp.sqrt(denominator_v) + cast_scalar(epsilon, w))
    if v_hat is None:
        return w, m, v
    return w, m, v, v_hat
