"""``fused_step``: one whole Keras optimizer step, in place, in one pass over memory.

The pure functions of :mod:`kerasopt.algorithms` and :mod:`kerasopt.pipeline` define the
step; this module runs the same arithmetic, operation by operation, in numba kernels
(:mod:`kerasopt.kernels._numba`) that

* read and write each array once (the gradient's unscaling, the accumulation mean, the
  clip, the weight decay, the update and the EMA all happen while an element is in
  registers / L1); ``clipnorm`` and ``global_clipnorm`` add one read pass over the
  gradients for the norm, which no implementation can avoid;
* take one table of addresses for all tensors, so thousands of small tensors cost one
  kernel launch and a few hundred nanoseconds of Python each, not a Python loop of array
  operations each;
* run on all cores (``kerasopt.kernels._threads``; ``NUMBA_NUM_THREADS`` sets how many),
  each kernel compiled once, for the calling thread and the workers alike.

Scalars are computed exactly as the reference computes them (the same expressions over
0-d arrays of the variables' dtype and array library), so the results agree with the
reference to the last bit, except the norms of ``clipnorm`` / ``global_clipnorm``: the
kernels sum the squares in float64 (the reference sums in the dtype, pairwise in NumPy),
which can move the clip scale by an ulp or so.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np

from kerasopt.backend import is_torch
from kerasopt.kernels import _threads, layout
from kerasopt.kernels.scalars import algorithm_scalars, kernel_scalars_of, step_scalars

try:  # numba is the optional ``fast`` extra
    from kerasopt.kernels import _numba as _k
except ImportError as _error:  # pragma: no cover - exercised where numba is missing
    _k = None
    _MISSING: ImportError | None = _error
else:
    _MISSING = None

__all__ = [
    "NotFusable",
    "available",
    "chunk_table",
    "fusable",
    "fused_rows_step",
    "fused_step",
    "fused_step_table",
    "same_numpy_layouts",
    "sum_rows",
    "thread_count",
]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NotFusable(ValueError):
    """The inputs cannot go through the fused kernel (raised before anything is modified);
    use the reference path instead."""


def available() -> bool:
    """True when the fused kernels can run (numba is installed and importable). The
    optimizers ask before every step; without numba the first call warns, once per process,
    that steps take the slower reference path, and how to install numba."""
    if _k is None:
        _warn_slow_path()
        return False
    return True


def _warn_slow_path() -> None:
    global _MISSING
    if _MISSING is None:
        return
    from kerasopt._install import fix_command

    reason = ("numba is not installed" if getattr(_MISSING, "name", None) == "numba"
              else f"numba failed to import ({_MISSING})")
    _MISSING = None
    warnings.warn(
        f"kerasopt steps on its reference path, several times slower than its fused "
        f"kernels, because {reason}. For the fast path: {fix_command('fast')}",
        UserWarning, stacklevel=3,
    )


def fusable(array: Any) -> bool:
    """Whether tensors like ``array`` can go through :func:`fused_step`: a float32 or
    float64 NumPy array or CPU torch tensor, with numba available."""
    if _k is None:
        return False
    if isinstance(array, np.ndarray):
        return array.dtype in _DTYPES
    if is_torch(array):
        torch = sys.modules["torch"]
        return array.device.type == "cpu" and array.dtype in (torch.float32, torch.float64)
    return False


def fused_step(
    algorithm: str,
    params: Sequence[Any],
    grads: Sequence[Any],
    slots: Sequence[Sequence[Any]],
    *,
    learning_rate: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
    weight_decay: float | None = None,
    weight_decay_mask: Sequence[bool] | None = None,
    clipnorm: float | None = None,
    global_clipnorm: float | None = None,
    clipvalue: float | None = None,
    loss_scale_factor: float | None = None,
    accumulators: Sequence[Any] | None = None,
    accumulation_steps: int | None = None,
    accumulation_phase: str | None = None,
    ema_averages: Sequence[Any] | None = None,
    ema_momentum: Any = None,
    ema_overwrite: bool = False,
) -> None:
    """One Keras optimizer step over ``params``, in place, fused into one pass over memory.

    Runs, per element and in Keras 3's order: ``g / loss_scale_factor``; accumulation;
    clip (``clipvalue``, ``clipnorm`` or ``global_clipnorm``); decoupled weight decay;
    the ``algorithm``'s update; the EMA of the weights and its overwrite.

    Args:
        algorithm: The algorithm's :class:`~kerasopt.specs.AlgorithmSpec`, or the name of
            a kernel body (``"adam"``, ``"adamax"``: see ``layout.KERNEL_BODIES``).
        params: The weights (updated in place): NumPy arrays, or CPU torch tensors. All of
            one library and one dtype, float32 or float64, C-contiguous.
        grads: One dense gradient per weight, same library, dtype and number of elements.
        slots: The algorithm's state, one list per slot, each with one array per weight
            (updated in place): Adam ``(momentums, velocities)`` or ``(momentums,
            velocities, velocity_hats)`` (the third list switches amsgrad on); Adamax
            ``(momentums, norms)``.
        learning_rate: The step's learning rate (what the reference ``update_step`` gets,
            e.g. the optimizer's float32 learning rate or a schedule's value).
        beta_1, beta_2, epsilon: The algorithm's (resolved) hyperparameters.
        step: ``t = iterations + 1`` (iterations counted in accumulated steps).
        weight_decay: Decoupled decay ``w *= 1 - weight_decay * lr``, or None.
        weight_decay_mask: Per weight, whether it is decayed (default: all).
        clipnorm, global_clipnorm, clipvalue: At most one; as in Keras.
        loss_scale_factor: Gradients are divided by it first, or None.
        accumulators: With ``accumulation_phase``, one accumulator per weight.
        accumulation_steps: ``gradient_accumulation_steps`` (n).
        accumulation_phase: None (no accumulation), ``"micro"`` (only ``acc += g`` and the
            EMA: weights and slots are not touched) or ``"update"`` (use ``(g + acc) / n``
            and zero these accumulators).
        ema_averages: One EMA average per weight to update after the step, or None.
        ema_momentum: This step's EMA momentum, i.e. ``pipeline.ema_momentum_at(iterations,
            ema_momentum)`` (0 while ``iterations == 0``).
        ema_overwrite: Copy the averages into the weights afterwards (the overwrite step).

    What stays with the caller: ``None`` gradients, sparse (``IndexedSlices``) gradients,
    resetting accumulators or averaging weights that are not passed here (e.g. those
    whose gradient is ``None``), variable constraints and the iteration counter.

    Raises:
        NotFusable: before anything is modified, when an input is not a float32/float64
            C-contiguous NumPy array / CPU torch tensor of the weights' library, dtype and
            size, or when numba is missing. The caller then runs the reference path.
        ValueError: on an unknown ``algorithm`` or ``accumulation_phase``, or several clips.
    """
    if _k is None:
        raise NotFusable("numba is not installed (kerasopt's \"fast\" extra installs it).")
    roles, amsgrad = layout.step_roles(
        kernel_scalars_of(algorithm)[0], params, grads, slots,
        clip_options=(clipnorm, global_clipnorm, clipvalue),
        accumulators=accumulators, accumulation_phase=accumulation_phase,
        ema_averages=ema_averages,
    )
    n = len(params)
    if n == 0:
        return
    table, sizes, like, _ = _address_table(roles, n)
    fused_step_table(
        algorithm, table, sizes, like, params, amsgrad=amsgrad, learning_rate=learning_rate,
        beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step, weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask, clipnorm=clipnorm,
        global_clipnorm=global_clipnorm, clipvalue=clipvalue,
        loss_scale_factor=loss_scale_factor, accumulation_steps=accumulation_steps,
        accumulation_phase=accumulation_phase, averaging=ema_averages is not None,
        ema_momentum=ema_momentum, ema_overwrite=ema_overwrite,
    )


def fused_step_table(
    algorithm: str,
    table: np.ndarray,
    sizes: np.ndarray,
    like: Any,
    params: Sequence[Any],
    *,
    amsgrad: bool,
    accumulation_phase: str | None,
    chunks: np.ndarray | None = None,
    elements: int | None = None,
    **options: Any,
) -> None:
    """:func:`fused_step` on a prebuilt table of addresses, for frontends that keep one
    across steps (:mod:`kerasopt.torch` does, so that a step over thousands of tensors
    costs no per-tensor checks of what has not changed).

    ``table`` is ``(n, layout.COLUMNS)`` int64 data addresses, one row per tensor, filled in
    the columns the step uses (weights, gradients, the slots unless a micro-step, the
    accumulators, the EMA averages); ``sizes`` the tensors' element counts; ``like`` a 0-d
    array / CPU tensor of the variables' dtype; ``params`` the weights (their autograd
    versions are bumped); ``chunks`` a cached ``chunk_table(sizes)``. ``options`` are
    :func:`fused_step`'s scalar keywords, with ``averaging`` (bool) in place of
    ``ema_averages``. Nothing is checked: the caller vouches that every address is a
    C-contiguous, aligned, writeable (gradients: readable) buffer of ``sizes[i]`` elements
    of ``like``'s dtype; ``elements``, when given, is ``sizes.sum()``.
    """
    if _k is None:
        raise NotFusable("numba is not installed (kerasopt's \"fast\" extra installs it).")
    is_torch_step = is_torch(like)
    marker = _MARKERS[_numpy_dtype(like) if is_torch_step else like.dtype]
    if chunks is None:
        chunks = chunk_table(sizes)
    if elements is None:
        elements = int(sizes.sum())
    n = len(sizes)

    def squared_norms(features: int, hyper: np.ndarray) -> np.ndarray:
        partial = np.zeros(chunks.shape[0], np.float64)
        _launch(_k.squared_sums, elements, table, chunks, marker, features, hyper, partial)
        # per tensor, its chunks' sums in order, rounded to the dtype
        return np.bincount(chunks[:, 0], partial, n).astype(marker.dtype)

    # The step's scalars as the reference computes them, then the kernels.
    micro = accumulation_phase == "micro"
    s = step_scalars(algorithm, like, marker.dtype, n, micro=micro, amsgrad=amsgrad,
                     squared_norms=squared_norms, accumulation_phase=accumulation_phase,
                     **options)
    if micro:
        _launch(_k.micro_step, elements, table, chunks, marker, s.features, s.hyper)
        _bump_versions(params if options.get("ema_overwrite") else (), is_torch_step)
        return
    kernel = _k.update_step(kernel_scalars_of(algorithm)[0], s.features)
    _launch(kernel, elements, table, chunks, marker, s.features, s.hyper, s.clip_c, s.clip_d,
            s.decay_mask)
    _bump_versions(params, is_torch_step)


_MARKERS = {dtype: np.zeros(1, dtype) for dtype in _DTYPES}  # the kernels' dtype argument


def chunk_table(sizes: np.ndarray) -> np.ndarray:
    """The work split of a step over tensors of ``sizes`` elements (for
    :func:`fused_step_table`): one row per chunk of at most ``layout.CHUNK`` elements,
    ``(tensor, start, stop, first)``, ``first`` counting the elements of every tensor before
    (the kernels' threads claim chunks by it); a tensor without elements gets one empty
    chunk."""
    sizes = np.asarray(sizes, np.int64).reshape(-1)
    key = sizes.tobytes()
    table = _CHUNK_TABLES.get(key)
    if table is None:
        if len(_CHUNK_TABLES) >= 16:
            _CHUNK_TABLES.clear()
        table = _CHUNK_TABLES[key] = _chunk_table(sizes)
    return table


_CHUNK_TABLES: dict[bytes, np.ndarray] = {}  # the last few work splits (not to be written)


def _chunk_table(sizes: np.ndarray) -> np.ndarray:
    counts = np.maximum(1, -(-sizes // layout.CHUNK))
    tensor = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), counts)
    rows = np.arange(tensor.shape[0], dtype=np.int64)
    start = (rows - np.repeat(np.cumsum(counts) - counts, counts)) * layout.CHUNK
    table = np.empty((rows.shape[0], 4), np.int64)
    table[:, 0] = tensor
    table[:, 1] = start
    table[:, 2] = np.minimum(start + layout.CHUNK, sizes[tensor])
    table[:, 3] = np.repeat(np.cumsum(sizes) - sizes, counts) + start
    return table


PARALLEL_THRESHOLD = 1 << 18
"""Steps over fewer elements than this run on the calling thread alone: waking the other
threads costs more than it saves (and, on a loaded machine, a sleeping thread can take a
whole scheduler time slice to wake)."""


def thread_count() -> int:
    """How many threads the CPU kernels use: ``NUMBA_NUM_THREADS`` (numba's setting, by
    default the number of cores). The calling thread is one of them; the others start with
    the first step of at least ``PARALLEL_THRESHOLD`` elements and sleep between steps."""
    return _k.thread_count() if _k is not None else 1


def _launch(kernel: Any, elements: int, *args: Any) -> None:
    """``kernel(cursor, *args)`` on every kernel thread for a step over ``elements`` elements
    (on the calling thread alone for small steps or one thread)."""
    threads = thread_count() if elements >= PARALLEL_THRESHOLD else 1
    _threads.run(kernel, (np.zeros(1, np.int64), *args), threads)


ROOFLINE_PASSES = ("update", "micro", "norm", "triad")


def roofline_pass(kind: str, params: Sequence[Any], grads: Sequence[Any],
                  first: Sequence[Any] | None = None, second: Sequence[Any] | None = None, *,
                  accumulators: Sequence[Any] | None = None,
                  ema_averages: Sequence[Any] | None = None) -> Callable[[], None]:
    """A streaming pass with the access pattern of one pass of :func:`fused_step` over these
    arrays, on the same chunks and threads, with trivial arithmetic: returns a function that
    runs it (the address table is built once, here; the arrays' values change: use scratch
    arrays). How fast this machine moves that pass's bytes, for ``kerasopt bench``.

    ``kind``: ``"update"`` (read w, g, m, v, write w, m, v; with ``accumulators`` also read
    and zero those, with ``ema_averages`` read and write those: 28, 36 or 44 bytes per
    float32 parameter), ``"micro"`` (``acc += g``, and ``a += w`` with averages: 12 or 24),
    ``"norm"`` (read g, and the accumulators when given: 4 or 8), ``"triad"`` (``w = g +
    3 m``: STREAM's triad, 12).
    """
    if _k is None:
        raise NotFusable("numba is not installed (pip install 'kerasopt[fast]').")
    if kind not in ROOFLINE_PASSES:
        raise ValueError(f"kind must be one of {ROOFLINE_PASSES}; received {kind!r}.")
    roles = [(layout.W, list(params)), (layout.G, list(grads))]
    if kind in ("update", "triad"):
        roles.append((layout.M, list(first)))
    if kind == "update":
        roles.append((layout.V, list(second)))
    if accumulators is not None and kind != "triad":
        roles.append((layout.ACC, list(accumulators)))
    if ema_averages is not None and kind in ("update", "micro"):
        roles.append((layout.EMA, list(ema_averages)))
    table, sizes, like, is_torch_step = _address_table(roles, len(params))
    marker = np.zeros(1, _numpy_dtype(like) if is_torch_step else like.dtype)
    chunks = _chunk_table(sizes)
    elements = int(sizes.sum())
    features = ((layout.ACCUMULATE if accumulators is not None else 0)
                | (layout.AVERAGE if ema_averages is not None else 0))
    if kind == "update":
        args = (_k.stream_update, elements, table, chunks, marker, features)
    elif kind == "micro":
        args = (_k.stream_micro, elements, table, chunks, marker, features)
    elif kind == "norm":
        args = (_k.stream_norm, elements, table, chunks, marker, features,
                np.zeros(chunks.shape[0]))
    else:
        args = (_k.stream_triad, elements, table, chunks, marker, marker.dtype.type(3))

    def run(keep=roles):  # (the arrays stay alive as long as the function)
        _launch(*args)

    return run


def sum_rows(inverse: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """``summed[inverse[i]] += values[i]`` into ``n_rows`` zero rows: the duplicate-index sum of
    ``kerasopt.sparse.canonical``, bit-identical to ``np.add.at`` (the sums are taken in the
    same order) but about 40 times faster."""
    if _k is None:
        raise NotFusable("numba is not installed (kerasopt's \"fast\" extra installs it).")
    values = np.ascontiguousarray(values)
    if values.dtype not in _DTYPES:
        raise NotFusable(f"dtype {values.dtype} is not float32 or float64.")
    summed = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    _k.add_rows(
        summed.reshape(n_rows, -1),
        np.asarray(inverse).reshape(-1).astype(np.int64, copy=False),
        values.reshape(values.shape[0], -1),
    )
    return summed


def fused_rows_step(
    algorithm: str,
    param: Any,
    rows: Any,
    values: Any,
    slots: Sequence[Any],
    *,
    learning_rate: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
) -> None:
    """The lazy sparse update, in place: only the rows ``rows`` of ``param`` and of its
    ``slots`` move, in one pass over those rows (no gather / scatter copies).

    Args:
        algorithm: The algorithm's :class:`~kerasopt.specs.AlgorithmSpec`, or the name of
            a kernel body (``"adam"``, ``"adamax"``: see ``layout.KERNEL_BODIES``).
        param: The weight, shape ``(R, ...)``: a C-contiguous float32/float64 NumPy array or
            CPU torch tensor.
        rows: Integer array of *distinct* row numbers in ``[0, R)`` (e.g. the ``indices`` of
            ``kerasopt.sparse.canonical(gradient)``).
        values: The rows' gradients, shape ``(len(rows), ...)``, already unscaled / clipped
            as the step requires (they are small: only the touched rows).
        slots: As for :func:`fused_step`, one array each: Adam ``(m, v)`` or ``(m, v,
            v_hat)``, Adamax ``(m, u)``.
        learning_rate, beta_1, beta_2, epsilon, step: As for :func:`fused_step`.

    Weight decay of the touched rows stays with the caller (it precedes the update).

    Raises:
        NotFusable: before anything moves, when the inputs do not fit the kernel.
    """
    if _k is None:
        raise NotFusable("numba is not installed (kerasopt's \"fast\" extra installs it).")
    kernel, _ = kernel_scalars_of(algorithm)
    torch_step = is_torch(param)
    arrays = [param, values, *slots]
    if torch_step:
        torch = sys.modules["torch"]
        if not all(isinstance(a, torch.Tensor) and a.is_cpu for a in arrays):
            raise NotFusable("mixed libraries or devices.")
        like = torch.zeros((), dtype=param.dtype)
        views = [a.detach().numpy() if a.is_contiguous() else None for a in arrays]
        rows = rows.detach().cpu().numpy() if is_torch(rows) else np.asarray(rows)
    else:
        if not all(isinstance(a, np.ndarray) for a in arrays):
            raise NotFusable("mixed libraries.")
        like = np.zeros((), dtype=param.dtype)
        views = [a if a.flags.c_contiguous and a.flags.aligned else None for a in arrays]
        rows = np.asarray(rows)
    if any(v is None for v in views):
        raise NotFusable("an array is not C-contiguous.")
    dtype = views[0].dtype
    if dtype not in _DTYPES or any(v.dtype != dtype for v in views):
        raise NotFusable(f"dtypes must all be float32 or all float64; got {dtype}.")
    shape = views[0].shape
    if len(shape) == 0 or any(v.shape != shape for v in views[2:]):
        raise NotFusable("the slots must have the weight's shape.")
    if views[1].shape != (rows.shape[0], *shape[1:]) or rows.ndim != 1:
        raise NotFusable("values must have shape (len(rows), *weight.shape[1:]).")
    if rows.dtype.kind not in "iu":
        raise NotFusable("rows must be integers.")
    if not all(v.flags.writeable for v in views[:1] + views[2:]):
        raise NotFusable("the weight and its slots must be writeable.")
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
        raise NotFusable("rows out of range.")
    expected_slots = layout.KERNEL_BODIES[kernel]["slots"]
    if len(slots) not in expected_slots:
        raise ValueError(f"{kernel} takes {expected_slots} slots; got {len(slots)}.")
    flat = [v.reshape(v.shape[0], -1) for v in views]
    hyper = np.zeros(layout.HYPER, dtype)
    algorithm_scalars(hyper, algorithm, like, learning_rate, step, beta_1=beta_1,
                      beta_2=beta_2, epsilon=epsilon)
    w, g, *state = flat
    grain = max(1, layout.CHUNK // max(1, w.shape[1]))  # rows claimed at a time
    if kernel == "adam":
        vhat = state[2] if len(state) == 3 else state[1]
        _launch(_k.adam_rows, g.size, grain, w, state[0], state[1], vhat, rows, g, hyper,
                len(state) == 3)
    else:
        _launch(_k.adamax_rows, g.size, grain, w, state[0], state[1], rows, g, hyper)
    _bump_versions([param], torch_step)


# --------------------------------------------------------------------------- addresses


def _numpy_dtype(tensor: Any) -> np.dtype:
    torch = sys.modules["torch"]
    return np.dtype(np.float32) if tensor.dtype == torch.float32 else np.dtype(np.float64)


def _address_table(roles, n):
    """The ``(n, COLUMNS)`` table of data addresses, the sizes, a 0-d array like the
    weights (for scalar arithmetic) and whether they are torch tensors."""
    params = roles[0][1]
    first = params[0]
    table = np.zeros((n, layout.COLUMNS), np.int64)
    if isinstance(first, np.ndarray):
        if first.dtype not in _DTYPES:
            raise NotFusable(f"dtype {first.dtype} is not float32 or float64.")
        dtype = first.dtype
        sizes = None
        for column, arrays in roles:  # every array but the gradients is written
            table[:, column], sizes = _numpy_addresses(arrays, dtype, sizes,
                                                       column != layout.G)
        return table, sizes, np.zeros((), dtype), False
    if is_torch(first):
        torch = sys.modules["torch"]
        dtype = first.dtype
        if dtype not in (torch.float32, torch.float64):
            raise NotFusable(f"dtype {dtype} is not float32 or float64.")
        sizes = shapes = None
        for column, arrays in roles:
            table[:, column], sizes, shapes = _torch_addresses(arrays, dtype, shapes)
        return table, sizes, torch.zeros((), dtype=dtype), True
    raise NotFusable(f"{type(first).__name__} is not a NumPy array or a torch tensor.")


def _probe_numpy_header() -> int | None:
    """Where ``data`` sits in a ``PyArrayObject`` (None when the layout is not the one
    :func:`_numba.read_numpy_headers` reads: then the slower ``ctypes`` path is used)."""
    if _k is None or sys.implementation.name != "cpython":
        return None
    offset = object.__basicsize__
    try:
        for probe in (np.zeros((3, 5), np.float32), np.zeros(7, np.float64)[::2]):
            base = id(probe) + offset
            read = ctypes.c_int64.from_address
            ok = (
                read(base).value == probe.ctypes.data
                and ctypes.c_int32.from_address(base + 8).value == probe.ndim
                and ctypes.c_int64.from_address(read(base + 16).value).value == probe.shape[0]
                and read(base + 40).value == id(probe.dtype)
                and ctypes.c_int32.from_address(base + 48).value == probe.flags.num
            )
            if not ok:
                return None
    except (ValueError, OSError):  # pragma: no cover
        return None
    return offset


_HEADER_OFFSET = _probe_numpy_header()
_NDARRAY = {np.ndarray}


def same_numpy_layouts(first: Sequence[Any], second: Sequence[Any]) -> bool:
    """Whether ``first[i]`` and ``second[i]`` are, for every ``i``, NumPy ndarrays (exactly)
    of the same dtype and shape: read from the array headers in bulk, ~10 ns a pair. False
    also when that cannot be read (numba missing, another Python): check one by one then."""
    n = len(first)
    if (_k is None or _HEADER_OFFSET is None or n != len(second)
            or set(map(type, first)) != _NDARRAY or set(map(type, second)) != _NDARRAY):
        return False
    return bool(_k.same_layouts(np.fromiter(map(id, first), np.int64, n),
                                np.fromiter(map(id, second), np.int64, n), _HEADER_OFFSET))


def _numpy_addresses(arrays, dtype, sizes, writeable):
    """Data addresses (and sizes) of NumPy arrays, all checked for dtype, contiguity and
    size; the header fast path reads thousands of them in microseconds."""
    n = len(arrays)
    expected = np.full(n, -1, np.int64) if sizes is None else sizes
    if _HEADER_OFFSET is not None and set(map(type, arrays)) == _NDARRAY:
        ids = np.fromiter(map(id, arrays), np.int64, n)
        data, found = np.empty(n, np.int64), np.empty(n, np.int64)
        if _k.read_numpy_headers(ids, _HEADER_OFFSET, expected, id(dtype), writeable, data,
                                 found):
            return data, found
    data = np.empty(n, np.int64)
    found = np.empty(n, np.int64)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise NotFusable(f"{type(a).__name__} is not a NumPy array.")
        if a.dtype != dtype:
            raise NotFusable(f"mixed dtypes: {a.dtype} and {dtype}.")
        if not (a.flags.c_contiguous and a.flags.aligned) or (
            writeable and not a.flags.writeable
        ):
            raise NotFusable("an array is not C-contiguous, aligned and writeable.")
        if expected[i] >= 0 and a.size != expected[i]:
            raise NotFusable(f"an array has {a.size} elements; expected {expected[i]}.")
        data[i] = a.ctypes.data
        found[i] = a.size
    return data, found


def _torch_addresses(tensors, dtype, shapes):
    """Data addresses, sizes and shapes of CPU torch tensors, checked in bulk (one C-level
    pass per property: this is the per-tensor cost of a step); ``shapes``: what they must
    have (the weights'), or None."""
    torch = sys.modules["torch"]
    tensors = list(tensors)
    if not all(map(isinstance, tensors, repeat(torch.Tensor))):
        raise NotFusable("an array is not a torch tensor.")
    if (set(map(_LAYOUT, tensors)) - {torch.strided} or set(map(_DTYPE, tensors)) - {dtype}
            or not all(map(_IS_CPU, tensors))
            or not all(map(torch.Tensor.is_contiguous, tensors))):
        raise NotFusable("a tensor is not a contiguous CPU tensor of the weights' dtype.")
    n = len(tensors)
    found = list(map(_SHAPE, tensors))
    if shapes is not None and found != shapes:
        raise NotFusable("a tensor's shape differs from its weight's.")
    sizes = np.fromiter(map(torch.Tensor.numel, tensors), np.int64, n)
    return np.fromiter(map(torch.Tensor.data_ptr, tensors), np.int64, n), sizes, found


_LAYOUT = attrgetter("layout")
_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
_IS_CPU = attrgetter("is_cpu")


def _bump_versions(params: Sequence[Any], is_torch_step: bool) -> None:
    """Tell autograd that the weights changed in place (as torch's own in-place ops do)."""
    if is_torch_step and len(params):
        sys.modules["torch"].autograd.graph.increment_version(list(params))
