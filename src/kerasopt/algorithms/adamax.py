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

from kerasopt import specs
from kerasopt.algorithms.adam import BETA_1, beta, positive
from kerasopt.backend import cast_scalar, namespace


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


def adamax_kernel_scalars(s: Any, learning_rate: Any, step: Any, *, beta_1: float,
                          beta_2: float, epsilon: float) -> dict[str, Any]:
    """The ``"adamax"`` kernel body's scalars, rounded as :func:`adamax_update` rounds them."""
    return {
        "one_minus_beta_1": s.cast(1 - beta_1),
        "learning_rate": s.cast(learning_rate),
        "beta_2": s.cast(beta_2),
        "epsilon": s.cast(epsilon),
        "denominator": s.one - s.power(beta_1, step),
    }


ADAMAX = specs.register(specs.AlgorithmSpec(
    name="adamax",
    keras_name="Adamax",
    doc=__doc__.split("\n\n", 1)[1],
    slots=("momentum", "norm"),
    hyperparameters=(
        BETA_1,
        specs.Hyperparameter("beta_2", 0.999, beta,
                             "Decay of the infinity norm, in [0, 1).", callable_ok=True),
        specs.Hyperparameter("epsilon", 1e-7, positive,
                             "Added to the infinity norm (after the max), > 0."),
    ),
    rule=adamax_update,
    kernel="adamax",
    kernel_scalars=adamax_kernel_scalars,
    r_name="optimizer_adamax",
))

SLOTS = ADAMAX.slots  # the name the frontends used before the registry
