"""``kerasopt.torch``: Keras 3's Adam and Adamax as real ``torch.optim.Optimizer`` subclasses.

The numerics are Keras's (``epsilon`` hat, epsilon outside Adamax's max, hyperparameters cast
to the parameter's dtype, Keras's EMA and accumulation quirks), the conventions are torch's
(param groups, ``step(closure)``, ``zero_grad``, ``state_dict``, LR schedulers)::

    opt = kerasopt.torch.Adam(model.named_parameters(), learning_rate=1e-3,
                              weight_decay=0.004, global_clipnorm=1.0, use_ema=True)
    opt.exclude_from_weight_decay(var_names=["bias", "norm"])
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    with opt.ema_weights():
        evaluate(model)

This module holds no math: every step calls :func:`kerasopt.algorithms.adam_update` /
:func:`~kerasopt.algorithms.adamax_update` and the functions of :mod:`kerasopt.pipeline` on
torch tensors, in Keras 3's order, and copies their results into the parameters and state.

Param groups
    Each group carries Keras's hyperparameters under Keras's names (``beta_1``,
    ``epsilon``, ``weight_decay``, ``clipnorm``, ``use_ema``...). A float (or 1-element
    tensor) learning rate lives under torch's key ``"lr"`` (so ``torch.optim.lr_scheduler``
    works); a ``kerasopt.schedules`` schedule or a zero-argument callable lives under
    ``"learning_rate"`` and then decides the rate (``"lr"`` then reports the last rate used;
    a 0 written into ``"lr"`` applies to the next step only, as when
    ``torch.distributed.checkpoint`` sets it for the step that creates the state; a torch
    scheduler on such a group, or another rate written into ``"lr"``, is refused).
    torch's ``"betas"`` pair mirrors ``beta_1`` and ``beta_2`` for the schedulers that cycle
    it (OneCycleLR, CyclicLR): whichever spelling was written since the last step applies.
    ``"iterations"`` holds the optimizer's raw step count (Keras's ``iterations`` variable;
    the same in every group), so it travels with every ``state_dict`` format, including
    ``torch.distributed.checkpoint``'s.
    ``gradient_accumulation_steps`` and ``loss_scale_factor`` belong to the whole optimizer.
    ``global_clipnorm`` uses the norm over the gradients of every group that sets it (the
    model's global norm); each group scales by its own ``global_clipnorm``.

State
    ``optimizer.state[p]`` holds tensors named as Keras's slots: ``momentum``,
    ``velocity`` (and ``velocity_hat`` with amsgrad) for Adam, ``momentum``, ``norm`` for
    Adamax, plus ``average`` (EMA) and ``gradient_accumulator``. They have the parameter's
    dtype (Keras's rule) unless ``state_dtype`` is given (e.g. ``torch.float32`` for bf16
    parameters: then the whole step is computed in that dtype and the parameter gets the
    rounded result). Under FSDP2 the state tensors are DTensors sharded like the parameters;
    the step works on the local shards.

Distributed
    DDP, FSDP2 (``fully_shard``; ``global_clipnorm`` and ``clipnorm`` all-reduce the squared
    norms of the local shards) and ``ZeroRedundancyOptimizer`` work. Under ZeRO each rank
    holds only part of the parameters: pass ``norm_process_group=torch.distributed.group.WORLD``
    so that ``global_clipnorm`` sums the squared norms of all partitions. The NaN/inf verdict
    of ``skip_nonfinite`` and :class:`LossScaleOptimizer` is agreed across the same ranks
    (one all-reduce of a flag), so every rank skips, or applies, together.
    torch.distributed.checkpoint's state-creating ``step()`` (zero gradients, lr 0, no state
    yet) only creates the state: it counts no iteration and moves no EMA or accumulator.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from operator import is_, itemgetter
from typing import Any

import numpy as np
import torch

from kerasopt import algorithms, config, engine, kernels, pipeline, specs, validation
from kerasopt._torch_plan import GroupPlan, StateSnapshot, state_columns
from kerasopt.backend import ops_for
from kerasopt.schedules import LearningRateSchedule
from kerasopt.sparse import IndexedSlices, values_of

__all__ = ["CLASSES", "KerasOptimizer", "LossScaleOptimizer", "optimizer_class"]

AVERAGE = "average"
ACCUMULATOR = "gradient_accumulator"
MARKER = "kerasopt"

# Keys of a param group besides "params": the Keras hyperparameters that every group has.
_BASE_GROUP_KEYS = (
    "lr",
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "state_dtype",
    "sparse_updates",
)
# Keys torch or this module put into groups that are not hyperparameters. The optimizer-wide
# arguments are tolerated (and ignored) in groups: ZeroRedundancyOptimizer copies every
# constructor argument into the groups it hands to its local optimizer.
_BOOKKEEPING_KEYS = (
    "params",
    "param_names",
    "initial_lr",
    "iterations",
    "reported_lr",
    "synced_betas",
    MARKER,
    "loss_scale_factor",
    "gradient_accumulation_steps",
    "norm_process_group",
    "skip_nonfinite",
    "skipped_steps",
)


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


_DTensor = _dtensor_type()
_FLOATS = (torch.float32, torch.float64)


def _is_dtensor(t: Any) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor the step works on: the local shard of a DTensor, else the tensor."""
    return t.to_local() if _is_dtensor(t) else t


def _describe_param(p: torch.Tensor, name: str | None) -> str:
    label = f"'{name}'" if name is not None else "a parameter"
    return f"{label} of shape {tuple(p.shape)}"


_RATE_ALLOWED = (
    "a finite float >= 0 (stored as float32), a 1-element floating tensor, a "
    "LearningRateSchedule, or a zero-argument callable"
)


def _float_rate(name: str, value: Any, allowed: str = _RATE_ALLOWED) -> float:
    """A float learning rate (a real number, or a 1-element floating tensor as torch.optim
    takes) checked as the constructor checks it (:func:`kerasopt.config.check_learning_rate`:
    finite, >= 0, finite in float32, a float). Returns its value as a Python float."""
    if not isinstance(value, torch.Tensor):
        if callable(value):
            raise TypeError(
                f"`{name}` in a param group is a number (a float, or a 1-element tensor); "
                f"received {name}={validation.short_repr(value)}. A schedule or callable goes "
                "in group['learning_rate']."
            )
        return float(config.check_learning_rate(name, value))
    if value.numel() != 1 or not value.is_floating_point():
        raise (ValueError if value.is_floating_point() else TypeError)(
            f"Argument `{name}` must be {allowed}; received a tensor of dtype {value.dtype} "
            f"and shape {tuple(value.shape)}: {name}={validation.short_repr(value)}."
        )
    number = float(value.detach())
    with np.errstate(over="ignore"):
        in_float32 = float(np.float32(number)) if math.isfinite(number) else number
    if not math.isfinite(in_float32) or number < 0:
        raise ValueError(
            f"Argument `{name}` must be {allowed}; received {name}={validation.short_repr(value)}"
            + (" (it overflows float32)." if math.isfinite(number) and number >= 0 else ".")
        )
    return number


def _is_rate_function(value: Any) -> bool:
    """A kerasopt schedule or a zero-argument callable (not a tensor, which is callable-less
    but a value)."""
    return isinstance(value, LearningRateSchedule) or (
        callable(value) and not isinstance(value, torch.Tensor)
    )


def _betas_pair(name: str, value: Any) -> tuple[Any, Any]:
    """torch.optim's ``betas``: a pair ``(beta_1, beta_2)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"Argument `{name}` must be a pair (beta_1, beta_2), as torch.optim's `betas`; "
            f"received {name}={validation.short_repr(value)}."
        )
    return tuple(value)


def _same(a: Any, b: Any) -> bool:
    """Whether two hyperparameter values are the same (identical, or equal real numbers;
    tuples elementwise). Never compares tensors by value."""
    if a is b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return validation.is_real(a) and validation.is_real(b) and a == b


def _group_learning_rate(name: str, value: Any) -> Any:
    if value is not None and not _is_rate_function(value):
        raise TypeError(
            f"`{name}` in a param group holds a kerasopt schedule or a zero-argument callable "
            f"(or None); received {name}={validation.short_repr(value)}. A float rate goes in "
            "group['lr']."
        )
    return value


def _state_dtype_rule(name: str, value: Any) -> Any:
    KerasOptimizer._validate_state_dtype(value)
    return value


def _group_rules(spec: Any) -> dict[str, Callable[[str, Any], Any]]:
    """The constructor's check of each hyperparameter a param group holds (the shared
    options' from :mod:`kerasopt.config`, the algorithm's from its registered spec), applied
    to a value written into the group between steps: ``rule(name, value)`` raises
    TypeError/ValueError naming it. (The float ``lr`` is checked by the step; "only one clip
    option" spans three keys.)"""
    rules: dict[str, Callable[[str, Any], Any]] = {
        name: config.option(name).check
        for name in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                     "ema_momentum", "ema_overwrite_frequency", "sparse_updates")
    }
    for h in spec.hyperparameters:
        rules[h.name] = lambda _, value, h=h: h.validated(value)
    rules.update(learning_rate=_group_learning_rate, state_dtype=_state_dtype_rule,
                 betas=_betas_pair)
    return rules


_CLIP_KEYS = frozenset(config.CLIPS)
_PLAIN_NUMBERS = frozenset((int, float, bool))



class KerasOptimizer(torch.optim.Optimizer):
    """Base class of the registered algorithms' torch optimizers (:func:`optimizer_class`):
    torch's conventions around the engine's step."""

    spec: specs.AlgorithmSpec
    """The registered algorithm (set on each class by :func:`optimizer_class`)."""

    @property
    def _algorithm_keys(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.spec.hyperparameters)

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        loss_scale_factor: float | None,
        gradient_accumulation_steps: int | None,
        norm_process_group: Any = None,
        skip_nonfinite: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if kwargs:  # each is unknown: refused with "did you mean" for foreign names
            config.checked_options(self.spec, kwargs, owner=name)
        self.skip_nonfinite = validation.boolean("skip_nonfinite", skip_nonfinite)
        learning_rate = defaults.pop("learning_rate")
        if _is_rate_function(learning_rate):
            defaults["learning_rate"] = learning_rate
            defaults["lr"] = 0.0
        else:
            if isinstance(learning_rate, torch.Tensor):  # torch.optim takes a tensor rate
                _float_rate("learning_rate", learning_rate)
            defaults["learning_rate"] = None
            defaults["lr"] = learning_rate
        if "beta_1" in self._algorithm_keys:  # torch.optim's spelling, for its schedulers
            defaults["betas"] = (defaults["beta_1"], defaults["beta_2"])
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.norm_process_group = norm_process_group
        self._excluded_params: list[torch.Tensor] = []
        self._checked_groups: list | None = None
        self._step_lock = threading.RLock()
        # Per group, the resolved hyperparameters of the groups last checked (plain numbers
        # only: a callable is resolved at every step); float rates as float32 0-d tensors.
        self._resolved: dict[int, tuple[Any, ...]] = {}
        self._rate_tensors: dict[float, torch.Tensor] = {}
        self._columns: dict[tuple[int, int | None], tuple[dict, list]] = {}
        self._excluded_ids: set[int] = set()
        self._excluded_pattern: re.Pattern[str] | None = None
        self._validate_state_dtype(defaults["state_dtype"])
        config.option("sparse_updates").check("sparse_updates", defaults["sparse_updates"])
        # The core optimizer's constructor is the one place where Keras's arguments are
        # checked, so errors name the argument and value exactly as kerasopt.Adam does.
        self._check_options(defaults)
        if isinstance(params, torch.Tensor):
            raise TypeError(
                f"{name}: params argument given to the optimizer should be an iterable of "
                f"Tensors or dicts, but got {torch.typename(params)} (a single tensor of shape "
                f"{tuple(params.shape)}); pass [tensor] or model.parameters()."
            )
        given = params
        params = list(params)
        if not params:
            raise ValueError(
                f"{name}: optimizer got an empty parameter list (params="
                f"{validation.short_repr(given)}); an iterator such as model.parameters() "
                "can be consumed once only."
            )
        super().__init__(params, defaults)
        if self.skip_nonfinite or any(g["global_clipnorm"] for g in self.param_groups):
            self._check_rank_has_parameters("skip_nonfinite / global_clipnorm")

    def _check_rank_has_parameters(self, what: str) -> None:
        """Under ``norm_process_group`` every rank must take part in the collectives of
        each step; a rank that holds no parameter (ZeroRedundancyOptimizer with more ranks
        than parameter tensors) would return without them and the others would wait."""
        if self.norm_process_group is not None and not any(
                g["params"] for g in self.param_groups):
            raise ValueError(
                f"{type(self).__name__}: norm_process_group is set and {what} needs every "
                "rank of it in each step, but this rank holds no parameter "
                "(ZeroRedundancyOptimizer gave it an empty partition); use fewer ranks than "
                "parameter tensors."
            )

    # ----------------------------------------------------------------- validation

    @staticmethod
    def _validate_state_dtype(state_dtype: Any) -> None:
        if state_dtype is not None and not (
            isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point
        ):
            raise TypeError(
                "Argument `state_dtype` must be None (the parameter's dtype, as Keras) or a "
                f"floating torch.dtype such as torch.float32; received state_dtype={state_dtype!r}."
            )

    def _check_options(self, group: dict[str, Any]) -> None:
        """Check a group's hyperparameters with the constructor's rules (the shared options'
        of :mod:`kerasopt.config` and the algorithm's of its spec); errors name the argument
        and the value exactly as ``kerasopt.Adam``'s do."""
        learning_rate = group.get("learning_rate")
        if learning_rate is None:
            learning_rate = group["lr"]
            if isinstance(learning_rate, torch.Tensor):
                learning_rate = _float_rate("lr", learning_rate)
        values = {k: group[k] for k in self._core_keys() if k in group}
        config.checked_options(self.spec, {
            **values, "learning_rate": learning_rate,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }, owner=type(self).__name__)

    def _core_keys(self) -> tuple[str, ...]:
        return (
            "weight_decay",
            "clipnorm",
            "clipvalue",
            "global_clipnorm",
            "use_ema",
            "ema_momentum",
            "ema_overwrite_frequency",
            *self._algorithm_keys,
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyperparameters (Keras names; ``lr`` or ``learning_rate`` for the
        rate; torch's ``betas`` for ``beta_1`` and ``beta_2``) default to the optimizer's and
        are checked like the constructor's. Errors read like torch.optim's and name the
        parameter and its position."""
        name = type(self).__name__
        index = len(self.param_groups)
        if not isinstance(param_group, dict):
            raise TypeError(
                f"{name}: param_group must be a dict, but got {type(param_group).__name__}: "
                f"{validation.short_repr(param_group)}."
            )
        group = dict(param_group)
        allowed = {*_BASE_GROUP_KEYS, *self._algorithm_keys, *_BOOKKEEPING_KEYS}
        if "betas" in self.defaults:
            allowed.add("betas")
        unknown = sorted(str(k) for k in group if k not in allowed)
        if unknown:
            raise TypeError(
                f"{name}: param group got unknown key(s) {unknown}; the "
                f"hyperparameters are {sorted(allowed - set(_BOOKKEEPING_KEYS))}."
            )
        if "learning_rate" in group and "lr" in group and group["learning_rate"] is not None:
            raise ValueError(
                f"{name}: a param group sets both `lr`={group['lr']!r} and "
                f"`learning_rate`={group['learning_rate']!r}; set one of them."
            )
        if "learning_rate" in group:
            rate = group.pop("learning_rate")
            if _is_rate_function(rate):
                group["learning_rate"], group["lr"] = rate, 0.0
            elif rate is not None:
                group["learning_rate"], group["lr"] = None, rate
        elif "lr" in group:
            group["learning_rate"] = None
        if "betas" in group:
            betas = _betas_pair("betas", group["betas"])
            for key, value in zip(("beta_1", "beta_2"), betas):
                if key in group and not _same(group[key], value):
                    raise ValueError(
                        f"{name}: a param group sets both `betas`={betas!r} and "
                        f"`{key}`={group[key]!r}; set one of them."
                    )
            group["beta_1"], group["beta_2"] = betas
        if "params" not in group:
            raise ValueError(f"{name}: a param group needs a 'params' entry.")
        merged = {**self.defaults, **group}
        self._validate_state_dtype(merged["state_dtype"])
        config.option("sparse_updates").check("sparse_updates", merged["sparse_updates"])
        self._check_options(merged)
        if "betas" in self.defaults:
            group["betas"] = group["synced_betas"] = (merged["beta_1"], merged["beta_2"])
        params = group["params"]
        if isinstance(params, set):
            raise TypeError(
                f"{name}: optimizer parameters need to be organized in ordered collections, "
                "but the ordering of tensors in sets will change between runs. Please use a "
                f"list instead (param group {index} has a set of {len(params)} tensors)."
            )
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        named = [isinstance(p, tuple) for p in params]
        for i, p in enumerate(params):
            if isinstance(p, tuple) and (len(p) != 2 or not isinstance(p[0], str)):
                raise TypeError(
                    f"{name}: a named parameter must be a (name, tensor) pair; received "
                    f"{validation.short_repr(p)} at position {i} of param group {index}."
                )
            if named[i] != named[0]:
                raise ValueError(
                    f"{name}: all optimizer params should be with/without names. Some param "
                    f"names are missing (position 0 of param group {index} has "
                    f"{'a' if named[0] else 'no'} name, position {i} "
                    f"{'has' if named[i] else 'has not'})."
                )
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        names = [p[0] if isinstance(p, tuple) else None for p in params]
        seen: dict[int, int] = {}
        for i, p in enumerate(tensors):
            where = f"position {i} of param group {index}"
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"{name}: optimizer can only optimize Tensors, but one of the params is "
                    f"{torch.typename(p)}: {validation.short_repr(p)} ({where})."
                )
            if not (p.is_leaf or p.retains_grad):
                raise ValueError(
                    f"{name}: can't optimize a non-leaf Tensor: {_describe_param(p, names[i])} "
                    f"({where}) was computed from other tensors; optimize the leaf it came "
                    "from."
                )
            if not p.is_floating_point():
                raise TypeError(
                    f"{name}: {_describe_param(p, names[i])} has dtype "
                    f"{p.dtype}; Adam and Adamax update floating-point parameters only."
                )
            if id(p) in seen:
                raise ValueError(
                    f"{name}: optimizer contains a parameter group with duplicate "
                    f"parameters: {_describe_param(p, names[i])} at positions {seen[id(p)]} "
                    f"and {i} of param group {index}."
                )
            seen[id(p)] = i
        for other, existing in enumerate(self.param_groups):
            existing_ids = {id(q) for q in existing["params"]}
            for i, p in enumerate(tensors):
                if id(p) in existing_ids:
                    raise ValueError(
                        f"{name}: some parameters appear in more than one parameter group: "
                        f"{_describe_param(p, names[i])} is already in param group {other} "
                        f"(position {i} of param group {index})."
                    )
        group["params"] = params
        group["iterations"] = self.param_groups[0]["iterations"] if self.param_groups else 0
        super().add_param_group(group)

    # ----------------------------------------------------------------- copies

    # Not carried by deepcopy/pickle: torch.optim drops its hooks (and an LR scheduler's
    # per-instance ``step`` wrapper), and the caches below are rebuilt on the next step.
    _TRANSIENT = ("step", "_opt_called", "_plans", "_state_snapshot", "_checked_groups",
                  "_watch", "_tensor_rates", "_step_lock", "_resolved", "_rate_tensors",
                  "_columns")

    def __getstate__(self) -> dict[str, Any]:
        """Everything a copy needs to step exactly like this optimizer: torch's ``defaults``,
        ``state`` and ``param_groups`` and kerasopt's own attributes (torch.optim keeps only
        the first three); not the hooks, which torch.optim does not copy either."""
        return {key: value for key, value in self.__dict__.items()
                if key not in self._TRANSIENT and not key.startswith("_optimizer_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._excluded_ids = {id(p) for p in getattr(self, "_excluded_params", ())}
        self._checked_groups = None
        self._step_lock = threading.RLock()
        self._resolved, self._rate_tensors, self._columns = {}, {}, {}

    def __deepcopy__(self, memo: dict[int, Any]) -> KerasOptimizer:
        # A process group cannot be copied: the copy reduces over the same one.
        if self.norm_process_group is not None:
            memo.setdefault(id(self.norm_process_group), self.norm_process_group)
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return clone

    # ----------------------------------------------------------------- group checks

    def _watched_keys(self) -> tuple[str, ...]:
        """The group entries a step reads; a change to any of them is checked again."""
        keys = ("lr", "learning_rate", *self._core_keys(), "state_dtype", "sparse_updates")
        return (*keys, "betas", "synced_betas") if "betas" in self.defaults else keys

    def _check_groups(self) -> None:
        """Check the param groups before a step changes anything (torch lets anyone write
        into them between steps). What was checked is remembered: each group's entries (by
        identity) and its size (a key a torch scheduler adds counts), so an unchanged group
        costs a few comparisons, and a changed one has only its changed entries checked."""
        checked = self._checked_groups
        groups = self.param_groups
        if checked is not None and len(checked) == len(groups):
            getter = self._watch
            try:
                for group, (seen, size, values) in zip(groups, checked):
                    if (seen is not group or len(group) != size
                            or not all(map(is_, getter(group), values))):
                        break
                else:
                    for index, group in self._tensor_rates:  # may change in place (fill_)
                        self._checked(index, "lr", group["lr"], _float_rate)
                    return
            except KeyError:  # a hyperparameter was deleted: reported below
                pass
        self._validate_groups(checked)
        self._remember_groups()

    def _remember_groups(self) -> None:
        getter = self._watch = itemgetter(*self._watched_keys())
        groups = self.param_groups
        self._checked_groups = [(group, len(group), getter(group)) for group in groups]
        self._resolved, self._columns = {}, {}  # the values may have changed
        self._schedule_groups = any(group["learning_rate"] is not None for group in groups)
        self._tensor_rates = [(index, group) for index, group in enumerate(groups)
                              if isinstance(group["lr"], torch.Tensor)]

    def _checked(self, index: int, key: str, value: Any, rule: Callable[[str, Any], Any]) -> Any:
        """``rule(key, value)``, its error prefixed with the step and the group's index."""
        try:
            return rule(key, value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{type(self).__name__}.step(): param group {index}: {error}"
                              ) from None

    def _validate_groups(self, checked: list | None) -> None:
        """Every group checked with the constructor's rules (those of
        :func:`_group_rules`) before any is changed: the entries that changed since the
        last check, all of them for a group not seen before. Then torch's ``betas`` (written
        by a scheduler such as OneCycleLR) and Keras's ``beta_1``/``beta_2`` are brought into
        agreement: whichever was written since the last step wins."""
        name = type(self).__name__
        keys = self._watched_keys()
        rules = _group_rules(self.spec)
        previous = {id(seen): values for seen, _, values in checked or ()}
        writes = []
        for index, group in enumerate(self.param_groups):
            missing = [key for key in keys if key not in group]
            if missing:
                raise KeyError(
                    f"{name}.step(): param group {index} has no {missing[0]!r} entry (it "
                    "holds one of the optimizer's hyperparameters; put it back or remove "
                    "the group)."
                )
            old = dict(zip(keys, previous.get(id(group), ())))
            changed = [key for key in keys if key not in old or old[key] is not group[key]]
            rate_function = group["learning_rate"] is not None
            for key in changed:
                if key == "lr" and not rate_function:
                    self._checked(index, key, group[key], _float_rate)
                elif key in rules:
                    self._checked(index, key, group[key], rules[key])
            if _CLIP_KEYS & set(changed):
                self._checked(index, "clip", {k: group[k] for k in sorted(_CLIP_KEYS)},
                              lambda _, clips: validation.at_most_one_clip_option(**clips))
            if rate_function:
                self._check_rate_owner(name, index, group)
            if "betas" in self.defaults:
                betas = group["betas"]
                if _same(betas, group["synced_betas"]):  # unchanged: Keras's names rule
                    betas = (group["beta_1"], group["beta_2"])
                else:  # written since the last step (a scheduler): it wins
                    betas = self._checked(index, "betas", betas, _betas_pair)
                    for i, value in enumerate(betas):
                        self._checked(index, f"betas[{i}]", value, validation.beta)
                writes.append((group, betas))
        for group, betas in writes:
            group["beta_1"], group["beta_2"] = betas
            group["betas"] = group["synced_betas"] = betas

    @staticmethod
    def _check_rate_owner(name: str, index: int, group: dict[str, Any]) -> None:
        """A group whose rate is a kerasopt schedule or callable refuses a torch LR scheduler
        (and any other write into ``lr`` but the 0 torch.distributed.checkpoint writes)."""
        rate = group["learning_rate"]
        reported = group.get("reported_lr")
        expected = reported if reported is not None else 0.0
        lr = group["lr"]
        written = not isinstance(lr, torch.Tensor) and lr != expected and lr != 0
        if "initial_lr" in group or written:
            culprit = ("a torch LR scheduler is attached (it set 'initial_lr')"
                       if "initial_lr" in group else f"group['lr'] was set to {lr!r}")
            raise ValueError(
                f"{name}.step(): param group {index} takes its rate from learning_rate="
                f"{validation.short_repr(rate)}, and {culprit}; the two rates would mix. "
                "Use one or the other: a float learning_rate driven by the torch scheduler, "
                "or the kerasopt schedule alone."
            )

    # ----------------------------------------------------------------- counters, rate

    @property
    def raw_iterations(self) -> int:
        """``step()`` calls so far (Keras's ``_iterations``; micro-steps under accumulation)."""
        return int(self.param_groups[0]["iterations"]) if self.param_groups else 0

    @property
    def iterations(self) -> int:
        """Completed updates: ``raw_iterations // gradient_accumulation_steps``."""
        n = self.gradient_accumulation_steps
        return self.raw_iterations // n if n else self.raw_iterations

    def _learning_rate(self, group: dict[str, Any], raw: int) -> torch.Tensor:
        """The group's rate as a float32 tensor (Keras stores a float rate in float32)."""
        rate = group.get("learning_rate")
        if rate is None:
            value = group["lr"]
            if isinstance(value, torch.Tensor):
                return value.detach().to(device="cpu", dtype=torch.float32)
            value = float(value)
            tensor = self._rate_tensors.get(value)
            if tensor is None or not value:  # (0.0 and -0.0 are one key)
                tensor = torch.tensor(value, dtype=torch.float32)
                if len(self._rate_tensors) >= 16:
                    self._rate_tensors.clear()
                self._rate_tensors[value] = tensor
            return tensor
        reported = group.get("reported_lr")
        if reported is not None and group.get("lr") != reported:
            # Someone else wrote group["lr"] since the last step (torch.distributed.checkpoint
            # sets it to 0 for the zero-gradient step that creates the state): that value
            # applies to this step; the schedule resumes on the next.
            value = group["lr"]
        elif isinstance(rate, LearningRateSchedule):
            value = rate(np.int64(raw))
        else:
            value = rate()
        if isinstance(value, float):
            # A Python float (what a callable returns) stays one: Keras's torch backend then
            # computes the weight decay's factor in double precision (pipeline.decay_factor).
            group["lr"] = group["reported_lr"] = value
            return value
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
        else:
            tensor = torch.from_numpy(np.array(value))
        group["lr"] = group["reported_lr"] = float(tensor)
        return tensor if tensor.is_floating_point() else tensor.to(torch.float32)

    # ----------------------------------------------------------------- state

    def _state_dtype(self, group: dict[str, Any], p: torch.Tensor) -> torch.dtype:
        return group.get("state_dtype") or p.dtype

    def _slot_names(self, group: dict[str, Any]) -> list[str]:
        """The algorithm's state of a parameter of ``group`` (an optional slot where its
        flag is set: ``velocity_hat`` with amsgrad)."""
        return list(self.spec.slot_names(group))

    def _ensure_state(self, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        """Create the missing state of ``p`` (zeros; the EMA average starts at ``p``)."""
        state = self.state[p]
        dtype = self._state_dtype(group, p)
        names = self._slot_names(group)
        if self.gradient_accumulation_steps:
            names.append(ACCUMULATOR)
        for name in names:
            if name not in state:
                state[name] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if group["use_ema"] and AVERAGE not in state:
            state[AVERAGE] = p.detach().to(dtype=dtype, copy=True)
        return state

    # ----------------------------------------------------------------- weight decay

    def exclude_from_weight_decay(
        self,
        var_list: Iterable[torch.Tensor] | None = None,
        var_names: Iterable[str] | None = None,
    ) -> None:
        """Exclude parameters from weight decay: those in ``var_list``, and those whose name
        (from ``model.named_parameters()``) contains a match of any regular expression in
        ``var_names``. Replaces earlier exclusions."""
        var_list = list(var_list or [])
        for p in var_list:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    "Argument `var_list` must hold torch tensors; received "
                    f"{type(p).__name__}."
                )
        names = list(var_names or [])
        for pattern in names:
            if not isinstance(pattern, str):
                raise TypeError(
                    "Argument `var_names` must be a list of strings; received an element "
                    f"{pattern!r}."
                )
        pattern_obj = None
        if names:
            if not any("param_names" in g for g in self.param_groups):
                raise ValueError(
                    f"exclude_from_weight_decay(var_names={names!r}) needs parameter names: "
                    "create the optimizer with model.named_parameters() (or (name, tensor) "
                    "pairs), or pass the tensors as `var_list`."
                )
            try:
                pattern_obj = re.compile("|".join(sorted(set(names))))
            except re.error as error:
                raise ValueError(
                    f"Argument `var_names` must hold valid regular expressions; received "
                    f"var_names={names!r} ({error})."
                ) from error
        if pattern_obj is not None:
            self._warn_unmatched(names)
        self._excluded_params = var_list
        self._excluded_ids = {id(p) for p in var_list}
        self._excluded_pattern = pattern_obj

    def _warn_unmatched(self, patterns: list[str]) -> None:
        """Warn (once per call) about exclusion patterns that match no parameter name."""
        names = [n for g in self.param_groups for n in g.get("param_names") or ()]
        config.warn_unmatched_exclusions(f"{type(self).__name__}", patterns, names)

    def _use_weight_decay(self, p: torch.Tensor, name: str | None) -> bool:
        if id(p) in self._excluded_ids:
            return False
        pattern = self._excluded_pattern
        return pattern is None or name is None or pattern.search(name) is None

    # ----------------------------------------------------------------- loss scaling, EMA

    def scale_loss(self, loss: Any) -> Any:
        """``loss * loss_scale_factor`` when set, else ``loss`` (gradients are unscaled in
        ``step``)."""
        if self.loss_scale_factor is not None:
            return loss * self.loss_scale_factor
        return loss

    def _averaged_params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (p, self.state[p][AVERAGE])
            for group in self.param_groups
            for p in group["params"]
            if AVERAGE in self.state.get(p, {})
        ]

    @torch.no_grad()
    def finalize_variable_values(self) -> None:
        """With ``use_ema``: copy the moving averages into the parameters (Keras's
        ``finalize_variable_values``); otherwise nothing."""
        for p, average in self._averaged_params():
            _local(p).copy_(_local(average))

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights into the parameters for the ``with`` block (evaluation), and
        restore the training weights on exit, also when the block raises."""
        pairs = self._averaged_params()
        with torch.no_grad():
            saved = [_local(p).clone() for p, _ in pairs]
            for p, average in pairs:
                _local(p).copy_(_local(average))
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _), value in zip(pairs, saved):
                    _local(p).copy_(value)

    # ----------------------------------------------------------------- step

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch.optim's wrapper of ``step`` (installed by ``Optimizer.__init__``: the
        profiler range ``Optimizer.step#<class>.step`` around the global and per-optimizer
        step pre/post hooks and the step), taken whenever it has something to do: a hook is
        registered or a profiler is recording. Otherwise the step runs without the range, which
        only a profiler would see (its ``record_function`` alone costs ~5 us a step)."""
        hooked = torch.optim.Optimizer.profile_hook_step(func)
        from torch.optim import optimizer as torch_optimizer

        pre = getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
        post = getattr(torch_optimizer, "_global_optimizer_post_hooks", None)
        profiling = getattr(torch.autograd, "_profiler_enabled", None)
        if pre is None or post is None or profiling is None:  # another torch: always its own
            return hooked

        @functools.wraps(func)
        def step(self: KerasOptimizer, *args: Any, **kwargs: Any) -> Any:
            if (pre or post or self._optimizer_step_pre_hooks
                    or self._optimizer_step_post_hooks or profiling()):
                return hooked(self, *args, **kwargs)
            out = func(self, *args, **kwargs)
            self._optimizer_step_code()
            return out

        return step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Keras ``apply()``: unscale, accumulate, clip, decay, update, count, EMA.

        Runs with gradients off (as under ``torch.no_grad()``; the closure with them on).
        Steps are serialized by a per-optimizer lock: two threads stepping one optimizer
        take turns (the closure, if any, runs inside the turn)."""
        with self._step_lock:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            enabled = torch.is_grad_enabled()
            torch.set_grad_enabled(False)  # (as a function: cheaper than no_grad's decorator)
            try:
                return self._step(loss)
            finally:
                torch.set_grad_enabled(enabled)

    def _step(self, loss: Any) -> Any:
        self._check_groups()
        if not self._planned_step():
            entries = self._collect()
            if not entries:  # torch.optim's convention: nothing to do, nothing counted
                return loss
            self._general_step(entries)
        if self._schedule_groups:  # the step wrote their "lr": valid, remember it
            self._remember_groups()
        return loss

    def _general_step(self, entries: list[_Entry]) -> None:
        """The step of :meth:`step` when the cached plans do not apply: the checks, then the
        fused kernels where they apply, else the reference path."""
        raw = self.raw_iterations
        n = self.gradient_accumulation_steps
        # What can fail runs before anything changes: the gradients' shapes, then on an update
        # step the rates and the (callable) betas of every group.
        grads = [self._prepared_gradient(e) for e in entries]
        if self._state_initialising_step(entries, grads):
            self._ensure_all_state()
            return
        if self.skip_nonfinite and not self._all_finite(entries, grads):
            self._skip_nonfinite_step()
            return
        update = not n or (raw + 1) % n == 0
        checked = None
        if update:
            checked = self._checked_rates({id(e.group): e.group for e in entries}.values(), raw)
        self._ensure_all_state()
        if not self._fused_step(entries, grads, raw, checked):
            self._reference_step(entries, grads, raw, checked)
        for group in self.param_groups:
            group["iterations"] = raw + 1

    def _reference_step(self, entries: list[_Entry], grads: list[Any], raw: int,
                        checked: tuple[dict, dict] | None) -> None:
        """Keras's ``apply()`` through :func:`kerasopt.engine.apply`, over the local tensors
        of every parameter that has state (``checked`` is None on an accumulation
        micro-step), written back in place."""
        n = self.gradient_accumulation_steps
        held = [(index, group, p, name) for index, group in enumerate(self.param_groups)
                for p, name in zip(group["params"], group.get("param_names")
                                   or [None] * len(group["params"]))
                if self.state.get(p)]
        position = {id(p): k for k, (_, _, p, _) in enumerate(held)}
        states = [self.state[p] for _, _, p, _ in held]
        arrays = engine.Arrays(
            weights=[_local(p) for _, _, p, _ in held],
            slots=[tuple(_local(state[slot]) for slot in self._slot_names(group))
                   for (_, group, _, _), state in zip(held, states)],
            accumulators=[_local(state[ACCUMULATOR]) for state in states] if n else None,
            averages=[_local(state[AVERAGE]) if group["use_ema"] else None
                      for (_, group, _, _), state in zip(held, states)],
        )
        groups = []
        for group in self.param_groups:
            if checked is None:  # a micro-step uses no rate
                rate, hyper = 0.0, self._hyperparameters(group)
            else:
                rate, hyper = checked[0][id(group)], checked[1][id(group)]
            groups.append(engine.Group(
                learning_rate=rate, hyperparameters=hyper,
                **{key: group[key] for key in ("weight_decay", "clipnorm", "clipvalue",
                                               "global_clipnorm", "use_ema", "ema_momentum",
                                               "ema_overwrite_frequency")}))
        params = [p for _, _, p, _ in held]
        hooks = engine.Hooks(
            global_norm=lambda values, indices: self._norm(values, [params[i] for i in indices]),
            tensor_norm=lambda value, i: (self._norm([value], [params[i]])
                                          if _is_dtensor(params[i]) else None),
        )
        new = engine.apply(
            engine.spec_rule(self.spec), arrays,
            [(position[id(e.param)], g) for e, g in zip(entries, grads)],
            step=engine.Step(raw=raw, loss_scale_factor=self.loss_scale_factor,
                             accumulation_steps=n, hooks=hooks),
            groups=groups, group_of=[index for index, _, _, _ in held],
            decay_mask=[self._use_weight_decay(p, name) for _, _, p, name in held],
            ops=ops_for(arrays.weights[0]),
        ).arrays
        stored = [(arrays.weights, new.weights)]
        stored += [(old, fresh) for old, fresh in zip(arrays.slots, new.slots)]
        if n:
            stored.append((arrays.accumulators, new.accumulators))
        stored.append((arrays.averages, new.averages))
        for old, fresh in stored:
            for target, value in zip(old, fresh):
                if target is not None and value is not target:
                    target.copy_(value)

    def _ensure_all_state(self) -> None:
        """Create the missing state of every parameter that can have a gradient."""
        n = self.gradient_accumulation_steps
        for group in self.param_groups:
            complete = len(self._slot_names(group)) + bool(n) + bool(group["use_ema"])
            for p in group["params"]:
                state = self.state.get(p)
                if (not state and p.requires_grad) or (state and len(state) < complete):
                    self._ensure_state(group, p)

    # ----------------------------------------------------------------- decisions all ranks share

    def _agreement_groups(self) -> list[Any]:
        """The process groups over which a decision about this step's gradients must agree:
        those the global norm is summed over. ``norm_process_group`` (ZeroRedundancyOptimizer:
        each rank holds some of the parameters), and each mesh dimension over which a DTensor
        parameter is sharded (FSDP2: each rank holds a shard). Empty under DDP (every rank
        holds the same averaged gradients) and in one process."""
        groups = [self.norm_process_group] if self.norm_process_group is not None else []
        seen: set[tuple[int, int]] = set()
        for group in self.param_groups:
            for p in group["params"]:
                if not _is_dtensor(p):
                    continue
                for dim, placement in enumerate(p.placements):
                    if placement.is_shard() and (id(p.device_mesh), dim) not in seen:
                        seen.add((id(p.device_mesh), dim))
                        groups.append(p.device_mesh.get_group(dim))
        return groups

    def _agreed(self, local: bool, entries: list[_Entry]) -> bool:
        """``local`` where every rank of :meth:`_agreement_groups` finds it True, else False:
        one all-reduce of a flag per group, entered by every rank in the same order, so
        that every rank takes the same branch (and enters the same collectives after it)."""
        groups = self._agreement_groups()
        if not groups:
            return local
        import torch.distributed as dist

        device = _local(entries[0].param).device if entries else _first_device(
            self.param_groups)
        disagreeing = torch.tensor(0 if local else 1, dtype=torch.int32, device=device)
        for group in groups:
            dist.all_reduce(disagreeing, group=group)
        return int(disagreeing) == 0

    def _all_finite(self, entries: list[_Entry], grads: list[Any]) -> bool:
        """Whether no gradient holds a NaN or an inf, on any rank (the verdict of
        ``skip_nonfinite`` and of :class:`LossScaleOptimizer`, which every rank must share:
        a rank that skipped while another applied would leave the model half-stepped, and
        under ``global_clipnorm`` the other rank would wait in the norm's all-reduce)."""
        return self._agreed(pipeline.is_finite([values_of(g) for g in grads]), entries)

    def _state_initialising_step(self, entries: list[_Entry], grads: list[Any]) -> bool:
        """Whether this is the step torch.distributed.checkpoint takes to create the state
        of an optimizer that has none (``get_optimizer_state_dict`` /
        ``set_optimizer_state_dict``): no parameter has state yet, every gradient is zero
        (on every rank) and every float rate is 0 (torch >= 2.2 writes 0 into each group's
        "lr"). Such a step only creates the state: no iteration is counted and the EMA,
        the accumulators and the weights are left as they are. (A genuine first step with
        all-zero gradients at rate 0 would change only the counter.)"""
        if any(self.state.get(p) for group in self.param_groups for p in group["params"]):
            return False
        for group in self.param_groups:
            lr = group["lr"]
            if group["learning_rate"] is None and (
                    float(lr) if isinstance(lr, torch.Tensor) else lr) != 0:
                return False
        zero = all(not torch.any(values_of(g)) for g in grads)
        return self._agreed(zero, entries)

    def _planned_step(self) -> bool:
        """The steady-state step through cached :class:`GroupPlan` s (see
        :mod:`kerasopt._torch_plan`): every parameter of every group has a plain dense
        gradient on its device and complete state. Returns False, having changed nothing,
        otherwise."""
        algorithm = self.spec
        if (algorithm.kernel is None or self.norm_process_group is not None or self.skip_nonfinite
                or sum(1 for group in self.param_groups if group["global_clipnorm"]) > 1):
            return False
        count = len(self.param_groups)
        plans = getattr(self, "_plans", [])
        if len(plans) != count:
            plans = self._plans = (plans + [None] * count)[:count]
        n = self.gradient_accumulation_steps
        snapshot = getattr(self, "_state_snapshot", None)
        unchanged = snapshot is not None and snapshot.unchanged(self.state)
        self._state_snapshot = None
        for index, group in enumerate(self.param_groups):
            columns = self._state_columns(group, n)
            decay_key = (self._excluded_ids, self._excluded_pattern, group.get("param_names"))
            plan = plans[index]
            if plan is None or not plan.matches(self.state, group, columns, decay_key,
                                                unchanged):
                names = group.get("param_names") or [None] * len(group["params"])
                mask = [self._use_weight_decay(p, name) for p, name in zip(group["params"], names)]
                plan = plans[index] = GroupPlan.build(self.state, group, columns, decay_key, mask)
                if plan is None:
                    return False
            if not plan.read_gradients():
                return False
        if not unchanged:  # every plan matches this state now
            self._state_snapshot = StateSnapshot(self.state)
        else:
            self._state_snapshot = snapshot
        raw = self.raw_iterations
        micro = bool(n) and (raw + 1) % n != 0
        checked = self._checked_rates(self.param_groups, raw) if not micro else None
        for group, plan in zip(self.param_groups, plans):
            plan.kernels.fused_step_table(
                algorithm, plan.table, plan.sizes, plan.like, plan.params, chunks=plan.chunks,
                elements=plan.elements, amsgrad=bool(group.get("amsgrad")),
                averaging=bool(group["use_ema"]),
                **self._kernel_scalars(group, checked, raw, plan.decay_mask),
            )
        for group in self.param_groups:
            group["iterations"] = raw + 1
        return True

    def _state_columns(self, group: dict[str, Any], n: int | None) -> list[tuple[str, int]]:
        """:func:`state_columns` of ``group`` (kept with its checked values, see
        :meth:`_hyperparameters`)."""
        key = (id(group), n)
        cached = self._columns.get(key)
        if cached is not None and cached[0] is group:
            return cached[1]
        columns = state_columns(self._slot_names(group), ACCUMULATOR if n else None,
                                AVERAGE if group["use_ema"] else None)
        self._columns[key] = (group, columns)
        return columns

    def _fused_step(
        self,
        entries: list[_Entry],
        grads: list[Any],
        raw: int,
        checked: tuple[dict, dict] | None,
    ) -> bool:
        """The whole step in one pass over memory per group (:mod:`kerasopt.kernels`), when
        it applies: kernels for the parameters' device (numba on the CPU, Triton on CUDA),
        dense float32/float64 tensors (no DTensor) on that one device with state in their own
        dtype, a global norm that no other group shares, and (under EMA or accumulation,
        which cover every parameter) a gradient for every parameter. Returns False, having
        changed nothing, otherwise."""
        algorithm = self.spec
        if algorithm.kernel is None or self.norm_process_group is not None:
            return False
        device = entries[0].param.device
        module = kernels.for_device(device)
        if module is None:
            return False
        if any(isinstance(g, IndexedSlices) for g in grads):
            return False
        groups = {id(e.group): e.group for e in entries}
        if sum(1 for group in self.param_groups if group["global_clipnorm"]) > 1:
            return False
        n = self.gradient_accumulation_steps
        if n or any(group["use_ema"] for group in self.param_groups):
            with_state = sum(1 for group in self.param_groups for p in group["params"]
                             if p in self.state)
            if with_state != len(entries):
                return False
        if _DTensor is not None and any(isinstance(e.param, _DTensor) for e in entries):
            return False
        for group in groups.values():  # one kernel call per group: one dtype, state in it
            dtypes = {e.param.dtype for e in entries if e.group is group}
            state_dtype = group.get("state_dtype")
            if len(dtypes) != 1 or (state_dtype is not None and state_dtype not in dtypes):
                return False
        if len(groups) > 1:  # the kernel's own checks must not refuse a later group
            keys = {id(group): [key for key, _ in state_columns(
                self._slot_names(group), ACCUMULATOR if n else None,
                AVERAGE if group["use_ema"] else None)] for group in groups.values()}
            for entry, g in zip(entries, grads):
                p, state = entry.param, self.state[entry.param]
                if not (p.dtype in _FLOATS and p.device == device and p.is_contiguous()
                        and g.device == device and g.is_contiguous()
                        and all(_fits(state.get(key), p) for key in keys[id(entry.group)])):
                    return False
        for group in groups.values():
            members = [(e, g) for e, g in zip(entries, grads) if e.group is group]
            params = [e.param for e, _ in members]
            try:
                module.fused_step(
                    algorithm,
                    params,
                    [g for _, g in members],
                    [[self.state[p][name] for p in params] for name in self._slot_names(group)],
                    accumulators=[self.state[p][ACCUMULATOR] for p in params] if n else None,
                    ema_averages=(
                        [self.state[p][AVERAGE] for p in params] if group["use_ema"] else None
                    ),
                    **self._kernel_scalars(group, checked, raw, [
                        self._use_weight_decay(e.param, e.name) for e, _ in members]),
                )
            except kernels.NotFusable:
                if len(groups) > 1:  # the checks above rule this out; never half a step
                    raise RuntimeError("fused step refused a group after others ran") from None
                return False
        return True

    def _checked_rates(self, groups: Iterable[dict[str, Any]], raw: int
                       ) -> tuple[dict[int, torch.Tensor], dict[int, dict[str, Any]]]:
        """Every group's learning rate for this step, and the rule's hyperparameters of
        ``groups`` (callable betas resolved once), so that a callable returning a bad value
        raises before the step changes anything; both keyed by ``id(group)``."""
        if self._schedule_groups or self._tensor_rates:
            with validation.evaluating_learning_rate(f"{type(self).__name__}.step()"):
                rates = {id(group): self._learning_rate(group, raw)
                         for group in self.param_groups}
                for rate in rates.values():
                    float(rate)
        else:  # float rates, checked by _check_groups: their float32 tensors
            rates = {id(group): self._learning_rate(group, raw) for group in self.param_groups}
        hypers = {id(group): self._hyperparameters(group) for group in groups}
        return rates, hypers

    def _kernel_scalars(self, group: dict[str, Any], checked: tuple[dict, dict] | None,
                        raw: int, decay_mask: Any) -> dict[str, Any]:
        """The scalar keywords of a fused step (:func:`kerasopt.kernels.fused_step`) for
        ``group`` (:func:`kerasopt.engine.kernel_arguments`); ``checked`` is
        :meth:`_checked_rates`'s result on an update step, None on an accumulation
        micro-step (which uses no rate)."""
        if checked is None:
            rate, hyper = 0.0, self._hyperparameters(group)
        else:
            rate, hyper = checked[0][id(group)], checked[1][id(group)]
        cached = self._resolved.get(id(group))
        if (cached is not None and cached[0] is group and cached[1] is hyper
                and len(cached) > 2 and cached[2] is rate):
            options = cached[3]  # the same rate and values as the last step's
        else:
            options = engine.Group(
                learning_rate=rate, hyperparameters=hyper,
                **{key: group[key] for key in ("weight_decay", "clipnorm", "clipvalue",
                                               "global_clipnorm", "use_ema", "ema_momentum",
                                               "ema_overwrite_frequency")})
            if cached is not None and cached[0] is group and cached[1] is hyper:
                self._resolved[id(group)] = (group, hyper, rate, options)
        step = engine.Step(raw=raw, loss_scale_factor=self.loss_scale_factor,
                           accumulation_steps=self.gradient_accumulation_steps)
        return engine.kernel_arguments(options, step, decay_mask=decay_mask,
                                       averaging=bool(group["use_ema"]))

    @property
    def skipped_steps(self) -> int:
        """``step()`` calls skipped by ``skip_nonfinite`` (kept in the param groups, so it
        travels with ``state_dict``)."""
        return int(self.param_groups[0].get("skipped_steps", 0)) if self.param_groups else 0

    def _skip_nonfinite_step(self) -> None:
        count = self.skipped_steps + 1
        for group in self.param_groups:
            group["skipped_steps"] = count
        if count == 1:
            warnings.warn(
                f"{type(self).__name__}: a gradient holds NaN or inf; skip_nonfinite=True skips "
                "such steps (parameters, state and iterations unchanged). Further skips are "
                "counted in `skipped_steps` without warning.",
                RuntimeWarning,
                stacklevel=5,
            )

    def _collect(self) -> list[_Entry]:
        entries = []
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if p.grad is None or not p.requires_grad:
                    continue
                entries.append(_Entry(group, p, names[i] if names else None))
        return entries

    def _compute_dtype(self, entry: _Entry) -> torch.dtype:
        return self._state_dtype(entry.group, entry.param)

    def _prepared_gradient(self, entry: _Entry) -> Any:
        """The gradient as a local tensor of the compute dtype (``IndexedSlices`` if sparse)."""
        p, grad = entry.param, entry.param.grad
        dtype = self._compute_dtype(entry)
        if (
            type(grad) is torch.Tensor
            and grad.layout is torch.strided
            and grad.dtype is dtype
            and grad.shape == p.shape
            and grad.device == p.device
        ):
            return grad  # a dense gradient of the compute dtype already (the common case)
        if grad.is_complex():
            raise TypeError(
                f"{type(self).__name__}: the gradient of {_describe_param(p, entry.name)} has "
                f"dtype {grad.dtype}, which cannot be cast to the parameter's dtype {p.dtype}; "
                "pass a real-valued gradient."
            )
        if grad.is_sparse:
            if tuple(grad.shape) != tuple(p.shape):
                raise ValueError(
                    f"{type(self).__name__}: the sparse gradient of "
                    f"{_describe_param(p, entry.name)} has shape {tuple(grad.shape)}."
                )
            grad = grad.coalesce()  # duplicate rows summed
            if entry.group["sparse_updates"] == "dense":
                return grad.to_dense().to(dtype)
            if grad.sparse_dim() == 1:
                return IndexedSlices(grad.values().to(dtype), grad.indices()[0], tuple(grad.shape))
            return grad.to_dense().to(dtype)
        grad = _local(grad)
        if grad.shape != _local(p).shape:
            raise ValueError(
                f"{type(self).__name__}: the gradient of {_describe_param(p, entry.name)} has "
                f"shape {tuple(grad.shape)}."
            )
        return grad.to(dtype)

    def _norm(self, values: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm over ``values`` (local tensors), summed across ranks where needed.

        DTensor shards are summed over their mesh (replicated placements counted once);
        plain tensors over ``norm_process_group`` when it is set (ZeRO partitions).
        """
        import torch.distributed as dist

        plain = [v for v, p in zip(values, params) if not _is_dtensor(p)]
        sharded = [(v, p) for v, p in zip(values, params) if _is_dtensor(p)]
        if not sharded and self.norm_process_group is None:
            return pipeline.global_norm(values) if values else torch.zeros(())
        device = (values[0].device if values else _first_device(self.param_groups))
        dtype = values[0].dtype if values else torch.float32
        total = torch.zeros((), dtype=dtype, device=device)
        if plain:
            total = total + sum(torch.sum(v * v) for v in plain)
        if self.norm_process_group is not None:
            dist.all_reduce(total, group=self.norm_process_group)
        # Group DTensor contributions by (mesh, sharded mesh dims).
        buckets: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
        for v, p in sharded:
            dims = tuple(i for i, pl in enumerate(p.placements) if pl.is_shard())
            key = (id(p.device_mesh), dims)
            buckets.setdefault(key, [p.device_mesh, dims, torch.zeros_like(total)])
            buckets[key][2] = buckets[key][2] + torch.sum(v * v).to(total.dtype)
        for mesh, dims, partial in buckets.values():
            for dim in dims:
                dist.all_reduce(partial, group=mesh.get_group(dim))
            total = total + partial
        return torch.sqrt(total)

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """The rule's hyperparameters for this step (callables called and checked). Those
        of a group of plain numbers are kept until the groups are checked again (a value
        written into a group between steps is checked, and they are forgotten, by
        :meth:`_check_groups`), with the :class:`kerasopt.engine.Group` of the last step
        (:meth:`_kernel_scalars`); the result is shared, not to be changed."""
        cached = self._resolved.get(id(group))
        if cached is not None and cached[0] is group:
            return cached[1]
        hyper = self.spec.resolved(group)
        if all(type(group[name]) in _PLAIN_NUMBERS for name in hyper):
            self._resolved[id(group)] = (group, hyper)
        return hyper

    # ----------------------------------------------------------------- state_dict

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict``; each group also names the optimizer class, so that
        ``load_state_dict`` can refuse a state from another optimizer."""
        with self._step_lock:  # a consistent snapshot, never half a step
            state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            group[MARKER] = type(self).__name__
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``: everything is checked first (optimizer class, group and
        parameter counts, state names, shapes); tensors are copied bit for bit onto each
        parameter's device, in the state dtype of its group.

        As in torch.optim, the load_state_dict pre-hooks run first, on a shallow copy of
        ``state_dict`` (a hook may change it in place or return another dict to load), and
        the post-hooks run after the load. Saved ``param_names`` replace the group's names;
        a state_dict without names keeps them."""
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        with self._step_lock:  # never between the changes of a step
            self._load_state_dict(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"{name}.load_state_dict expects a dict with 'state' and 'param_groups' (from "
                f"{name}.state_dict()); received {type(state_dict).__name__}"
                + (f" with keys {sorted(map(str, state_dict))}" if isinstance(state_dict, dict)
                   else "")
                + "."
            )
        saved_groups = state_dict["param_groups"]
        for group in saved_groups:
            marker = group.get(MARKER)
            if marker != name:
                source = (
                    f"kerasopt.torch.{marker}" if marker
                    else "another optimizer (it has no 'kerasopt' marker; torch.optim?)"
                )
                raise ValueError(
                    f"{name}.load_state_dict: this state_dict comes from {source}, not from "
                    f"kerasopt.torch.{name}; its state cannot be reused."
                )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: the state_dict has {len(saved_groups)} param groups; "
                f"this optimizer has {len(self.param_groups)}."
            )
        id_to_param: dict[Any, tuple[torch.Tensor, dict[str, Any], dict[str, Any]]] = {}
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: param group {index} has {len(saved['params'])} "
                    f"parameters in the state_dict and {len(group['params'])} here."
                )
            for saved_id, p in zip(saved["params"], group["params"]):
                id_to_param[saved_id] = (p, group, saved)
            names = saved.get("param_names")
            if names is not None and (
                not isinstance(names, list) or len(names) != len(group["params"])
                or not all(isinstance(n, str) for n in names)
            ):
                count = len(names) if isinstance(names, list) else None
                raise ValueError(
                    f"{name}.load_state_dict: param group {index} of the state_dict has "
                    f"param_names={validation.short_repr(names)}"
                    + (f" ({count} names)" if count is not None else "")
                    + f"; it needs one string per parameter ({len(group['params'])} "
                    "parameters)."
                )
        iterations = {int(g.get("iterations", 0)) for g in saved_groups}
        if len(iterations) > 1:
            raise ValueError(
                f"{name}.load_state_dict: the param groups disagree on 'iterations' "
                f"({sorted(iterations)}); the state_dict is corrupted."
            )
        new_state: dict[torch.Tensor, dict[str, Any]] = {}
        for saved_id, entries in state_dict["state"].items():
            if saved_id not in id_to_param:
                raise ValueError(
                    f"{name}.load_state_dict: the state refers to parameter {saved_id!r}, which "
                    "no param group of the state_dict lists."
                )
            p, group, saved = id_to_param[saved_id]
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            dtype = merged.get("state_dtype") or p.dtype
            slot_state = {}
            for key, value in entries.items():
                if not isinstance(value, torch.Tensor):
                    raise ValueError(
                        f"{name}.load_state_dict: state '{key}' of {_describe_param(p, None)} "
                        f"is a {type(value).__name__}, not a tensor."
                    )
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{name}.load_state_dict: state '{key}' has shape {tuple(value.shape)} "
                        f"but its parameter has shape {tuple(p.shape)}."
                    )
                slot_state[key] = (value, dtype)
            new_state[p] = slot_state
        pairs = []  # torch's betas as tuples (a checkpoint written as JSON has lists)
        for index, saved in enumerate(saved_groups):
            try:
                pairs.append({key: _betas_pair(key, saved[key])
                              for key in ("betas", "synced_betas") if saved.get(key) is not None})
            except ValueError as error:
                raise ValueError(f"{name}.load_state_dict: param group {index}: {error}") from None
        # Everything checked: now change the optimizer.
        loaded: dict[torch.Tensor, dict[str, Any]] = {}
        for p, slots in new_state.items():
            loaded[p] = {key: _copy_like(value, p, dtype) for key, (value, dtype) in slots.items()}
        self.state.clear()
        for p, slots in loaded.items():
            self.state[p] = slots
        for group, saved, pair in zip(self.param_groups, saved_groups, pairs):
            for key, value in saved.items():
                if key == "param_names":
                    group[key] = list(value)
                elif key not in ("params", MARKER):
                    group[key] = pair.get(key, value)


def _fits(tensor: Any, param: torch.Tensor) -> bool:
    """Whether a state tensor is one the fused kernels take for ``param``: a dense,
    contiguous tensor of its dtype, device and shape."""
    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided
            and tensor.dtype == param.dtype and tensor.device == param.device
            and tensor.is_contiguous() and tensor.shape == param.shape)


class _Entry:
    """A parameter with a gradient this step, with its group and name."""

    __slots__ = ("group", "param", "name")

    def __init__(self, group: dict[str, Any], param: torch.Tensor, name: str | None) -> None:
        self.group, self.param, self.name = group, param, name


def _first_device(groups: list[dict[str, Any]]) -> torch.device:
    for group in groups:
        for p in group["params"]:
            return _local(p).device
    return torch.device("cpu")


def _copy_like(value: torch.Tensor, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A private copy of a saved state tensor on ``p``'s device (a DTensor like ``p``)."""
    if _is_dtensor(p):
        if _is_dtensor(value):
            return value.to(dtype=dtype).clone()
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            value.to(device=_local(p).device, dtype=dtype), p.device_mesh, p.placements
        )
    if _is_dtensor(value):
        value = value.full_tensor()
    return value.detach().to(device=p.device, dtype=dtype, copy=True)


# --------------------------------------------------------------------------- the classes

TORCH_ONLY = {"state_dtype": None, "norm_process_group": None}
"""The constructors' arguments beyond Keras's and kerasopt's own, with their defaults."""

_TORCH_DOC = {
    "params": "Tensors, ``(name, tensor)`` pairs (``model.named_parameters()``) or param-group "
              "dicts.",
    "learning_rate": "A float or a 1-element tensor (torch schedulers change it through "
                     "``group['lr']``), a ``kerasopt.schedules`` schedule (called with the raw "
                     "step count), or a zero-argument callable.",
    "loss_scale_factor": "Gradients are divided by it; for the whole optimizer.",
    "gradient_accumulation_steps": "Update every this many ``step()`` calls (which count as "
                                   "micro-steps), with the mean gradient; for the whole "
                                   "optimizer.",
    "state_dtype": "None (state in the parameter's dtype, as Keras) or a float dtype to keep "
                   "the state, and compute the step, in (``torch.float32`` for bf16/fp16 "
                   "parameters).",
    "norm_process_group": "A process group over which ``global_clipnorm`` sums the squared "
                          "norms of plain (non-DTensor) gradients, and over which the "
                          "finiteness verdict is agreed, for ZeroRedundancyOptimizer.",
}
_OPTIMIZER_WIDE = ("loss_scale_factor", "gradient_accumulation_steps", "skip_nonfinite")


def _signature(spec: specs.AlgorithmSpec) -> Any:
    import inspect

    defaults = {**config.defaults(spec), **TORCH_ONLY}
    order = [n for n in config.argument_order(spec) if n not in dict(config.EXTENSIONS_BY_NAME)]
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("params", keyword)]
    parameters += [inspect.Parameter(n, keyword, default=defaults[n]) for n in order]
    parameters += [inspect.Parameter(n, keyword, default=defaults[n])
                   for n in (*TORCH_ONLY, *config.EXTENSIONS_BY_NAME)]
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def optimizer_class(spec: specs.AlgorithmSpec) -> type[KerasOptimizer]:
    """The ``torch.optim.Optimizer`` of ``spec``: ``keras.optimizers.<keras_name>``'s
    arguments (Keras's order and defaults) after ``params``, then ``state_dtype``,
    ``norm_process_group`` and kerasopt's ``skip_nonfinite`` and ``sparse_updates``."""
    import inspect

    signature = _signature(spec)

    def __init__(self: KerasOptimizer, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        extra = values.pop("kwargs")
        params = values.pop("params")
        wide = {k: values.pop(k) for k in _OPTIMIZER_WIDE}
        KerasOptimizer.__init__(self, params, values, norm_process_group=values.pop(
            "norm_process_group"), **wide, **extra)

    __init__.__signature__ = signature.replace(parameters=[
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *list(signature.parameters.values())[:-1]])
    docs = {**{h.name: h.doc for h in spec.hyperparameters},
            **{o.name: o.doc for o in (*config.OPTIONS, *config.EXTENSIONS)}, **_TORCH_DOC}
    args = "\n".join(f"    {name}: {docs[name]}" for name in signature.parameters
                     if name in docs)
    doc = (f"Keras 3's {spec.keras_name} as a ``torch.optim.Optimizer`` (see the module "
           f"docstring).\n\n{inspect.cleandoc(spec.doc)}\n\nArgs:\n{args}\n")
    return type(spec.keras_name, (KerasOptimizer,), {
        "spec": spec, "__init__": __init__, "__doc__": doc, "__module__": __name__,
        "__qualname__": spec.keras_name,
    })


CLASSES: dict[str, type[KerasOptimizer]] = {
    spec.keras_name: optimizer_class(spec) for spec in algorithms.registered()
}
"""Every registered algorithm's torch optimizer by Keras class name."""
globals().update(CLASSES)
__all__ += list(CLASSES)


class LossScaleOptimizer:
    """Keras 3's dynamic loss scaling around a :class:`KerasOptimizer`::

        opt = kerasopt.torch.LossScaleOptimizer(kerasopt.torch.Adam(model.parameters()))
        opt.zero_grad()
        opt.scale_loss(loss_fn(model(x), y)).backward()
        opt.step()          # unscales; skips the step and halves the scale on NaN/inf

    ``step()`` divides the gradients by the current scale inside the inner step (``.grad``
    is not modified) when they are all finite, and doubles the scale after
    ``dynamic_growth_steps`` finite steps in a row. When any gradient holds NaN or inf the
    inner optimizer is not called (parameters, state and iterations unchanged), the counter
    resets and the scale halves. The scale is a float32 value, as in Keras.

    Everything else (``param_groups``, ``state``, ``zero_grad``, ``iterations``...) is the
    inner optimizer's; ``state_dict()`` is the inner one plus a ``"loss_scale"`` entry.
    torch LR schedulers take the inner optimizer (they share its param groups).
    """

    def __init__(
        self,
        inner_optimizer: KerasOptimizer,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
    ) -> None:
        if not isinstance(inner_optimizer, KerasOptimizer):
            raise TypeError(
                "Argument `inner_optimizer` must be a kerasopt.torch optimizer; received "
                f"inner_optimizer={inner_optimizer!r}."
            )
        if inner_optimizer.loss_scale_factor is not None:
            raise ValueError(
                "LossScaleOptimizer: the inner optimizer has loss_scale_factor="
                f"{inner_optimizer.loss_scale_factor!r}; use one kind of loss scaling."
            )
        inner_optimizer._check_rank_has_parameters("LossScaleOptimizer")
        self.inner_optimizer = inner_optimizer
        self.initial_scale = validation.real(
            "initial_scale", initial_scale, minimum=0.0, min_inclusive=False,
            allowed="a finite float > 0",
        )
        self.dynamic_growth_steps = validation.integer(
            "dynamic_growth_steps", dynamic_growth_steps, minimum=1, allowed="an integer >= 1"
        )
        self.dynamic_scale = float(np.float32(initial_scale))
        self.step_counter = 0

    def __getattr__(self, name: str) -> Any:
        # Not during unpickling (before __dict__ is filled), and never the protocols of
        # copy and pickle (__deepcopy__, __reduce_ex__...): those are this object's own.
        if name == "inner_optimizer" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner_optimizer, name)

    def scale_loss(self, loss: Any) -> Any:
        """``loss * current scale``."""
        return loss * self.dynamic_scale

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Unscale and step, or skip and halve the scale; serialized with the inner
        optimizer's steps by its lock."""
        with self.inner_optimizer._step_lock:
            return self._step(closure)

    def _step(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        inner = self.inner_optimizer
        entries = inner._collect()
        if not entries:  # no gradient: a no-op (the inner step runs its hooks)
            inner.step()
            return loss
        grads = [inner._prepared_gradient(e) for e in entries]  # checks shapes first
        finite = inner._all_finite(entries, grads)  # the same verdict on every rank
        if finite:
            inner.loss_scale_factor = self.dynamic_scale
            try:
                inner.step()
            finally:
                inner.loss_scale_factor = None
        scale, self.step_counter = pipeline.next_loss_scale(
            finite, self.dynamic_scale, self.step_counter, self.dynamic_growth_steps)
        self.dynamic_scale = float(scale)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state_dict = self.inner_optimizer.state_dict()
        state_dict["loss_scale"] = {
            "dynamic_scale": self.dynamic_scale,
            "step_counter": self.step_counter,
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()`` of a LossScaleOptimizer; checks everything first."""
        scale = state_dict.get("loss_scale") if isinstance(state_dict, dict) else None
        if not isinstance(scale, dict) or set(scale) != {"dynamic_scale", "step_counter"}:
            raise ValueError(
                "LossScaleOptimizer.load_state_dict expects a state_dict from "
                "LossScaleOptimizer.state_dict() (with a 'loss_scale' entry holding "
                f"'dynamic_scale' and 'step_counter'); received {scale!r}."
            )
        dynamic_scale = validation.real(
            "dynamic_scale", scale["dynamic_scale"], minimum=0.0, allowed="a float >= 0"
        )
        counter = validation.integer(
            "step_counter", scale["step_counter"], minimum=0, allowed="an integer >= 0"
        )
        inner = {k: v for k, v in state_dict.items() if k != "loss_scale"}
        self.inner_optimizer.load_state_dict(inner)
        self.dynamic_scale = float(np.float32(dynamic_scale))
        self.step_counter = counter

    def __repr__(self) -> str:
        return f"<kerasopt.torch.LossScaleOptimizer around {self.inner_optimizer!r}>"
