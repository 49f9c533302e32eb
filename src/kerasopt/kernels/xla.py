"""An XLA custom call for JAX on the CPU: ``split``, one flat buffer into many arrays.

``kerasopt.optax``'s packed state (``packed=True``) runs the step on one flat buffer per kind
of leaf; the updates it returns are per leaf. Slicing them out of the buffer in XLA costs one
compiled kernel per leaf, and the kernels differ (each has its own offset), so XLA's CPU
compiler builds and optimizes each one separately: on 2,000 leaves that took tens of seconds
to a couple of minutes of compilation. ``split`` is one custom call (an XLA FFI handler
compiled by numba) that copies the buffer's consecutive pieces into its results; what then
consumes each piece (the ``p + u`` of ``optax.apply_updates``) is the same kernel for every
leaf of a shape, which XLA compiles once.

It runs where it can: on the CPU (``jax.lax.platform_dependent``: slices elsewhere), with numba
installed, outside differentiation (its derivative is the slices'). The results are the
buffer's bytes, so the values are those of the slices bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["available", "split"]

TARGET = "kerasopt_split"
MIN_PIECES = 16
"""Fewer pieces than this are sliced in XLA (few kernels to compile, and no copy)."""

COPYABLE = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                      "uint64", "float16", "bfloat16", "float32", "float64"})
"""The dtypes whose element size the handler knows (its table of XLA's type codes); others
(float8 kinds, complex, sub-byte types) are sliced."""

_registered: bool | None = None


def _handler() -> int:
    """The address of the FFI handler: ``XLA_FFI_Error* split(XLA_FFI_CallFrame*)``, reading
    the call frame's C structs (``xla/ffi/api/c_api.h``, x86-64 / arm64 layout) by offset."""
    from numba import cfunc, types

    from kerasopt.kernels._numba import _pointer

    i64 = np.zeros(1, np.int64)
    i32 = np.zeros(1, np.int32)
    u8 = np.zeros(1, np.uint8)
    itemsize = np.zeros(64, np.int64)
    # XLA_FFI_DataType: PRED 1, S8-S64 2-5, U8-U64 6-9, F16 10, F32 11, F64 12, BF16 16
    for code, size in ((1, 1), (2, 1), (3, 2), (4, 4), (5, 8), (6, 1), (7, 2), (8, 4), (9, 8),
                       (10, 2), (11, 4), (12, 8), (16, 2)):
        itemsize[code] = size

    @cfunc(types.int64(types.int64), nogil=True, error_model="numpy")
    def split_handler(frame):
        extension = _pointer(frame + 8, i64)[0]  # XLA_FFI_CallFrame.extension_start
        if extension != 0:
            if _pointer(extension + 8, i32)[0] == 1:  # the metadata query at registration
                metadata = _pointer(extension + 24, i64)[0]
                api = _pointer(frame + 16, i64)[0]
                major = 0
                minor = 1
                if api != 0:  # XLA_FFI_Api.api_version: this framework's
                    major = _pointer(api + 32, i32)[0]
                    minor = _pointer(api + 36, i32)[0]
                _pointer(metadata + 24, i32)[0] = major  # XLA_FFI_Metadata.api_version
                _pointer(metadata + 28, i32)[0] = minor
                _pointer(metadata + 32, i32)[0] = 0  # traits
            return 0
        if _pointer(frame + 32, i32)[0] != 3:  # stage: only EXECUTE does work
            return 0
        arguments = _pointer(frame + 72, i64)[0]  # args.args
        source = _pointer(_pointer(arguments, i64)[0] + 24, i64)[0]  # XLA_FFI_Buffer.data
        results = _pointer(frame + 96, i64)[0]  # rets.size
        buffers = _pointer(frame + 112, i64)[0]  # rets.rets
        offset = 0
        for k in range(results):
            buffer = _pointer(buffers, i64)[k]
            nbytes = itemsize[_pointer(buffer + 16, i32)[0]]
            rank = _pointer(buffer + 32, i64)[0]
            dims = _pointer(buffer + 40, i64)[0]
            for d in range(rank):
                nbytes *= _pointer(dims, i64)[d]
            start = source + offset
            target = _pointer(buffer + 24, i64)[0]
            if (start | target | nbytes) & 7 == 0:  # 8-byte words (vectorized)
                read64 = _pointer(start, i64)
                write64 = _pointer(target, i64)
                for i in range(nbytes >> 3):
                    write64[i] = read64[i]
            elif (start | target | nbytes) & 3 == 0:
                read32 = _pointer(start, i32)
                write32 = _pointer(target, i32)
                for i in range(nbytes >> 2):
                    write32[i] = read32[i]
            else:
                read8 = _pointer(start, u8)
                write8 = _pointer(target, u8)
                for i in range(nbytes):
                    write8[i] = read8[i]
            offset += nbytes
        return 0

    return split_handler.address


def available() -> bool:
    """Whether ``split`` can run as the custom call here (JAX with the FFI API, numba, a
    64-bit platform); registers it on first use."""
    global _registered
    if _registered is None:
        _registered = False
        try:
            import jax.ffi

            from kerasopt.kernels import fused

            if (fused.available() and np.dtype(np.intp).itemsize == 8
                    and _header_major(jax.ffi.include_dir()) == LAYOUT_MAJOR):
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_handler()),
                                            platform="cpu")
                _registered = True
        except Exception:  # pragma: no cover - old JAX, no numba, a refused registration
            _registered = False
    return _registered


LAYOUT_MAJOR = 0
"""The FFI API's major version whose struct layout ``_handler`` reads; under another one (a
new layout) ``split`` slices instead."""


def _header_major(include_dir: str) -> int | None:
    """``XLA_FFI_API_MAJOR`` of the FFI header that ships with this jaxlib."""
    import os
    import re

    try:
        with open(os.path.join(include_dir, "xla", "ffi", "api", "c_api.h")) as header:
            found = re.search(r"#define\s+XLA_FFI_API_MAJOR\s+(\d+)", header.read())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _sliced(buffer: Any, pieces: Sequence[tuple[int, int, tuple[int, ...]]]) -> list[Any]:
    return [buffer[start:stop].reshape(shape) for start, stop, shape in pieces]


def split(buffer: Any, pieces: Sequence[tuple[int, int, tuple[int, ...]]]) -> list[Any]:
    """``[buffer[start:stop].reshape(shape) for start, stop, shape in pieces]`` for a 1-D JAX
    array whose ``pieces`` lie end to end from 0 (as ``kerasopt.optax`` packs its leaves):
    one custom call on the CPU when there are many, slices otherwise."""
    import jax

    if (len(pieces) < MIN_PIECES or np.dtype(buffer.dtype).name not in COPYABLE
            or not available()):
        return _sliced(buffer, pieces)
    pieces = [tuple(p) for p in pieces]
    shapes = [jax.ShapeDtypeStruct(shape, buffer.dtype) for _, _, shape in pieces]

    @jax.custom_jvp
    def copied(b):
        def on_cpu(b):
            return jax.ffi.ffi_call(TARGET, shapes, vmap_method="sequential")(b)

        return jax.lax.platform_dependent(b, cpu=on_cpu, default=lambda b: _sliced(b, pieces))

    @copied.defjvp
    def _(primals, tangents):  # a copy: its derivative is the slices' (linear, transposable)
        return copied(*primals), _sliced(tangents[0], pieces)

    return list(copied(buffer))
