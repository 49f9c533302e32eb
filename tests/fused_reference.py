"""The fused step's reference for the kernel tests: :func:`kerasopt.engine.apply` (Keras's
order written once) over the same arrays, written back in place into NumPy arrays or torch
tensors. ``reference_step`` takes ``kerasopt.kernels.fused_step``'s arguments, which give a
step's derived values (``step``, the accumulation phase, this step's EMA momentum and
overwrite); they are turned back into the counter and options the engine derives them from."""

from __future__ import annotations

import numpy as np

from kerasopt import engine
from kerasopt.algorithms import registered
from kerasopt.backend import ops_for
from kerasopt.kernels.scalars import kernel_scalars_of


def reference_step(algorithm, params, grads, slots, *, learning_rate, beta_1, beta_2,
                   epsilon, step, weight_decay=None, weight_decay_mask=None, clipnorm=None,
                   global_clipnorm=None, clipvalue=None, loss_scale_factor=None,
                   accumulators=None, accumulation_steps=None, accumulation_phase=None,
                   ema_averages=None, ema_momentum=None, ema_overwrite=False):
    """The same step as ``fused_step``, through the engine, written back in place."""
    kernel, _ = kernel_scalars_of(algorithm)
    spec = next(s for s in registered() if s.kernel == kernel)
    iterations = step - 1
    n = accumulation_steps if accumulation_phase is not None else None
    raw = iterations
    if n:  # a counter at which the engine finds this phase
        raw = iterations * n + (n - 1 if accumulation_phase == "update" else 0)
    group = engine.Group(
        learning_rate=learning_rate,
        hyperparameters={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
        global_clipnorm=global_clipnorm, use_ema=ema_averages is not None,
        ema_momentum=ema_momentum if ema_momentum is not None else 0.0,
        ema_overwrite_frequency=1 if ema_overwrite else None,
    )
    count = len(params)
    arrays = engine.Arrays(
        weights=list(params),
        slots=[tuple(s[i] for s in slots) for i in range(count)],
        accumulators=list(accumulators) if n else None,
        averages=list(ema_averages) if ema_averages is not None else None,
    )
    new = engine.apply(
        engine.spec_rule(spec), arrays, list(enumerate(grads)),
        step=engine.Step(raw=raw, loss_scale_factor=loss_scale_factor, accumulation_steps=n),
        groups=[group], decay_mask=weight_decay_mask, ops=ops_for(params[0]),
    ).arrays
    _store(params, new.weights)
    for k, slot in enumerate(slots):
        _store(slot, [s[k] for s in new.slots])
    if n:
        _store(accumulators, new.accumulators)
    if ema_averages is not None:
        _store(ema_averages, new.averages)


def _store(targets, values):
    for target, value in zip(targets, values):
        if target is value:
            continue
        if isinstance(target, np.ndarray):
            np.copyto(target, value)
        else:
            target.copy_(value)
