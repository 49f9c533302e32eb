"""``kerasopt.keras`` on Keras's torch backend: one ``apply()`` as one fused kernel launch.

Keras's own torch optimizers run a dozen ``torch._foreach_*`` passes per step (each reads
and writes every tensor) plus the pipeline's separate passes (unscale, clip, decay, EMA).
Here the whole step, in Keras's order, is one launch of kerasopt's fused kernels
(:func:`kerasopt.kernels.fused_step_table`: numba on the CPU, Triton on CUDA) over the
variables' own torch tensors, in place: each array is read and written once.

What does not change between steps (the variables, their tensors, the slots, the
accumulators, the EMA averages, the weight-decay mask) is kept in a :class:`_Plan`, checked
in bulk each step; only the gradients' addresses are read anew. Anything the kernels cannot
take (variables of several dtypes or of half precision, a device without kernels, a sparse
gradient, a ``StatelessScope``, a variable with ``overwrite_with_gradient``) runs Keras's own
step instead, decided before anything is modified.

``torch.compile`` (``jit_compile=True``): the optimizer's ``apply`` is excluded from
compilation (``torch.compiler.disable``, in :mod:`kerasopt.keras.optimizers`): the trainer's
compiled function breaks its graph at the optimizer call and runs the fused step eagerly; the
forward and backward pass stay compiled.
"""

from __future__ import annotations

from operator import attrgetter, is_
from typing import Any

import numpy as np
import torch
from keras.src.backend import in_stateless_scope, name_scope

from kerasopt import engine, kernels, pipeline
from kerasopt.kernels import layout

_VALUE = attrgetter("_value")
_SHAPE = attrgetter("shape")
_LAYOUT = attrgetter("layout")
_DTYPE = attrgetter("dtype")
_DEVICE = attrgetter("device")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_NUMEL = torch.Tensor.numel
_FLOATS = (torch.float32, torch.float64)
_SLOT_COLUMNS = (layout.M, layout.V, layout.VHAT)


class _Plan:
    """The fused step's view of one list of variables, valid while :meth:`matches`."""

    __slots__ = ("variables", "params", "param_ptrs", "shapes", "numels", "table", "sizes",
                 "chunks", "like", "dtype", "device", "kernels", "amsgrad", "decay_mask",
                 "decay_key", "constrained", "rest")

    @classmethod
    def build(cls, optimizer: Any, variables: list[Any]) -> _Plan | None:
        """A plan for a step over ``variables`` (all known to ``optimizer``), or None when the
        kernels cannot take it."""
        if not variables or any(getattr(v, "overwrite_with_gradient", False)
                                for v in optimizer._trainable_variables):
            return None
        params = list(map(_VALUE, variables))
        if not all(isinstance(p, torch.Tensor) for p in params):
            return None
        dtype, device = params[0].dtype, params[0].device
        module = kernels.for_device(device)
        if (module is None or dtype not in _FLOATS or set(map(_DTYPE, params)) != {dtype}
                or set(map(_DEVICE, params)) != {device}
                or set(map(_LAYOUT, params)) != {torch.strided}
                or not all(map(_IS_CONTIGUOUS, params))):
            return None
        if optimizer.spec.kernel is None:
            return None
        states = [optimizer.kerasopt_state(v) for v in variables]
        columns = [(column, [slots[k] for slots, _, _ in states])
                   for k, column in enumerate(_SLOT_COLUMNS[:len(states[0][0])])]
        if optimizer.gradient_accumulation_steps:
            columns.append((layout.ACC, [acc for _, acc, _ in states]))
        if optimizer.use_ema:
            columns.append((layout.EMA, [avg for _, _, avg in states]))
        plan = cls()
        plan.table = np.zeros((len(params), layout.COLUMNS), np.int64)
        plan.shapes = list(map(_SHAPE, params))
        for column, owned in columns:
            tensors = [getattr(v, "_value", None) for v in owned]
            if (not all(isinstance(t, torch.Tensor) for t in tensors)
                    or set(map(_DTYPE, tensors)) != {dtype}
                    or set(map(_DEVICE, tensors)) != {device}
                    or not all(map(_IS_CONTIGUOUS, tensors))
                    or list(map(_SHAPE, tensors)) != plan.shapes):
                return None
            plan.table[:, column] = list(map(_DATA_PTR, tensors))
        plan.variables = variables
        plan.params = params
        plan.param_ptrs = list(map(_DATA_PTR, params))
        plan.table[:, layout.W] = plan.param_ptrs
        plan.sizes = np.fromiter(map(_NUMEL, params), np.int64, len(params))
        plan.numels = plan.sizes.tolist()
        plan.chunks = kernels.chunk_table(plan.sizes) if module is kernels else None
        plan.like = torch.zeros((), dtype=dtype)
        plan.dtype, plan.device, plan.kernels = dtype, device, module
        plan.amsgrad = len(states[0][0]) > len(optimizer.spec.slots)  # an optional slot is on
        plan.decay_mask = (
            [optimizer._use_weight_decay(v) for v in variables]
            if optimizer.weight_decay is not None else None
        )
        # Keras resets this cache whenever exclude_from_weight_decay() is called.
        plan.decay_key = getattr(optimizer, "_exclude_from_weight_decay_cache", None)
        plan.constrained = [v for v in variables if v.constraint is not None]
        # Variables without a gradient this step: Keras still averages them (EMA) and, on an
        # accumulation update step, zeroes their accumulators.
        present = {id(v) for v in variables}
        plan.rest = [(v, *optimizer.kerasopt_state(v)[1:])
                     for v in optimizer._trainable_variables if id(v) not in present]
        return plan

    def matches(self, optimizer: Any, variables: list[Any]) -> bool:
        """Whether the plan still describes a step over ``variables``: the same variables,
        holding the same tensors at the same addresses (a ``.to()`` or ``.data =`` swap
        changes them), the same weight-decay exclusions."""
        own = self.variables
        return (len(variables) == len(own) and all(map(is_, variables, own))
                and all(map(is_, map(_VALUE, variables), self.params))
                and list(map(_DATA_PTR, self.params)) == self.param_ptrs
                and (self.decay_mask is None or getattr(
                    optimizer, "_exclude_from_weight_decay_cache", None) is self.decay_key))

    def read_gradients(self, grads: list[Any]) -> list[Any] | None:
        """This step's gradients as the kernel takes them (the variable's dtype and device,
        contiguous), their addresses written into the table; None when one is sparse or not
        a tensor (Keras's step then runs). A shape that differs from the variable's is an
        error, raised before anything moves."""
        if (set(map(type, grads)) != {torch.Tensor} or set(map(_DTYPE, grads)) != {self.dtype}
                or set(map(_DEVICE, grads)) != {self.device}
                or set(map(_LAYOUT, grads)) != {torch.strided}
                or not all(map(_IS_CONTIGUOUS, grads))):
            fixed = []
            for g in grads:
                if not isinstance(g, torch.Tensor) or g.layout is not torch.strided:
                    return None
                fixed.append(g.to(device=self.device, dtype=self.dtype).contiguous())
            grads = fixed
        if list(map(_SHAPE, grads)) != self.shapes:
            for v, g in zip(self.variables, grads):
                if tuple(g.shape) != tuple(v.shape):
                    raise ValueError(
                        f"The gradient for variable {v.path!r} has shape {tuple(g.shape)}; "
                        f"expected the variable's shape {tuple(v.shape)}. Nothing was updated."
                    )
        self.table[:, layout.G] = list(map(_DATA_PTR, grads))
        return grads


def _scalar(value: Any) -> Any:
    """A Keras hyperparameter's value this step: a callable is called, a tensor or variable
    read (as Keras's ops would read it)."""
    if callable(value):
        value = value()
    if isinstance(value, (int, float)):
        return value
    return float(value)


def _positive(value: Any) -> Any:
    """Keras clips only when the option is set and > 0."""
    return value if value and value > 0 else None


def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> bool:
    """Keras's ``optimizer.apply(grads, trainable_variables)`` as one fused step. Returns
    False, having changed and reported nothing, when Keras's own step must run instead."""
    grads = list(grads)
    if not grads or in_stateless_scope():
        return False
    if trainable_variables is None:
        if not optimizer.built or len(grads) != len(optimizer._trainable_variables):
            return False  # Keras's own apply raises its error
        variables = optimizer._trainable_variables
    else:
        variables = list(trainable_variables)
        if not optimizer.built:
            with name_scope(optimizer.name, caller=optimizer):
                optimizer.build(variables)
            optimizer.built = True
        plan = optimizer._kerasopt_plan
        if plan is None or not (len(variables) == len(plan.variables)
                                and all(map(is_, variables, plan.variables))):
            optimizer._check_variables_are_known(variables)
    if len(grads) != len(variables):
        raise ValueError(
            f"{type(optimizer).__name__}.apply: received {len(grads)} gradients for "
            f"{len(variables)} variables; pass one gradient per variable."
        )
    if any(g is None for g in grads):
        if all(g is None for g in grads):
            return False  # Keras's own apply raises "No gradients provided"
        present = [(g, v) for g, v in zip(grads, variables) if g is not None]
        variables = [v for _, v in present]
    else:
        present = None
    plan = optimizer._kerasopt_plan
    if plan is None or not plan.matches(optimizer, variables):
        plan = _Plan.build(optimizer, variables)
        object.__setattr__(optimizer, "_kerasopt_plan", plan)
        if plan is None:
            return False
    step_grads = plan.read_gradients([g for g, _ in present] if present else grads)
    if step_grads is None:
        return False
    if present is not None:  # Keras's warning, after every check has passed
        optimizer._filter_empty_gradients(grads, list(trainable_variables or
                                                      optimizer._trainable_variables))
    _run(optimizer, plan)
    del step_grads  # the kernel has read them; keep them alive until then
    for variable in plan.constrained:
        variable.assign(variable.constraint(variable))
    optimizer._iterations.assign_add(1)
    return True


def _run(optimizer: Any, plan: _Plan) -> None:
    """The kernel launch, with the step's scalars computed as Keras computes them
    (:func:`kerasopt.engine.kernel_arguments`: the engine's order, in the kernels' terms)."""
    n = optimizer.gradient_accumulation_steps or None
    step = engine.Step(raw=int(optimizer._iterations.value),
                       loss_scale_factor=optimizer.loss_scale_factor, accumulation_steps=n)
    use_ema = bool(optimizer.use_ema)
    group = engine.Group(
        learning_rate=(0.0 if step.phase is False else _scalar(optimizer.learning_rate)),
        hyperparameters={k: _scalar(v) for k, v in optimizer.kerasopt_hyperparameters().items()},
        weight_decay=optimizer.weight_decay, clipnorm=_positive(optimizer.clipnorm),
        global_clipnorm=_positive(optimizer.global_clipnorm),
        clipvalue=_positive(optimizer.clipvalue), use_ema=use_ema,
        ema_momentum=optimizer.ema_momentum,
        ema_overwrite_frequency=optimizer.ema_overwrite_frequency or None)
    arguments = engine.kernel_arguments(group, step, decay_mask=plan.decay_mask,
                                        averaging=use_ema)
    plan.kernels.fused_step_table(
        optimizer.spec, plan.table, plan.sizes, plan.like, plan.params, chunks=plan.chunks,
        amsgrad=plan.amsgrad, averaging=use_ema, **arguments)
    if plan.rest:
        # Keras averages the variables without a gradient too, and resets their
        # accumulators on an update step.
        momentum, overwrite = arguments["ema_momentum"], arguments["ema_overwrite"]
        with torch.no_grad():
            for variable, accumulator, average in plan.rest:
                w = variable._value
                if accumulator is not None and step.phase:
                    accumulator._value.zero_()
                if average is not None:
                    a = average._value
                    a.copy_(pipeline.ema(a, w, momentum))
                    if overwrite:
                        w.copy_(a)
