"""Triton kernels: the fused step of :mod:`kerasopt.kernels.fused` for CUDA torch tensors.

The same step as the numba kernels (:mod:`kerasopt.kernels._numba`), element by element and
operation by operation, in the tensors' dtype (float32 or float64):

* **One launch for all tensors.** The kernels get an int64 device table of data addresses,
  one row per tensor and one column per role (the columns of :mod:`kerasopt.kernels.layout`:
  weights, gradient, moments, amsgrad maximum, accumulator, EMA average; one more column
  holds the tensor's size), and a table of blocks, one row ``(tensor, start)`` per
  ``BLOCK`` elements. Program ``b`` of the grid casts row ``blocks[b, 0]``'s addresses to
  pointers (``tl.load(...).to(tl.pointer_type(dtype))``) and steps the elements ``start ..
  start + BLOCK`` of that tensor: thousands of small tensors cost one launch. Both tables
  depend only on the tensors' addresses and sizes, so they are cached on the device and
  sent again only when those change. A full block is loaded and stored without a mask,
  as 16-byte vectors when every address is 16-byte aligned (``tl.multiple_of`` on the
  pointers; checked on the host, else scalar accesses); a tensor's last, partial block is
  masked.
* **Per-step scalars** come from :func:`kerasopt.kernels.scalars.step_scalars`, the
  reference's own expressions, exactly as for the numba kernels. They reach the kernel as
  one small device tensor of the dtype (``hyper``, then the per-tensor ``clipnorm`` factors
  ``c`` and ``d`` and the weight-decay mask), not as Triton scalar arguments, which would
  round float64 values to float32.
* **Features are compile-time constants** (``tl.constexpr``): a disabled feature is not in
  the compiled kernel at all; each combination of features, algorithm and dtype compiles
  once.
* **The norm pass** of ``clipnorm`` / ``global_clipnorm`` runs on the device: one kernel
  sums each block's ``float64(g * g)`` (``g * g`` rounded in the dtype, as numba does), a
  second adds the blocks of each tensor in a fixed order (deterministic, no atomics). The
  float64 sums, rounded to the dtype, go back to the host for ``step_scalars`` (one
  synchronization, as in every implementation of a norm clip on the host's scalars).

Exact arithmetic on the GPU. Three defaults of Triton would change the results, and are
avoided:

* Triton lets LLVM and ``ptxas`` contract ``a * b + c`` into a fused multiply-add (rounded
  once instead of twice). Every launch passes ``enable_fp_fusion=False``: LLVM then keeps
  the separate ``mul`` and ``add`` and ``ptxas`` runs with ``--fmad=false``. (Separate
  Python statements would not help: contraction works on the IR, not on the source.)
  The PTX then has only ``add.rn`` / ``sub.rn`` / ``mul.rn`` (an explicit rounding mode,
  which ``ptxas`` never contracts) and no ``fma``; ``tests/torch/test_cuda_kernel.py``
  compiles the kernels for sm_90 (no GPU needed) and checks that.
* float32 ``/`` compiles to ``div.full.f32`` (about 2 ulp off) and ``tl.sqrt`` to
  ``sqrt.approx.ftz.f32``: float32 uses ``tl.div_rn`` and ``tl.sqrt_rn`` (IEEE, rounded to
  nearest, subnormals kept); float64 ``/`` and ``sqrt`` are already ``div.rn`` / ``sqrt.rn``.
* ``tl.maximum``'s default leaves NaN handling unspecified: the kernels write the numba
  code's comparisons (``vi if (vi > h or vi != vi) else h``, and clipvalue's ``low if x <
  low else x``) as ``tl.where``.

So the results are meant to be those of the numba kernels bit for bit, but for the norms of
``clipnorm`` / ``global_clipnorm``: both sum the squares in float64, in different orders,
which can move a float64 norm by an ulp (a float32 norm only on rare ties). Under the
interpreter they are bit-identical in every tested case, the norms included.

``TRITON_INTERPRET=1`` (set before this module is imported) runs the same kernels through
Triton's interpreter on CPU tensors: that is how the tests check the kernels without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasopt.kernels import layout
from kerasopt.kernels.fused import NotFusable
from kerasopt.kernels.scalars import kernel_scalars_of, step_scalars

try:  # Triton and torch are optional
    import torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

__all__ = ["BLOCK", "available", "fused_step", "fused_step_table", "interpreting"]

BLOCK = 1024
"""Elements per program (a row of the block table)."""

_SUM_BLOCK = 1024
"""Block partial sums added per iteration of the per-tensor sum."""

_TABLE_CACHE_SIZE = 16


def interpreting() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``): then the kernels take
    CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def available() -> bool:
    """True when the Triton kernels can run: Triton is importable and a CUDA device is
    there, or Triton's interpreter is on (``TRITON_INTERPRET=1``, for CPU tensors)."""
    if triton is None:
        return False
    return interpreting() or torch.cuda.is_available()


def fused_step(
    algorithm: str,
    params: Sequence[Any],
    grads: Sequence[Any],
    slots: Sequence[Sequence[Any]],
    *,
    accumulators: Sequence[Any] | None = None,
    accumulation_phase: str | None = None,
    ema_averages: Sequence[Any] | None = None,
    **scalars: Any,
) -> None:
    """One Keras optimizer step over CUDA torch tensors, in place, in one kernel launch
    (plus two small ones for the norms of ``clipnorm`` / ``global_clipnorm``).

    The contract of :func:`kerasopt.kernels.fused.fused_step` (same arguments, same
    results), for torch tensors on one CUDA device (on the CPU under Triton's interpreter);
    ``scalars`` are its scalar keywords (``learning_rate``, ``beta_1``, ..., ``ema_overwrite``).
    Per element, in Keras 3's order and in the tensors' dtype::

        g = grad / loss_scale_factor                      # loss_scale_factor
        g = (g + acc) / n;  acc = 0                       # accumulation, update step
        g = clip(g, -clipvalue, clipvalue)                # or g * c / d (clipnorm),
                                                          # or g * scale (global_clipnorm)
        w = w * (1 - weight_decay * lr)                   # decay, masked weights only
        # Adam (alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)):
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        v_hat = max(v_hat, v)                             # amsgrad (NaN propagating)
        w = w - m * alpha / (sqrt(v or v_hat) + epsilon)
        # Adamax:
        m = m + (g - m) * (1 - beta_1)
        u = max(beta_2 * u, |g|)                          # NaN propagating
        w = w - lr * m / ((1 - beta_1**t) * (u + epsilon))
        a = momentum * a + (1 - momentum) * w             # EMA
        w = a                                             # EMA overwrite

    A ``"micro"`` accumulation step only does ``acc = acc + grad / loss_scale_factor`` and
    the EMA.

    Raises:
        NotFusable: before anything is modified, when Triton or a device is missing, or an
            input is not a contiguous float32/float64 torch tensor of the weights' dtype,
            device and size.
        ValueError: on an unknown ``algorithm`` or ``accumulation_phase``, or several clips.
    """
    if not available():
        raise NotFusable("Triton or a CUDA device is missing (pip install triton).")
    roles, amsgrad = layout.step_roles(
        kernel_scalars_of(algorithm)[0], params, grads, slots,
        clip_options=[scalars.get(k) for k in ("clipnorm", "global_clipnorm", "clipvalue")],
        accumulators=accumulators, accumulation_phase=accumulation_phase,
        ema_averages=ema_averages,
    )
    n = len(params)
    if n == 0:
        return
    addresses, sizes, device, dtype = _addresses(roles, n)
    _launch(algorithm, addresses, sizes, device, dtype, params, amsgrad=amsgrad,
            accumulation_phase=accumulation_phase, averaging=ema_averages is not None,
            **scalars)


def fused_step_table(
    algorithm: str,
    table: np.ndarray,
    sizes: np.ndarray,
    like: Any,
    params: Sequence[Any],
    *,
    amsgrad: bool,
    accumulation_phase: str | None,
    chunks: Any = None,
    elements: int | None = None,
    **options: Any,
) -> None:
    """:func:`fused_step` on a prebuilt table of addresses, as
    :func:`kerasopt.kernels.fused.fused_step_table` (same arguments) but for tensors on
    ``params[0]``'s CUDA device (CPU under the interpreter).

    ``table`` is ``(n, layout.COLUMNS)`` int64 data addresses on that device, filled in the
    columns the step uses; ``sizes`` the element counts; ``like`` a 0-d tensor of the
    variables' dtype (any device); ``options`` :func:`fused_step`'s scalar keywords with
    ``averaging`` (bool) in place of ``ema_averages``. ``chunks`` and ``elements`` are
    ignored (the kernels' block table is cached by address). Nothing is checked: the caller
    vouches that every address is a contiguous buffer of ``sizes[i]`` elements of the dtype
    on the device.
    """
    del chunks, elements
    if not available():
        raise NotFusable("Triton or a CUDA device is missing (pip install triton).")
    sizes = np.asarray(sizes, np.int64)
    addresses = np.empty((len(sizes), layout.COLUMNS + 1), np.int64)
    addresses[:, : layout.COLUMNS] = table
    addresses[:, layout.COLUMNS] = sizes
    _launch(algorithm, addresses, sizes, params[0].device, like.dtype, params,
            amsgrad=amsgrad, accumulation_phase=accumulation_phase, **options)


def _launch(algorithm, addresses, sizes, device, dtype, params, *, amsgrad,
            accumulation_phase, **options):
    """Compute the step's scalars as the reference does, then launch the kernels."""
    n = len(sizes)
    micro = accumulation_phase == "micro"
    tables = _tables(addresses, sizes, device)
    if tables is None:  # every tensor is empty
        return
    np_dtype = np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.float64)
    like = torch.zeros((), dtype=dtype)

    def squared_norms(features: int, hyper: np.ndarray) -> np.ndarray:
        return _squared_norms(tables, n, features, hyper, device)

    with _on(device):
        s = step_scalars(algorithm, like, np_dtype, n, micro=micro, amsgrad=amsgrad,
                         accumulation_phase=accumulation_phase, squared_norms=squared_norms,
                         **options)
        # hyper, then (only when used) the clipnorm factors and the decay mask, per tensor.
        scalars = [s.hyper]
        if s.features & layout.CLIP_NORM:
            scalars += [s.clip_c, s.clip_d]
        if s.features & layout.DECAY:
            scalars.append(s.decay_mask.astype(np_dtype))
        hyper = torch.from_numpy(np.concatenate(scalars)).to(device)
        table, blocks, _, aligned = tables
        grid = (blocks.shape[0],)
        if micro:
            _micro_kernel[grid](table, blocks, hyper, FEATURES=s.features, ALIGNED=aligned,
                                BLOCK=BLOCK, enable_fp_fusion=False)
        else:
            _step_kernel[grid](table, blocks, hyper, n, FEATURES=s.features,
                               ADAMAX=kernel_scalars_of(algorithm)[0] == "adamax",
                               ALIGNED=aligned, BLOCK=BLOCK,
                               enable_fp_fusion=False)
    if not micro or options.get("ema_overwrite"):
        torch.autograd.graph.increment_version(list(params))


# ------------------------------------------------------------------------------- host side


def _addresses(roles, n):
    """The ``(n, COLUMNS + 1)`` int64 table (addresses, then the size), checking every
    tensor: contiguous, of the weights' dtype, device and size."""
    first = roles[0][1][0]
    if not isinstance(first, torch.Tensor):
        raise NotFusable(f"{type(first).__name__} is not a torch tensor.")
    dtype, device = first.dtype, first.device
    if dtype not in (torch.float32, torch.float64):
        raise NotFusable(f"dtype {dtype} is not float32 or float64.")
    if interpreting():
        if device.type != "cpu":
            raise NotFusable("Triton's interpreter (TRITON_INTERPRET=1) takes CPU tensors.")
    elif device.type != "cuda":
        raise NotFusable(f"the tensors are on {device}, not on a CUDA device.")
    table = np.zeros((n, layout.COLUMNS + 1), np.int64)
    sizes = None
    for column, tensors in roles:
        data, found = [], []
        for t in tensors:  # one pass: this loop is the per-tensor cost of a step
            if not isinstance(t, torch.Tensor):
                raise NotFusable(f"{type(t).__name__} is not a torch tensor.")
            if t.dtype != dtype or t.device != device or not t.is_contiguous():
                raise NotFusable(
                    "a tensor is not a contiguous tensor of the weights' dtype and device."
                )
            data.append(t.data_ptr())
            found.append(t.numel())
        found = np.array(found, np.int64)
        if sizes is not None and not np.array_equal(found, sizes):
            raise NotFusable("a tensor's number of elements differs from its weight's.")
        sizes = found
        table[:, column] = data
    table[:, layout.COLUMNS] = sizes
    return table, sizes, device, dtype


_cache: OrderedDict[tuple, tuple | None] = OrderedDict()


def _tables(addresses, sizes, device):
    """``(table, blocks, segments, aligned)``, the first three on the device, from a small
    cache keyed by the addresses and sizes (the tables depend on nothing else), or None
    when no tensor has an element. ``aligned``: every address is a multiple of 16 bytes
    (the kernels then load and store full blocks as vectors).

    ``blocks`` has one ``(tensor, start)`` row per ``BLOCK`` elements, the blocks of a
    tensor consecutive; ``segments`` one ``(first block, number of blocks)`` row per tensor
    (for the per-tensor sums of the norm pass)."""
    key = (str(device), addresses.tobytes())
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    counts = -(-sizes // BLOCK)
    total = int(counts.sum())
    if total == 0:
        result = None
    else:
        first = np.cumsum(counts) - counts
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        start = (np.arange(total, dtype=np.int64) - first[tensor]) * BLOCK
        host = [addresses, np.stack([tensor, start], axis=1), np.stack([first, counts], 1)]
        result = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in host)
        result += (bool(np.all(addresses[:, : layout.COLUMNS] % 16 == 0)),)
    _cache[key] = result
    if len(_cache) > _TABLE_CACHE_SIZE:
        _cache.popitem(last=False)
    return result


def _squared_norms(tables, n, features, hyper, device):
    """Per tensor, the float64 sum of ``g * g`` rounded to the dtype, as NumPy."""
    table, blocks, segments, aligned = tables
    hyper = torch.from_numpy(hyper).to(device)
    partial = torch.empty(blocks.shape[0], dtype=torch.float64, device=device)
    sums = torch.empty(n, dtype=torch.float64, device=device)
    _squares_kernel[(blocks.shape[0],)](table, blocks, hyper, partial, FEATURES=features,
                                        ALIGNED=aligned, BLOCK=BLOCK, enable_fp_fusion=False)
    _segment_sum_kernel[(n,)](partial, segments, sums, BLOCK=_SUM_BLOCK,
                              enable_fp_fusion=False)
    return sums.to(hyper.dtype).cpu().numpy()


def _on(device):
    """``torch.cuda.device(device)`` for a CUDA device, nothing for the interpreter's CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------------- kernels

if triton is not None:
    # Triton kernels see module globals only as constexpr.
    _COLUMNS = tl.constexpr(layout.COLUMNS)
    _HYPER = tl.constexpr(layout.HYPER)
    _W, _G, _M, _V = (tl.constexpr(c) for c in (layout.W, layout.G, layout.M, layout.V))
    _VHAT, _ACC, _EMA = (tl.constexpr(c) for c in (layout.VHAT, layout.ACC, layout.EMA))
    _UNSCALE = tl.constexpr(layout.UNSCALE)
    _ACCUMULATE = tl.constexpr(layout.ACCUMULATE)
    _CLIP_VALUE = tl.constexpr(layout.CLIP_VALUE)
    _CLIP_NORM = tl.constexpr(layout.CLIP_NORM)
    _CLIP_GLOBAL = tl.constexpr(layout.CLIP_GLOBAL)
    _DECAY = tl.constexpr(layout.DECAY)
    _AVERAGE = tl.constexpr(layout.AVERAGE)
    _OVERWRITE = tl.constexpr(layout.OVERWRITE)
    _AMSGRAD = tl.constexpr(layout.AMSGRAD)
    _H_SCALE = tl.constexpr(layout.H_SCALE)
    _H_STEPS = tl.constexpr(layout.H_STEPS)
    _H_CLIP_LOW = tl.constexpr(layout.H_CLIP_LOW)
    _H_CLIP_HIGH = tl.constexpr(layout.H_CLIP_HIGH)
    _H_GLOBAL = tl.constexpr(layout.H_GLOBAL)
    _H_DECAY = tl.constexpr(layout.H_DECAY)
    _H_ONE_MINUS_BETA_1 = tl.constexpr(layout.H_ONE_MINUS_BETA_1)
    _H_ADAM_ALPHA = tl.constexpr(layout.H_ADAM_ALPHA)
    _H_ADAM_ONE_MINUS_BETA_2 = tl.constexpr(layout.H_ADAM_ONE_MINUS_BETA_2)
    _H_ADAM_EPSILON = tl.constexpr(layout.H_ADAM_EPSILON)
    _H_ADAMAX_LR = tl.constexpr(layout.H_ADAMAX_LR)
    _H_ADAMAX_BETA_2 = tl.constexpr(layout.H_ADAMAX_BETA_2)
    _H_ADAMAX_EPSILON = tl.constexpr(layout.H_ADAMAX_EPSILON)
    _H_ADAMAX_DENOMINATOR = tl.constexpr(layout.H_ADAMAX_DENOMINATOR)
    _H_EMA = tl.constexpr(layout.H_EMA)
    _H_ONE_MINUS_EMA = tl.constexpr(layout.H_ONE_MINUS_EMA)

    # The feature tests read ``_BIT & FEATURES``: under the interpreter FEATURES is a plain
    # int, and int & constexpr is not defined.

    @triton.jit
    def _div(a, b):
        """``a / b`` rounded to nearest (float32 ``/`` is not, in Triton)."""
        if a.dtype == tl.float32:
            q = tl.div_rn(a, b)
        else:
            q = a / b
        return q

    @triton.jit
    def _sqrt(x):
        """``sqrt(x)`` rounded to nearest (float32 ``tl.sqrt`` is not, in Triton)."""
        if x.dtype == tl.float32:
            r = tl.sqrt_rn(x)
        else:
            r = tl.sqrt(x)
        return r

    @triton.jit
    def _pointer(table, t, column, hyper, ALIGNED: tl.constexpr):
        """Row ``t``'s address in ``column`` as a pointer to the dtype (``hyper``'s);
        ``ALIGNED``: every address is a multiple of 16 (vector loads of full blocks)."""
        address = tl.load(table + t * (_COLUMNS + 1) + column)
        pointer = address.to(tl.pointer_type(hyper.dtype.element_ty))
        if ALIGNED:
            pointer = tl.multiple_of(pointer, 16)
        return pointer

    @triton.jit
    def _block(table, blocks, BLOCK: tl.constexpr):
        """This program's tensor, first element and the tensor's size."""
        b = tl.program_id(0)
        t = tl.load(blocks + 2 * b)
        start = tl.multiple_of(tl.load(blocks + 2 * b + 1), BLOCK)
        size = tl.load(table + t * (_COLUMNS + 1) + _COLUMNS)
        return t, start, size

    @triton.jit
    def _gradient(table, t, offsets, mask, hyper, FEATURES: tl.constexpr,
                  RESET: tl.constexpr, ALIGNED: tl.constexpr):
        """The gradient after unscaling and the accumulation mean (then zeroing the
        accumulator when ``RESET``)."""
        g = tl.load(_pointer(table, t, _G, hyper, ALIGNED) + offsets, mask=mask)
        if _UNSCALE & FEATURES:
            g = _div(g, tl.load(hyper + _H_SCALE))
        if _ACCUMULATE & FEATURES:
            acc_pointers = _pointer(table, t, _ACC, hyper, ALIGNED) + offsets
            acc = tl.load(acc_pointers, mask=mask)
            g = _div(g + acc, tl.load(hyper + _H_STEPS))
            if RESET:
                tl.store(acc_pointers, tl.zeros_like(acc), mask=mask)
        return g

    @triton.jit
    def _average(table, t, offsets, mask, w, hyper, FEATURES: tl.constexpr,
                 ALIGNED: tl.constexpr):
        """EMA of the (new) weights ``w``, then ``w := average`` when due; returns ``w``."""
        if _AVERAGE & FEATURES:
            a_pointers = _pointer(table, t, _EMA, hyper, ALIGNED) + offsets
            a = tl.load(a_pointers, mask=mask)
            a = tl.load(hyper + _H_EMA) * a + tl.load(hyper + _H_ONE_MINUS_EMA) * w
            tl.store(a_pointers, a, mask=mask)
            if _OVERWRITE & FEATURES:
                w = a
        return w

    @triton.jit
    def _step(table, t, offsets, mask, hyper, n, FEATURES: tl.constexpr,
              ADAMAX: tl.constexpr, ALIGNED: tl.constexpr):
        """The whole step on the elements ``offsets`` of tensor ``t`` (``mask``: those that
        exist; None for a full block)."""
        g = _gradient(table, t, offsets, mask, hyper, FEATURES, True, ALIGNED)

        # clipvalue: np.clip(g, low, high) == minimum(maximum(g, low), high), NaN propagating
        if _CLIP_VALUE & FEATURES:
            low = tl.load(hyper + _H_CLIP_LOW)
            high = tl.load(hyper + _H_CLIP_HIGH)
            g = tl.where(g < low, low, g)
            g = tl.where(g > high, high, g)
        if _CLIP_NORM & FEATURES:  # g * c / d, with this tensor's c and d
            g = _div(g * tl.load(hyper + _HYPER + t), tl.load(hyper + _HYPER + n + t))
        if _CLIP_GLOBAL & FEATURES:
            g = g * tl.load(hyper + _H_GLOBAL)

        w_pointers = _pointer(table, t, _W, hyper, ALIGNED) + offsets
        w = tl.load(w_pointers, mask=mask)
        if _DECAY & FEATURES:  # the decay mask follows c and d when clipnorm is on
            mask_slot = _HYPER + t
            if _CLIP_NORM & FEATURES:
                mask_slot = _HYPER + 2 * n + t
            if tl.load(hyper + mask_slot) != 0:
                w = w * tl.load(hyper + _H_DECAY)

        one_minus_beta_1 = tl.load(hyper + _H_ONE_MINUS_BETA_1)
        m_pointers = _pointer(table, t, _M, hyper, ALIGNED) + offsets
        v_pointers = _pointer(table, t, _V, hyper, ALIGNED) + offsets
        m = tl.load(m_pointers, mask=mask)
        v = tl.load(v_pointers, mask=mask)
        m = m + (g - m) * one_minus_beta_1
        if ADAMAX:
            a = tl.load(hyper + _H_ADAMAX_BETA_2) * v
            b = tl.abs(g)
            v = tl.where((b > a) | (b != b), b, a)  # np.maximum(a, b), NaN propagating
            lr = tl.load(hyper + _H_ADAMAX_LR)
            denominator = tl.load(hyper + _H_ADAMAX_DENOMINATOR)
            epsilon = tl.load(hyper + _H_ADAMAX_EPSILON)
            w = w - _div(lr * m, denominator * (v + epsilon))
        else:
            v = v + (g * g - v) * tl.load(hyper + _H_ADAM_ONE_MINUS_BETA_2)
            root = v
            if _AMSGRAD & FEATURES:
                vhat_pointers = _pointer(table, t, _VHAT, hyper, ALIGNED) + offsets
                h = tl.load(vhat_pointers, mask=mask)
                h = tl.where((v > h) | (v != v), v, h)  # np.maximum(h, v), NaN propagating
                tl.store(vhat_pointers, h, mask=mask)
                root = h
            epsilon = tl.load(hyper + _H_ADAM_EPSILON)
            w = w - _div(m * tl.load(hyper + _H_ADAM_ALPHA), _sqrt(root) + epsilon)
        tl.store(m_pointers, m, mask=mask)
        tl.store(v_pointers, v, mask=mask)
        w = _average(table, t, offsets, mask, w, hyper, FEATURES, ALIGNED)
        tl.store(w_pointers, w, mask=mask)

    @triton.jit
    def _step_kernel(table, blocks, hyper, n, FEATURES: tl.constexpr, ADAMAX: tl.constexpr,
                     ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
        """One fused Adam / Adamax step of ``BLOCK`` elements of one tensor."""
        t, start, size = _block(table, blocks, BLOCK)
        offsets = start + tl.arange(0, BLOCK)
        if start + BLOCK <= size:  # a full block: no mask, vector loads when ALIGNED
            _step(table, t, offsets, None, hyper, n, FEATURES, ADAMAX, ALIGNED)
        else:
            _step(table, t, offsets, offsets < size, hyper, n, FEATURES, ADAMAX, ALIGNED)

    @triton.jit
    def _micro(table, t, offsets, mask, hyper, FEATURES: tl.constexpr,
               ALIGNED: tl.constexpr):
        g = tl.load(_pointer(table, t, _G, hyper, ALIGNED) + offsets, mask=mask)
        if _UNSCALE & FEATURES:
            g = _div(g, tl.load(hyper + _H_SCALE))
        acc_pointers = _pointer(table, t, _ACC, hyper, ALIGNED) + offsets
        tl.store(acc_pointers, tl.load(acc_pointers, mask=mask) + g, mask=mask)
        if _AVERAGE & FEATURES:
            w_pointers = _pointer(table, t, _W, hyper, ALIGNED) + offsets
            w = tl.load(w_pointers, mask=mask)
            w = _average(table, t, offsets, mask, w, hyper, FEATURES, ALIGNED)
            if _OVERWRITE & FEATURES:
                tl.store(w_pointers, w, mask=mask)

    @triton.jit
    def _micro_kernel(table, blocks, hyper, FEATURES: tl.constexpr, ALIGNED: tl.constexpr,
                      BLOCK: tl.constexpr):
        """An accumulation micro-step: ``acc = acc + g (/ scale)``, and the EMA when on."""
        t, start, size = _block(table, blocks, BLOCK)
        offsets = start + tl.arange(0, BLOCK)
        if start + BLOCK <= size:
            _micro(table, t, offsets, None, hyper, FEATURES, ALIGNED)
        else:
            _micro(table, t, offsets, offsets < size, hyper, FEATURES, ALIGNED)

    @triton.jit
    def _squares_kernel(table, blocks, hyper, partial, FEATURES: tl.constexpr,
                        ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
        """This block's float64 sum of ``g * g`` (``g * g`` rounded in the dtype)."""
        t, start, size = _block(table, blocks, BLOCK)
        offsets = start + tl.arange(0, BLOCK)
        if start + BLOCK <= size:
            g = _gradient(table, t, offsets, None, hyper, FEATURES, False, ALIGNED)
            total = tl.sum((g * g).to(tl.float64), axis=0)
        else:
            mask = offsets < size
            g = _gradient(table, t, offsets, mask, hyper, FEATURES, False, ALIGNED)
            total = tl.sum(tl.where(mask, (g * g).to(tl.float64), 0.0), axis=0)
        tl.store(partial + tl.program_id(0), total)

    @triton.jit
    def _segment_sum_kernel(partial, segments, sums, BLOCK: tl.constexpr):
        """Tensor ``t``'s sum of its blocks' partial sums, in a fixed order."""
        t = tl.program_id(0)
        first = tl.load(segments + 2 * t)
        count = tl.load(segments + 2 * t + 1)
        total = tl.zeros([BLOCK], dtype=tl.float64)
        for i in range(0, count, BLOCK):
            index = i + tl.arange(0, BLOCK)
            total += tl.load(partial + first + index, mask=index < count, other=0.0)
        tl.store(sums + t, tl.sum(total, axis=0))
