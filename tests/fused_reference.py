"""The fused step's reference for the kernel tests: the pure functions of kerasopt.algorithms
and kerasopt.pipeline composed in Keras 3's order (unscale -> accumulate -> clip -> decay ->
update -> EMA), as kerasopt.Optimizer does, written back in place into NumPy arrays or torch
tensors. ``reference_step`` takes ``kerasopt.kernels.fused_step``'s arguments."""

from __future__ import annotations

import numpy as np

from kerasopt import pipeline
from kerasopt.algorithms import adam_update, adamax_update
from kerasopt.backend import namespace


def reference_step(algorithm, params, grads, slots, *, learning_rate, beta_1, beta_2,
                   epsilon, step, weight_decay=None, weight_decay_mask=None, clipnorm=None,
                   global_clipnorm=None, clipvalue=None, loss_scale_factor=None,
                   accumulators=None, accumulation_steps=None, accumulation_phase=None,
                   ema_averages=None, ema_momentum=None, ema_overwrite=False):
    """The same step as ``fused_step``, from the pure functions, written back in place."""
    grads = list(grads)
    if loss_scale_factor is not None:
        grads = [pipeline.unscale(g, loss_scale_factor) for g in grads]
    update = True
    if accumulation_phase == "micro":
        _store(accumulators, pipeline.accumulate(grads, accumulators))
        update = False
    elif accumulation_phase == "update":
        grads = pipeline.accumulated_mean(grads, accumulators, accumulation_steps)
        _store(accumulators, [namespace(a).zeros_like(a) for a in accumulators])
    if update:
        if clipnorm:
            grads = [pipeline.clip_by_norm(g, clipnorm) for g in grads]
        elif global_clipnorm:
            grads = pipeline.clip_by_global_norm(grads, global_clipnorm)
        elif clipvalue:
            grads = [pipeline.clip_by_value(g, clipvalue) for g in grads]
        if weight_decay is not None:
            mask = weight_decay_mask or [True] * len(params)
            _store(
                [p for p, keep in zip(params, mask) if keep],
                [pipeline.decay(p, weight_decay, learning_rate)
                 for p, keep in zip(params, mask) if keep],
            )
        rule = adam_update if algorithm == "adam" else adamax_update
        for i, (w, g) in enumerate(zip(params, grads)):
            new = rule(w, g, *(s[i] for s in slots), learning_rate=learning_rate,
                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)
            _store([w, *(s[i] for s in slots)], new)
    if ema_averages is not None:
        _store(ema_averages, [pipeline.ema(a, w, ema_momentum)
                              for a, w in zip(ema_averages, params)])
        if ema_overwrite:
            _store(params, list(ema_averages))


def _store(targets, values):
    for target, value in zip(targets, values):
        if isinstance(target, np.ndarray):
            np.copyto(target, value)
        else:
            target.copy_(value)
