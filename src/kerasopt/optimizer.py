"""``kerasopt.Optimizer``: the Keras 3 optimizer API over ``kerasopt.Variable``.

One ``apply(grads, vars)`` runs Keras 3's ``apply()`` in the order :mod:`kerasopt.engine`
writes once (unscale, accumulate, clip, decay, the algorithm's ``update_step``, EMA), then
the variable constraints and ``iterations_raw += 1``, as Keras does. Every argument and
shape is checked before anything changes, so a bad call changes nothing. The fused kernels
(:mod:`kerasopt.kernels`) run the same step in one pass over memory when they can; the
engine over the variables' arrays is the reference they are tested against.

Subclasses implement ``build`` (creating state with ``add_optimizer_variables``) and
``update_step(gradient, variable, learning_rate)``, as in Keras; the registered algorithms
(:mod:`kerasopt.optimizers`: ``kerasopt.Adam``, ``Adamax``, ``AdamW``) are built from their
specs.
"""

from __future__ import annotations

import collections
import re
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, is_, is_not
from typing import Any

import numpy as np

from kerasopt import config, engine, kernels, pipeline, serialization, validation
from kerasopt.backend import is_jax, is_torch, namespace, ops_for, to_numpy
from kerasopt.schedules import LearningRateSchedule
from kerasopt.sparse import IndexedSlices, canonical, validate_indexed_slices, values_of
from kerasopt.specs import AlgorithmSpec
from kerasopt.variable import Variable

_NAME_COUNTS: collections.Counter[str] = collections.Counter()
_NAME_LOCK = threading.Lock()


def unique_name(prefix: str) -> str:
    """Keras's automatic names: ``prefix``, then ``prefix_1``, ``prefix_2``... per process."""
    with _NAME_LOCK:
        count = _NAME_COUNTS[prefix]
        _NAME_COUNTS[prefix] += 1
    return prefix if count == 0 else f"{prefix}_{count}"


def reset_names() -> None:
    """Forget the automatic names given so far (as Keras's ``clear_session`` does): the
    next unnamed Adam is ``adam`` again."""
    with _NAME_LOCK:
        _NAME_COUNTS.clear()


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Optimizer:
    """Base class of kerasopt's optimizers, with Keras 3's arguments and behaviour.

    Args:
        learning_rate: A float (stored in float32, as Keras does; settable later), a
            ``kerasopt.schedules.LearningRateSchedule`` (called with the raw iteration
            count), or a zero-argument callable returning the rate.
        weight_decay: Decoupled weight decay: each step first does ``w -= w * wd * lr``.
        clipnorm: Clip each gradient to this L2 norm.
        clipvalue: Clip each gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: Clip all gradients together to this global L2 norm.
        use_ema: Keep an exponential moving average of the weights.
        ema_momentum: ``average = momentum * average + (1 - momentum) * w``.
        ema_overwrite_frequency: Every this many (accumulated) iterations, copy the average
            into the weights.
        loss_scale_factor: Gradients are divided by this factor (see ``scale_loss``).
        gradient_accumulation_steps: Update only every this many calls, with the mean of
            the accumulated gradients.
        name: The optimizer's name, used in its state variables' names; by default the
            class name in snake case, made unique as Keras does (``adam``, ``adam_1``...).
        skip_nonfinite: kerasopt only (default False: Keras semantics, a NaN/inf gradient
            propagates into the weights). When True, a call whose gradients hold a NaN or an
            infinity changes nothing (weights, state, counters) except ``skipped_steps``,
            which counts such calls; the first skip warns.
        sparse_updates: kerasopt only. ``"lazy"`` (default): an ``IndexedSlices`` gradient
            moves only the rows it touches and their state, as tf.keras's Adamax did;
            ``"dense"``: it is densified first, which is Keras 3's result.

    Concurrent ``apply`` calls from several threads on one optimizer are serialized (a
    per-optimizer lock): each call is applied whole, none is lost.
    """

    spec: AlgorithmSpec | None = None
    """The registered algorithm this class runs (None for a Keras-style subclass that
    implements ``update_step`` itself)."""

    def __init__(
        self,
        learning_rate: Any,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        skip_nonfinite: bool = False,
        sparse_updates: str = "lazy",
        **kwargs: Any,
    ) -> None:
        options = config.checked_options(None, {
            "learning_rate": learning_rate, "weight_decay": weight_decay,
            "clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm,
            "use_ema": use_ema, "ema_momentum": ema_momentum,
            "ema_overwrite_frequency": ema_overwrite_frequency,
            "loss_scale_factor": loss_scale_factor,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "skip_nonfinite": skip_nonfinite, "sparse_updates": sparse_updates, **kwargs,
        }, owner=type(self).__name__)
        if name is None:
            name = unique_name(self.spec.default_name if self.spec is not None
                               else snake_case(type(self).__name__))
        if not isinstance(name, str):
            raise TypeError(f"Argument `name` must be a string; received name={name!r}.")
        self.name = name
        for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                    "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                    "gradient_accumulation_steps", "skip_nonfinite", "sparse_updates"):
            setattr(self, key, options[key])
        self.skipped_steps = 0
        self.built = False
        self._lock = threading.RLock()
        self._variables: list[Variable] = []
        self._trainable_variables: list[Variable] = []
        self._variable_indices: dict[int, int] = {}
        self._excluded_ids: set[int] = set()
        self._excluded_names: list[str] = []
        self._excluded_pattern: re.Pattern[str] | None = None
        self._iterations = self._track(Variable(np.array(0, np.int64), name=f"{name}/iteration"))
        self._learning_rate = self._learning_rate_storage(options["learning_rate"])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- learning rate

    def _learning_rate_storage(self, learning_rate: Any) -> Any:
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        return self._track(
            Variable(np.array(learning_rate, np.float32), name=f"{self.name}/learning_rate")
        )

    @property
    def learning_rate(self) -> Any:
        """The current learning rate (a schedule is evaluated at the raw iteration count)."""
        return self._current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        config.check_learning_rate("learning_rate", learning_rate)
        schedule = isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate)
        if isinstance(self._learning_rate, Variable):
            if schedule:
                self._variables.remove(self._learning_rate)
                self._learning_rate = learning_rate
            else:
                self._learning_rate.assign(np.float32(learning_rate))
            return
        if schedule:
            self._learning_rate = learning_rate
            return
        raise TypeError(
            f"This optimizer was created with a {type(self._learning_rate).__name__} as its "
            "`learning_rate`, so it cannot be set to a number; received "
            f"learning_rate={learning_rate!r}. Create the optimizer with a float learning "
            "rate to make it settable."
        )

    def _current_learning_rate(self) -> Any:
        lr = self._learning_rate
        if isinstance(lr, Variable):
            return lr.value[()]
        if isinstance(lr, LearningRateSchedule):
            return lr(self._iterations.value[()])
        return lr()

    # ----------------------------------------------------------------- iterations

    @property
    def iterations(self) -> Variable:
        """Completed updates (micro-steps divided by ``gradient_accumulation_steps``)."""
        if self.gradient_accumulation_steps:
            return Variable(
                np.array(self._iteration_count(), np.int64), name=f"{self.name}/iterations"
            )
        return self._iterations

    def _iteration_count(self) -> int:
        raw = int(self._iterations.value)
        return raw // self.gradient_accumulation_steps if self.gradient_accumulation_steps else raw

    # ----------------------------------------------------------------- state

    def _track(self, variable: Variable) -> Variable:
        self._variables.append(variable)
        return variable

    @property
    def variables(self) -> list[Variable]:
        """The optimizer's state, in Keras's order."""
        return self._variables[:]

    def add_variable(
        self,
        shape: Sequence[int],
        initializer: str | float = "zeros",
        dtype: Any = "float32",
        name: str | None = None,
    ) -> Variable:
        """A new state variable (NumPy storage) filled by ``initializer``."""
        fill = {"zeros": 0.0, "ones": 1.0}.get(initializer, initializer)
        value = np.full(tuple(shape), fill, dtype=dtype)
        return self._track(Variable(value, name=f"{self.name}/{name or 'variable'}"))

    def add_variable_from_reference(
        self, reference_variable: Variable, name: str | None = None, initializer: str = "zeros"
    ) -> Variable:
        """A zero state variable shaped and typed like ``reference_variable``, on its backend."""
        value = reference_variable.value
        xp = namespace(value)
        state = xp.zeros_like(value) if initializer == "zeros" else xp.ones_like(value)
        slot_name = f"{reference_variable.name.replace('/', '_')}_{name or 'var'}"
        return self._track(Variable(state, name=f"{self.name}/{slot_name}"))

    def add_optimizer_variables(
        self, trainable_variables: Sequence[Variable], name: str | Sequence[str]
    ) -> Any:
        """State variables for every model variable, interleaved per variable as Keras does.

        With one name returns one list; with several returns a tuple of lists.
        """
        names = [name] if isinstance(name, str) else list(name)
        lists: tuple[list[Variable], ...] = tuple([] for _ in names)
        for variable in trainable_variables:
            for slots, slot_name in zip(lists, names):
                slots.append(self.add_variable_from_reference(variable, slot_name))
        return lists[0] if isinstance(name, str) else lists

    def build(self, variables: Sequence[Variable]) -> None:
        """Create the state for ``variables`` (EMA averages and accumulators here; the
        algorithm's own state in subclasses)."""
        variables = list(variables)
        for variable in variables:
            _check_trainable(variable)
        if self.use_ema:
            self._ema_averages = self.add_optimizer_variables(variables, "average")
        if self.gradient_accumulation_steps:
            self._accumulators = self.add_optimizer_variables(variables, "gradient_accumulator")
        self._variable_indices = {id(v): i for i, v in enumerate(variables)}
        self._trainable_variables = variables
        self.built = True
        if self.weight_decay is not None:
            config.warn_unmatched_exclusions(self.name, self._excluded_names,
                                             [v.name for v in variables])

    def _get_variable_index(self, variable: Variable) -> int:
        return self._variable_indices[id(variable)]

    # ----------------------------------------------------------------- checks

    def _resolve_variables(self, n_grads: int, variables: Iterable[Variable] | None) -> list:
        if variables is None:
            if not self.built:
                raise ValueError(
                    f"{self.name}: apply(grads) without `trainable_variables` needs a built "
                    "optimizer; call optimizer.build(variables) first, or pass the variables."
                )
            variables = self._trainable_variables
        else:
            variables = list(variables)
            if self.built:
                unknown = [] if _same_objects(variables, self._trainable_variables) else [
                    v for v in variables if id(v) not in self._variable_indices
                ]
                if unknown:
                    names = [getattr(v, "name", repr(v)) for v in unknown]
                    raise ValueError(
                        f"{self.name}: unknown variable(s) {names}; this optimizer was built for "
                        f"{[v.name for v in self._trainable_variables]}. Create a new optimizer "
                        "for a new set of variables."
                    )
            else:
                for variable in variables:
                    _check_trainable(variable)
        if n_grads != len(variables):
            raise ValueError(
                f"{self.name}: received {n_grads} gradients for {len(variables)} variables; "
                "pass one gradient (or None) per variable."
            )
        return variables

    def _checked_gradient(self, gradient: Any, variable: Variable) -> Any:
        """``gradient`` as an array of ``variable``'s dtype and backend, or a ValueError."""
        storage = variable.value
        if (
            type(gradient) is type(storage)
            and gradient.dtype == storage.dtype
            and gradient.shape == storage.shape
            and getattr(gradient, "device", None) == getattr(storage, "device", None)
            and not getattr(gradient, "is_sparse", False)
        ):
            return gradient  # already the variable's kind of array (the common case)
        where = f"{self.name}: gradient for variable '{variable.name}'"
        if isinstance(gradient, IndexedSlices):
            validate_indexed_slices(gradient, variable.shape, where)
            values = self._as_variable_array(gradient.values, variable, where)
            indices = _like(gradient.indices, variable.value, integer=True)
            return canonical(IndexedSlices(values, indices, gradient.dense_shape))
        if is_torch(gradient) and getattr(gradient, "is_sparse", False):
            coalesced = gradient.coalesce()
            return self._checked_gradient(
                IndexedSlices(coalesced.values(), coalesced.indices()[0], gradient.shape),
                variable,
            )
        array = self._as_variable_array(gradient, variable, where)
        if tuple(array.shape) != variable.shape:
            raise ValueError(
                f"{where} has shape {tuple(array.shape)}; expected the variable's shape "
                f"{variable.shape}. Pass the gradients in the same order as the variables."
            )
        return array

    @staticmethod
    def _as_variable_array(gradient: Any, variable: Variable, where: str) -> Any:
        kind = _dtype_kind(gradient)
        if kind not in "fiub":
            raise TypeError(
                f"{where} has dtype {getattr(gradient, 'dtype', type(gradient).__name__)}, "
                f"which cannot be cast to the variable's dtype {variable.dtype}; pass a "
                "real-valued array."
            )
        return _like(gradient, variable.value)

    def _checked_call(
        self, grads: Sequence[Any], variables: Iterable[Variable] | None
    ) -> tuple[list[Any], list[Variable]]:
        grads = list(grads)
        variables = self._resolve_variables(len(grads), variables)
        if _plain_numpy_gradients(grads, variables):
            checked = grads  # the common case, checked in bulk
        else:
            checked = [
                None if g is None else self._checked_gradient(g, v)
                for g, v in zip(grads, variables)
            ]
            if all(g is None for g in checked):
                raise ValueError(
                    f"{self.name}: no gradients provided for any variable (all were None)."
                )
        self._check_hyperparameters()
        return checked, variables

    def _check_hyperparameters(self) -> None:
        """Evaluate a callable/schedule learning rate and callable hyperparameters now, so
        that a bad value raises before the step changes anything (accumulators, weight
        decay)."""
        with validation.evaluating_learning_rate(self.name):
            float(self._current_learning_rate())
        self._hyperparameters()

    def _hyperparameters(self) -> dict[str, Any]:
        """The rule's hyperparameters for this step (callables resolved and checked)."""
        return {}

    # ----------------------------------------------------------------- apply

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> Variable:
        """Apply ``(gradient, variable)`` pairs; returns the iteration counter."""
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError(
                f"{self.name}: apply_gradients() received no (gradient, variable) pairs. Is it "
                "an exhausted zip or generator? Build the pairs anew for every call, e.g. "
                "apply_gradients(zip(grads, variables))."
            )
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(
                    f"{self.name}: apply_gradients() expects (gradient, variable) pairs; "
                    f"received {type(pair).__name__} at position {k}. Pass "
                    "zip(grads, variables), or call apply(grads, variables)."
                )
        self.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self._iterations

    def apply(self, grads: Sequence[Any], trainable_variables: Iterable[Variable] | None = None):
        """One optimizer step. ``grads`` match ``trainable_variables`` (or the built list)."""
        grads = list(grads)
        if not grads:
            return
        with self._lock:
            grads, variables = self._checked_call(grads, trainable_variables)
            if not self.built:
                self.build(variables)
            self._apply_checked(grads, variables)

    def _apply_checked(self, grads: list[Any], variables: list[Variable]) -> None:
        if self.skip_nonfinite:
            present = [values_of(g) for g in grads if g is not None]
            if not ops_for(present[0]).all_finite(present):
                self._skip_nonfinite_step()
                return
        grads, variables = _drop_missing_gradients(grads, variables)
        if self.sparse_updates == "dense":
            grads = [engine.densify(g, ops_for(values_of(g))) for g in grads]
        if not self._fused_step(grads, variables):
            self._reference_step(grads, variables)
        for variable in variables:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable.value))
        self._iterations.assign(self._iterations.value + 1)

    # ----------------------------------------------------------------- the step

    def _slot_lists(self) -> list[list[Variable]]:
        """The algorithm's state, one list per slot (in the spec's order), each with one
        variable per trainable variable; empty for a Keras-style subclass, whose
        ``update_step`` keeps its own."""
        return []

    def _uses_spec_rule(self) -> bool:
        """Whether this class's step is its spec's rule (no ``update_step`` of its own)."""
        return False

    def _engine_step(self) -> engine.Step:
        return engine.Step(raw=int(self._iterations.value),
                           loss_scale_factor=self.loss_scale_factor,
                           accumulation_steps=self.gradient_accumulation_steps)

    def _group(self) -> engine.Group:
        """This optimizer's options for this step, as the engine takes them."""
        return engine.Group(
            learning_rate=self._current_learning_rate(),
            hyperparameters=self._hyperparameters(),
            weight_decay=self.weight_decay, clipnorm=self.clipnorm, clipvalue=self.clipvalue,
            global_clipnorm=self.global_clipnorm, use_ema=self.use_ema,
            ema_momentum=self.ema_momentum,
            ema_overwrite_frequency=self.ema_overwrite_frequency,
        )

    def _reference_step(self, grads: list[Any], variables: list[Variable]) -> None:
        """The step through :func:`kerasopt.engine.apply` over the variables' arrays, one
        array operation at a time (the readable reference the fused kernels match)."""
        trainable = self._trainable_variables
        slot_lists = self._slot_lists()
        accumulators = self._accumulators if self.gradient_accumulation_steps else None
        averages = self._ema_averages if self.use_ema else None
        arrays = engine.Arrays(
            weights=list(map(_VALUE, trainable)),
            slots=[tuple(slots[i].value for slots in slot_lists) for i in range(len(trainable))],
            accumulators=list(map(_VALUE, accumulators)) if accumulators else None,
            averages=list(map(_VALUE, averages)) if averages else None,
        )
        indices = [self._get_variable_index(v) for v in variables]
        ops = ops_for(arrays.weights[0])
        rule, rows_rule = self._rules(ops)
        result = engine.apply(
            rule, arrays, list(zip(indices, grads)), step=self._engine_step(),
            groups=[self._group()], decay_mask=self._weight_decay_mask(trainable), ops=ops,
            rows_rule=rows_rule,
        )
        new = result.arrays
        targets = [(trainable, new.weights)]
        targets += [([slots[i] for slots in slot_lists], new.slots[i])
                    for i in range(len(trainable))]
        if accumulators:
            targets.append((accumulators, new.accumulators))
        if averages:
            targets.append((averages, new.averages))
        for owners, values in targets:
            for variable, value in zip(owners, values):
                if value is not variable.value:
                    variable.assign(value)

    def _rules(self, ops: Any) -> tuple[engine.Rule, engine.RowsRule]:
        """The engine's rule stage, dense and lazy sparse: the spec's rule (sparse rows in
        place through the fused rows kernel when it applies), or Keras's ``update_step`` on
        the variable itself."""
        if self._uses_spec_rule():
            rule = engine.spec_rule(self.spec)
            lazy = engine.lazy_rows(rule, ops)

            def rows_rule(i: int, w: Any, g: IndexedSlices, slots: tuple,
                          arguments: Mapping[str, Any], decay: Any):
                if _fused_rows(self.spec, w, g, slots, arguments, decay, ops):
                    return w, slots
                return lazy(i, w, g, slots, arguments, decay)

            return rule, rows_rule

        def keras_update_step(i: int, w: Any, g: Any, slots: tuple,
                              arguments: Mapping[str, Any]):
            variable = self._trainable_variables[i]
            if w is not variable.value:
                variable.assign(w)  # the decayed weight
            self.update_step(g, variable, arguments["learning_rate"])
            return variable.value, slots

        def keras_rows_step(i: int, w: Any, g: IndexedSlices, slots: tuple,
                            arguments: Mapping[str, Any], decay: Any):
            if decay is not None:
                rows = g.indices
                w = ops.put_rows(w, rows, pipeline.decay(ops.take_rows(w, rows), *decay))
            return keras_update_step(i, w, g, slots, arguments)

        return keras_update_step, keras_rows_step

    def _clip_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """Keras's ``_clip_gradients``: this optimizer's clip (the engine's step 4)."""
        grads = list(grads)
        layout = engine.Layout([0] * len(grads), [True] * len(grads), [None] * len(grads))
        clipped = engine.clip(list(enumerate(grads)), [self._group()], layout, engine.Hooks(),
                              ops_for(values_of(grads[0])))
        return [g for _, g in clipped]

    def _fused_step(self, grads: list[Any], variables: list[Variable]) -> bool:
        """The step in one pass over memory (:mod:`kerasopt.kernels`), when it applies.

        Returns False, having changed nothing, where it does not: numba missing, a sparse
        gradient, a dtype or device the kernel lacks, a class whose step is not its spec's
        rule, or (with EMA or accumulation, which cover every variable) a ``None`` gradient.
        """
        spec = self.spec
        if (not self._uses_spec_rule() or spec.kernel is None or not kernels.available()
                or any(map(isinstance, grads, repeat(IndexedSlices)))):
            return False
        steps = self.gradient_accumulation_steps
        if (self.use_ema or steps) and len(variables) != len(self._trainable_variables):
            return False
        if not kernels.fusable(variables[0].value):
            return False
        if _same_objects(variables, self._trainable_variables):
            index = None  # every variable, in the built order: slots and masks in bulk
            distinct = len(self._variable_indices) == len(variables)
        else:
            index = [self._get_variable_index(v) for v in variables]
            distinct = len(set(index)) == len(index)
        if not distinct:
            # A variable listed twice is updated twice in a row, through the slots of its
            # last position (as in Keras); one launch over both would race with itself.
            return False

        def values(slot: list[Variable]) -> list[Any]:
            if index is None:
                return list(map(_VALUE, slot))
            return [slot[i].value for i in index]

        scalars = engine.kernel_arguments(
            self._group(), self._engine_step(),
            decay_mask=self._weight_decay_mask(variables), averaging=self.use_ema)
        try:
            kernels.fused_step(
                spec.kernel,
                list(map(_VALUE, variables)),
                grads,
                [values(slot) for slot in self._slot_lists()],
                accumulators=values(self._accumulators) if steps else None,
                ema_averages=values(self._ema_averages) if self.use_ema else None,
                **scalars,
            )
        except kernels.NotFusable:
            return False
        return True

    def _skip_nonfinite_step(self) -> None:
        """``skip_nonfinite``: count the skipped call (nothing else changes); warn once."""
        self.skipped_steps += 1
        if self.skipped_steps == 1:
            warnings.warn(
                f"{self.name}: a gradient holds NaN or inf; skip_nonfinite=True skips such "
                "steps (weights, state and iterations unchanged). Further skips are counted "
                "in `skipped_steps` without warning.",
                RuntimeWarning,
                stacklevel=4,
            )

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement update_step(gradient, variable, learning_rate)."
        )

    def finalize_variable_values(self, var_list: Sequence[Variable]) -> None:
        """With ``use_ema``, copy the moving averages into ``var_list``; otherwise nothing."""
        if not self.use_ema:
            return
        variables = list(var_list)
        if len(variables) != len(self._ema_averages):
            raise ValueError(
                f"{self.name}: received {len(variables)} variables to overwrite with their "
                f"moving averages; the optimizer holds {len(self._ema_averages)}."
            )
        for variable, average in zip(variables, self._ema_averages):
            variable.assign(average.value)

    # ----------------------------------------------------------------- weight decay exclusion

    def exclude_from_weight_decay(
        self,
        var_list: Iterable[Variable] | None = None,
        var_names: Iterable[str] | None = None,
    ) -> None:
        """Exclude variables from weight decay: those in ``var_list``, and those whose name
        contains a match of any regular expression in ``var_names``. Call before building."""
        if self.built:
            raise ValueError(
                f"{self.name}: exclude_from_weight_decay() must be called before the optimizer "
                "is built (before its first apply/build)."
            )
        patterns = config.exclusion_patterns(var_names, "var_names")
        self._excluded_ids = {id(v) for v in (var_list or [])}
        self._excluded_names = patterns
        self._excluded_pattern = config.exclusion_regex(patterns)

    def _weight_decay_mask(self, variables: list[Variable]) -> list[bool]:
        """Per variable, whether it is decayed (kept between steps until the exclusions or
        the variables change)."""
        key = (self._excluded_ids, self._excluded_pattern)
        cached = getattr(self, "_decay_mask_cache", None)
        if cached is not None and _same_objects(cached[0], key) and _same_objects(
            cached[1], variables
        ):
            return cached[2]
        mask = [self._use_weight_decay(v) for v in variables]
        self._decay_mask_cache = (key, list(variables), mask)
        return mask

    def _use_weight_decay(self, variable: Variable) -> bool:
        if id(variable) in self._excluded_ids:
            return False
        pattern = self._excluded_pattern
        return pattern is None or pattern.search(variable.name) is None

    # ----------------------------------------------------------------- loss scaling

    def scale_loss(self, loss: Any) -> Any:
        """``loss * loss_scale_factor`` when set, else ``loss``."""
        if self.loss_scale_factor is not None:
            return loss * self.loss_scale_factor
        return loss

    # ----------------------------------------------------------------- stateless

    def stateless_apply(
        self,
        optimizer_variables: Sequence[Any],
        grads: Sequence[Any],
        trainable_variables: Sequence[Any],
    ) -> tuple[list[Any], list[Any]]:
        """Apply one step to the given values; return ``(new_trainable, new_optimizer)``.

        Neither the inputs nor this optimizer's own variables change. With JAX arrays the
        step runs functionally (:func:`kerasopt.engine.apply` over these lists), so it can
        be traced by ``jax.jit``.
        """
        if not self.built:
            raise ValueError(
                f"{self.name}: stateless_apply needs a built optimizer; call "
                "optimizer.build(variables) first."
            )
        own = self.variables
        for label, given, expected in (
            ("optimizer_variables", optimizer_variables, own),
            ("trainable_variables", trainable_variables, self._trainable_variables),
        ):
            if len(given) != len(expected):
                raise ValueError(
                    f"{self.name}: `{label}` has {len(given)} entries; expected "
                    f"{len(expected)}, one per entry of the optimizer's list."
                )
            for value, variable in zip(given, expected):
                if tuple(np.shape(value)) != variable.shape:
                    raise ValueError(
                        f"{self.name}: `{label}` entry for '{variable.name}' has shape "
                        f"{tuple(np.shape(value))}; expected {variable.shape}."
                    )
        if any(is_jax(x) for x in (*optimizer_variables, *trainable_variables)):
            return self._stateless_apply_functional(optimizer_variables, grads,
                                                    trainable_variables)
        targets = own + self._trainable_variables
        saved = [v._value for v in targets]
        try:
            for variable, value in zip(targets, [*optimizer_variables, *trainable_variables]):
                variable._value = _private_copy(value, variable._value)
            self.apply(grads)
            new_trainable = [v._value for v in self._trainable_variables]
            new_optimizer = [v._value for v in own]
        finally:
            for variable, value in zip(targets, saved):
                variable._value = value
        return new_trainable, new_optimizer

    def _stateless_apply_functional(self, optimizer_variables: Sequence[Any],
                                    grads: Sequence[Any], trainable_variables: Sequence[Any]):
        """``stateless_apply`` on JAX arrays: the engine over the given lists (traceable)."""
        import jax.numpy as jnp

        from kerasopt.sparse import canonical_fixed_size

        if not self._uses_spec_rule():
            raise TypeError(
                f"stateless_apply with JAX arrays runs a registered algorithm's rule; "
                f"{type(self).__name__} has its own update_step. Use NumPy arrays."
            )
        own = self.variables
        position = {id(v): k for k, v in enumerate(own)}
        given = [jnp.asarray(x) for x in optimizer_variables]

        def values(variables: Sequence[Variable]) -> list[Any]:
            return [given[position[id(v)]] for v in variables]

        weights = [jnp.asarray(w) for w in trainable_variables]
        grads = list(grads)
        if len(grads) != len(weights):
            raise ValueError(
                f"{self.name}: received {len(grads)} gradients for {len(weights)} variables; "
                "pass one gradient (or None) per variable."
            )
        pairs = []
        for i, (g, w) in enumerate(zip(grads, weights)):
            if g is None:
                continue
            if isinstance(g, IndexedSlices):
                values_ = jnp.asarray(g.values).astype(w.dtype)
                g = canonical_fixed_size(IndexedSlices(values_, jnp.asarray(g.indices),
                                                       g.dense_shape))
            else:
                g = jnp.asarray(g).astype(w.dtype)
            pairs.append((i, g))
        if not pairs:
            raise ValueError(f"{self.name}: no gradients provided for any variable (all were "
                             "None).")
        raw = given[position[id(self._iterations)]]
        lr = self._learning_rate
        if isinstance(lr, Variable):
            learning_rate = given[position[id(lr)]]
        elif isinstance(lr, LearningRateSchedule):
            learning_rate = lr(raw)
        else:
            learning_rate = lr()
        group = self._group()
        group = engine.Group(**{**group.__dict__, "learning_rate": learning_rate})
        slot_lists = self._slot_lists()
        accumulators = self._accumulators if self.gradient_accumulation_steps else None
        averages = self._ema_averages if self.use_ema else None
        arrays = engine.Arrays(
            weights=weights,
            slots=[tuple(given[position[id(slots[i])]] for slots in slot_lists)
                   for i in range(len(weights))],
            accumulators=values(accumulators) if accumulators else None,
            averages=values(averages) if averages else None,
        )
        ops = ops_for(weights[0])
        step = engine.Step(raw=raw, loss_scale_factor=self.loss_scale_factor,
                           accumulation_steps=self.gradient_accumulation_steps,
                           sparse_updates=self.sparse_updates,
                           skip_nonfinite=self.skip_nonfinite)
        result = engine.apply(engine.spec_rule(self.spec), arrays, pairs, step=step,
                              groups=[group], decay_mask=self._weight_decay_mask(
                                  self._trainable_variables), ops=ops)
        new = result.arrays
        out = list(given)
        out[position[id(self._iterations)]] = jnp.asarray(result.raw).astype(raw.dtype)
        for i in range(len(weights)):
            for slots, value in zip(slot_lists, new.slots[i]):
                out[position[id(slots[i])]] = value
        for variables, new_values in ((accumulators, new.accumulators),
                                      (averages, new.averages)):
            for variable, value in zip(variables or [], new_values or []):
                out[position[id(variable)]] = value
        return list(new.weights), out

    # ----------------------------------------------------------------- saving

    def save_own_variables(self, store: dict) -> None:
        """Write the state into ``store`` as ``{"0": array, "1": ...}`` in Keras's order."""
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store: Mapping[str, Any]) -> None:
        """Load state written by ``save_own_variables`` (or Keras's); checks all first."""
        own = self.variables
        if len(store.keys()) != len(own):
            hint = (
                " Build the optimizer first: optimizer.build(variables)."
                if not self.built
                else " The saved optimizer had other options (use_ema, "
                "gradient_accumulation_steps, amsgrad, a float or scheduled learning_rate) or "
                "other variables; create this one with the same."
            )
            raise ValueError(
                f"{self.name}: the saved state has {len(store.keys())} variables but this "
                f"optimizer has {len(own)}.{hint}"
            )
        self.set_weights([store[str(i)] for i in range(len(own))])

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Overwrite the state with ``weights`` (in ``variables`` order); checks all first."""
        if not self.built:
            raise ValueError(
                f"{self.name}: set_weights() needs a built optimizer; call "
                "optimizer.build(variables) first."
            )
        own = self.variables
        weights = list(weights)
        if len(weights) != len(own):
            raise ValueError(
                f"{self.name}: set_weights() received {len(weights)} arrays; the optimizer has "
                f"{len(own)} variables."
            )
        converted = []
        for variable, weight in zip(own, weights):
            if tuple(np.shape(weight)) != variable.shape:
                raise ValueError(
                    f"{self.name}: optimizer variable '{variable.name}' has shape "
                    f"{variable.shape}; received a weight of shape {tuple(np.shape(weight))}."
                )
            if _dtype_kind(weight) not in "fiub":
                raise TypeError(
                    f"{self.name}: optimizer variable '{variable.name}' has dtype "
                    f"{variable.dtype}; received a weight of dtype "
                    f"{getattr(weight, 'dtype', type(weight).__name__)}, which cannot be cast "
                    "to it. Pass real-valued arrays."
                )
            converted.append(_like(weight, variable.value))
        for variable, weight in zip(own, converted):
            variable.assign(weight)

    # ----------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, in Keras's format (a float rate as stored, float32)."""
        lr = self._learning_rate
        if isinstance(lr, Variable):
            learning_rate: Any = float(lr.value)
        else:
            learning_rate = serialization.serialize(lr)
        config = {
            "name": self.name,
            "learning_rate": learning_rate,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        # kerasopt's own options, absent at their defaults, so that Keras reads the config.
        if self.skip_nonfinite:
            config["skip_nonfinite"] = True
        if self.sparse_updates != "lazy":
            config["sparse_updates"] = self.sparse_updates
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], custom_objects: Mapping | None = None):
        """Create an optimizer from ``get_config()`` output (no state)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"{cls.__name__}.from_config expects a dict; received {config!r}.")
        config = dict(config)
        callables = [h.name for h in cls.spec.hyperparameters if h.callable_ok] if cls.spec else []
        for key in ("learning_rate", *callables):
            if isinstance(config.get(key), Mapping):
                config[key] = serialization.deserialize(config[key], custom_objects)
        return cls(**config)

    def __repr__(self) -> str:
        return f"<kerasopt.{type(self).__name__} name={self.name!r} built={self.built}>"


def _fused_rows(spec: AlgorithmSpec, w: Any, g: IndexedSlices, slots: tuple,
                arguments: Mapping[str, Any], decay: Any, ops: Any) -> bool:
    """The lazy row update in place in one kernel pass (after the rows' decay), when the
    spec has a kernel and the arrays fit it; False, having changed nothing, otherwise."""
    if spec.kernel is None or not kernels.available() or not kernels.fusable(w):
        return False
    rows = g.indices
    before = ops.take_rows(w, rows) if decay is not None else None
    if decay is not None:
        ops.put_rows(w, rows, pipeline.decay(before, *decay))
    try:
        kernels.fused_rows_step(spec, w, rows, g.values, list(slots), **arguments)
    except kernels.NotFusable:
        if before is not None:
            ops.put_rows(w, rows, before)  # nothing changed
        return False
    return True


def _check_trainable(variable: Any) -> None:
    if not isinstance(variable, Variable):
        raise TypeError(
            "Optimizers update kerasopt.Variable objects; received "
            f"{type(variable).__name__}. Wrap the array: kerasopt.Variable(array)."
        )
    if _dtype_kind(variable) != "f":
        raise TypeError(
            f"Variable '{variable.name}' has dtype {variable.dtype}; optimizers update "
            "floating-point variables only (float16, bfloat16, float32, float64)."
        )


_VALUE = attrgetter("_value")  # Variable.value, without the property's Python frame
_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")


def _same_objects(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(map(is_, a, b))


def _plain_numpy_gradients(grads: list[Any], variables: list[Variable]) -> bool:
    """Whether every gradient is a dense NumPy array of its variable's (NumPy) dtype and
    shape, checked in bulk: such gradients need no conversion."""
    values = list(map(_VALUE, variables))
    if kernels.same_numpy_layouts(grads, values):
        return True
    return (
        set(map(type, grads)) == {np.ndarray}
        and set(map(type, values)) == {np.ndarray}
        and list(map(_DTYPE, grads)) == list(map(_DTYPE, values))
        and list(map(_SHAPE, grads)) == list(map(_SHAPE, values))
    )


def _drop_missing_gradients(grads: list[Any], variables: list[Variable]):
    if all(map(is_not, grads, repeat(None))):
        return grads, variables
    missing = [v.name for g, v in zip(grads, variables) if g is None]
    if missing:
        warnings.warn(
            f"Gradients do not exist for variables {missing}; they are not updated this step.",
            stacklevel=4,
        )
    kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
    return [g for g, _ in kept], [v for _, v in kept]


def _dtype_kind(x: Any) -> str:
    """NumPy's dtype kind letter of an array-like (``f`` float, ``i`` int, ``c`` complex...)."""
    if isinstance(x, Variable):
        x = x.value
    if is_torch(x):
        if x.is_complex():
            return "c"
        return "f" if x.is_floating_point() else ("b" if str(x.dtype) == "torch.bool" else "i")
    try:
        dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    except (TypeError, ValueError):
        return "O"
    if dtype.kind == "V" and dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return "f"  # ml_dtypes floats
    return dtype.kind


def _like(x: Any, reference: Any, integer: bool = False) -> Any:
    """``x`` as an array on ``reference``'s backend (and dtype, unless ``integer``)."""
    if isinstance(x, Variable):
        x = x.value
    if is_torch(reference):
        import torch

        tensor = torch.as_tensor(x, device=reference.device)
        return tensor.long() if integer else tensor.to(dtype=reference.dtype)
    if is_jax(reference):
        import jax.numpy as jnp

        return jnp.asarray(x) if integer else jnp.asarray(x, dtype=reference.dtype)
    array = to_numpy(x)
    return array.astype(np.int64, copy=False) if integer else array.astype(
        reference.dtype, copy=False
    )


def _private_copy(value: Any, reference: Any) -> Any:
    """A copy of ``value`` as storage on ``reference``'s backend and dtype."""
    copy = _like(value, reference)
    if isinstance(copy, np.ndarray):
        return np.array(copy, dtype=reference.dtype)
    if is_torch(copy):
        return copy.clone()
    return copy
