"""The steady-state fast path of :mod:`kerasopt.torch`: a cached address plan per group.

A fused step over thousands of small tensors is dominated by Python work per tensor
(looking up the state, checking dtypes, reading ``data_ptr()`` of four or more tensors)
unless what does not change between steps is kept. :class:`GroupPlan` keeps, for one param
group, the parameters, their state dicts and slot tensors, the kernel's table of addresses,
the sizes, the work split and the weight-decay mask, all checked once when the plan is
built. Each step then only

* confirms, in bulk, that the plan still describes the group: the same parameter objects,
  with the same state dicts (skipped when a :class:`StateSnapshot` shows the optimizer's
  state mapping unchanged) holding the same slot tensors, the same exclusions; and that each
  of these tensors still has its data address, number of elements and contiguity (a
  ``.data = ...`` swap, ``t_()``, ``resize_()``, a view in a wider or narrower dtype ...
  change one of them). These are each tensor's own, read this step, so the kernel writes
  where the tensor's data is now, whatever was freed or reallocated since. The update is
  elementwise over contiguous memory, so a tensor reshaped in place to as many elements is
  updated as before; one reinterpreted in place as another dtype of the same width
  (``p.data = p.data.view(torch.int32)``) is not noticed;
* checks the gradients (fresh tensors each step: exact ``torch.Tensor``, strided, on the
  parameters' device, contiguous, the parameter's dtype and shape) and writes their
  addresses into the table.

The plan also holds the kernels for the group's device (:func:`kerasopt.kernels.for_device`:
numba on the CPU, Triton on CUDA). Anything else (a missing gradient, a sparse or
mismatched one, missing state on the first step, DTensors, ``skip_nonfinite`` ...) makes the
caller take the general path, which handles and reports it.
"""

from __future__ import annotations

from operator import attrgetter, is_, itemgetter
from typing import Any

import numpy as np
import torch

from kerasopt import kernels
from kerasopt.kernels import layout

__all__ = ["GroupPlan", "StateSnapshot", "state_columns"]

_GRAD = attrgetter("grad")
_SHAPE = attrgetter("shape")
_LAYOUT = attrgetter("layout")
_DTYPE = attrgetter("dtype")
_IS_CPU = attrgetter("is_cpu")
_DEVICE = attrgetter("device")
_REQUIRES_GRAD = attrgetter("requires_grad")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_NUMEL = torch.Tensor.numel
_PLAIN = {torch.Tensor, torch.nn.Parameter}
_FLOATS = (torch.float32, torch.float64)
_SLOT_COLUMNS = (layout.M, layout.V, layout.VHAT)


def state_columns(slot_names: list[str], accumulator: str | None,
                  average: str | None) -> list[tuple[str, int]]:
    """``(state key, table column)`` of every state tensor a fused step reads."""
    columns = list(zip(slot_names, _SLOT_COLUMNS))
    if accumulator is not None:
        columns.append((accumulator, layout.ACC))
    if average is not None:
        columns.append((average, layout.EMA))
    return columns


class StateSnapshot:
    """The optimizer's ``state`` mapping as it was: the same dict object with the same keys
    mapped to the same per-parameter dicts (by identity) means nothing was added, removed
    or replaced at that level since."""

    __slots__ = ("state", "keys", "values")

    def __init__(self, state: dict) -> None:
        self.state, self.keys, self.values = state, list(state), list(state.values())

    def unchanged(self, state: dict) -> bool:
        keys, values = self.keys, self.values
        return (state is self.state and len(state) == len(keys)
                and all(map(is_, state, keys)) and all(map(is_, state.values(), values)))


def _unchanged(tensors: list[torch.Tensor], pointers: list[int], sizes: list[int]) -> bool:
    """Whether ``tensors`` still have these data addresses and numbers of elements, and are
    contiguous."""
    return (list(map(_DATA_PTR, tensors)) == pointers and list(map(_NUMEL, tensors)) == sizes
            and all(map(_IS_CONTIGUOUS, tensors)))


class GroupPlan:
    """The fused step's view of one param group, valid while :meth:`matches` says so."""

    __slots__ = ("group", "params", "shapes", "states", "columns", "keys", "slot_tensors",
                 "tensors", "pointers", "numels", "table", "sizes", "elements", "chunks",
                 "like", "dtype", "device", "kernels", "decay_key", "decay_mask")

    @classmethod
    def build(cls, state: dict, group: dict[str, Any], columns: list[tuple[str, int]],
              decay_key: tuple, decay_mask: list[bool]) -> GroupPlan | None:
        """A plan for ``group``, or None when it cannot take the fused path."""
        params = list(group["params"])
        if not params or not set(map(type, params)) <= _PLAIN:
            return None
        dtype, device = params[0].dtype, params[0].device
        module = kernels.for_device(device)
        state_dtype = group.get("state_dtype")
        if (module is None or dtype not in _FLOATS or set(map(_DTYPE, params)) != {dtype}
                or (state_dtype is not None and state_dtype != dtype)
                or set(map(_DEVICE, params)) != {device}
                or not all(map(_IS_CONTIGUOUS, params))):
            return None
        states = [state.get(p) for p in params]
        if any(s is None for s in states):
            return None
        shapes = list(map(_SHAPE, params))
        plan = cls()
        plan.table = np.zeros((len(params), layout.COLUMNS), np.int64)
        pointers = list(map(_DATA_PTR, params))
        plan.table[:, layout.W] = pointers
        plan.keys, plan.slot_tensors = [], []
        for key, column in columns:
            try:
                tensors = list(map(itemgetter(key), states))
            except KeyError:
                return None
            if (not set(map(type, tensors)) <= _PLAIN or set(map(_DTYPE, tensors)) != {dtype}
                    or set(map(_DEVICE, tensors)) != {device}
                    or not all(map(_IS_CONTIGUOUS, tensors))
                    or list(map(_SHAPE, tensors)) != shapes):
                return None
            plan.table[:, column] = addresses = list(map(_DATA_PTR, tensors))
            pointers += addresses
            plan.keys.append(key)
            plan.slot_tensors += tensors
        plan.group, plan.params, plan.shapes, plan.states = group, params, shapes, states
        plan.columns = columns
        plan.sizes = np.fromiter(map(_NUMEL, params), np.int64, len(params))
        # Every tensor the kernel writes, in one list: the weights, then each slot's.
        plan.tensors, plan.pointers = params + plan.slot_tensors, pointers
        plan.numels = plan.sizes.tolist() * (1 + len(plan.keys))
        plan.elements = int(plan.sizes.sum())
        plan.chunks = kernels.chunk_table(plan.sizes) if module is kernels else None
        plan.like = torch.zeros((), dtype=dtype)
        plan.dtype, plan.device, plan.kernels = dtype, device, module
        plan.decay_key = decay_key
        plan.decay_mask = decay_mask
        return plan

    def matches(self, state: dict, group: dict[str, Any], columns: list[tuple[str, int]],
                decay_key: tuple, state_unchanged: bool) -> bool:
        """Whether the plan still describes ``group`` (bulk checks, no per-tensor Python).
        ``state_unchanged``: the optimizer's state maps the same parameters to the same dicts
        as when every plan last matched (then they need not be looked up again)."""
        params = group["params"]
        if (self.group is not group or len(params) != len(self.params)
                or not all(map(is_, params, self.params)) or columns != self.columns
                or not all(map(is_, decay_key, self.decay_key))):
            return False
        states = self.states
        if not state_unchanged and not all(map(is_, map(state.get, params), states)):
            return False
        try:
            current = [slots[key] for key in self.keys for slots in states]
        except KeyError:
            return False
        return (all(map(is_, current, self.slot_tensors))
                and _unchanged(self.tensors, self.pointers, self.numels))

    def read_gradients(self) -> bool:
        """Put this step's gradient addresses into the table; False (table untouched) when a
        gradient is missing or does not fit the kernel, or a parameter is frozen."""
        params = self.params
        if not all(map(_REQUIRES_GRAD, params)):
            return False
        grads = list(map(_GRAD, params))
        if (set(map(type, grads)) != {torch.Tensor}
                or set(map(_LAYOUT, grads)) != {torch.strided}
                or set(map(_DTYPE, grads)) != {self.dtype}
                or not (all(map(_IS_CPU, grads)) if self.device.type == "cpu"
                        else set(map(_DEVICE, grads)) == {self.device})
                or not all(map(_IS_CONTIGUOUS, grads))
                or list(map(_SHAPE, grads)) != self.shapes):
            return False
        self.table[:, layout.G] = np.fromiter(map(_DATA_PTR, grads), np.int64, len(grads))
        return True
