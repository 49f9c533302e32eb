"""numba kernels behind :func:`kerasopt.kernels.fused_step` (imported only when numba is).

Every kernel works on a *table of addresses*: one row per tensor, one column per role
(weights, gradient, first and second moment, amsgrad maximum, accumulator, EMA average),
so one call updates thousands of tensors without a Python loop per tensor. The work is
split into chunks of at most ``CHUNK`` elements (rows of ``chunk_table``) that ``prange``
spreads over the threads.

Inside a chunk the elements are processed in blocks of ``BLOCK`` elements. When a feature
transforms the gradient (unscale, accumulation mean, clip), the block's gradient is loaded
once from memory into a small scratch buffer (it stays in L1) and each such feature is a
separate branch-free loop over that buffer; otherwise the update reads the gradient in
place (the copy would be a pass that streams one array alone, ~25% of a plain step). Then
come one loop per written array and the EMA loop. Every array in memory is read and
written once per step; the features only add L1 traffic, and the feature switches are
tested once per block, not per element, so every loop vectorizes. The arithmetic is the
reference's, operation by operation and in the same order, in the variable's dtype
(``fastmath`` is off, so LLVM neither reassociates nor contracts ``a * b + c`` into a fused
multiply-add; the one exception is the float64 running sum of the norm pass, see
``squared_sums``). Every function is compiled with ``error_model="numpy"``: a division by
zero gives inf or NaN, as in NumPy and the reference, where numba's default for code outside
``prange`` loops would raise ``ZeroDivisionError``.
"""

from __future__ import annotations

from types import FunctionType

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from kerasopt.kernels.layout import (
    ACC,
    ACCUMULATE,
    AMSGRAD,
    AVERAGE,
    CHUNK,
    CLIP_GLOBAL,
    CLIP_NORM,
    CLIP_VALUE,
    DECAY,
    EMA,
    H_ADAM_ALPHA,
    H_ADAM_EPSILON,
    H_ADAM_ONE_MINUS_BETA_2,
    H_ADAMAX_BETA_2,
    H_ADAMAX_DENOMINATOR,
    H_ADAMAX_EPSILON,
    H_ADAMAX_LR,
    H_CLIP_HIGH,
    H_CLIP_LOW,
    H_DECAY,
    H_EMA,
    H_GLOBAL,
    H_ONE_MINUS_BETA_1,
    H_ONE_MINUS_EMA,
    H_SCALE,
    H_STEPS,
    OVERWRITE,
    UNSCALE,
    VHAT,
    G,
    M,
    V,
    W,
)

BLOCK = 128
"""Elements per block: small, so that every loop of a block moves each of its memory
streams along a few cache lines at a time and the prefetchers see all streams advance
together; on the 2-core EPYC of docs/benchmarks.md, 128 beat 512 by ~7% on one 16M tensor
(32-128 were alike, 2048-8192 were 20-30% slower)."""



def _threaded(function):
    """``function`` compiled to spread its ``prange`` loop over numba's threads, with
    ``.serial``: the same code compiled for the calling thread alone (``prange`` is then
    ``range``), for steps too small to be worth waking the other threads. (A copy of the
    function under its own name, so that the two builds have their own cache files.)"""
    serial = FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                          function.__defaults__, function.__closure__)
    serial.__qualname__ = function.__qualname__ + "_serial"
    dispatcher = njit(parallel=True, cache=True, error_model="numpy")(function)
    dispatcher.serial = njit(cache=True, error_model="numpy")(serial)
    return dispatcher


@intrinsic
def _pointer(typingctx, address, marker):
    """``address`` (an int64) as a typed pointer to ``marker``'s dtype."""
    pointer_type = types.CPointer(marker.dtype)
    sig = pointer_type(address, marker)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return sig, codegen


_I64 = np.zeros(1, np.int64)
_I32 = np.zeros(1, np.int32)


@njit(inline="always", error_model="numpy")
def _view(address, start, count, marker):
    """``count`` elements of ``marker``'s dtype starting ``start`` elements after address."""
    return carray(_pointer(address + start * marker.itemsize, marker), count)


@njit(cache=True, error_model="numpy")
def read_numpy_headers(object_addresses, data_offset, expected_sizes, descr, writeable):
    """Data addresses of NumPy arrays, read from their ``PyArrayObject`` headers.

    ``object_addresses`` are ``id(array)`` values (CPython); ``data_offset`` is where
    ``data`` sits in the header (probed at import against ``array.ctypes.data``, together
    with the other fields used here). Returns the data addresses and, per array, whether it
    is C-contiguous, aligned (and writeable, when asked), of dtype ``descr`` (the address
    of the dtype object) and of ``expected_sizes[i]`` elements (any size when negative),
    and the sizes. Arrays failing this are checked again the slow way by the caller.
    """
    n = object_addresses.shape[0]
    data = np.empty(n, np.int64)
    ok = np.empty(n, np.bool_)
    sizes = np.empty(n, np.int64)
    wanted = np.int32(0x1 | 0x100)  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
    if writeable:
        wanted |= np.int32(0x400)  # NPY_ARRAY_WRITEABLE
    for i in range(n):
        base = object_addresses[i] + data_offset
        data[i] = _view(base, 0, 1, _I64)[0]
        nd = _view(base + 8, 0, 1, _I32)[0]
        dims = _view(base + 16, 0, 1, _I64)[0]
        size = 1
        for d in range(nd):
            size *= _view(dims, d, 1, _I64)[0]
        flags = _view(base + 48, 0, 1, _I32)[0]
        sizes[i] = size
        ok[i] = (
            (expected_sizes[i] < 0 or size == expected_sizes[i])
            and (flags & wanted) == wanted
            and _view(base + 40, 0, 1, _I64)[0] == descr
        )
    return data, sizes, ok


@njit(cache=True, error_model="numpy")
def same_layouts(first, second, data_offset):
    """Whether each pair ``first[i]``, ``second[i]`` of NumPy arrays (``id()`` values, headers
    as in :func:`read_numpy_headers`) has the same dtype object and the same shape."""
    for i in range(first.shape[0]):
        a = first[i] + data_offset
        b = second[i] + data_offset
        nd = _view(a + 8, 0, 1, _I32)[0]
        if nd != _view(b + 8, 0, 1, _I32)[0]:
            return False
        if _view(a + 40, 0, 1, _I64)[0] != _view(b + 40, 0, 1, _I64)[0]:
            return False
        dims_a = _view(a + 16, 0, 1, _I64)[0]
        dims_b = _view(b + 16, 0, 1, _I64)[0]
        for d in range(nd):
            if _view(dims_a, d, 1, _I64)[0] != _view(dims_b, d, 1, _I64)[0]:
                return False
    return True


@njit(cache=True, error_model="numpy")
def chunk_table(sizes):
    """``(tensor, start, stop)`` rows covering every tensor in chunks of <= CHUNK elements."""
    count = 0
    for s in sizes:
        count += max(1, (s + CHUNK - 1) // CHUNK)
    table = np.empty((count, 3), np.int64)
    row = 0
    for t in range(sizes.shape[0]):
        s = sizes[t]
        start = 0
        while True:
            stop = min(s, start + CHUNK)
            table[row, 0] = t
            table[row, 1] = start
            table[row, 2] = stop
            row += 1
            start = stop
            if start >= s:
                break
    return table


TRANSFORMS = UNSCALE | ACCUMULATE | CLIP_VALUE | CLIP_NORM | CLIP_GLOBAL


@njit(inline="always", error_model="numpy")
def _gradient_and_momentum(tmp, table, t, start, count, marker, features, hyper, clip_c,
                           clip_d, one_minus_beta_1):
    """The first moment's update ``m += (g - m) * (1 - beta_1)``, in the loop that reads the
    gradient from memory; returns the block's gradient as the update uses it.

    Without transforms that is the gradient's own memory. Otherwise each element goes
    through ``g / scale``, ``(g + acc) / n`` (zeroing the accumulator), the clip to
    ``[low, high]``, ``g * c / d`` (clipnorm) and ``g * s`` (global_clipnorm) in that order,
    all in the same loop (``hyper`` holds the identity for each transform that is off, so
    the loop has no branches) and into ``tmp`` for the loops that follow.
    """
    g = _view(table[t, G], start, count, marker)
    m = _view(table[t, M], start, count, marker)
    if not features & TRANSFORMS:
        for i in range(count):
            m[i] = m[i] + (g[i] - m[i]) * one_minus_beta_1
        return g
    scale = hyper[H_SCALE]
    steps = hyper[H_STEPS]
    low = hyper[H_CLIP_LOW]
    high = hyper[H_CLIP_HIGH]
    c = clip_c[t]
    d = clip_d[t]
    s = hyper[H_GLOBAL]
    if features & ACCUMULATE:
        acc = _view(table[t, ACC], start, count, marker)
        zero = marker[0] - marker[0]
        for i in range(count):
            x = (g[i] / scale + acc[i]) / steps
            acc[i] = zero
            # np.clip(x, low, high) == minimum(maximum(x, low), high), NaN propagating.
            x = low if x < low else x
            x = high if x > high else x
            x = x * c / d * s
            tmp[i] = x
            m[i] = m[i] + (x - m[i]) * one_minus_beta_1
    else:
        for i in range(count):
            x = g[i] / scale
            x = low if x < low else x
            x = high if x > high else x
            x = x * c / d * s
            tmp[i] = x
            m[i] = m[i] + (x - m[i]) * one_minus_beta_1
    return tmp


@njit(inline="always", error_model="numpy")
def _decay(table, t, start, count, marker, features, hyper, decay_mask):
    """Decoupled weight decay ``w *= 1 - weight_decay * lr`` of the block's weights."""
    if features & DECAY and decay_mask[t]:
        w = _view(table[t, W], start, count, marker)
        f = hyper[H_DECAY]
        for i in range(count):
            w[i] = w[i] * f


@njit(inline="always", error_model="numpy")
def _average(table, t, start, count, marker, features, hyper):
    """EMA of the weights, then the overwrite ``w := average`` when due."""
    if features & AVERAGE:
        w = _view(table[t, W], start, count, marker)
        a = _view(table[t, EMA], start, count, marker)
        momentum = hyper[H_EMA]
        rest = hyper[H_ONE_MINUS_EMA]
        for i in range(count):
            a[i] = momentum * a[i] + rest * w[i]
        if features & OVERWRITE:
            for i in range(count):
                w[i] = a[i]


@njit(inline="always", error_model="numpy")
def _adam_weights(table, t, start, count, marker, features, hyper, g, w, m):
    """Adam's second moment (and amsgrad maximum), then the weights."""
    alpha = hyper[H_ADAM_ALPHA]
    one_minus_beta_2 = hyper[H_ADAM_ONE_MINUS_BETA_2]
    epsilon = hyper[H_ADAM_EPSILON]
    v = _view(table[t, V], start, count, marker)
    for i in range(count):
        gi = g[i]
        v[i] = v[i] + (gi * gi - v[i]) * one_minus_beta_2
    if features & AMSGRAD:
        vhat = _view(table[t, VHAT], start, count, marker)
        for i in range(count):
            h = vhat[i]
            vi = v[i]
            # np.maximum(h, vi), NaN propagating
            vhat[i] = vi if (vi > h or vi != vi) else h
        v = vhat
    for i in range(count):
        w[i] = w[i] - m[i] * alpha / (np.sqrt(v[i]) + epsilon)


@njit(inline="always", error_model="numpy")
def _adamax_weights(table, t, start, count, marker, hyper, g, w, m):
    """Adamax's infinity norm, then the weights."""
    lr = hyper[H_ADAMAX_LR]
    beta_2 = hyper[H_ADAMAX_BETA_2]
    epsilon = hyper[H_ADAMAX_EPSILON]
    denominator = hyper[H_ADAMAX_DENOMINATOR]
    u = _view(table[t, V], start, count, marker)
    for i in range(count):
        a = beta_2 * u[i]
        b = np.abs(g[i])
        # np.maximum(a, b), NaN propagating
        u[i] = b if (b > a or b != b) else a
    for i in range(count):
        w[i] = w[i] - lr * m[i] / (denominator * (u[i] + epsilon))


@_threaded
def update_step(table, chunks, marker, features, hyper, clip_c, clip_d, decay_mask, adamax):
    """One fused Adam (or, with ``adamax``, Adamax) step over every tensor of ``table``, in
    place: per block the decay, the gradient's transforms with the first moment, the
    algorithm's second moment and weights, then the EMA. One loop per written array: each
    loop then needs only a few runtime alias checks between its (raw-pointer) arrays, so
    LLVM vectorizes it."""
    one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        tmp = np.empty(BLOCK, marker.dtype)
        for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
            count = min(BLOCK, chunks[c, 2] - start)
            _decay(table, t, start, count, marker, features, hyper, decay_mask)
            g = _gradient_and_momentum(tmp, table, t, start, count, marker, features, hyper,
                                       clip_c, clip_d, one_minus_beta_1)
            w = _view(table[t, W], start, count, marker)
            m = _view(table[t, M], start, count, marker)
            if adamax:
                _adamax_weights(table, t, start, count, marker, hyper, g, w, m)
            else:
                _adam_weights(table, t, start, count, marker, features, hyper, g, w, m)
            _average(table, t, start, count, marker, features, hyper)


@_threaded
def micro_step(table, chunks, marker, features, hyper):
    """An accumulation micro-step: ``acc += g (/ scale)``, and the EMA when on."""
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
            count = min(BLOCK, chunks[c, 2] - start)
            g = _view(table[t, G], start, count, marker)
            acc = _view(table[t, ACC], start, count, marker)
            if features & UNSCALE:
                scale = hyper[H_SCALE]
                for i in range(count):
                    acc[i] = acc[i] + g[i] / scale
            else:
                for i in range(count):
                    acc[i] = acc[i] + g[i]
            _average(table, t, start, count, marker, features, hyper)


@njit(cache=True, error_model="numpy")
def _transformed(x, a, scale, steps, features):
    """One gradient element after unscaling and the accumulation mean."""
    if features & UNSCALE:
        x = x / scale
    if features & ACCUMULATE:
        x = (x + a) / steps
    return x


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum_squares(g, acc, count, features, scale, steps):
    """float64 sum of ``x * x`` (squares rounded in the dtype) over ``x`` the block's
    transformed gradient, in one vectorized loop over the gradient and the accumulator
    (``acc`` may be ``g`` itself when there is none: ``_transformed`` then ignores it)."""
    total = 0.0
    for i in range(count):
        x = _transformed(g[i], acc[i], scale, steps, features)
        total += np.float64(x * x)
    return total


@_threaded
def squared_sums(table, chunks, marker, features, hyper):
    """Per chunk, the float64 sum of ``g * g`` (``g * g`` rounded in the dtype), where ``g``
    is the gradient after unscaling and the accumulation mean: the read pass of clipnorm.

    The only code that lets LLVM reassociate (``fastmath={"reassoc"}`` on ``_sum_squares``;
    NaN and inf still propagate), so that the float64 running sum is vectorized, several
    times faster than a strict chain of dependent adds. The reference sums in the dtype
    (pairwise in NumPy), so its order differs anyway; a float64 sum of float32 squares is
    exact to ~1e-16 in any order and rounds to the same float32 norm but for rare ties.
    The per-element values must stay exact: numba compiles ``_transformed`` inside
    ``_sum_squares`` with the same flag, but with ``reassoc`` alone LLVM has no fold that
    changes a lone division, addition or square (that takes ``arcp`` or ``contract``);
    ``test_norm_pass_reassociates_only_the_sum`` checks the sum against the exact sum of the
    strictly computed squares.
    """
    partial = np.empty(chunks.shape[0], np.float64)
    scale = hyper[H_SCALE]
    steps = hyper[H_STEPS]
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        start = chunks[c, 1]
        count = chunks[c, 2] - start
        g = _view(table[t, G], start, count, marker)
        acc = g
        if features & ACCUMULATE:
            acc = _view(table[t, ACC], start, count, marker)
        partial[c] = _sum_squares(g, acc, count, features, scale, steps)
    return partial


@njit(cache=True, error_model="numpy")
def tensor_sums(partial, chunks, n_tensors, marker):
    """Per tensor, the sum of its chunks' partial sums, rounded to ``marker``'s dtype."""
    totals = np.zeros(n_tensors, np.float64)
    for c in range(chunks.shape[0]):
        totals[chunks[c, 0]] += partial[c]
    out = np.empty(n_tensors, marker.dtype)
    for t in range(n_tensors):
        out[t] = totals[t]
    return out


@_threaded
def adam_rows(w, m, v, vhat, rows, values, hyper, amsgrad):
    """Lazy sparse Adam: only ``rows`` of the 2-D ``w``, ``m``, ``v`` (and ``vhat``) move,
    with ``values[k]`` the (deduplicated) gradient of row ``rows[k]``."""
    alpha = hyper[H_ADAM_ALPHA]
    one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
    one_minus_beta_2 = hyper[H_ADAM_ONE_MINUS_BETA_2]
    epsilon = hyper[H_ADAM_EPSILON]
    for k in prange(rows.shape[0]):
        r = rows[k]
        for j in range(w.shape[1]):
            g = values[k, j]
            mi = m[r, j] + (g - m[r, j]) * one_minus_beta_1
            vi = v[r, j] + (g * g - v[r, j]) * one_minus_beta_2
            m[r, j] = mi
            v[r, j] = vi
            if amsgrad:
                h = vhat[r, j]
                h = vi if (vi > h or vi != vi) else h
                vhat[r, j] = h
                vi = h
            w[r, j] = w[r, j] - mi * alpha / (np.sqrt(vi) + epsilon)


@_threaded
def adamax_rows(w, m, u, rows, values, hyper):
    """Lazy sparse Adamax: only ``rows`` of the 2-D ``w``, ``m``, ``u`` move."""
    lr = hyper[H_ADAMAX_LR]
    one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
    beta_2 = hyper[H_ADAMAX_BETA_2]
    epsilon = hyper[H_ADAMAX_EPSILON]
    denominator = hyper[H_ADAMAX_DENOMINATOR]
    for k in prange(rows.shape[0]):
        r = rows[k]
        for j in range(w.shape[1]):
            g = values[k, j]
            mi = m[r, j] + (g - m[r, j]) * one_minus_beta_1
            a = beta_2 * u[r, j]
            b = np.abs(g)
            ui = b if (b > a or b != b) else a
            m[r, j] = mi
            u[r, j] = ui
            w[r, j] = w[r, j] - lr * mi / (denominator * (ui + epsilon))


@njit(cache=True, error_model="numpy")
def add_rows(summed, inverse, values):
    """``summed[inverse[k]] += values[k]`` for k in order (``np.add.at``'s order, so the
    sums are bit-identical to it), on 2-D ``summed`` / ``values``."""
    for k in range(inverse.shape[0]):
        r = inverse[k]
        for j in range(values.shape[1]):
            summed[r, j] += values[k, j]
