"""Argument checks shared by every optimizer; each error names the argument, the value
received and what is allowed."""

from __future__ import annotations

import contextlib
import math
import numbers
import reprlib
from collections.abc import Iterator
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, 80, 80, 60


def short_repr(value: Any) -> str:
    """``repr(value)``, bounded in length and nesting (a hostile config can nest deeply)."""
    return _REPR.repr(value)


def _describe(name: str, value: Any) -> str:
    return f"received {name}={short_repr(value)}"


def is_real(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an int in Python)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allowed: str,
) -> float:
    """Check that ``value`` is a finite real number in the given range; return it as a float."""
    if not is_real(value):
        raise TypeError(f"Argument `{name}` must be {allowed}; {_describe(name, value)}.")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(
            f"Argument `{name}` must be {allowed}; {_describe(name, value)} (too large)."
        ) from None
    too_low = minimum is not None and (
        number < minimum or (not min_inclusive and number == minimum)
    )
    too_high = maximum is not None and (
        number > maximum or (not max_inclusive and number == maximum)
    )
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(f"Argument `{name}` must be {allowed}; {_describe(name, value)}.")
    return value


def optional_real(name: str, value: Any, **kwargs: Any) -> float | None:
    return None if value is None else real(name, value, **kwargs)


def integer(name: str, value: Any, *, minimum: int, allowed: str) -> int:
    """Check that ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Argument `{name}` must be {allowed}; {_describe(name, value)}.")
    if value < minimum:
        raise ValueError(f"Argument `{name}` must be {allowed}; {_describe(name, value)}.")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Argument `{name}` must be True or False; {_describe(name, value)}.")
    return value


def at_most_one_clip_option(**options: Any) -> None:
    """Keras allows one of ``clipnorm``, ``clipvalue`` and ``global_clipnorm``."""
    if sum(v is not None for v in options.values()) > 1:
        received = ", ".join(f"{k}={short_repr(v)}" for k, v in options.items())
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; "
            f"received {received}."
        )


def beta(name: str, value: Any) -> Any:
    """A beta: a real number in [0, 1), or a zero-argument callable returning one."""
    if callable(value):
        return value
    return real(
        name,
        value,
        minimum=0.0,
        maximum=1.0,
        max_inclusive=False,
        allowed="a float in [0, 1) or a zero-argument callable returning one",
    )


def resolved_beta(name: str, value: Any) -> float:
    """The value of a beta, calling it when it is a callable, checked again."""
    if callable(value):
        result = value()
        try:
            return float(beta(name, float(result) if not is_real(result) else result))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"The callable given as `{name}` returned {result!r}; it must return a float "
                "in [0, 1)."
            ) from error
    return value


_KERAS_SPELLINGS = {
    "lr": "learning_rate", "eps": "epsilon", "betas": "beta_1` and `beta_2",
    "b1": "beta_1", "b2": "beta_2", "beta1": "beta_1", "beta2": "beta_2",
    "clip_norm": "clipnorm", "clip_value": "clipvalue", "max_grad_norm": "global_clipnorm",
}


@contextlib.contextmanager
def evaluating_learning_rate(owner: str) -> Iterator[None]:
    """Turn a failure while evaluating a schedule/callable learning rate (or converting it
    to a real number) into a TypeError that names `learning_rate`."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{owner}: the learning rate must evaluate to a real number; evaluating "
            f"`learning_rate` failed ({error})."
        ) from error


def unknown_keywords(cls_name: str, kwargs: dict[str, Any],
                     spellings: dict[str, str] | None = None) -> None:
    """Refuse unknown keyword arguments, with "did you mean" for the names torch.optim and
    optax use (and the caller's own ``spellings``)."""
    if kwargs:
        known = {**_KERAS_SPELLINGS, **(spellings or {})}
        names = ", ".join(f"`{k}`={short_repr(v)}" for k, v in kwargs.items())
        hints = [f"`{known[k]}` for `{k}`" for k in kwargs if k in known]
        hint = f" Did you mean {', '.join(hints)}? (kerasopt uses Keras's names.)" if hints else ""
        raise TypeError(f"{cls_name} got unknown keyword argument(s): {names}.{hint}")
