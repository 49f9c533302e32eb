"""The layout shared by every fused kernel (numba on the CPU, Triton on CUDA): the columns
of the address table, the bits of the ``features`` argument and the slots of the ``hyper``
array of per-step scalars, and which arrays of a step go in which column. No kernel code:
importable without numba or Triton."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHUNK = 1 << 15
"""Elements per unit of parallel work (a row of the chunk table)."""

# Columns of the address table.
W, G, M, V, VHAT, ACC, EMA = range(7)
COLUMNS = 7

# Bits of the ``features`` argument.
UNSCALE = 1
ACCUMULATE = 2
CLIP_VALUE = 4
CLIP_NORM = 8
CLIP_GLOBAL = 16
DECAY = 32
AVERAGE = 64
OVERWRITE = 128
AMSGRAD = 256

# Slots of the ``hyper`` array (scalars already in the variables' dtype).
(
    H_SCALE,  # loss_scale_factor
    H_STEPS,  # gradient_accumulation_steps
    H_CLIP_LOW,  # -clipvalue
    H_CLIP_HIGH,  # clipvalue
    H_GLOBAL,  # global clip scale
    H_DECAY,  # 1 - weight_decay * lr
    H_LR,  # Adam: alpha; Adamax: lr
    H_ONE_MINUS_BETA_1,
    H_BETA_2,  # Adam: 1 - beta_2; Adamax: beta_2
    H_EPSILON,
    H_DENOMINATOR,  # Adamax: 1 - beta_1 ** t
    H_EMA,  # EMA momentum
    H_ONE_MINUS_EMA,
) = range(13)
HYPER = 13


def step_roles(
    algorithm: str,
    params: Sequence[Any],
    grads: Sequence[Any],
    slots: Sequence[Sequence[Any]],
    *,
    clip_options: Sequence[Any],
    accumulators: Sequence[Any] | None,
    accumulation_phase: str | None,
    ema_averages: Sequence[Any] | None,
) -> tuple[list[tuple[int, list[Any]]], bool]:
    """The arrays of a ``fused_step`` by column: ``([(column, arrays), ...], amsgrad)``, the
    weights first and the gradients second; the slots are left out of a micro-step, which
    does not read them. Raises ValueError on an unknown ``algorithm`` or
    ``accumulation_phase``, several clips (``clip_options``: clipnorm, global_clipnorm,
    clipvalue), a wrong number of slot lists, or lists of different lengths."""
    if algorithm not in ("adam", "adamax"):
        raise ValueError(f"algorithm must be 'adam' or 'adamax'; received {algorithm!r}.")
    if accumulation_phase not in (None, "micro", "update"):
        raise ValueError(
            "accumulation_phase must be None, 'micro' or 'update'; received "
            f"{accumulation_phase!r}."
        )
    if sum(x is not None for x in clip_options) > 1:
        raise ValueError("At most one of clipnorm, global_clipnorm and clipvalue can be set.")
    slots = [list(s) for s in slots]
    expected_slots = {"adam": (2, 3), "adamax": (2,)}[algorithm]
    if len(slots) not in expected_slots:
        raise ValueError(f"{algorithm} takes {expected_slots} slot lists; got {len(slots)}.")
    if accumulation_phase is not None and accumulators is None:
        raise ValueError("accumulation_phase needs accumulators.")
    amsgrad = len(slots) == 3
    roles = [(W, list(params)), (G, list(grads))]
    if accumulation_phase != "micro":
        roles += list(zip((M, V, VHAT), slots))
    if accumulation_phase is not None:
        roles.append((ACC, list(accumulators)))
    if ema_averages is not None:
        roles.append((EMA, list(ema_averages)))
    n = len(roles[0][1])
    if any(len(arrays) != n for _, arrays in roles):
        raise ValueError(f"Every list must hold {n} arrays, one per weight.")
    return roles, amsgrad
