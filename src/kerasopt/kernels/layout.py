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

# Slots of the ``hyper`` array (scalars already in the variables' dtype). The first ones
# belong to the shared pipeline and to the first moment every kernel body shares; from
# ``H_RULE`` on, each kernel body names its own (see ``KERNEL_BODIES``).
(
    H_SCALE,  # loss_scale_factor
    H_STEPS,  # gradient_accumulation_steps
    H_CLIP_LOW,  # -clipvalue
    H_CLIP_HIGH,  # clipvalue
    H_GLOBAL,  # global clip scale
    H_DECAY,  # 1 - weight_decay * lr
    H_EMA,  # EMA momentum
    H_ONE_MINUS_EMA,
    H_ONE_MINUS_BETA_1,  # the first moment's m += (g - m) * (1 - beta_1)
) = range(9)
H_RULE = 9
HYPER = 13

# The kernel bodies: their slot count (the optional last slot switches its flag on) and the
# names of their scalars from ``H_RULE`` on, which an algorithm's ``kernel_scalars``
# returns (with ``one_minus_beta_1``).
KERNEL_BODIES: dict[str, dict[str, Any]] = {
    "adam": {"slots": (2, 3), "scalars": ("alpha", "one_minus_beta_2", "epsilon")},
    "adamax": {"slots": (2,), "scalars": ("learning_rate", "beta_2", "epsilon", "denominator")},
}
H_ADAM_ALPHA, H_ADAM_ONE_MINUS_BETA_2, H_ADAM_EPSILON = range(H_RULE, H_RULE + 3)
H_ADAMAX_LR, H_ADAMAX_BETA_2, H_ADAMAX_EPSILON, H_ADAMAX_DENOMINATOR = range(H_RULE, H_RULE + 4)


def rule_slots(kernel: str) -> dict[str, int]:
    """Where each scalar of ``kernel``'s body goes in ``hyper``."""
    names = KERNEL_BODIES[kernel]["scalars"]
    return {"one_minus_beta_1": H_ONE_MINUS_BETA_1,
            **{name: H_RULE + k for k, name in enumerate(names)}}


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
    if algorithm not in KERNEL_BODIES:
        raise ValueError(
            f"algorithm must name a kernel body ({', '.join(map(repr, KERNEL_BODIES))}); "
            f"received {algorithm!r}."
        )
    if accumulation_phase not in (None, "micro", "update"):
        raise ValueError(
            "accumulation_phase must be None, 'micro' or 'update'; received "
            f"{accumulation_phase!r}."
        )
    if sum(x is not None for x in clip_options) > 1:
        raise ValueError("At most one of clipnorm, global_clipnorm and clipvalue can be set.")
    slots = [list(s) for s in slots]
    expected_slots = KERNEL_BODIES[algorithm]["slots"]
    if len(slots) not in expected_slots:
        raise ValueError(f"{algorithm} takes {expected_slots} slot lists; got {len(slots)}.")
    if accumulation_phase is not None and accumulators is None:
        raise ValueError("accumulation_phase needs accumulators.")
    amsgrad = len(slots) == max(expected_slots) > min(expected_slots)
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
