"""The layout shared by every fused kernel (numba on the CPU, Triton on CUDA): the columns
of the address table, the bits of the ``features`` argument and the slots of the ``hyper``
array of per-step scalars. No kernel code: importable without numba or Triton."""

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
