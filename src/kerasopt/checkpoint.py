"""``kerasopt.save`` / ``kerasopt.load``: crash-safe, integrity-checked optimizer checkpoints.

One file holds an optimizer's whole state (and, by default, the weights it trains):

* NumPy optimizers (``kerasopt.Adam``, ``Adamax``, ``LossScaleOptimizer``): every variable in
  ``optimizer.variables`` (iteration counter, learning rate, slots, accumulators, EMA
  averages, loss-scale counter and scale), the trainable variables, and ``skipped_steps``.
* ``kerasopt.torch`` optimizers (and ``kerasopt.torch.LossScaleOptimizer``): the
  ``state_dict()`` -- state tensors as arrays, the param groups' plain values (rates,
  iteration counter, ``skipped_steps``...) as JSON -- and the parameters. Objects in a group
  that are not plain data (schedules, callables, ``state_dtype``) are not stored; the
  optimizer you load into keeps its own.
* JAX: any pytree of arrays, e.g. an optax state or ``(params, opt_state)``:
  ``kerasopt.save(path, (params, state))`` and ``params, state = kerasopt.load(path, like)``
  with ``like`` a template of the same structure (from ``tx.init(params)``).
  (:func:`kerasopt.optax.save_state` / ``restore_state`` remain, as a plain ``.npz``.)

The file uses the safetensors layout (an 8-byte little-endian header length, a JSON header
describing each tensor, then the raw little-endian bytes), so it contains only data: loading
never unpickles or imports anything. The header's ``__metadata__`` holds the format name,
kerasopt's own metadata (JSON: the optimizer class and config, shapes, dtypes) and a SHA-256
of the header and the whole payload.

Writes are atomic (:func:`kerasopt.files.atomic_write`): the file is written to a temporary
file in the same directory, flushed and fsync'ed, renamed over ``path`` with ``os.replace``,
and the directory is fsync'ed. A process killed at any point leaves either the previous
complete checkpoint or the new one. (A killed writer can leave a ``.<name>.*.tmp`` file
behind; it is never read.) A new checkpoint gets the mode the umask gives; an existing one
keeps its mode. ``load`` reads regular files only (a FIFO or ``/dev/zero`` is refused at
once) and never more than the file's size.

``load`` reads and checks everything first -- format, integrity hash, optimizer class, the
number, shapes and dtypes of the arrays -- and raises :class:`CheckpointError` (a
``ValueError``) before changing anything; a checkpoint is never half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from typing import Any

import numpy as np

from kerasopt import files

__all__ = ["CheckpointError", "load", "save"]

FORMAT = "kerasopt.checkpoint"
VERSION = 1

_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a kerasopt checkpoint, truncated or corrupted,
    or not matching the optimizer it is loaded into. Nothing was changed."""


# --------------------------------------------------------------------------- public API


def save(path: str | os.PathLike, optimizer: Any, *, include_weights: bool = True) -> None:
    """Write ``optimizer``'s state (and the weights it trains, unless
    ``include_weights=False``) to ``path``, atomically. ``optimizer`` may be a NumPy or
    ``kerasopt.torch`` optimizer, or a pytree of JAX/NumPy arrays (an optax state)."""
    kind = _kind(optimizer)
    if kind == "numpy":
        arrays, meta = _numpy_payload(optimizer, include_weights)
    elif kind == "torch":
        arrays, meta = _torch_payload(optimizer, include_weights)
    else:
        arrays, meta = _pytree_payload(optimizer)
    meta.update({"format": FORMAT, "version": VERSION, "kind": kind})
    files.atomic_write(path, _encode(arrays, meta))


def load(path: str | os.PathLike, optimizer: Any) -> Any:
    """Load a checkpoint written by :func:`save` into ``optimizer`` (built, of the same class
    and structure) and return it; for a JAX pytree, return the restored pytree shaped like
    the template ``optimizer``. Raises :class:`CheckpointError` (nothing changed) when the
    file is not a complete, intact kerasopt checkpoint for this optimizer."""
    meta, arrays = _decode(path)
    kind = _kind(optimizer)
    if meta.get("kind") != kind:
        raise CheckpointError(
            f"{os.fspath(path)} is a checkpoint of a {meta.get('kind')!r} optimizer "
            f"({meta.get('class')}); cannot load it into a {kind!r} one "
            f"({type(optimizer).__name__})."
        )
    if kind == "numpy":
        return _load_numpy(path, optimizer, meta, arrays)
    if kind == "torch":
        return _load_torch(path, optimizer, meta, arrays)
    return _load_pytree(path, optimizer, meta, arrays)


# --------------------------------------------------------------------------- file format


def _encode(arrays: list[tuple[str, str, tuple[int, ...], bytes]], meta: dict) -> bytes:
    header: dict[str, Any] = {}
    chunks = []
    offset = 0
    for name, dtype, shape, data in arrays:
        header[name] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    payload = b"".join(chunks)
    header["__metadata__"] = {"format": FORMAT, "kerasopt": json.dumps(meta, sort_keys=True)}
    digest = hashlib.sha256(_canonical(header) + payload).hexdigest()
    header["__metadata__"]["sha256"] = digest
    encoded = _canonical(header)
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + payload


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _decode(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[str, tuple, bytes]]]:
    path = os.fspath(path)
    try:
        raw = files.read_regular(path)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    where = f"{path} ({len(raw)} bytes)"
    if len(raw) < 8:
        raise CheckpointError(f"{where} is not a kerasopt checkpoint: truncated or empty.")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > len(raw) - 8:
        raise CheckpointError(
            f"{where} is not a complete kerasopt checkpoint: its header claims {length} bytes "
            "(truncated, corrupted, or another kind of file)."
        )
    try:
        header = json.loads(raw[8 : 8 + length].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(
            f"{where} is not a kerasopt checkpoint: its header is not valid JSON "
            f"(corrupted?): {str(error)[:200]}"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not a kerasopt checkpoint (no {FORMAT!r} format marker in its header)."
        )
    payload = raw[8 + length :]
    digest = metadata.pop("sha256", None)
    if not isinstance(digest, str) or (
        hashlib.sha256(_canonical(header) + payload).hexdigest() != digest
    ):
        raise CheckpointError(
            f"{where} failed its integrity check (SHA-256 of header and data does not match): "
            "the file is corrupted or truncated."
        )
    try:
        meta = json.loads(metadata["kerasopt"])
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{where}: its kerasopt metadata is unreadable ({error}).") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{where}: unsupported kerasopt checkpoint version "
            f"{meta.get('version') if isinstance(meta, dict) else meta!r}; this kerasopt "
            f"reads version {VERSION}."
        )
    arrays = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, stop = _entry(where, name, info, len(payload))
        arrays[name] = (dtype, shape, payload[begin:stop])
        end = max(end, stop)
    if end != len(payload):
        raise CheckpointError(
            f"{where}: the data section has {len(payload)} bytes; expected {end}."
        )
    return meta, arrays


def _natural(value: Any) -> bool:
    """A JSON integer in [0, 2**63) (not a bool, a float, an infinity or a string)."""
    return type(value) is int and 0 <= value < 2**63


def _entry(where: str, name: str, info: Any, payload: int) -> tuple[str, tuple, int, int]:
    """``(dtype name, shape, begin, stop)`` of one array of the header, every field checked
    with Python integers (a shape of ``[10**30]`` or ``[Infinity]`` is refused, never
    overflowing)."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(
            f"{where}: bad header entry for array {name!r}: expected dtype, shape and "
            f"data_offsets; got {str(info)[:200]}."
        )
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _ITEMSIZE:
        raise CheckpointError(
            f"{where}: array {name!r} has dtype {str(code)[:50]!r}; the format's dtypes are "
            f"{sorted(_ITEMSIZE)}."
        )
    if not isinstance(shape, list) or not all(_natural(d) for d in shape) or len(shape) > 64:
        raise CheckpointError(
            f"{where}: array {name!r} has shape {str(shape)[:200]}; expected a list of at "
            "most 64 integers >= 0."
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
            and offsets[0] <= offsets[1] <= payload):
        raise CheckpointError(
            f"{where}: array {name!r} has data_offsets {str(offsets)[:200]}; expected two "
            f"integers 0 <= begin <= end <= {payload} (the data section's size)."
        )
    size = _ITEMSIZE[code] * math.prod(shape)  # Python integers: no overflow
    if offsets[1] - offsets[0] != size:
        raise CheckpointError(
            f"{where}: array {name!r} of dtype {code} and shape {shape} needs {size} bytes; "
            f"its data_offsets {offsets} hold {offsets[1] - offsets[0]}."
        )
    return _DTYPE_NAMES[code], tuple(shape), offsets[0], offsets[1]


# --------------------------------------------------------------------------- arrays


def _raw(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    """``(dtype name, shape, little-endian bytes)`` of a NumPy/torch/JAX array."""
    if type(x).__module__.startswith("torch"):
        import torch

        t = x.full_tensor() if hasattr(x, "full_tensor") else x
        t = t.detach().cpu().contiguous()
        name = str(t.dtype).replace("torch.", "")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return _known(name), tuple(t.shape), data
    from kerasopt.variable import Variable

    if isinstance(x, Variable):
        return _raw(x.value)
    array = np.asarray(x)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return _known(array.dtype.name), tuple(array.shape), np.ascontiguousarray(array).tobytes()


def _known(name: str) -> str:
    if name not in _DTYPE_CODES:
        raise TypeError(f"kerasopt.save cannot store arrays of dtype {name}.")
    return name


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _to_numpy(entry: tuple[str, tuple, bytes]) -> np.ndarray:
    name, shape, data = entry
    return np.frombuffer(data, _numpy_dtype(name)).reshape(shape).copy()


def _to_torch(entry: tuple[str, tuple, bytes]) -> Any:
    import torch

    name, shape, data = entry
    dtype = getattr(torch, name)
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _dtype_name(x: Any) -> str:
    if type(x).__module__.startswith("torch"):
        return str(x.dtype).replace("torch.", "")
    return np.dtype(x.dtype).name


def _expect(path: Any, arrays: dict, key: str, shape: tuple, dtype: str, what: str):
    if key not in arrays:
        raise CheckpointError(f"{os.fspath(path)}: the checkpoint has no array for {what}.")
    saved_dtype, saved_shape, _ = arrays[key]
    if tuple(saved_shape) != tuple(shape) or saved_dtype != dtype:
        raise CheckpointError(
            f"{os.fspath(path)}: {what} is {saved_dtype}{list(saved_shape)} in the checkpoint "
            f"but {dtype}{list(shape)} here (a different model or optimizer configuration?)."
        )
    return arrays[key]


def _only(path: Any, arrays: dict, names: list[str]) -> None:
    """Refuse arrays the optimizer has no place for (a crafted file's extra entries)."""
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise CheckpointError(
            f"{os.fspath(path)}: unexpected arrays in the checkpoint: {extra[:5]}"
            + (f" and {len(extra) - 5} more" if len(extra) > 5 else "") + "."
        )


def _count(arrays: dict, prefix: str) -> int:
    return sum(1 for k in arrays if k.startswith(prefix))


# --------------------------------------------------------------------------- NumPy optimizers


def _kind(optimizer: Any) -> str:
    from kerasopt.optimizer import Optimizer

    if isinstance(optimizer, Optimizer):
        return "numpy"
    if _is_torch_optimizer(optimizer):
        return "torch"
    if isinstance(optimizer, (str, bytes, int, float, bool)) or optimizer is None:
        raise TypeError(
            "kerasopt.save/load expects a kerasopt optimizer (NumPy or kerasopt.torch) or a "
            f"pytree of arrays (an optax state); received {optimizer!r}."
        )
    return "jax"


def _is_torch_optimizer(optimizer: Any) -> bool:
    """An instance of a kerasopt.torch optimizer class or of a subclass of one (only
    possible once kerasopt.torch is imported)."""
    kt = sys.modules.get("kerasopt.torch")
    return kt is not None and isinstance(optimizer, (kt.KerasOptimizer, kt.LossScaleOptimizer))


def algorithm_of(optimizer: Any) -> str:
    """What a checkpoint records as an optimizer's class: the Keras class name of the
    algorithm it runs (``"Adam"``, ``"Adamax"``, ``"AdamW"``...), found through its class
    hierarchy -- so that a user's subclass (``class MyAdam(kerasopt.torch.Adam): pass``)
    saves and loads like its base -- or ``"LossScaleOptimizer"``.

    The one place checkpoints and :mod:`kerasopt.interop` identify an algorithm: every
    frontend's class carries its :class:`kerasopt.specs.AlgorithmSpec` as ``spec``."""
    from kerasopt.loss_scale import LossScaleOptimizer

    kt = sys.modules.get("kerasopt.torch")
    if isinstance(optimizer, LossScaleOptimizer) or (
        kt is not None and isinstance(optimizer, kt.LossScaleOptimizer)
    ):
        return "LossScaleOptimizer"
    cls = type(optimizer)
    spec = getattr(cls, "spec", None)
    if spec is not None:
        return spec.keras_name
    return cls.__name__


def _config_of(optimizer: Any) -> Any:
    from kerasopt import serialization

    try:
        return json.loads(json.dumps(serialization.serialize(optimizer)))
    except (TypeError, ValueError):
        return None


def _numpy_payload(optimizer: Any, include_weights: bool):
    if not optimizer.built:
        raise ValueError(
            f"kerasopt.save: {optimizer.name} is not built yet; it has no state to save "
            "(apply a step or call optimizer.build(variables) first)."
        )
    arrays = []
    state = []
    for i, variable in enumerate(optimizer.variables):
        dtype, shape, data = _raw(variable.value)
        arrays.append((f"state/{i}", dtype, shape, data))
        state.append(variable.name)
    weights = optimizer._trainable_variables if include_weights else []
    for i, variable in enumerate(weights):
        dtype, shape, data = _raw(variable.value)
        arrays.append((f"weights/{i}", dtype, shape, data))
    inner = getattr(optimizer, "inner_optimizer", None)
    meta = {
        **_classes(optimizer),
        "config": _config_of(optimizer),
        "state_names": state,
        "weight_names": [v.name for v in weights],
        "skipped_steps": [optimizer.skipped_steps]
        + ([inner.skipped_steps] if inner is not None else []),
    }
    return arrays, meta


def _classes(optimizer: Any) -> dict[str, Any]:
    """The metadata naming what saved a checkpoint (see :func:`algorithm_of`)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    name = lambda o: f"{type(o).__module__}.{type(o).__qualname__}"  # noqa: E731
    return {
        "class": algorithm_of(optimizer),
        "inner_class": algorithm_of(inner) if inner is not None else None,
        "python_class": name(optimizer),
        "python_inner_class": name(inner) if inner is not None else None,
    }


def _check_class(path: Any, optimizer: Any, meta: dict) -> None:
    inner = getattr(optimizer, "inner_optimizer", None)
    here = (algorithm_of(optimizer), algorithm_of(inner) if inner is not None else None)
    saved = (meta.get("class"), meta.get("inner_class"))
    # Before algorithm_of, a checkpoint named its exact class: a subclass's file names it.
    exact = (type(optimizer).__name__, type(inner).__name__ if inner is not None else None)
    if saved not in (here, exact):
        describe = lambda c: f"{c[0]}" + (f"({c[1]})" if c[1] else "")  # noqa: E731
        raise CheckpointError(
            f"{os.fspath(path)} holds the state of a {str(describe(saved))[:200]}; this "
            f"optimizer is a {describe(here)}. Load it into an optimizer of the same algorithm."
        )


def _load_numpy(path: Any, optimizer: Any, meta: dict, arrays: dict) -> Any:
    _check_class(path, optimizer, meta)
    if not optimizer.built:
        raise CheckpointError(
            f"kerasopt.load: build {optimizer.name} for its variables first "
            "(optimizer.build(variables)); the checkpoint holds state for built variables."
        )
    own = optimizer.variables
    if _count(arrays, "state/") != len(own):
        raise CheckpointError(
            f"{os.fspath(path)} holds {_count(arrays, 'state/')} optimizer variables; "
            f"{optimizer.name} has {len(own)} (different features: amsgrad, EMA, "
            "accumulation, or a different number of weights?)."
        )
    state = [
        _to_numpy(_expect(path, arrays, f"state/{i}", v.shape, _dtype_name(v.value),
                          f"optimizer variable {i} ('{v.name}')"))
        for i, v in enumerate(own)
    ]
    trainable = optimizer._trainable_variables
    n_weights = _count(arrays, "weights/")
    if n_weights and n_weights != len(trainable):
        raise CheckpointError(
            f"{os.fspath(path)} holds {n_weights} weights; the optimizer trains "
            f"{len(trainable)}."
        )
    weights = [
        _to_numpy(_expect(path, arrays, f"weights/{i}", v.shape, _dtype_name(v.value),
                          f"weight {i} ('{v.name}')"))
        for i, v in enumerate(trainable[:n_weights])
    ]
    _only(path, arrays, [f"state/{i}" for i in range(len(own))]
          + [f"weights/{i}" for i in range(n_weights)])
    for value, variable in zip(state, own):
        if value.dtype.kind in "iu" and value.size and value.min() < 0:
            raise CheckpointError(
                f"{os.fspath(path)}: the counter '{variable.name}' is {value.min()} in the "
                "checkpoint; a counter is >= 0."
            )
    inner = getattr(optimizer, "inner_optimizer", None)
    skipped = meta.get("skipped_steps")
    expected = 1 if inner is None else 2
    if not (isinstance(skipped, list) and len(skipped) == expected
            and all(_natural(s) for s in skipped)):
        raise CheckpointError(
            f"{os.fspath(path)}: skipped_steps is {str(skipped)[:200]} in the checkpoint; "
            f"expected a list of {expected} integer(s) >= 0 (the optimizer's"
            + (" and its inner optimizer's)." if inner is not None else ").")
        )
    # Everything checked: now change the optimizer (set_weights converts to each backend).
    optimizer.set_weights(state)
    from kerasopt.optimizer import _like

    for variable, value in zip(trainable, weights):
        variable.assign(_like(value, variable.value))
    optimizer.skipped_steps = skipped[0]
    if inner is not None:
        inner.skipped_steps = skipped[1]
    return optimizer


# --------------------------------------------------------------------------- torch optimizers


_KEPT = "__kerasopt_kept__"


def _plain(value: Any) -> Any:
    """``value`` if it is plain JSON data, else a marker (the loader keeps its own)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and all(
        v is None or isinstance(v, (bool, str, int, float)) for v in value
    ):
        return list(value)
    return {_KEPT: type(value).__name__}


def _torch_payload(optimizer: Any, include_weights: bool):
    inner = getattr(optimizer, "inner_optimizer", None)
    core = inner if inner is not None else optimizer
    state_dict = optimizer.state_dict()
    arrays = []
    state_index = {}
    for pid, slots in state_dict["state"].items():
        state_index[str(pid)] = sorted(slots)
        for slot in sorted(slots):
            value = slots[slot]
            if not type(value).__module__.startswith("torch"):
                raise TypeError(
                    f"kerasopt.save: state '{slot}' of parameter {pid} is not a tensor."
                )
            dtype, shape, data = _raw(value)
            arrays.append((f"state/{pid}/{slot}", dtype, shape, data))
    groups = [{k: _plain(v) for k, v in group.items()} for group in state_dict["param_groups"]]
    if include_weights:
        for g, group in enumerate(core.param_groups):
            for i, p in enumerate(group["params"]):
                dtype, shape, data = _raw(p)
                arrays.append((f"weights/{g}/{i}", dtype, shape, data))
    meta = {
        **_classes(optimizer),
        "param_groups": groups,
        "state_index": state_index,
        "loss_scale": state_dict.get("loss_scale"),
    }
    return arrays, meta


# Param-group entries that are not hyperparameters, and what each may hold in a file.
_COUNTERS = ("iterations", "skipped_steps")
_RATES = ("reported_lr", "initial_lr")
# Held as objects (a schedule, a callable, a torch.dtype) or None: never a plain number.
_OBJECT_OR_NONE = ("learning_rate", "state_dtype")


def _torch_group(path: Any, core: Any, index: int, saved: Any, current: dict,
                 markers: set) -> dict:
    """A param group of the file, checked entry by entry, as ``load_state_dict`` takes it
    (``_KEPT`` entries replaced by the loader's own values)."""
    import kerasopt.torch as kt

    where = f"{os.fspath(path)}: param group {index}"
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
        raise CheckpointError(f"{where} is malformed.")
    if len(saved["params"]) != len(current["params"]):
        raise CheckpointError(
            f"{where} has {len(saved['params'])} parameters in the checkpoint and "
            f"{len(current['params'])} here."
        )
    if not all(_natural(pid) for pid in saved["params"]):
        raise CheckpointError(f"{where} lists parameter ids {str(saved['params'])[:200]}.")
    allowed = {*core.defaults, *kt._BOOKKEEPING_KEYS}
    group = {}
    for key, value in saved.items():
        entry = f"{where} has {str(key)[:50]}={str(value)[:100]}"
        if key not in allowed:
            raise CheckpointError(
                f"{where} has an unknown entry {str(key)[:50]!r}; a "
                f"{type(core).__name__} param group holds {sorted(allowed)}."
            )
        if isinstance(value, dict) and _KEPT in value:
            if key in current:
                group[key] = current[key]
            continue
        if key in _OBJECT_OR_NONE and value is not None:
            raise CheckpointError(
                f"{entry}; a checkpoint stores {key} only as None (a schedule, callable or "
                "torch.dtype is not stored: the optimizer you load into keeps its own)."
            )
        if key in _COUNTERS and not _natural(value):
            raise CheckpointError(f"{entry}; expected an integer >= 0.")
        if key in _RATES and value is not None and not (
            type(value) in (int, float) and math.isfinite(value)
        ):
            raise CheckpointError(f"{entry}; expected a finite number or None.")
        if key == "param_names" and not (
            isinstance(value, list) and len(value) == len(saved["params"])
            and all(isinstance(n, str) for n in value)
        ):
            raise CheckpointError(f"{entry}; expected one name (a string) per parameter.")
        if key == kt.MARKER and value not in markers:
            raise CheckpointError(
                f"{entry}; expected the class that saved the file ({sorted(map(str, markers))})."
            )
        group[key] = value
    merged = {**current, **group}
    try:  # the hyperparameters pass the constructor's checks, a stored rate `lr` included
        core._check_options(merged)
        if "lr" in saved and not isinstance(saved["lr"], dict):
            core._check_options({**merged, "learning_rate": None})
        core._validate_state_dtype(merged.get("state_dtype"))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{where} holds invalid hyperparameters ({error}).") from None
    return group


def _torch_slots(core: Any, group: dict, p: Any) -> tuple[set[str], str]:
    """The state names a parameter of ``group`` may have, and their dtype."""
    import kerasopt.torch as kt

    names = set(core._slot_names(group))
    if core.gradient_accumulation_steps:
        names.add(kt.ACCUMULATOR)
    if group.get("use_ema"):
        names.add(kt.AVERAGE)
    dtype = group.get("state_dtype") or p.dtype
    return names, str(dtype).replace("torch.", "")


def _load_torch(path: Any, optimizer: Any, meta: dict, arrays: dict) -> Any:
    _check_class(path, optimizer, meta)
    inner = getattr(optimizer, "inner_optimizer", None)
    core = inner if inner is not None else optimizer
    saved_groups = meta.get("param_groups")
    state_index = meta.get("state_index")
    if not isinstance(saved_groups, list) or not isinstance(state_index, dict):
        raise CheckpointError(f"{os.fspath(path)}: the torch metadata is malformed.")
    if len(saved_groups) != len(core.param_groups):
        raise CheckpointError(
            f"{os.fspath(path)} has {len(saved_groups)} param groups; this optimizer has "
            f"{len(core.param_groups)}."
        )
    import kerasopt.torch as kt

    # Each group names the class that saved it (kerasopt.torch's state_dict marker): the
    # algorithm, or the user's subclass of it.
    saver = meta.get("inner_class") if inner is not None else meta.get("class")
    python = meta.get("python_inner_class") if inner is not None else meta.get("python_class")
    markers = {saver, python.rsplit(".", 1)[-1] if isinstance(python, str) else saver}
    groups = []
    params_by_id: dict[str, tuple[Any, dict, int]] = {}
    for index, (saved, current) in enumerate(zip(saved_groups, core.param_groups)):
        group = _torch_group(path, core, index, saved, current, markers)
        groups.append(group)
        for pid, p in zip(saved["params"], current["params"]):
            if str(pid) in params_by_id:
                raise CheckpointError(
                    f"{os.fspath(path)}: parameter id {pid} is listed twice in the param groups."
                )
            params_by_id[str(pid)] = (p, {**current, **group}, index)
    state: dict[Any, dict[str, Any]] = {}
    names = []
    for pid, slots in state_index.items():
        if pid not in params_by_id or not isinstance(slots, list):
            raise CheckpointError(
                f"{os.fspath(path)}: state for parameter {str(pid)[:50]!r}, which no param "
                "group lists."
            )
        p, merged, index = params_by_id[pid]
        allowed, dtype = _torch_slots(core, merged, p)
        tensors = {}
        for slot in slots:
            what = f"state {str(slot)[:50]!r} of parameter {pid} (param group {index})"
            if slot not in allowed:
                raise CheckpointError(
                    f"{os.fspath(path)}: {what} is not a state this optimizer keeps; with this "
                    f"configuration it keeps {sorted(allowed)} (a different optimizer, or "
                    "features such as amsgrad, EMA or accumulation that differ?)."
                )
            key = f"state/{pid}/{slot}"
            entry = _expect(path, arrays, key, tuple(p.shape), dtype, what)
            tensors[slot] = _to_torch(entry)
            names.append(key)
        state[int(pid)] = tensors
    weights = []
    if _count(arrays, "weights/"):
        n_params = sum(len(g["params"]) for g in core.param_groups)
        if _count(arrays, "weights/") != n_params:
            raise CheckpointError(
                f"{os.fspath(path)} holds {_count(arrays, 'weights/')} parameters; this "
                f"optimizer has {n_params}."
            )
        for g, group in enumerate(core.param_groups):
            for i, p in enumerate(group["params"]):
                entry = _expect(path, arrays, f"weights/{g}/{i}", tuple(p.shape),
                                _dtype_name(p), f"parameter {i} of param group {g}")
                weights.append((p, _to_torch(entry)))
                names.append(f"weights/{g}/{i}")
    _only(path, arrays, names)
    for group in groups:  # the file's class was checked against this one (algorithm_of)
        group[kt.MARKER] = type(core).__name__
    state_dict = {"state": state, "param_groups": groups}
    if inner is not None:
        state_dict["loss_scale"] = meta.get("loss_scale")
    # load_state_dict checks everything before it changes anything; weights come after it.
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, TypeError, KeyError) as error:  # raised before any change
        raise CheckpointError(f"{os.fspath(path)}: {error}") from error
    import torch

    with torch.no_grad():
        for p, value in weights:
            target = p.to_local() if hasattr(p, "to_local") else p
            if hasattr(p, "to_local"):
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(target.device), p.device_mesh, p.placements)
                target.copy_(value.to_local())
            else:
                target.copy_(value.to(target.device))
    return optimizer


# --------------------------------------------------------------------------- JAX pytrees


# A Python scalar leaf is stored as a 0-d array of this dtype and restored as its type.
_SCALARS = {"bool": (bool, "bool"), "int": (int, "int64"), "float": (float, "float64")}


def _pytree_payload(tree: Any):
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays = []
    scalars = {}
    for i, (key, leaf) in enumerate(flat):
        scalar = _scalar_kind(leaf)
        if scalar == "int" and not -(2**63) <= leaf < 2**63:
            raise TypeError(
                f"kerasopt.save: the pytree leaf {_leaf_name(key)} is the integer {leaf}, "
                "which does not fit in int64 (a checkpoint stores it as an int64)."
            )
        if scalar is not None:
            value = np.asarray(leaf, _SCALARS[scalar][1])
            scalars[str(i)] = scalar
        elif hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
            value = jax.device_get(leaf)
        else:
            raise TypeError(
                f"kerasopt.save: the pytree leaf {_leaf_name(key)} is a "
                f"{type(leaf).__name__} ({str(leaf)[:80]!r}); a checkpoint stores arrays and "
                "Python bool/int/float scalars only."
            )
        try:
            dtype, shape, data = _raw(value)
        except TypeError as error:
            raise TypeError(f"kerasopt.save: the pytree leaf {_leaf_name(key)}: {error}") from None
        arrays.append((f"leaf/{i}", dtype, shape, data))
    return arrays, {"class": "pytree", "treedef": str(treedef), "leaves": len(flat),
                    "python_scalars": scalars}


def _scalar_kind(leaf: Any) -> str | None:
    """``"bool"``, ``"int"`` or ``"float"`` for a Python scalar leaf, else None."""
    return {bool: "bool", int: "int", float: "float"}.get(type(leaf))


def _leaf_name(key: Any) -> str:
    import jax

    return jax.tree_util.keystr(key) or "(the root)"


def _load_pytree(path: Any, like: Any, meta: dict, arrays: dict) -> Any:
    import jax
    import jax.numpy as jnp

    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    if _count(arrays, "leaf/") != len(flat) or meta.get("treedef") != str(treedef):
        raise CheckpointError(
            f"{os.fspath(path)} holds a pytree of {_count(arrays, 'leaf/')} arrays with "
            f"structure {str(meta.get('treedef'))[:500]}; the template has {len(flat)} with "
            f"structure {treedef} (a different optimizer configuration or params?)."
        )
    scalars = meta.get("python_scalars", {})
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{os.fspath(path)}: python_scalars is malformed.")
    _only(path, arrays, [f"leaf/{i}" for i in range(len(flat))])
    restored = []
    for i, (key, leaf) in enumerate(flat):
        what = f"leaf {_leaf_name(key)} (array {i}) of the pytree"
        kind = _scalar_kind(leaf)
        if kind is not None or str(i) in scalars:
            if kind is None or scalars.get(str(i)) != kind:
                raise CheckpointError(
                    f"{os.fspath(path)}: {what} is a {scalars.get(str(i), 'array')} in the "
                    f"checkpoint and a {kind or type(leaf).__name__} in the template."
                )
            cast, dtype = _SCALARS[kind]
            restored.append(cast(_to_numpy(_expect(path, arrays, f"leaf/{i}", (), dtype,
                                                   what)).item()))
            continue
        if not (hasattr(leaf, "dtype") and hasattr(leaf, "shape")):
            raise CheckpointError(
                f"{os.fspath(path)}: the template's {what} is a {type(leaf).__name__}, not "
                "an array; pass the pytree you saved (e.g. from tx.init(params))."
            )
        entry = _expect(path, arrays, f"leaf/{i}", tuple(np.shape(leaf)),
                        jnp.dtype(leaf.dtype).name, what)
        array = _to_numpy(entry)
        sharding = getattr(leaf, "sharding", None)
        restored.append(
            jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)
        )
    return treedef.unflatten(restored)
