"""AdamW, as Keras 3 computes it (Loshchilov & Hutter, 2019): Adam with decoupled weight
decay on by default.

Keras's AdamW is its Adam with ``weight_decay=0.004`` by default (and ``None`` refused):
the decay ``w <- w - w * weight_decay * lr`` is the shared pipeline's, applied before the
update, so the rule, its slots and its fused kernel are Adam's::

    w     <- w * (1 - weight_decay * lr)
    alpha <- lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    m     <- m + (g - m) * (1 - beta_1)
    v     <- v + (g * g - v) * (1 - beta_2)
    v_hat <- max(v_hat, v)                  (amsgrad only; v_hat replaces v below)
    w     <- w - m * alpha / (sqrt(v) + epsilon)
"""

from __future__ import annotations

import dataclasses

from kerasopt import specs
from kerasopt.algorithms.adam import ADAM

ADAMW = specs.register(dataclasses.replace(
    ADAM,
    name="adamw",
    keras_name="AdamW",
    doc=__doc__.split("\n\n", 2)[2],
    base_defaults={"weight_decay": 0.004},
    required=("weight_decay",),
    signature=("learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon", "amsgrad"),
    r_name="optimizer_adam_w",
))
