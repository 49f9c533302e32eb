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

from kerasopt import specs, validation
from kerasopt.backend import cast_scalar, namespace


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


def adam_kernel_scalars(s: Any, learning_rate: Any, step: Any, *, beta_1: float,
                        beta_2: float, epsilon: float) -> dict[str, Any]:
    """The ``"adam"`` kernel body's scalars, rounded as :func:`adam_update` rounds them."""
    root = s.sqrt(s.one - s.power(beta_2, step))
    return {
        "one_minus_beta_1": s.cast(1 - beta_1),
        "alpha": s.cast(learning_rate) * root / (s.one - s.power(beta_1, step)),
        "one_minus_beta_2": s.cast(1 - beta_2),
        "epsilon": s.cast(epsilon),
    }


def beta(name: str, value: Any) -> float:
    """A decay rate in [0, 1)."""
    return validation.real(name, value, minimum=0.0, maximum=1.0, max_inclusive=False,
                           allowed="a float in [0, 1) or a zero-argument callable returning one")


def positive(name: str, value: Any) -> float:
    return validation.real(name, value, minimum=0.0, min_inclusive=False,
                           allowed="a finite float > 0")


BETA_1 = specs.Hyperparameter("beta_1", 0.9, beta, "Decay of the first moment, in [0, 1).",
                              callable_ok=True)
BETA_2 = specs.Hyperparameter("beta_2", 0.999, beta, "Decay of the second moment, in [0, 1).",
                              callable_ok=True)
EPSILON = specs.Hyperparameter("epsilon", 1e-7, positive,
                               "Added to ``sqrt(v)`` (Keras's \"epsilon hat\"), > 0.")

ADAM = specs.register(specs.AlgorithmSpec(
    name="adam",
    keras_name="Adam",
    doc=__doc__.split("\n\n", 1)[1],
    slots=("momentum", "velocity"),
    hyperparameters=(
        BETA_1, BETA_2, EPSILON,
        specs.Hyperparameter("amsgrad", False, validation.boolean,
                             "Use the maximum of past second moments (Reddi et al., 2018).",
                             adds_slot="velocity_hat"),
    ),
    rule=adam_update,
    kernel="adam",
    kernel_scalars=adam_kernel_scalars,
    r_name="optimizer_adam",
))

# The names the frontends used before the registry (kept while they move to ``ADAM``).
SLOTS = ADAM.slots
AMSGRAD_SLOT = ADAM.optional_slots[0]
