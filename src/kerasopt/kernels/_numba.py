"""numba kernels behind :func:`kerasopt.kernels.fused_step` (imported only when numba is).

Every kernel works on a *table of addresses*: one row per tensor, one column per role
(weights, gradient, first and second moment, amsgrad maximum, accumulator, EMA average),
so one call updates thousands of tensors without a Python loop per tensor. The work is
split into chunks of at most ``CHUNK`` elements (rows of the chunk table, see
``kerasopt.kernels.fused.chunk_table``).

Threads: a launched kernel takes a ``cursor`` (a one-element int64 array) first and claims
work from it with an atomic fetch-and-add, ``CHUNK`` elements' worth of chunks at a time,
until every chunk is claimed. The same compiled function therefore runs on the calling
thread alone (small steps) or on several threads at once (``kerasopt.kernels._threads``
calls it from each; it releases the GIL), and a thread that the operating system
deschedules leaves its share to the others. One build per kernel, no ``prange``: numba's
parallel compilation took about three times as long as the serial build, and its OpenMP
pool shared a libgomp with torch's.

Specialized builds: the update kernel is built per kernel body (Adam or Adamax, a
compile-time constant) and in two variants, ``full`` (every feature, switched per block by
the ``features`` bits) and plain (no gradient transform and no EMA: the common step, and a
third of the code to compile on first use). Both variants run the same loops in the same
order, so a step's result does not depend on which one ran.

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
zero gives inf or NaN, as in NumPy and the reference, where numba's default would raise
``ZeroDivisionError``.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import config, njit, types
from numba.core import event
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


def thread_count() -> int:
    """``NUMBA_NUM_THREADS``: numba's thread count (by default the number of cores)."""
    return max(1, int(config.NUMBA_NUM_THREADS))


class _CompileNotice(event.Listener):
    """Says once per process, when numba starts compiling one of these kernels, what the
    pause is: a first step compiles its kernels for a second or more before it returns
    (later processes load them from numba's on-disk cache)."""

    shown = False

    def on_start(self, ev: event.Event) -> None:
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        if _CompileNotice.shown or getattr(function, "__module__", None) != __name__:
            return
        _CompileNotice.shown = True
        logging.getLogger("kerasopt").warning(
            "kerasopt: compiling the fused CPU kernels for this kind of step (first use on "
            "this machine, a second or a few; numba caches them on disk, so later runs start "
            "at once)."
        )

    def on_end(self, ev: event.Event) -> None:
        pass


event.register("numba:compile", _CompileNotice())


_launched = njit(nogil=True, cache=True, error_model="numpy")
"""The decorator of the kernels that ``kerasopt.kernels._threads`` launches: compiled once
(cached on disk), releasing the GIL while they run."""


@intrinsic
def _pointer(typingctx, address, marker):
    """``address`` (an int64) as a typed pointer to ``marker``'s dtype."""
    pointer_type = types.CPointer(marker.dtype)
    sig = pointer_type(address, marker)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return sig, codegen


@intrinsic
def _fetch_add(typingctx, counter, amount):
    """Atomically ``old = counter[0]; counter[0] += amount``; returns ``old`` (``counter``: a
    one-element int64 array shared by the threads of a launch)."""
    sig = types.int64(counter, amount)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        value = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", array.data, value, "monotonic")

    return sig, codegen


_I64 = np.zeros(1, np.int64)
_I32 = np.zeros(1, np.int32)


@njit(cache=True, error_model="numpy")
def read_numpy_headers(object_addresses, data_offset, expected_sizes, descr, writeable, data,
                       sizes):
    """Data addresses of NumPy arrays, read from their ``PyArrayObject`` headers.

    ``object_addresses`` are ``id(array)`` values (CPython); ``data_offset`` is where
    ``data`` sits in the header (probed at import against ``array.ctypes.data``, together
    with the other fields used here). Writes the data addresses and sizes into ``data`` and
    ``sizes``; returns whether every array is C-contiguous, aligned (and writeable, when
    asked), of dtype ``descr`` (the address of the dtype object) and of
    ``expected_sizes[i]`` elements (any size when negative). When not, the caller checks
    them again the slow way.
    """
    wanted = np.int32(0x1 | 0x100)  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
    if writeable:
        wanted |= np.int32(0x400)  # NPY_ARRAY_WRITEABLE
    ok = True
    for i in range(object_addresses.shape[0]):
        base = object_addresses[i] + data_offset
        data[i] = _pointer(base, _I64)[0]
        nd = _pointer(base + 8, _I32)[0]
        dims = _pointer(base + 16, _I64)[0]
        size = 1
        for d in range(nd):
            size *= _pointer(dims, _I64)[d]
        flags = _pointer(base + 48, _I32)[0]
        sizes[i] = size
        ok = ok and ((expected_sizes[i] < 0 or size == expected_sizes[i])
                     and (flags & wanted) == wanted
                     and _pointer(base + 40, _I64)[0] == descr)
    return ok


@njit(cache=True, error_model="numpy")
def same_layouts(first, second, data_offset):
    """Whether each pair ``first[i]``, ``second[i]`` of NumPy arrays (``id()`` values, headers
    as in :func:`read_numpy_headers`) has the same dtype object and the same shape."""
    for i in range(first.shape[0]):
        a = first[i] + data_offset
        b = second[i] + data_offset
        nd = _pointer(a + 8, _I32)[0]
        if nd != _pointer(b + 8, _I32)[0]:
            return False
        if _pointer(a + 40, _I64)[0] != _pointer(b + 40, _I64)[0]:
            return False
        dims_a = _pointer(a + 16, _I64)[0]
        dims_b = _pointer(b + 16, _I64)[0]
        for d in range(nd):
            if _pointer(dims_a, _I64)[d] != _pointer(dims_b, _I64)[d]:
                return False
    return True


# --------------------------------------------------------------------------- work claims


@njit(inline="always", error_model="numpy")
def _elements(chunks):
    """The elements of every chunk of ``chunks`` together."""
    n = chunks.shape[0]
    if n == 0:
        return 0
    return chunks[n - 1, 3] + chunks[n - 1, 2] - chunks[n - 1, 1]


@njit(inline="always", error_model="numpy")
def _first_row_at(chunks, element):
    """The first chunk whose first element (column 3, counted over all tensors) is at or
    after ``element`` (binary search: the column is non-decreasing)."""
    low = 0
    high = chunks.shape[0]
    while low < high:
        middle = (low + high) >> 1
        if chunks[middle, 3] < element:
            low = middle + 1
        else:
            high = middle
    return low


@njit(inline="always", error_model="numpy")
def _claim(cursor, chunks, total):
    """The next unit of work of a launch: the chunks that start within the next ``CHUNK``
    elements claimed from ``cursor``, as ``range(first, stop)``; ``first`` is -1 when every
    element has been claimed. (A chunk has at most ``CHUNK`` elements, so every chunk starts
    in exactly one unit.)"""
    claimed = _fetch_add(cursor, CHUNK)
    if claimed >= total:
        return -1, -1
    first = _first_row_at(chunks, claimed)
    stop = first
    while stop < chunks.shape[0] and chunks[stop, 3] < claimed + CHUNK:
        stop += 1
    return first, stop


# --------------------------------------------------------------------------- the step
# Each kernel takes, per chunk, a typed pointer to each of its tensor's arrays (``_at``)
# and runs its loops over the elements ``[start, end)`` of one block at a time.


TRANSFORMS = UNSCALE | ACCUMULATE | CLIP_VALUE | CLIP_NORM | CLIP_GLOBAL
PLAIN = DECAY | AMSGRAD
"""The features that the plain build of the update step handles (all others need the full
build)."""


@njit(inline="always", error_model="numpy")
def _at(table, t, column, marker):
    """Tensor ``t``'s array in ``column`` of the address table, as a typed pointer (an
    unused column holds 0: never read)."""
    return _pointer(table[t, column], marker)


@njit(inline="always", error_model="numpy")
def _momentum(g, m, start, end, one_minus_beta_1):
    """The first moment's update ``m += (g - m) * (1 - beta_1)`` from the gradient in memory;
    returns the gradient."""
    for i in range(start, end):
        m[i] = m[i] + (g[i] - m[i]) * one_minus_beta_1
    return g


@njit(inline="always", error_model="numpy")
def _gradient_and_momentum(scratch, g, m, acc, start, end, marker, features, hyper, c, d,
                           one_minus_beta_1):
    """The first moment's update ``m += (g - m) * (1 - beta_1)``, in the loop that reads the
    gradient from memory; returns the block's gradient as the update uses it.

    Without transforms that is the gradient's own memory. Otherwise each element goes
    through ``g / scale``, ``(g + acc) / n`` (zeroing the accumulator), the clip to
    ``[low, high]``, ``g * c / d`` (clipnorm) and ``g * s`` (global_clipnorm) in that order,
    all in the same loop (``hyper`` holds the identity for each transform that is off, so
    the loop has no branches) and into ``scratch`` (one block, in L1), which is returned as
    a pointer indexed like the arrays.
    """
    if not features & TRANSFORMS:
        return _momentum(g, m, start, end, one_minus_beta_1)
    x = _pointer(scratch.ctypes.data - start * marker.itemsize, marker)
    scale = hyper[H_SCALE]
    steps = hyper[H_STEPS]
    low = hyper[H_CLIP_LOW]
    high = hyper[H_CLIP_HIGH]
    s = hyper[H_GLOBAL]
    if features & ACCUMULATE:
        zero = marker[0] - marker[0]
        for i in range(start, end):
            y = (g[i] / scale + acc[i]) / steps
            acc[i] = zero
            # np.clip(y, low, high) == minimum(maximum(y, low), high), NaN propagating.
            y = low if y < low else y
            y = high if y > high else y
            y = y * c / d * s
            x[i] = y
            m[i] = m[i] + (y - m[i]) * one_minus_beta_1
    else:
        for i in range(start, end):
            y = g[i] / scale
            y = low if y < low else y
            y = high if y > high else y
            y = y * c / d * s
            x[i] = y
            m[i] = m[i] + (y - m[i]) * one_minus_beta_1
    return x


@njit(inline="always", error_model="numpy")
def _decay(w, start, end, factor):
    """Decoupled weight decay ``w *= 1 - weight_decay * lr`` (``factor``) of a block."""
    for i in range(start, end):
        w[i] = w[i] * factor


@njit(inline="always", error_model="numpy")
def _average(w, a, start, end, features, hyper):
    """EMA of the weights, then the overwrite ``w := average`` when due."""
    if features & AVERAGE:
        momentum = hyper[H_EMA]
        rest = hyper[H_ONE_MINUS_EMA]
        for i in range(start, end):
            a[i] = momentum * a[i] + rest * w[i]
        if features & OVERWRITE:
            for i in range(start, end):
                w[i] = a[i]


@njit(inline="always", error_model="numpy")
def _adam_weights(w, g, m, v, vhat, start, end, features, hyper):
    """Adam's second moment (and amsgrad maximum), then the weights."""
    alpha = hyper[H_ADAM_ALPHA]
    one_minus_beta_2 = hyper[H_ADAM_ONE_MINUS_BETA_2]
    epsilon = hyper[H_ADAM_EPSILON]
    for i in range(start, end):
        gi = g[i]
        v[i] = v[i] + (gi * gi - v[i]) * one_minus_beta_2
    if features & AMSGRAD:
        for i in range(start, end):
            h = vhat[i]
            vi = v[i]
            # np.maximum(h, vi), NaN propagating
            vhat[i] = vi if (vi > h or vi != vi) else h
        v = vhat
    for i in range(start, end):
        w[i] = w[i] - m[i] * alpha / (np.sqrt(v[i]) + epsilon)


@njit(inline="always", error_model="numpy")
def _adamax_weights(w, g, m, u, start, end, hyper):
    """Adamax's infinity norm, then the weights."""
    lr = hyper[H_ADAMAX_LR]
    beta_2 = hyper[H_ADAMAX_BETA_2]
    epsilon = hyper[H_ADAMAX_EPSILON]
    denominator = hyper[H_ADAMAX_DENOMINATOR]
    for i in range(start, end):
        a = beta_2 * u[i]
        b = np.abs(g[i])
        # np.maximum(a, b), NaN propagating
        u[i] = b if (b > a or b != b) else a
    for i in range(start, end):
        w[i] = w[i] - lr * m[i] / (denominator * (u[i] + epsilon))


def _build_update_step(adamax: bool, full: bool):
    """The update kernel of one kernel body (``adamax``, else Adam) in one variant (``full``:
    every feature; else only those of ``PLAIN``). Both are compile-time constants: numba
    drops the branches they rule out before compiling."""

    def update_step(cursor, table, chunks, marker, features, hyper, clip_c, clip_d,
                    decay_mask):
        """One fused update step over every tensor of ``table``, in place: per block the
        decay, the gradient's transforms with the first moment, the body's second moment
        and weights, then the EMA. One loop per written array: each loop then needs only a
        few runtime alias checks between its (raw-pointer) arrays, so LLVM vectorizes it."""
        one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
        factor = hyper[H_DECAY]
        if full:
            scratch = np.empty(BLOCK, marker.dtype)  # the block's transformed gradient
        total = _elements(chunks)
        while True:
            first, stop = _claim(cursor, chunks, total)
            if first < 0:
                break
            for c in range(first, stop):
                t = chunks[c, 0]
                w = _at(table, t, W, marker)
                g = _at(table, t, G, marker)
                m = _at(table, t, M, marker)
                v = _at(table, t, V, marker)
                decay = features & DECAY and decay_mask[t]
                for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
                    end = min(start + BLOCK, chunks[c, 2])
                    if decay:
                        _decay(w, start, end, factor)
                    if full:
                        x = _gradient_and_momentum(scratch, g, m, _at(table, t, ACC, marker),
                                                   start, end, marker, features, hyper,
                                                   clip_c[t], clip_d[t], one_minus_beta_1)
                    else:
                        x = _momentum(g, m, start, end, one_minus_beta_1)
                    if adamax:
                        _adamax_weights(w, x, m, v, start, end, hyper)
                    else:
                        _adam_weights(w, x, m, v, _at(table, t, VHAT, marker), start, end,
                                      features, hyper)
                    if full:
                        _average(w, _at(table, t, EMA, marker), start, end, features, hyper)

    name = f"update_step_{'adamax' if adamax else 'adam'}{'' if full else '_plain'}"
    update_step.__name__ = update_step.__qualname__ = name
    return _launched(update_step)


_UPDATE_STEPS: dict = {}


def update_step(kernel: str, features: int):
    """The update kernel for ``kernel`` (a body of ``layout.KERNEL_BODIES``) that handles
    ``features``: the plain build when they are all in ``PLAIN``, else the full one (each
    compiled on its first call)."""
    key = (kernel, bool(features & ~PLAIN))
    built = _UPDATE_STEPS.get(key)
    if built is None:
        built = _UPDATE_STEPS[key] = _build_update_step(kernel == "adamax", key[1])
    return built


@_launched
def micro_step(cursor, table, chunks, marker, features, hyper):
    """An accumulation micro-step: ``acc += g (/ scale)``, and the EMA when on."""
    scale = hyper[H_SCALE]
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            g = _at(table, t, G, marker)
            acc = _at(table, t, ACC, marker)
            w = _at(table, t, W, marker)
            a = _at(table, t, EMA, marker)
            for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
                end = min(start + BLOCK, chunks[c, 2])
                if features & UNSCALE:
                    for i in range(start, end):
                        acc[i] = acc[i] + g[i] / scale
                else:
                    for i in range(start, end):
                        acc[i] = acc[i] + g[i]
                _average(w, a, start, end, features, hyper)


@njit(cache=True, error_model="numpy")
def _transformed(x, a, scale, steps, features):
    """One gradient element after unscaling and the accumulation mean."""
    if features & UNSCALE:
        x = x / scale
    if features & ACCUMULATE:
        x = (x + a) / steps
    return x


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum_squares(g, acc, start, end, features, scale, steps):
    """float64 sum of ``x * x`` (squares rounded in the dtype) over ``x`` the transformed
    gradient of elements ``[start, end)``, in one vectorized loop over the gradient and the
    accumulator (``acc`` may be ``g`` itself when there is none: ``_transformed`` then
    ignores it)."""
    total = 0.0
    for i in range(start, end):
        x = _transformed(g[i], acc[i], scale, steps, features)
        total += np.float64(x * x)
    return total


@_launched
def squared_sums(cursor, table, chunks, marker, features, hyper, partial):
    """Per chunk, into ``partial[chunk]``, the float64 sum of ``g * g`` (``g * g`` rounded in
    the dtype), where ``g`` is the gradient after unscaling and the accumulation mean: the
    read pass of clipnorm.

    The only code that lets LLVM reassociate (``fastmath={"reassoc"}`` on ``_sum_squares``;
    NaN and inf still propagate), so that the float64 running sum is vectorized, several
    times faster than a strict chain of dependent adds. The reference sums in the dtype
    (pairwise in NumPy), so its order differs anyway; a float64 sum of float32 squares is
    exact to ~1e-16 in any order and rounds to the same float32 norm but for rare ties.
    Each chunk's sum is the same whichever thread computes it. The per-element values must
    stay exact: numba compiles ``_transformed`` inside ``_sum_squares`` with the same flag,
    but with ``reassoc`` alone LLVM has no fold that changes a lone division, addition or
    square (that takes ``arcp`` or ``contract``); ``test_norm_pass_reassociates_only_the_sum``
    checks the sum against the exact sum of the strictly computed squares.
    """
    scale = hyper[H_SCALE]
    steps = hyper[H_STEPS]
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            g = _at(table, t, G, marker)
            acc = g
            if features & ACCUMULATE:
                acc = _at(table, t, ACC, marker)
            partial[c] = _sum_squares(g, acc, chunks[c, 1], chunks[c, 2], features, scale,
                                      steps)


# --------------------------------------------------------------------------- rooflines
# Streaming kernels with the access pattern of each pass above (the same arrays read and
# written, the same blocks, chunks, claims and threads) and trivial arithmetic: how fast
# this machine moves a pass's bytes. ``kerasopt bench`` reports the fused step as a fraction
# of them.


@_launched
def stream_update(cursor, table, chunks, marker, features):
    """The update step's pattern: read w, g, m, v, write w, m, v (``m += g; v += g;
    w += m + v``), the accumulator read and zeroed with ``ACCUMULATE``, the EMA average
    read and written with ``AVERAGE`` (``a += w``)."""
    zero = marker[0] - marker[0]
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            w = _at(table, t, W, marker)
            g = _at(table, t, G, marker)
            m = _at(table, t, M, marker)
            v = _at(table, t, V, marker)
            acc = _at(table, t, ACC, marker)
            a = _at(table, t, EMA, marker)
            for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
                end = min(start + BLOCK, chunks[c, 2])
                if features & ACCUMULATE:
                    for i in range(start, end):
                        m[i] = m[i] + g[i] + acc[i]
                        acc[i] = zero
                else:
                    for i in range(start, end):
                        m[i] = m[i] + g[i]
                for i in range(start, end):
                    v[i] = v[i] + g[i]
                for i in range(start, end):
                    w[i] = w[i] + m[i] + v[i]
                if features & AVERAGE:
                    for i in range(start, end):
                        a[i] = a[i] + w[i]


@_launched
def stream_micro(cursor, table, chunks, marker, features):
    """The micro-step's pattern: ``acc += g``, and ``a += w`` with ``AVERAGE``."""
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            g = _at(table, t, G, marker)
            acc = _at(table, t, ACC, marker)
            w = _at(table, t, W, marker)
            a = _at(table, t, EMA, marker)
            for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
                end = min(start + BLOCK, chunks[c, 2])
                for i in range(start, end):
                    acc[i] = acc[i] + g[i]
                if features & AVERAGE:
                    for i in range(start, end):
                        a[i] = a[i] + w[i]


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum(g, acc, start, end, features):
    total = 0.0
    for i in range(start, end):
        x = g[i]
        if features & ACCUMULATE:
            x = x + acc[i]
        total += np.float64(x)
    return total


@_launched
def stream_norm(cursor, table, chunks, marker, features, partial):
    """The norm pass's pattern: read g (and the accumulator with ``ACCUMULATE``), a float64
    sum per chunk."""
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            partial[c] = _sum(_at(table, t, G, marker), _at(table, t, ACC, marker),
                              chunks[c, 1], chunks[c, 2], features)


@_launched
def stream_triad(cursor, table, chunks, marker, s):
    """STREAM's triad ``a = b + s * c`` (a in the weights' column, b the gradients', c the
    first moments'): the usual second reference, 12 bytes per element."""
    total = _elements(chunks)
    while True:
        first, stop = _claim(cursor, chunks, total)
        if first < 0:
            break
        for c in range(first, stop):
            t = chunks[c, 0]
            a = _at(table, t, W, marker)
            b = _at(table, t, G, marker)
            x = _at(table, t, M, marker)
            for start in range(chunks[c, 1], chunks[c, 2], BLOCK):
                end = min(start + BLOCK, chunks[c, 2])
                for i in range(start, end):
                    a[i] = b[i] + s * x[i]


# --------------------------------------------------------------------------- sparse rows


@_launched
def adam_rows(cursor, grain, w, m, v, vhat, rows, values, hyper, amsgrad):
    """Lazy sparse Adam: only ``rows`` of the 2-D ``w``, ``m``, ``v`` (and ``vhat``) move,
    with ``values[k]`` the (deduplicated) gradient of row ``rows[k]``; claimed ``grain``
    rows at a time."""
    alpha = hyper[H_ADAM_ALPHA]
    one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
    one_minus_beta_2 = hyper[H_ADAM_ONE_MINUS_BETA_2]
    epsilon = hyper[H_ADAM_EPSILON]
    n = rows.shape[0]
    while True:
        first = _fetch_add(cursor, grain)
        if first >= n:
            break
        for k in range(first, min(n, first + grain)):
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


@_launched
def adamax_rows(cursor, grain, w, m, u, rows, values, hyper):
    """Lazy sparse Adamax: only ``rows`` of the 2-D ``w``, ``m``, ``u`` move."""
    lr = hyper[H_ADAMAX_LR]
    one_minus_beta_1 = hyper[H_ONE_MINUS_BETA_1]
    beta_2 = hyper[H_ADAMAX_BETA_2]
    epsilon = hyper[H_ADAMAX_EPSILON]
    denominator = hyper[H_ADAMAX_DENOMINATOR]
    n = rows.shape[0]
    while True:
        first = _fetch_add(cursor, grain)
        if first >= n:
            break
        for k in range(first, min(n, first + grain)):
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
