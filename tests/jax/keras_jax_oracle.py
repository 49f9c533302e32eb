"""Run Keras 3 on its JAX backend over recorded gradient sequences; write the trajectories.

Usage: ``KERAS_BACKEND=jax python keras_jax_oracle.py problems.npz cases.json out.npz``

Run in a subprocess by the parity tests (the in-process Keras of the test session runs on
torch). Each case names an optimizer by its Keras class name, Keras keyword arguments, a
learning rate (a float, a schedule config, or a constant zero-argument callable) and the
``var_names`` excluded from weight decay. Its problem in ``problems.npz``: for each variable
``{case}/{var}/w0`` and ``{case}/{var}/grads`` (steps, *shape). Keras runs its stateless API
under ``jax.jit`` (``lax.scan`` over the steps), as Keras's JAX trainer does, and
``{case}/{var}`` in the output holds the value after every step, and
``{case}/state/{name}`` each optimizer variable's final value (Keras's names:
``iteration``, ``kernel_momentum``, ``bias_gradient_accumulator``...).
"""

from __future__ import annotations

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


def learning_rate(spec):
    if spec["type"] == "float":
        return spec["value"]
    if spec["type"] == "schedule":
        return getattr(keras.optimizers.schedules, spec["class"])(**spec["config"])
    if spec["type"] == "callable":
        value = spec["value"]
        return lambda: value
    raise ValueError(spec)


def run_case(case, problems):
    name = case["name"]
    var_names = case["vars"]
    cls = getattr(keras.optimizers, case["keras_name"])
    optimizer = cls(learning_rate=learning_rate(case["lr"]), **case["kwargs"])
    variables = [
        keras.Variable(problems[f"{name}/{v}/w0"], name=v, dtype="float32") for v in var_names
    ]
    if case.get("exclude_names"):
        optimizer.exclude_from_weight_decay(var_names=case["exclude_names"])
    optimizer.build(variables)
    grads = [problems[f"{name}/{v}/grads"] for v in var_names]

    def step(carry, gs):
        trainable, opt_vars = carry
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, list(gs), trainable)
        return (trainable, opt_vars), trainable

    @jax.jit
    def run(trainable, opt_vars, grads):
        (_, final_opt_vars), trajectory = jax.lax.scan(step, (trainable, opt_vars), grads)
        return trajectory, final_opt_vars

    trajectory, final = run(
        [v.value for v in variables], [v.value for v in optimizer.variables], grads
    )
    out = {f"{name}/{v}": np.asarray(t) for v, t in zip(var_names, trajectory)}
    for variable, value in zip(optimizer.variables, final):
        out[f"{name}/state/{variable.name}"] = np.asarray(value)
    return out


def main(problems_path, cases_path, out_path):
    problems = dict(np.load(problems_path))
    with open(cases_path) as f:
        cases = json.load(f)
    out = {}
    for case in cases:
        out.update(run_case(case, problems))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
