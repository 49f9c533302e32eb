"""The per-step scalars of a fused step, computed exactly as the reference computes them.

Every kernel (numba on the CPU, Triton on CUDA) gets the same :class:`StepScalars`: the
``features`` bits, the ``hyper`` array (see :mod:`kerasopt.kernels.layout`) and, for
``clipnorm``, the per-tensor factors ``c / d`` with ``clip_by_norm(g) == g * c / d``. The
scalars are the reference's own expressions over 0-d arrays of the variables' library and
dtype, so they round exactly as the reference's do. The only kernel-specific input is the
per-tensor sum of squares of the (unscaled, accumulated) gradients, which the kernel computes
in its read pass and hands back through ``squared_norms``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerasopt import pipeline, specs
from kerasopt.backend import cast_scalar, is_torch, namespace
from kerasopt.kernels import layout


@dataclass
class StepScalars:
    """What a kernel launch needs besides the tensors."""

    features: int
    hyper: np.ndarray  # (layout.HYPER,) in the variables' dtype
    clip_c: np.ndarray  # per tensor (clipnorm; ones while off)
    clip_d: np.ndarray
    decay_mask: np.ndarray  # per tensor, bool


def step_scalars(
    algorithm: str,
    like: Any,
    dtype: np.dtype,
    n: int,
    *,
    micro: bool,
    amsgrad: bool,
    squared_norms: Callable[[int, np.ndarray], np.ndarray],
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
    accumulation_steps: int | None = None,
    accumulation_phase: str | None = None,
    averaging: bool = False,
    ema_momentum: Any = None,
    ema_overwrite: bool = False,
) -> StepScalars:
    """The scalars of one step over ``n`` tensors like ``like`` (a 0-d array / tensor); the
    keywords after ``squared_norms`` are :func:`kerasopt.kernels.fused_step`'s, with the same
    defaults, and ``averaging`` (bool) in place of ``ema_averages``.

    ``squared_norms(features, hyper)`` is called only under ``clipnorm`` /
    ``global_clipnorm``, with the unscale and accumulation bits already set; it returns the
    per-tensor sums of ``g * g`` rounded to ``dtype``.
    """
    features = 0
    hyper, ones, all_decayed = _identities(dtype, n)
    scalars = StepScalars(0, hyper, ones, ones, all_decayed)

    def put(slot: int, value: Any) -> None:
        hyper[slot] = dtype.type(float(value))

    if loss_scale_factor is not None:
        features |= layout.UNSCALE
        hyper[layout.H_SCALE] = cast(loss_scale_factor, like, hyper.dtype)
    if accumulation_phase == "update":
        features |= layout.ACCUMULATE
        hyper[layout.H_STEPS] = cast(accumulation_steps, like, hyper.dtype)
    if averaging:
        features |= layout.AVERAGE
        momentum = cast(0.0 if ema_momentum is None else ema_momentum, like, hyper.dtype)
        hyper[layout.H_EMA] = momentum
        hyper[layout.H_ONE_MINUS_EMA] = 1 - momentum  # one IEEE subtraction in the dtype
        if ema_overwrite:
            features |= layout.OVERWRITE
    if micro:
        scalars.features = features
        return scalars

    if clipvalue:
        features |= layout.CLIP_VALUE
        bound = pipeline.keras_float(clipvalue)
        hyper[layout.H_CLIP_LOW] = cast(-bound, like, hyper.dtype)
        hyper[layout.H_CLIP_HIGH] = cast(bound, like, hyper.dtype)
    elif clipnorm or global_clipnorm:
        l2sums = squared_norms(features, hyper)
        if clipnorm:
            features |= layout.CLIP_NORM
            scalars.clip_c, scalars.clip_d = clip_norm_factors(
                l2sums, dtype.type(pipeline.keras_float(clipnorm))
            )
        else:
            features |= layout.CLIP_GLOBAL
            total = np.cumsum(l2sums)[-1]  # ((s0 + s1) + s2) + ...: the reference's order
            norm = namespace(like).sqrt(cast_scalar(float(total), like))
            one = namespace(like).ones((), dtype=like.dtype)
            put(layout.H_GLOBAL, pipeline.clip_by_global_norm([one], global_clipnorm,
                                                              norm=norm)[0])
    if weight_decay_mask is not None:
        scalars.decay_mask = np.asarray(weight_decay_mask, np.bool_)
    if weight_decay is not None and scalars.decay_mask.any():
        features |= layout.DECAY
        one = namespace(like).ones((), dtype=like.dtype)
        put(layout.H_DECAY, pipeline.decay(one, weight_decay, learning_rate))
    if amsgrad:
        features |= layout.AMSGRAD
    algorithm_scalars(hyper, algorithm, like, learning_rate, step, beta_1=beta_1,
                      beta_2=beta_2, epsilon=epsilon)
    scalars.features = features
    return scalars


_IDENTITIES: dict[tuple[np.dtype, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _identities(dtype: np.dtype, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fresh ``hyper`` whose gradient transforms' slots hold their identity while off (so
    that a kernel may apply them all in one branch-free loop: x / 1, x * 1 and clipping to
    +-inf return x bit for bit, NaN, inf and -0 included), and the per-tensor ``n`` ones (the
    clip factors while off) and all-True decay mask, shared between steps (kernels only read
    them)."""
    key = (dtype, n)
    cached = _IDENTITIES.get(key)
    if cached is None:
        hyper = np.zeros(layout.HYPER, dtype)
        hyper[[layout.H_SCALE, layout.H_STEPS, layout.H_GLOBAL]] = 1
        hyper[layout.H_CLIP_LOW], hyper[layout.H_CLIP_HIGH] = -np.inf, np.inf
        if len(_IDENTITIES) >= 32:
            _IDENTITIES.clear()
        cached = _IDENTITIES[key] = (hyper, np.ones(n, dtype), np.ones(n, np.bool_))
    return cached[0].copy(), cached[1], cached[2]


def clip_norm_factors(l2sums: np.ndarray, clipnorm: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor, ``(c, d)`` with ``clip_by_norm(g) == g * c / d`` as the reference computes:
    ``l2norm = sqrt(l2sum)`` (``l2sum`` itself when not positive), ``d = float32(max(l2norm,
    clipnorm))`` (NaN propagating) back in the dtype, ``c = clipnorm``."""
    with np.errstate(invalid="ignore"):
        norm = np.where(l2sums > 0, np.sqrt(np.maximum(l2sums, 0)), l2sums)
        divisor = np.where((norm > clipnorm) | np.isnan(norm), norm, clipnorm)
    d = divisor.astype(np.float32).astype(l2sums.dtype)
    return np.full_like(l2sums, clipnorm), d


class ScalarMath:
    """Scalar arithmetic rounded as the reference rounds it on 0-d arrays of ``like``'s
    library and dtype (an algorithm's ``kernel_scalars`` computes with it): powers and
    square roots by that library (their rounding is its own), casts as Keras's
    ``ops.cast``; the results are NumPy scalars of the dtype, whose subtractions, products
    and quotients are IEEE-rounded exactly as every library's are (and a few microseconds
    cheaper each than a 0-d torch op).

    For float32/float64 torch tensors the 0-d operands are kept between steps: the bases of
    the powers (the betas, by value) as the tensors ``cast_scalar`` makes, and the exponent,
    the square root's operand and the results in 0-d tensors that share their memory with
    NumPy arrays (written and read in ~0.1 us each). The operations stay torch's own
    ``torch.pow`` / ``torch.sqrt`` of 0-d tensors of the dtype, so they round as before."""

    def __init__(self, like: Any, dtype: np.dtype) -> None:
        self.like, self.dtype = like, np.dtype(dtype)
        self.one = self.dtype.type(1)
        self._torch = None
        if is_torch(like) and self.dtype in _FLOAT_DTYPES:
            torch = sys.modules["torch"]
            arrays = [np.zeros((), self.dtype) for _ in range(3)]
            self._bases: dict[tuple[type, Any], Any] = {}
            self._arrays = arrays  # (operand, result, exponent)
            with torch.inference_mode(False):  # normal tensors, whatever mode builds them:
                self._tensors = [torch.from_numpy(a) for a in arrays]  # (kept for the thread)
            self._torch = torch

    def cast(self, value: Any) -> Any:
        if type(value) in _NUMBERS:
            return self.dtype.type(value)
        return cast(value, self.like, self.dtype)

    def power(self, base: Any, exponent: Any) -> Any:
        """``base ** exponent``, both cast to the dtype first."""
        like = self.like
        if (self._torch is not None and type(base) in _NUMBERS
                and type(exponent) in _NUMBERS and abs(exponent) < _EXACT):
            key = (type(base), base)
            cached = self._bases.get(key)
            if cached is None:
                if len(self._bases) >= 64:
                    self._bases.clear()
                with self._torch.inference_mode(False):
                    cached = self._bases[key] = cast_scalar(base, like)
            _, result, power = self._arrays
            power[()] = exponent  # rounded to the dtype as torch.tensor(exponent, dtype) is
            self._torch.pow(cached, self._tensors[2], out=self._tensors[1])
            return self.dtype.type(result[()])
        return self.dtype.type(float(cast_scalar(base, like) ** cast_scalar(exponent, like)))

    def sqrt(self, x: Any) -> Any:
        if self._torch is not None and type(x) in _OPERANDS:
            operand, result, _ = self._arrays
            operand[()] = x
            self._torch.sqrt(self._tensors[0], out=self._tensors[1])
            return self.dtype.type(result[()])
        return self.dtype.type(float(namespace(self.like).sqrt(cast_scalar(x, self.like))))


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NUMBERS = (int, float)
_EXACT = 2.0**53  # an int below it converts to the dtype with one rounding, in every library
_OPERANDS = (int, float, np.float32, np.float64)
_MATHS = threading.local()  # per thread: a ScalarMath's buffers are written by each call


def scalar_math(like: Any, dtype: np.dtype) -> ScalarMath:
    """The calling thread's :class:`ScalarMath` for ``like``'s library and ``dtype`` (kept
    between steps, with its cached operands); a new one for other libraries."""
    if not is_torch(like):
        return ScalarMath(like, dtype)
    maths = getattr(_MATHS, "maths", None)
    if maths is None:
        maths = _MATHS.maths = {}
    key = (like.dtype, dtype)
    math_ = maths.get(key)
    if math_ is None:
        math_ = maths[key] = ScalarMath(like, dtype)
    return math_


_RULE_SLOTS: dict[str, list[tuple[str, int]]] = {}


def kernel_scalars_of(algorithm: Any) -> tuple[str, Callable[..., dict[str, Any]]]:
    """``(kernel body, kernel_scalars)`` of ``algorithm``: an AlgorithmSpec, or a kernel
    body's name (the scalars of the registered algorithm that names it)."""
    if isinstance(algorithm, specs.AlgorithmSpec):
        return algorithm.kernel, algorithm.kernel_scalars
    from kerasopt import algorithms

    for spec in algorithms.registered():
        if spec.kernel == algorithm:
            return algorithm, spec.kernel_scalars
    raise ValueError(f"No registered algorithm runs on the kernel body {algorithm!r}.")


def algorithm_scalars(hyper: np.ndarray, algorithm: Any, like: Any, learning_rate: Any,
                      step: Any, **hyperparameters: Any) -> None:
    """The update rule's scalars into ``hyper``, as ``algorithm``'s ``kernel_scalars``
    computes them, at the slots its kernel body reads."""
    kernel, compute = kernel_scalars_of(algorithm)
    with np.errstate(all="ignore"):  # an overflow or 0 / 0 rounds as in IEEE, silently
        values = compute(scalar_math(like, hyper.dtype), learning_rate, step,
                         **hyperparameters)
    slots = _RULE_SLOTS.get(kernel)
    if slots is None:
        slots = _RULE_SLOTS[kernel] = list(layout.rule_slots(kernel).items())
    for name, slot in slots:
        hyper[slot] = values[name]


def cast(value: Any, like: Any, dtype: np.dtype) -> Any:
    """``cast_scalar(value, like)`` as a NumPy scalar of ``dtype`` (``like``'s dtype). A
    Python number is cast by NumPy directly: rounding it to float32 / float64 is IEEE
    round-to-nearest in every library, so the result is the same, without a 0-d tensor of
    ``like``'s library (a few microseconds each for torch). So is a floating torch tensor
    (a float32 learning rate): its value is exact as a Python float, rounded once to
    ``dtype``."""
    if type(value) in (int, float):
        return dtype.type(value)
    torch = sys.modules.get("torch")
    if torch is not None and type(value) is torch.Tensor and value.is_floating_point():
        return dtype.type(value.item())
    return dtype.type(float(cast_scalar(value, like)))
