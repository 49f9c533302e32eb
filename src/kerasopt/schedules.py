"""Learning-rate schedules with Keras 3's formulas, arguments and configs.

A schedule is called with the optimizer's *raw* iteration count (micro-steps, under gradient
accumulation) and computes in the dtype of ``initial_learning_rate`` (float32 for a Python
float, as Keras does). Steps may be Python/NumPy integers or JAX arrays (under ``jit``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasopt import serialization, validation
from kerasopt.backend import is_jax


def _xp(step: Any) -> Any:
    if is_jax(step):
        import jax.numpy as jnp

        return jnp
    return np


def _float_dtype(value: Any) -> Any:
    """Keras's dtype for a number: float32 for Python floats, else the array's float dtype."""
    dtype = np.asarray(value).dtype
    if isinstance(value, (float, int)) or dtype.kind != "f":
        return np.float32
    return dtype


def _positive_steps(name: str, value: Any) -> Any:
    return validation.real(name, value, minimum=0.0, min_inclusive=False,
                           allowed="a number > 0")


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate``. Subclasses implement ``__call__``
    and ``get_config``."""

    def __call__(self, step: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        return cls(**config)


@serialization.builtin("schedule")
class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase``,
    the exponent is floored."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, decay_rate: float,
                 staircase: bool = False, name: str = "ExponentialDecay") -> None:
        self.initial_learning_rate = validation.real(
            "initial_learning_rate", initial_learning_rate, allowed="a finite float")
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.decay_rate = validation.real("decay_rate", decay_rate, allowed="a finite float")
        self.staircase = validation.boolean("staircase", staircase)
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, dtype = _xp(step), _float_dtype(self.initial_learning_rate)
        p = xp.asarray(step, dtype) / xp.asarray(self.decay_steps, dtype)
        if self.staircase:
            p = xp.floor(p)
        return xp.asarray(self.initial_learning_rate, dtype) * xp.asarray(
            self.decay_rate, dtype) ** p

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


@serialization.builtin("schedule")
class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries: Sequence[float], values: Sequence[float],
                 name: str = "PiecewiseConstant") -> None:
        if not isinstance(boundaries, Sequence) or not isinstance(values, Sequence):
            raise TypeError(
                "Arguments `boundaries` and `values` must be lists; received "
                f"boundaries={boundaries!r}, values={values!r}.")
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of `boundaries` must be one less than the length of `values`; "
                f"received boundaries={list(boundaries)!r} (length {len(boundaries)}) and "
                f"values={list(values)!r} (length {len(values)}).")
        for i, b in enumerate(boundaries):
            validation.real(f"boundaries[{i}]", b, allowed="a finite number")
        for i, v in enumerate(values):
            validation.real(f"values[{i}]", v, allowed="a finite number")
        if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(
                "Argument `boundaries` must be strictly increasing; received "
                f"{list(boundaries)!r}.")
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp = _xp(step)
        dtype = _float_dtype(self.values[0])
        result = xp.asarray(0, dtype)
        result = result + xp.asarray(step <= self.boundaries[0], dtype) * xp.asarray(
            self.values[0], dtype)
        result = result + xp.asarray(step > self.boundaries[-1], dtype) * xp.asarray(
            self.values[-1], dtype)
        for low, high, value in zip(self.boundaries[:-1], self.boundaries[1:], self.values[1:-1]):
            inside = xp.logical_and(step > low, step <= high)
            result = result + xp.asarray(inside, dtype) * xp.asarray(value, dtype)
        return result

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


@serialization.builtin("schedule")
class PolynomialDecay(LearningRateSchedule):
    """``(initial - end) * (1 - min(step, decay_steps) / decay_steps) ** power + end``; with
    ``cycle``, ``decay_steps`` grows to the first multiple not below ``step``."""

    def __init__(self, initial_learning_rate: float, decay_steps: float,
                 end_learning_rate: float = 0.0001, power: float = 1.0, cycle: bool = False,
                 name: str = "PolynomialDecay") -> None:
        self.initial_learning_rate = validation.real(
            "initial_learning_rate", initial_learning_rate, allowed="a finite float")
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.end_learning_rate = validation.real(
            "end_learning_rate", end_learning_rate, allowed="a finite float")
        self.power = validation.real("power", power, allowed="a finite float")
        self.cycle = validation.boolean("cycle", cycle)
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, dtype = _xp(step), _float_dtype(self.initial_learning_rate)
        initial = xp.asarray(self.initial_learning_rate, dtype)
        end = xp.asarray(self.end_learning_rate, dtype)
        global_step = xp.asarray(step, dtype)
        decay_steps = xp.asarray(self.decay_steps, dtype)
        if self.cycle:
            multiplier = xp.where(global_step == 0, xp.asarray(1.0, dtype),
                                  xp.ceil(global_step / decay_steps))
            decay_steps = decay_steps * multiplier
        else:
            global_step = xp.minimum(global_step, decay_steps)
        p = global_step / decay_steps
        return (initial - end) * (1 - p) ** xp.asarray(self.power, dtype) + end

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle, "name": self.name}


@serialization.builtin("schedule")
class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; with ``staircase``,
    ``step / decay_steps`` is floored."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, decay_rate: float,
                 staircase: bool = False, name: str = "InverseTimeDecay") -> None:
        self.initial_learning_rate = validation.real(
            "initial_learning_rate", initial_learning_rate, allowed="a finite float")
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.decay_rate = validation.real("decay_rate", decay_rate, allowed="a finite float")
        self.staircase = validation.boolean("staircase", staircase)
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, dtype = _xp(step), _float_dtype(self.initial_learning_rate)
        p = xp.asarray(step, dtype) / xp.asarray(self.decay_steps, dtype)
        if self.staircase:
            p = xp.floor(p)
        denominator = xp.asarray(1, dtype) + xp.asarray(self.decay_rate, dtype) * p
        return xp.asarray(self.initial_learning_rate, dtype) / denominator

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


@serialization.builtin("schedule")
class CosineDecay(LearningRateSchedule):
    """Optional linear warmup from ``initial_learning_rate`` to ``warmup_target`` over
    ``warmup_steps``, then ``lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)``
    with ``s = min(step - warmup_steps, decay_steps)`` and ``lr0`` the warmup target (or the
    initial rate without warmup)."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, alpha: float = 0.0,
                 name: str = "CosineDecay", warmup_target: float | None = None,
                 warmup_steps: float = 0) -> None:
        self.initial_learning_rate = validation.real(
            "initial_learning_rate", initial_learning_rate, allowed="a finite float")
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.alpha = validation.real("alpha", alpha, allowed="a finite float")
        self.name = name
        self.warmup_target = validation.optional_real(
            "warmup_target", warmup_target, allowed="None or a finite float")
        self.warmup_steps = validation.real("warmup_steps", warmup_steps, minimum=0.0,
                                            allowed="a number >= 0")

    def _decay(self, xp: Any, step: Any, decay_steps: Any, decay_from: Any, dtype: Any) -> Any:
        completed_fraction = step / decay_steps
        cosine_decayed = 0.5 * (1.0 + xp.cos(xp.asarray(math.pi, dtype) * completed_fraction))
        decayed = (1 - self.alpha) * cosine_decayed + self.alpha
        return decay_from * decayed

    def __call__(self, step: Any) -> Any:
        xp, dtype = _xp(step), _float_dtype(self.initial_learning_rate)
        initial = xp.asarray(self.initial_learning_rate, dtype)
        decay_steps = xp.asarray(self.decay_steps, dtype)
        global_step = xp.asarray(step, dtype)
        if self.warmup_target is None:
            global_step = xp.minimum(global_step, decay_steps)
            return self._decay(xp, global_step, decay_steps, initial, dtype)
        target = xp.asarray(self.warmup_target, dtype)
        warmup_steps = xp.asarray(self.warmup_steps, dtype)
        global_step = xp.minimum(global_step, decay_steps + warmup_steps)

        def warmup() -> Any:
            return (target - initial) * (global_step / warmup_steps) + initial

        def decay() -> Any:
            return self._decay(xp, global_step - warmup_steps, decay_steps, target, dtype)

        if xp is np:
            return warmup() if global_step < warmup_steps else decay()
        import jax

        return jax.lax.cond(global_step < warmup_steps, warmup, decay)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


@serialization.builtin("schedule")
class CosineDecayRestarts(LearningRateSchedule):
    """SGDR: cosine decay from the initial rate to ``alpha`` of it over ``first_decay_steps``,
    then restarts, each period ``t_mul`` times longer and ``m_mul`` times higher."""

    def __init__(self, initial_learning_rate: float, first_decay_steps: float,
                 t_mul: float = 2.0, m_mul: float = 1.0, alpha: float = 0.0,
                 name: str = "SGDRDecay") -> None:
        self.initial_learning_rate = validation.real(
            "initial_learning_rate", initial_learning_rate, allowed="a finite float")
        self.first_decay_steps = _positive_steps("first_decay_steps", first_decay_steps)
        self._t_mul = validation.real("t_mul", t_mul, minimum=0.0, min_inclusive=False,
                                      allowed="a float > 0")
        self._m_mul = validation.real("m_mul", m_mul, allowed="a finite float")
        self.alpha = validation.real("alpha", alpha, allowed="a finite float")
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, dtype = _xp(step), _float_dtype(self.initial_learning_rate)
        initial = xp.asarray(self.initial_learning_rate, dtype)
        alpha = xp.asarray(self.alpha, dtype)
        t_mul = xp.asarray(self._t_mul, dtype)
        m_mul = xp.asarray(self._m_mul, dtype)
        completed_fraction = xp.asarray(step, dtype) / xp.asarray(self.first_decay_steps, dtype)
        if self._t_mul == 1.0:
            i_restart = xp.floor(completed_fraction)
            completed_fraction = completed_fraction - i_restart
        else:
            i_restart = xp.floor(
                xp.log(xp.asarray(1.0 - completed_fraction * (1.0 - t_mul), dtype))
                / xp.log(t_mul))
            sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
            completed_fraction = (completed_fraction - sum_r) / t_mul**i_restart
        m_fac = m_mul**i_restart
        cosine_decayed = 0.5 * m_fac * (
            1.0 + xp.cos(xp.asarray(math.pi, dtype) * completed_fraction))
        decayed = (1 - alpha) * cosine_decayed + alpha
        return initial * decayed

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps, "t_mul": self._t_mul,
                "m_mul": self._m_mul, "alpha": self.alpha, "name": self.name}


def serialize(learning_rate_schedule: LearningRateSchedule) -> dict[str, Any]:
    """A schedule in Keras's dict format."""
    return serialization.serialize(learning_rate_schedule)


def deserialize(config: Any, custom_objects: dict[str, Any] | None = None) -> Any:
    """The schedule a Keras dict (or a built-in schedule's class name) describes."""
    return serialization.deserialize(config, custom_objects, kind="schedule")


__all__ = [
    "LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
    "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize",
]
