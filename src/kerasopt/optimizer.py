"""``kerasopt.Optimizer``: the Keras 3 optimizer API and pipeline over ``kerasopt.Variable``.

One ``apply(grads, vars)`` runs, in Keras 3's order:

1. drop ``None`` gradients (warning which variables had none);
2. divide by ``loss_scale_factor``;
3. gradient accumulation: on micro-steps only add into the accumulators; on the n-th use
   ``(g + acc) / n`` and reset every accumulator;
4. clip (``clipnorm`` per tensor, ``global_clipnorm``, or ``clipvalue``);
5. decoupled weight decay ``w -= w * weight_decay * lr``;
6. the algorithm's ``update_step`` with ``t = iterations + 1``;
7. EMA of the weights, with the periodic overwrite;
8. variable constraints;
9. ``iterations_raw += 1``.

Every argument and shape is checked before step 1, so a bad call changes nothing.
Subclasses implement ``build`` (creating state with ``add_optimizer_variables``) and
``update_step(gradient, variable, learning_rate)``, as in Keras.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, is_, is_not
from typing import Any

import numpy as np

from kerasopt import kernels, pipeline, serialization, validation
from kerasopt.algorithms import adam_update, adamax_update
from kerasopt.backend import is_jax, is_torch, namespace, to_numpy
from kerasopt.schedules import LearningRateSchedule
from kerasopt.sparse import (
    IndexedSlices,
    canonical,
    map_values,
    validate_indexed_slices,
    values_of,
    with_values,
)
from kerasopt.variable import Variable

UpdateRule = Callable[..., tuple[Any, ...]]

_FUSED_RULES: dict[Callable[..., Any], str] = {adam_update: "adam", adamax_update: "adamax"}


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
        name: The optimizer's name, used in its state variables' names.
        skip_nonfinite: kerasopt only (default False: Keras semantics, a NaN/inf gradient
            propagates into the weights). When True, a call whose gradients hold a NaN or an
            infinity changes nothing (weights, state, counters) except ``skipped_steps``,
            which counts such calls; the first skip warns.
    """

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
        **kwargs: Any,
    ) -> None:
        validation.unknown_keywords(type(self).__name__, kwargs)
        self.skip_nonfinite = validation.boolean("skip_nonfinite", skip_nonfinite)
        self.skipped_steps = 0
        if name is None:
            name = type(self).__name__.lower()
        if not isinstance(name, str):
            raise TypeError(f"Argument `name` must be a string; received name={name!r}.")
        self.name = name
        non_negative = {"minimum": 0.0, "allowed": "None or a finite float >= 0"}
        self.weight_decay = validation.optional_real("weight_decay", weight_decay, **non_negative)
        self.clipnorm = validation.optional_real("clipnorm", clipnorm, **non_negative)
        self.clipvalue = validation.optional_real("clipvalue", clipvalue, **non_negative)
        self.global_clipnorm = validation.optional_real(
            "global_clipnorm", global_clipnorm, **non_negative
        )
        validation.at_most_one_clip_option(
            clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm
        )
        self.use_ema = validation.boolean("use_ema", use_ema)
        self.ema_momentum = validation.real(
            "ema_momentum", ema_momentum, minimum=0.0, maximum=1.0, allowed="a float in [0, 1]"
        )
        if ema_overwrite_frequency is not None:
            ema_overwrite_frequency = validation.integer(
                "ema_overwrite_frequency",
                ema_overwrite_frequency,
                minimum=1,
                allowed="None or an integer >= 1",
            )
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = validation.optional_real(
            "loss_scale_factor",
            loss_scale_factor,
            minimum=0.0,
            min_inclusive=False,
            allowed="None or a finite float > 0",
        )
        if gradient_accumulation_steps is not None:
            gradient_accumulation_steps = validation.integer(
                "gradient_accumulation_steps",
                gradient_accumulation_steps,
                minimum=2,
                allowed="None or an integer >= 2",
            )
        self.gradient_accumulation_steps = gradient_accumulation_steps

        self.built = False
        self._variables: list[Variable] = []
        self._trainable_variables: list[Variable] = []
        self._variable_indices: dict[int, int] = {}
        self._excluded_ids: set[int] = set()
        self._excluded_pattern: re.Pattern[str] | None = None
        self._iterations = self._track(Variable(np.array(0, np.int64), name=f"{name}/iteration"))
        self._learning_rate = self._learning_rate_storage(learning_rate)

    # ----------------------------------------------------------------- learning rate

    def _learning_rate_storage(self, learning_rate: Any) -> Any:
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        _check_float_rate(
            learning_rate,
            "a finite float >= 0 (stored as float32), a LearningRateSchedule, or a "
            "zero-argument callable",
        )
        if not isinstance(learning_rate, (float, np.floating)):
            raise TypeError(
                "Argument `learning_rate` must be a float (not an integer), a "
                f"LearningRateSchedule, or a zero-argument callable; received "
                f"learning_rate={learning_rate!r}. Write it as {float(learning_rate)!r}."
            )
        return self._track(
            Variable(np.array(learning_rate, np.float32), name=f"{self.name}/learning_rate")
        )

    @property
    def learning_rate(self) -> Any:
        """The current learning rate (a schedule is evaluated at the raw iteration count)."""
        return self._current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        if isinstance(self._learning_rate, Variable):
            if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
                self._variables.remove(self._learning_rate)
                self._learning_rate = learning_rate
                return
            _check_float_rate(learning_rate, "a finite float >= 0 (stored as float32)")
            self._learning_rate.assign(np.float32(learning_rate))
            return
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
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
        """Evaluate a callable/schedule learning rate and callable betas now, so that a bad
        value raises before the step changes anything (accumulators, weight decay)."""
        with validation.evaluating_learning_rate(self.name):
            float(self._current_learning_rate())
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name, None)
            if callable(value):
                validation.resolved_beta(name, value)

    # ----------------------------------------------------------------- apply

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> Variable:
        """Apply ``(gradient, variable)`` pairs; returns the iteration counter."""
        pairs = list(grads_and_vars)
        grads = [g for g, _ in pairs]
        variables = [v for _, v in pairs]
        self.apply(grads, variables)
        return self._iterations

    def apply(self, grads: Sequence[Any], trainable_variables: Iterable[Variable] | None = None):
        """One optimizer step. ``grads`` match ``trainable_variables`` (or the built list)."""
        grads = list(grads)
        if not grads:
            return
        grads, variables = self._checked_call(grads, trainable_variables)
        if not self.built:
            self.build(variables)
        self._apply_checked(grads, variables)

    def _apply_checked(self, grads: list[Any], variables: list[Variable]) -> None:
        if self.skip_nonfinite and not pipeline.is_finite(
            [values_of(g) for g in grads if g is not None]
        ):
            self._skip_nonfinite_step()
            return
        grads, variables = _drop_missing_gradients(grads, variables)
        if not self._fused_step(grads, variables):
            self._reference_step(grads, variables)
        for variable in variables:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable.value))
        self._iterations.assign(self._iterations.value + 1)

    def _reference_step(self, grads: list[Any], variables: list[Variable]) -> None:
        """Steps 2-7 with the pure functions, one array operation at a time (the truth)."""
        if self.loss_scale_factor is not None:
            factor = self.loss_scale_factor
            grads = [map_values(lambda v: pipeline.unscale(v, factor), g) for g in grads]
        if self.gradient_accumulation_steps:
            grads = self._accumulate(grads, variables)
        if grads is not None:
            self._update(grads, variables)
        if self.use_ema:
            self._update_ema()

    def _fused_slots(self) -> tuple[str, list[list[Variable]]] | None:
        """``(algorithm, slot lists)`` when the fused kernel implements this optimizer's
        ``update_step``; None (the default, e.g. for user subclasses) otherwise."""
        return None

    def _fused_step(self, grads: list[Any], variables: list[Variable]) -> bool:
        """Steps 2-7 in one pass over memory (:mod:`kerasopt.kernels`), when it applies.

        Returns False, having changed nothing, where it does not: numba missing, a sparse
        gradient, a dtype or device the kernel lacks, a subclass with its own update rule,
        or (with EMA or accumulation, which cover every variable) a ``None`` gradient.
        """
        fused = self._fused_slots() if kernels.available() else None
        if fused is None or any(map(isinstance, grads, repeat(IndexedSlices))):
            return False
        steps = self.gradient_accumulation_steps
        if (self.use_ema or steps) and len(variables) != len(self._trainable_variables):
            return False
        if not kernels.fusable(variables[0].value):
            return False
        algorithm, slot_lists = fused
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

        iterations = self._iteration_count()
        phase = None
        if steps:
            phase = "update" if (int(self._iterations.value) + 1) % steps == 0 else "micro"
        options: dict[str, Any] = {
            "learning_rate": self._current_learning_rate() if phase != "micro" else 0.0
        }
        if self.use_ema:
            frequency = self.ema_overwrite_frequency
            options.update(
                ema_averages=values(self._ema_averages),
                ema_momentum=pipeline.ema_momentum_at(iterations, self.ema_momentum),
                ema_overwrite=bool(frequency and (iterations + 1) % frequency == 0),
            )
        try:
            kernels.fused_step(
                algorithm,
                list(map(_VALUE, variables)),
                grads,
                [values(slot) for slot in slot_lists],
                beta_1=validation.resolved_beta("beta_1", self.beta_1),
                beta_2=validation.resolved_beta("beta_2", self.beta_2),
                epsilon=self.epsilon,
                step=iterations + 1,
                weight_decay=self.weight_decay,
                weight_decay_mask=(
                    self._weight_decay_mask(variables) if self.weight_decay is not None else None
                ),
                clipnorm=self.clipnorm or None,
                global_clipnorm=self.global_clipnorm or None,
                clipvalue=self.clipvalue or None,
                loss_scale_factor=self.loss_scale_factor,
                accumulators=values(self._accumulators) if steps else None,
                accumulation_steps=steps,
                accumulation_phase=phase,
                **options,
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

    def _accumulate(self, grads: list[Any], variables: list[Variable]) -> list[Any] | None:
        """Add into the accumulators; on the cycle's last micro-step, return the mean and
        reset every accumulator (so a variable without a gradient now loses its partial sum,
        as in Keras)."""
        steps = self.gradient_accumulation_steps
        dense = [g.to_dense() if isinstance(g, IndexedSlices) else g for g in grads]
        accumulators = [self._accumulators[self._get_variable_index(v)] for v in variables]
        if (int(self._iterations.value) + 1) % steps != 0:
            for acc, total in zip(
                accumulators, pipeline.accumulate(dense, [a.value for a in accumulators])
            ):
                acc.assign(total)
            return None
        mean = pipeline.accumulated_mean(dense, [a.value for a in accumulators], steps)
        for acc in self._accumulators:
            acc.assign(namespace(acc.value).zeros_like(acc.value))
        return mean

    def _update(self, grads: list[Any], variables: list[Variable]) -> None:
        grads = self._clip_gradients(grads)
        learning_rate = self._current_learning_rate()
        self._apply_weight_decay(grads, variables, learning_rate)
        self._backend_update_step(grads, variables, learning_rate)

    def _clip_gradients(self, grads: list[Any]) -> list[Any]:
        if self.clipnorm:
            return [map_values(lambda v: pipeline.clip_by_norm(v, self.clipnorm), g) for g in grads]
        if self.global_clipnorm:
            values = [values_of(g) for g in grads]
            clipped = pipeline.clip_by_global_norm(values, self.global_clipnorm)
            return [with_values(g, c) for g, c in zip(grads, clipped)]
        if self.clipvalue:
            clipvalue = self.clipvalue
            return [map_values(lambda v: pipeline.clip_by_value(v, clipvalue), g) for g in grads]
        return grads

    def _apply_weight_decay(
        self, grads: list[Any], variables: list[Variable], learning_rate: Any
    ) -> None:
        """Decay every variable not excluded; a sparse gradient decays only its rows."""
        if self.weight_decay is None:
            return
        for gradient, variable in zip(grads, variables):
            if not self._use_weight_decay(variable):
                continue
            if isinstance(gradient, IndexedSlices):
                rows = gradient.indices
                variable.scatter_update(
                    rows,
                    pipeline.decay(variable.value[rows], self.weight_decay, learning_rate),
                )
            else:
                variable.assign(pipeline.decay(variable.value, self.weight_decay, learning_rate))

    def _backend_update_step(
        self, grads: list[Any], variables: list[Variable], learning_rate: Any
    ) -> None:
        for gradient, variable in zip(grads, variables):
            self.update_step(gradient, variable, learning_rate)

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement update_step(gradient, variable, learning_rate)."
        )

    def _apply_rule(
        self,
        rule: UpdateRule,
        gradient: Any,
        variable: Variable,
        slots: Sequence[Variable],
        **hyperparameters: Any,
    ) -> None:
        """Run a pure update rule ``rule(w, g, *slots) -> (w, *slots)`` and store the results;
        for an ``IndexedSlices`` gradient, only on its rows."""
        if isinstance(gradient, IndexedSlices):
            if self._fused_rows_step(rule, gradient, variable, slots, hyperparameters):
                return
            rows = gradient.indices
            new = rule(
                variable.value[rows],
                gradient.values,
                *(s.value[rows] for s in slots),
                **hyperparameters,
            )
            for target, value in zip((variable, *slots), new):
                target.scatter_update(rows, value)
            return
        new = rule(variable.value, gradient, *(s.value for s in slots), **hyperparameters)
        for target, value in zip((variable, *slots), new):
            target.assign(value)

    @staticmethod
    def _fused_rows_step(
        rule: UpdateRule,
        gradient: IndexedSlices,
        variable: Variable,
        slots: Sequence[Variable],
        hyperparameters: dict[str, Any],
    ) -> bool:
        """The lazy row update in one kernel pass, when the kernel implements ``rule``."""
        algorithm = _FUSED_RULES.get(rule)
        if algorithm is None or not kernels.available():
            return False
        try:
            kernels.fused_rows_step(
                algorithm,
                variable.value,
                gradient.indices,
                gradient.values,
                [s.value for s in slots],
                **hyperparameters,
            )
        except kernels.NotFusable:
            return False
        return True

    # ----------------------------------------------------------------- EMA

    def _update_ema(self) -> None:
        iterations = self._iteration_count()
        momentum = pipeline.ema_momentum_at(iterations, self.ema_momentum)
        for variable, average in zip(self._trainable_variables, self._ema_averages):
            average.assign(pipeline.ema(average.value, variable.value, momentum))
        frequency = self.ema_overwrite_frequency
        if frequency and (iterations + 1) % frequency == 0:
            self._overwrite_with_averages(self._trainable_variables)

    def _overwrite_with_averages(self, variables: Sequence[Variable]) -> None:
        if len(variables) != len(self._ema_averages):
            raise ValueError(
                f"{self.name}: received {len(variables)} variables to overwrite with their "
                f"moving averages; the optimizer holds {len(self._ema_averages)}."
            )
        for variable, average in zip(variables, self._ema_averages):
            variable.assign(average.value)

    def finalize_variable_values(self, var_list: Sequence[Variable]) -> None:
        """With ``use_ema``, copy the moving averages into ``var_list``; otherwise nothing."""
        if self.use_ema:
            self._overwrite_with_averages(list(var_list))

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
        self._excluded_ids = {id(v) for v in (var_list or [])}
        names = list(var_names or [])
        for pattern in names:
            if not isinstance(pattern, str):
                raise TypeError(
                    "Argument `var_names` must be a list of strings; received an element "
                    f"{pattern!r}."
                )
        if not names:
            self._excluded_pattern = None
            return
        try:
            self._excluded_pattern = re.compile("|".join(sorted(set(names))))
        except re.error as error:
            raise ValueError(
                f"Argument `var_names` must hold valid regular expressions; received "
                f"var_names={names!r} ({error})."
            ) from error

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
        step runs functionally (the ``kerasopt.optax`` pipeline over these lists), so it can
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
            from kerasopt.optax import stateless_apply_jax

            return stateless_apply_jax(self, optimizer_variables, grads, trainable_variables)
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
        if self.skip_nonfinite:  # kerasopt only; absent by default, so Keras reads the config
            config["skip_nonfinite"] = True
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], custom_objects: Mapping | None = None):
        """Create an optimizer from ``get_config()`` output (no state)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"{cls.__name__}.from_config expects a dict; received {config!r}.")
        config = dict(config)
        for key in ("learning_rate", "beta_1", "beta_2"):
            if isinstance(config.get(key), Mapping):
                config[key] = serialization.deserialize(config[key], custom_objects)
        return cls(**config)

    def __repr__(self) -> str:
        return f"<kerasopt.{type(self).__name__} name={self.name!r} built={self.built}>"


def _check_float_rate(learning_rate: Any, allowed: str) -> None:
    """A float learning rate: finite, >= 0, and still finite once stored in float32."""
    validation.real("learning_rate", learning_rate, minimum=0.0, allowed=allowed)
    with np.errstate(over="ignore"):
        if not np.isfinite(np.float32(learning_rate)):
            raise ValueError(
                f"Argument `learning_rate` must be {allowed}; received "
                f"learning_rate={learning_rate!r}, which overflows float32."
            )


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
