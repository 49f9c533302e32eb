"""Shared helpers of the kerasopt.optax tests: problems, the Keras-on-JAX runs (through
:mod:`kerasopt.cli.oracle` in a subprocess, since the test session's Keras runs on torch)
and the parity measure (the oracle's rule)."""

from __future__ import annotations

import numpy as np

from kerasopt.cli import oracle
from optimizer_db import SPECS

STEPS = 100

# Keras variable name -> path in the params pytree {"dense": {"kernel", "bias"}, "emb"}.
VARS = {"kernel": ("dense", "kernel"), "bias": ("dense", "bias"), "emb": ("emb",)}
SHAPES = {"kernel": (4, 3), "bias": (3,), "emb": (6, 2)}

# Keras slot names -> fields of the kerasopt.optax states: every registered algorithm's
# slots, the accumulators and the EMA averages.
SLOT_FIELDS = {
    **{slot: slot for spec in SPECS for slot in spec.all_slots},
    "average": "average",
    "gradient_accumulator": "accumulator",
}


def make_problem(seed: int, steps: int = STEPS, grad_scale: float = 1.0):
    """Initial values and a gradient sequence per variable (float32), with a varying
    magnitude so that clipping is active on some steps only."""
    rng = np.random.default_rng(seed)
    w0 = {v: rng.normal(size=s).astype(np.float32) for v, s in SHAPES.items()}
    magnitude = (0.2 + 3.0 * rng.random(steps)).astype(np.float32)
    grads = {
        v: (rng.normal(size=(steps, *s)) * magnitude.reshape(-1, *[1] * len(s)) * grad_scale)
        .astype(np.float32)
        for v, s in SHAPES.items()
    }
    return w0, grads


def to_tree(per_var: dict):
    return {"dense": {"kernel": per_var["kernel"], "bias": per_var["bias"]}, "emb": per_var["emb"]}


def from_tree(tree) -> dict:
    return {"kernel": tree["dense"]["kernel"], "bias": tree["dense"]["bias"], "emb": tree["emb"]}


def run_keras(cases: list[dict], problems: dict[str, tuple]) -> dict[str, oracle.Trajectory]:
    """Run every case through Keras 3 (JAX backend, ``stateless_apply`` under ``jax.jit``)
    in one subprocess of the oracle (:mod:`kerasopt.cli.oracle`).

    ``problems[name] = (w0, grads)``; returns ``{name: Trajectory}``: ``weights[var]`` after
    every step, ``state[keras_name]`` at the end and ``state_scale[keras_name]`` (the largest
    magnitude that state variable held, the scale of the rule for state)."""
    json_cases = [{
        "key": c["name"], "algo": c["keras_name"], "kwargs": c["kwargs"], "lr": c["lr"],
        "exclude": c.get("exclude_names"), "loss_scale": None, "vars": list(SHAPES),
    } for c in cases]
    oracle_problems = {}
    for case in cases:
        w0, grads = problems[case["name"]]
        steps = len(next(iter(grads.values())))
        oracle_problems[case["name"]] = oracle.Problem(
            dict(w0), [{v: grads[v][k] for v in SHAPES} for k in range(steps)])
    return oracle.run_keras_subprocess("jax", json_cases, oracle_problems)


def normalized_error(
    ours: np.ndarray, reference: np.ndarray, w0: np.ndarray
) -> tuple[float, float]:
    """Largest ``|diff| / (atol + rtol * (|w| + distance travelled))`` (the oracle's rule)
    over every step and element, and the largest absolute difference; any other mismatch
    (NaNs in other places, a shape) is an infinite error. Trajectories are (steps, *shape)."""
    result, _ = oracle.compare_weights([w0], [[r] for r in reference], [[o] for o in ours])
    if result.failures and result.normalized <= 1.0:
        return float("inf"), float("inf")
    return result.normalized, result.abs_diff
