"""Long runs: kerasopt.Adam / Adamax for 100,000 steps in float32 and float16 with extreme
gradients, checked against Keras's math and for finiteness.

    python scripts/long_run.py                 # 100,000 steps (about a minute or two)
    python scripts/long_run.py --steps 2000 --json out.json

The problem: 8 weights, and a gradient sequence cycling through phases of 5,000 steps --
random magnitudes log-uniform over the regime's range with random signs; a sign flip every
step; all zeros (thousands of steps); the regime's largest magnitude; its smallest. Two
regimes per (algorithm, dtype):

* ``extreme``: magnitudes 1e-30 .. 1e30, as stated in issue 7. Where Keras's math itself
  leaves the finite range (float16 holds at most 65504, so 1e30 becomes inf when the
  gradient is cast to the variable's dtype; Adam squares the gradient, so ``g*g``
  overflows above 1.8e19 in float32 and above 255 in float16, after which ``v`` is inf and
  ``inf - inf`` gives NaN), kerasopt must produce the same non-finite values at the same
  step: the run is compared bit for bit with an independent implementation of Keras's
  formulas (hyperparameters and the step cast to the variable's dtype, as Keras does).
* ``representable``: magnitudes from the dtype's smallest normal number up to the largest
  where Keras's math stays finite (Adam: ``g*g`` representable; Adamax: ``g - m``
  representable, i.e. 2|g| under sign flips); the weights, state and every
  bias-correction term must stay finite for all steps (zero phases included), and equal
  the reference bit for bit. Why a lower bound: in float16 Keras's Adamax divides
  ``lr * m`` by ``(1 - beta_1 ** t) * (u + eps)``; while ``u`` is still 0 (every gradient
  so far 0, or rounded to 0) and t <= 2, this product underflows to 0 and a zero gradient
  gives 0/0 = NaN. The extreme regime shows it.

Bias correction: the iteration counter is an int64 (no overflow below 9.2e18 steps); the
step ``t`` is cast to the variable's dtype as in Keras, which in float16 makes t = inf for
t > 65504, so ``beta ** t`` becomes 0 and the corrections ``1 - beta_1 ** t`` and
``sqrt(1 - beta_2 ** t)`` become exactly 1 -- their limits, so nothing divides by zero. The
script records the extreme values of both terms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kerasopt  # noqa: E402

N_WEIGHTS = 8
PHASE = 5000
LR, BETA_1, BETA_2, EPSILON = 0.001, 0.9, 0.999, 1e-7

# largest |g| for which Keras's math stays finite, per (algorithm, dtype)
REPRESENTABLE = {
    ("adam", "float32"): 1e18,  # g*g <= 1e36 < 3.4e38
    ("adam", "float16"): 255.0,  # g*g <= 65025 < 65504
    ("adamax", "float32"): 1e30,  # |g - m| <= 2e30
    ("adamax", "float16"): 3e4,  # g - m (sign flips) <= 6e4 < 65504
}
SMALLEST = 1e-30


def gradients(step: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """The float64 gradient of ``step``; ``rng`` is consumed in every phase."""
    phase = (step // PHASE) % 5
    signs = rng.choice([-1.0, 1.0], N_WEIGHTS)
    magnitudes = np.exp(rng.uniform(np.log(low), np.log(high), N_WEIGHTS))
    if phase == 0:
        return signs * magnitudes
    if phase == 1:
        return (-1.0) ** step * magnitudes
    if phase == 2:
        return np.zeros(N_WEIGHTS)
    if phase == 3:
        return signs * high
    return signs * low


def reference_step(algo, w, g, m, v, t, dtype):
    """Keras 3's update_step, written out independently (every scalar cast to ``dtype``)."""
    def c(x):  # a 0-d tensor of the variable's dtype, as Keras's ops.cast makes
        return np.asarray(x, dtype)

    g = g.astype(dtype)
    lr, ts = c(LR), c(t)
    if algo == "adam":
        b1p, b2p = c(BETA_1) ** ts, c(BETA_2) ** ts
        alpha = lr * np.sqrt(c(1) - b2p) / (c(1) - b1p)
        m = m + (g - m) * c(1 - BETA_1)
        v = v + (g * g - v) * c(1 - BETA_2)
        w = w - m * alpha / (np.sqrt(v) + c(EPSILON))
        return w, m, v, (c(1) - b1p, np.sqrt(c(1) - b2p))
    b1p = c(BETA_1) ** ts
    m = m + (g - m) * c(1 - BETA_1)
    v = np.maximum(c(BETA_2) * v, np.abs(g))
    w = w - lr * m / ((c(1) - b1p) * (v + c(EPSILON)))
    return w, m, v, (c(1) - b1p, c(1))


def run(algo: str, dtype_name: str, regime: str, steps: int, seed: int = 0) -> dict:
    dtype = np.dtype(dtype_name)
    high = 1e30 if regime == "extreme" else REPRESENTABLE[(algo, dtype_name)]
    # representable: also no magnitude that rounds to 0 (Keras's Adamax divides 0 by
    # (1 - beta_1 ** t) * epsilon, which is 0 in float16 for t <= 2: 0/0 = NaN)
    low = SMALLEST if regime == "extreme" else max(SMALLEST, float(np.finfo(dtype).tiny))
    rng = np.random.default_rng(seed)
    w0 = np.linspace(-1, 1, N_WEIGHTS).astype(dtype)
    var = kerasopt.Variable(w0.copy(), name="w")
    opt = (kerasopt.Adam if algo == "adam" else kerasopt.Adamax)(
        learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    opt.build([var])
    slots = opt.variables[2:4]
    ref_w, ref_m, ref_v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    first_nonfinite = None
    mismatch = None
    corr_1 = [np.inf, -np.inf]
    corr_2 = [np.inf, -np.inf]
    max_abs_w = 0.0
    start = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for step in range(steps):
            g = gradients(step, low, high, rng)
            opt.apply([g.astype(dtype)], [var])
            ref_w, ref_m, ref_v, (c1, c2) = reference_step(
                algo, ref_w, g, ref_m, ref_v, step + 1, dtype)
            corr_1 = [min(corr_1[0], float(c1)), max(corr_1[1], float(c1))]
            corr_2 = [min(corr_2[0], float(c2)), max(corr_2[1], float(c2))]
            w = var.numpy()
            if mismatch is None:
                for ours, theirs in ((w, ref_w), (slots[0].numpy(), ref_m),
                                     (slots[1].numpy(), ref_v)):
                    if not np.array_equal(ours, theirs, equal_nan=True):
                        mismatch = step + 1
            finite = (np.isfinite(w).all() and np.isfinite(slots[0].numpy()).all()
                      and np.isfinite(slots[1].numpy()).all())
            if finite:
                max_abs_w = max(max_abs_w, float(np.abs(w).max()))
            elif first_nonfinite is None:
                first_nonfinite = step + 1
    seconds = time.perf_counter() - start
    return {
        "algorithm": algo,
        "dtype": dtype_name,
        "regime": regime,
        "max_abs_gradient": high,
        "min_abs_gradient": low,
        "steps": steps,
        "iterations": int(opt.iterations.numpy()),
        "iterations_dtype": str(opt.iterations.numpy().dtype),
        "first_nonfinite_step": first_nonfinite,
        "finite_at_end": bool(np.isfinite(var.numpy()).all()),
        "max_abs_weight_while_finite": max_abs_w,
        "final_weights": [float(x) for x in var.numpy()],
        "bias_correction_1_minus_beta1_pow_t": corr_1,
        "bias_correction_sqrt_1_minus_beta2_pow_t": corr_2,
        "bitwise_equal_to_keras_math": mismatch is None,
        "first_mismatch_step": mismatch,
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    for algo in ("adamax", "adam"):
        for dtype in ("float32", "float16"):
            for regime in ("representable", "extreme"):
                result = run(algo, dtype, regime, args.steps)
                results.append(result)
                print(
                    f"{algo:6} {dtype:7} {regime:13} |g|<={result['max_abs_gradient']:<8.3g} "
                    f"steps={result['steps']} iterations={result['iterations']} "
                    f"first_nonfinite={result['first_nonfinite_step']} "
                    f"max|w|={result['max_abs_weight_while_finite']:.4g} "
                    f"1-b1^t in [{result['bias_correction_1_minus_beta1_pow_t'][0]:.4g}, "
                    f"{result['bias_correction_1_minus_beta1_pow_t'][1]:.4g}] "
                    f"sqrt(1-b2^t) in "
                    f"[{result['bias_correction_sqrt_1_minus_beta2_pow_t'][0]:.4g}, "
                    f"{result['bias_correction_sqrt_1_minus_beta2_pow_t'][1]:.4g}] "
                    f"keras-exact={result['bitwise_equal_to_keras_math']} "
                    f"({result['seconds']}s)",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    failed = [r for r in results if not r["bitwise_equal_to_keras_math"]
              or (r["regime"] == "representable" and r["first_nonfinite_step"] is not None)]
    if failed:
        print(f"FAILED: {len(failed)} run(s) left Keras's math or the finite range")
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
