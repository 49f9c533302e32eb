"""The options every optimizer shares, validated once for every frontend.

:data:`OPTIONS` lists Keras's base-optimizer arguments (and kerasopt's two additions) with
their defaults and checks; :func:`checked_options` validates a whole set of them, plus the
algorithm's own hyperparameters from its spec, with the cross-argument rules (one clip,
AdamW's required decay). The NumPy core, ``kerasopt.torch`` (constructor and param groups),
``kerasopt.optax`` and ``kerasopt.keras`` call it, so an argument is refused with the same
message wherever it is given.

``arrays_ok`` admits 0-d arrays for the numeric options (a torch tensor learning rate, the
values ``optax.inject_hyperparams`` passes): a concrete one is checked by its value, a JAX
tracer (whose value is not known while tracing) passes unchecked.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerasopt import validation
from kerasopt.schedules import LearningRateSchedule
from kerasopt.specs import AlgorithmSpec

SPARSE_UPDATES = ("lazy", "dense")


@dataclass(frozen=True)
class Option:
    """A shared optimizer argument: Keras's name, default and check."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


def _non_negative(name: str, value: Any) -> Any:
    return validation.real(name, value, minimum=0.0, allowed="None or a finite float >= 0")


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return optional


def _unit_interval(name: str, value: Any) -> Any:
    return validation.real(name, value, minimum=0.0, maximum=1.0, allowed="a float in [0, 1]")


def _integer_at_least(minimum: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None:
            return None
        return validation.integer(name, value, minimum=minimum,
                                  allowed=f"None or an integer >= {minimum}")

    return check


def _positive_or_none(name: str, value: Any) -> Any:
    if value is None:
        return None
    return validation.real(name, value, minimum=0.0, min_inclusive=False,
                           allowed="None or a finite float > 0")


def _sparse_updates(name: str, value: Any) -> str:
    if value not in SPARSE_UPDATES:
        raise ValueError(
            f"Argument `{name}` must be 'lazy' (only the rows a sparse gradient touches move, "
            "as tf.keras's Adamax did) or 'dense' (the gradient is densified: Keras 3's "
            f"result); received {name}={validation.short_repr(value)}."
        )
    return value


RATE_ALLOWED = ("a finite float >= 0 (stored as float32), a LearningRateSchedule, or a "
                "zero-argument callable")


def check_learning_rate(name: str, value: Any) -> Any:
    """A float rate: finite, >= 0, and still finite once stored in float32 (an integer is
    refused with the float to write instead); schedules and callables pass."""
    if isinstance(value, LearningRateSchedule) or callable(value):
        return value
    validation.real(name, value, minimum=0.0, allowed=RATE_ALLOWED)
    with np.errstate(over="ignore"):
        if not np.isfinite(np.float32(value)):
            raise ValueError(
                f"Argument `{name}` must be {RATE_ALLOWED}; received {name}={value!r}, "
                "which overflows float32."
            )
    if not isinstance(value, (float, np.floating)):
        raise TypeError(
            f"Argument `{name}` must be a float (not an integer), a LearningRateSchedule, or "
            f"a zero-argument callable; received {name}={value!r}. Write it as "
            f"{float(value)!r}."
        )
    return value


OPTIONS: tuple[Option, ...] = (
    Option("learning_rate", 0.001, check_learning_rate,
           "A float (stored in float32), a ``LearningRateSchedule`` (called with the raw "
           "iteration count), or a zero-argument callable."),
    Option("weight_decay", None, _optional(_non_negative),
           "Decoupled weight decay: each step first does ``w -= w * weight_decay * lr``."),
    Option("clipnorm", None, _optional(_non_negative), "Clip each gradient to this L2 norm."),
    Option("clipvalue", None, _optional(_non_negative),
           "Clip each gradient element to ``[-clipvalue, clipvalue]``."),
    Option("global_clipnorm", None, _optional(_non_negative),
           "Clip all gradients together to this global L2 norm."),
    Option("use_ema", False, validation.boolean,
           "Keep an exponential moving average of the weights."),
    Option("ema_momentum", 0.99, _unit_interval,
           "``average = ema_momentum * average + (1 - ema_momentum) * w``."),
    Option("ema_overwrite_frequency", None, _integer_at_least(1),
           "Every this many (accumulated) iterations, copy the averages into the weights."),
    Option("loss_scale_factor", None, _positive_or_none,
           "Gradients are divided by this factor (see ``scale_loss``)."),
    Option("gradient_accumulation_steps", None, _integer_at_least(2),
           "Update only every this many calls, with the mean of the accumulated gradients."),
)
"""Keras's base-optimizer arguments, in its constructor's order."""

EXTENSIONS: tuple[Option, ...] = (
    Option("skip_nonfinite", False, validation.boolean,
           "kerasopt only (default False: Keras semantics, a NaN/inf gradient propagates). "
           "When True, a step whose gradients hold NaN or inf changes nothing but "
           "``skipped_steps``; the first skip warns."),
    Option("sparse_updates", "lazy", _sparse_updates,
           "``'lazy'``: a sparse gradient moves only the rows it touches (and their state), "
           "as tf.keras's Adamax did; ``'dense'``: it is densified first, Keras 3's result."),
)
"""kerasopt's own arguments, accepted by every frontend."""
EXTENSIONS_BY_NAME = {o.name: o.default for o in EXTENSIONS}

CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")

_BY_NAME = {option.name: option for option in (*OPTIONS, *EXTENSIONS)}


def option(name: str) -> Option:
    return _BY_NAME[name]


def defaults(spec: AlgorithmSpec | None = None) -> dict[str, Any]:
    """Every argument with its default: the algorithm's, then the shared options (with
    the spec's overrides, e.g. AdamW's ``weight_decay=0.004``)."""
    values = spec.defaults() if spec is not None else {}
    values.update({o.name: o.default for o in (*OPTIONS, *EXTENSIONS)})
    if spec is not None:
        values.update(spec.base_defaults)
    return values


def argument_order(spec: AlgorithmSpec) -> list[str]:
    """The constructor's arguments in Keras's order, then kerasopt's extensions."""
    leading = list(spec.leading_arguments)
    rest = [h.name for h in spec.hyperparameters if h.name not in leading]
    rest += [o.name for o in OPTIONS if o.name not in leading]
    return leading + rest + [o.name for o in EXTENSIONS]


def is_traced(value: Any) -> bool:
    """A JAX tracer: a value that is not known while a function is being traced."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def _array_value(name: str, value: Any) -> Any:
    """A 0-d array's Python value (its shape checked); None for a tracer."""
    if np.ndim(value) != 0:
        raise ValueError(
            f"Argument `{name}` must be a scalar; received an array of shape "
            f"{tuple(np.shape(value))}."
        )
    if is_traced(value):
        return None
    return np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).item()


def is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array_namespace__") or (
        type(value).__module__.startswith(("torch", "jax", "jaxlib"))
        and hasattr(value, "shape"))


def check_value(check: Callable[[str, Any], Any], name: str, value: Any,
                arrays_ok: bool) -> Any:
    """``check(name, value)``; with ``arrays_ok`` a 0-d array is checked by its value and
    kept as the array (a tracer passes unchecked)."""
    if arrays_ok and value is not None and not callable(value) and is_array(value):
        concrete = _array_value(name, value)
        if concrete is not None:
            check(name, concrete)
        return value
    if callable(value) and is_array(value):
        raise TypeError(f"Argument `{name}` must be a scalar; received {value!r}.")
    return check(name, value)


def checked_options(
    spec: AlgorithmSpec | None,
    values: Mapping[str, Any],
    *,
    owner: str,
    arrays_ok: bool = False,
    extra: tuple[str, ...] = (),
    spellings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every argument of ``values`` checked, the missing ones at their defaults.

    Args:
        spec: The algorithm (its own hyperparameters are checked too), or None for the
            shared options alone.
        values: The arguments as given.
        owner: Who takes them, for the unknown-keyword message (``"Adam"``).
        arrays_ok: Accept 0-d arrays (checked by value; tracers unchecked).
        extra: Further argument names the caller handles itself (left in, unchecked).
        spellings: Further "did you mean" hints for foreign names (``{"mask":
            "weight_decay_mask"}`` for optax users).

    Raises:
        TypeError / ValueError naming the argument, the value and what is allowed; an
        unknown keyword gets "did you mean" for the names other libraries use.
    """
    known = set(defaults(spec)) | set(extra)
    unknown = {k: v for k, v in values.items() if k not in known}
    _other_algorithms_argument(owner, spec, unknown)
    validation.unknown_keywords(owner, unknown, spellings)
    merged = {**defaults(spec), **values}
    out = dict(merged)
    for name, value in merged.items():
        if name in _BY_NAME:
            out[name] = check_value(_BY_NAME[name].check, name, value, arrays_ok)
    if spec is not None:
        for h in spec.hyperparameters:
            value = merged[h.name]
            if h.callable_ok and callable(value) and not is_array(value):
                continue
            out[h.name] = check_value(h.check, h.name, value, arrays_ok)
    validation.at_most_one_clip_option(**{k: merged[k] for k in CLIPS})
    for name in spec.required if spec is not None else ():
        if merged[name] is None:
            raise ValueError(
                f"{owner}: argument `{name}` must be a float (default "
                f"{spec.base_defaults.get(name)!r}); received {name}=None."
            )
    return out


def _other_algorithms_argument(owner: str, spec: AlgorithmSpec | None,
                               unknown: Mapping[str, Any]) -> None:
    """An argument of another registered algorithm (``amsgrad`` given to Adamax) is refused
    with the algorithms that take it."""
    from kerasopt import algorithms

    for name, value in unknown.items():
        takers = [s.keras_name for s in algorithms.registered() if name in s.defaults()]
        if takers:
            raise TypeError(
                f"{owner} got unknown keyword argument `{name}`={validation.short_repr(value)}: "
                f"`{name}` is an argument of {' and '.join(takers)}, not of "
                f"{spec.keras_name if spec is not None else owner}. Use, e.g., "
                f"{takers[0]}({name}={validation.short_repr(value)})."
            )


def clip_active(value: Any) -> bool:
    """Whether a clip option clips: set and non-zero (Keras treats 0 as off); an array
    (which may be traced) counts as set, the step then clips only where it is > 0."""
    if value is None:
        return False
    if is_array(value):
        return True
    return bool(value)



def arguments_doc(spec: AlgorithmSpec, extra: Mapping[str, str] | None = None) -> str:
    """The "Args:" section of ``spec``'s constructor, in its order (then ``extra``)."""
    docs = {h.name: h.doc for h in spec.hyperparameters}
    docs.update({o.name: o.doc for o in (*OPTIONS, *EXTENSIONS)})
    docs["name"] = ("The optimizer's name (its state variables' prefix); by default "
                    f"``{spec.default_name}``, made unique as Keras does.")
    docs.update(extra or {})
    defaults_ = defaults(spec)
    order = [*argument_order(spec), "name", *(extra or {})]
    lines = ["Args:"]
    for name in dict.fromkeys(order):
        default = f" Defaults to ``{defaults_[name]!r}``." if name in defaults_ else ""
        lines.append(f"    {name}: {docs[name]}{default}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- weight decay


def exclusion_patterns(names: Any, argument: str) -> list[str]:
    """``names`` (a string or an iterable of strings) as a list of checked regular
    expressions, for ``exclude_from_weight_decay``; raises naming ``argument``."""
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"Argument `{argument}` must be a list of regular-expression strings; "
                f"received an element {name!r}."
            )
        try:
            re.compile(name)
        except re.error as error:
            raise ValueError(
                f"Argument `{argument}` must hold valid regular expressions; received "
                f"{argument}={names!r} ({name!r}: {error})."
            ) from error
    return names


def exclusion_regex(names: list[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``names`` (Keras joins them as alternatives)."""
    return re.compile("|".join(sorted(set(names)))) if names else None


def warn_unmatched_exclusions(owner: str, patterns: list[str], names: list[str]) -> None:
    """Warn when an exclusion pattern matches none of the variable ``names``: its variables
    are decayed after all, which is easy to miss (a typo, or names that differ from the
    Keras model's, e.g. a list of parameters without names)."""
    unmatched = [p for p in patterns if not any(re.search(p, name) for name in names)]
    if unmatched:
        shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
        warnings.warn(
            f"{owner}: exclude_from_weight_decay pattern(s) {unmatched} match no variable "
            f"name (the names are {shown or 'none'}); nothing is excluded by them.",
            UserWarning, stacklevel=4,
        )
