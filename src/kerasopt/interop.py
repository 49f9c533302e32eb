"""``kerasopt.interop``: Keras ``.keras`` / ``.weights.h5`` files to and from kerasopt.

Keras 3 saves an optimizer in two places:

* a ``.keras`` file is a zip archive; its ``config.json`` holds the model's
  ``compile_config`` whose ``"optimizer"`` entry is the optimizer's config (Keras's dict
  format, the one :func:`kerasopt.deserialize` reads), and its ``model.weights.h5`` holds
  the weights;
* in a weights file (``model.weights.h5`` inside the zip, or a ``.weights.h5`` written by
  ``model.save_weights``) the optimizer's variables are the datasets ``"0"``, ``"1"``, ...
  of the HDF5 group ``optimizer/vars``, in Keras's order: ``iteration`` (int32),
  ``learning_rate`` (float32; only when the rate is a float, not a schedule or callable),
  the EMA averages (``use_ema``), the gradient accumulators
  (``gradient_accumulation_steps``), then the algorithm's slots interleaved per model
  variable -- ``momentum, velocity`` (Adam) or ``momentum, norm`` (Adamax) -- then Adam's
  ``velocity_hat`` per variable (``amsgrad``). A ``LossScaleOptimizer`` stores its own
  ``iteration``, ``learning_rate``, ``step_counter``, ``dynamic_scale`` followed by the
  inner optimizer's variables in ``optimizer/vars``, and the inner ones again in
  ``optimizer/inner_optimizer/vars``. The model's own weights are under ``layers/...``.

**Variable order.** The file records no names for the slots: the ``i``-th model variable's
state is the ``i``-th of each kind. The variables (or torch parameters, or JAX leaves) you
pass must therefore be in the order of the Keras model's ``trainable_variables``
(``model.trainable_variables``; for a ``Sequential`` of ``Dense`` layers: kernel, bias of
the first layer, then of the second...). For a JAX pytree the order is
``jax.tree_util.tree_leaves(params)`` (dict keys sorted) -- pass a list to fix it.

**Weight-decay exclusions** (``exclude_from_weight_decay``) are not part of a Keras config;
pass them again (``exclude_from_weight_decay=[...]``).

Reading uses h5py (``pip install h5py``) and never unpickles or imports anything a file
names. Writes are atomic (a temporary file in the same directory, then a rename).

Example::

    opt = kerasopt.interop.load_keras_optimizer("model.keras", variables)   # NumPy
    opt = kerasopt.interop.load_keras_optimizer("model.keras", model.parameters())  # torch
    tx, state = kerasopt.interop.load_keras_optimizer("model.keras", params)  # JAX/optax
    ...
    kerasopt.interop.save_keras_weights("out.weights.h5", opt, like="model.weights.h5")
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kerasopt.backend import is_jax, is_torch

__all__ = [
    "KerasFileError",
    "keras_variable_layout",
    "load_keras_optimizer",
    "load_keras_optimizer_state",
    "read_model_weights",
    "read_optimizer_config",
    "read_optimizer_variables",
    "save_keras_weights",
]

OPTIMIZER_GROUP = "optimizer/vars"
INNER_GROUP = "optimizer/inner_optimizer/vars"
WEIGHTS_IN_ARCHIVE = "model.weights.h5"
_SCALE_KEYS = ("scale/iteration", "scale/learning_rate", "step_counter", "dynamic_scale")


class KerasFileError(ValueError):
    """A Keras file that cannot be read as asked, or state that does not fit."""


# --------------------------------------------------------------------------- reading files


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is in the test extra
        from kerasopt._install import fix_command

        raise ImportError(
            "kerasopt.interop reads and writes Keras's HDF5 weight files with h5py; install "
            f"it with kerasopt's interop extra: {fix_command('interop')}"
        ) from error
    return h5py


def _is_archive(path: str | os.PathLike) -> bool:
    return zipfile.is_zipfile(os.fspath(path))


def _weights_bytes(path: str | os.PathLike) -> bytes | None:
    """``model.weights.h5`` of a ``.keras`` archive, or None for a plain weights file."""
    if not _is_archive(path):
        return None
    with zipfile.ZipFile(os.fspath(path)) as archive:
        if WEIGHTS_IN_ARCHIVE not in archive.namelist():
            raise KerasFileError(
                f"{os.fspath(path)}: this zip archive has no {WEIGHTS_IN_ARCHIVE} (entries: "
                f"{archive.namelist()}); is it a Keras 3 .keras file?")
        return archive.read(WEIGHTS_IN_ARCHIVE)


def _open_h5(path: str | os.PathLike) -> Any:
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such Keras file: {path!r}.")
    data = _weights_bytes(path)
    if data is not None:
        return h5py.File(io.BytesIO(data), "r")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise KerasFileError(
            f"{path}: not a Keras .keras archive or .weights.h5 HDF5 file ({error}).") from None


def _numbered(group: Any, where: str) -> list[np.ndarray]:
    keys = list(group.keys())
    expected = [str(i) for i in range(len(keys))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        raise KerasFileError(f"{where}: expected datasets '0'..'{len(keys) - 1}'; found {keys}.")
    return [np.array(group[k]) for k in expected]


def read_optimizer_config(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer config stored in a ``.keras`` file (``compile_config["optimizer"]``),
    as Keras's dict (``{"module", "class_name", "config", "registered_name"}``)."""
    path = os.fspath(path)
    if not _is_archive(path):
        raise KerasFileError(
            f"{path}: a weights file holds no optimizer config (only a .keras archive does); "
            "pass the optimizer's config with config=... (e.g. kerasopt.serialize(opt) or the "
            "Keras optimizer's get_config()), or load into an existing optimizer with "
            "load_keras_optimizer_state().")
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except KeyError:
            raise KerasFileError(f"{path}: the archive has no config.json.") from None
    compile_config = config.get("compile_config") or {}
    optimizer = compile_config.get("optimizer")
    if not isinstance(optimizer, Mapping):
        raise KerasFileError(
            f"{path}: the model was saved without a compiled optimizer (compile_config "
            f"has optimizer={optimizer!r}); compile the Keras model before saving it, or pass "
            "config=....")
    if isinstance(optimizer, str):  # pragma: no cover - handled above
        optimizer = {"class_name": optimizer, "config": {}}
    return dict(optimizer)


def read_optimizer_variables(path: str | os.PathLike) -> list[np.ndarray]:
    """The optimizer's variables of a ``.keras`` or ``.weights.h5`` file, in Keras's order
    (datasets ``optimizer/vars/0``, ``1``...)."""
    with _open_h5(path) as f:
        if OPTIMIZER_GROUP not in f:
            raise KerasFileError(
                f"{os.fspath(path)}: no optimizer state in this file (no '{OPTIMIZER_GROUP}' "
                "group). Keras saves it only for a compiled model whose optimizer was built "
                "(after training, or optimizer.build(model.trainable_variables)).")
        return _numbered(f[OPTIMIZER_GROUP], f"{os.fspath(path)}:{OPTIMIZER_GROUP}")


def read_model_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every model weight of a Keras file, by HDF5 path (``"layers/dense/vars/0"``...).

    The paths follow the model's attribute structure (``layers/<auto name>/vars/<i>``), not
    the order of ``model.weights``; match them by path."""
    out: dict[str, np.ndarray] = {}
    with _open_h5(path) as f:
        def visit(name: str, obj: Any) -> None:
            if hasattr(obj, "shape") and not name.startswith("optimizer/"):
                out[name] = np.array(obj)

        f.visititems(visit)
    return out


# --------------------------------------------------------------------------- layout


def _unwrap(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(class_name, config)`` of a Keras dict or of a bare config (Adam by default)."""
    if "class_name" in config and isinstance(config.get("config"), Mapping):
        return str(config["class_name"]), dict(config["config"])
    return ("Adam" if "amsgrad" in config else "Adamax"), dict(config)


def keras_variable_layout(config: Mapping[str, Any], n_variables: int) -> list[tuple[str, int]]:
    """What each of Keras's optimizer variables is, for ``n_variables`` model variables.

    ``config`` is an optimizer dict as Keras serializes it (``{"class_name": "Adam", "config":
    {...}}``, a ``LossScaleOptimizer`` around one, or what :func:`kerasopt.serialize`
    returns). Returns ``[(kind, index), ...]`` in the file's order: ``("iteration", -1)``,
    ``("learning_rate", -1)``, ``("average", i)``, ``("gradient_accumulator", i)``,
    ``("momentum", i)``, ``("velocity", i)`` / ``("norm", i)``, ``("velocity_hat", i)``;
    a LossScaleOptimizer starts with ``("scale/iteration", -1)``,
    ``("scale/learning_rate", -1)``, ``("step_counter", -1)``, ``("dynamic_scale", -1)``.
    """
    class_name, cfg = _unwrap(config)
    if class_name == "LossScaleOptimizer":
        inner = cfg.get("inner_optimizer")
        if not isinstance(inner, Mapping):
            raise KerasFileError(
                f"LossScaleOptimizer config has no inner_optimizer dict: {cfg!r}.")
        return [(k, -1) for k in _SCALE_KEYS] + keras_variable_layout(inner, n_variables)
    if class_name not in ("Adam", "Adamax"):
        raise KerasFileError(
            f"kerasopt reads Adam, Adamax and LossScaleOptimizer state; the file's optimizer "
            f"is {class_name!r}.")
    n = range(n_variables)
    layout = [("iteration", -1)]
    if not isinstance(cfg.get("learning_rate"), Mapping):
        layout.append(("learning_rate", -1))
    if cfg.get("use_ema"):
        layout += [("average", i) for i in n]
    if cfg.get("gradient_accumulation_steps"):
        layout += [("gradient_accumulator", i) for i in n]
    second = "velocity" if class_name == "Adam" else "norm"
    for i in n:
        layout += [("momentum", i), (second, i)]
    if class_name == "Adam" and cfg.get("amsgrad"):
        layout += [("velocity_hat", i) for i in n]
    return layout


def _check_arrays(layout: Sequence[tuple[str, int]], arrays: Sequence[np.ndarray],
                  shapes: Sequence[tuple[int, ...]], where: str) -> None:
    if len(arrays) != len(layout):
        raise KerasFileError(
            f"{where}: the file holds {len(arrays)} optimizer variables; an optimizer with this "
            f"config over {len(shapes)} variables has {len(layout)}. Check that the config "
            "matches (use_ema, gradient_accumulation_steps, amsgrad, a float vs a scheduled "
            "learning rate) and that you passed the Keras model's trainable_variables, all of "
            "them, in their order.")
    for j, ((kind, i), array) in enumerate(zip(layout, arrays)):
        expected = tuple(shapes[i]) if i >= 0 else ()
        if tuple(np.shape(array)) != expected:
            what = f"{kind} of variable {i}" if i >= 0 else kind
            raise KerasFileError(
                f"{where}: optimizer variable {j} ({what}) has shape {tuple(np.shape(array))}; "
                f"expected {expected}. The variables must be in the order of the Keras model's "
                "trainable_variables.")


# --------------------------------------------------------------------------- kinds of targets


def _kind(variables: Any) -> str:
    from kerasopt.variable import Variable

    if isinstance(variables, (list, tuple)) and variables and all(
        isinstance(v, Variable) for v in variables
    ):
        return "numpy"
    leaves = variables
    if isinstance(variables, (list, tuple)) and variables and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in variables
    ):
        leaves = [v[1] for v in variables]
    if isinstance(leaves, (list, tuple)) and leaves and all(is_torch(v) for v in leaves):
        return "torch"
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        flat = jax.tree_util.tree_leaves(variables)
        if flat and all(is_jax(x) for x in flat):
            return "jax"
    raise TypeError(
        "load_keras_optimizer: `variables` must be a list of kerasopt.Variable (NumPy), torch "
        "tensors or (name, tensor) pairs (e.g. list(model.parameters())), or a pytree of JAX "
        f"arrays; received {type(variables).__name__}. Wrap NumPy arrays in "
        "kerasopt.Variable, and pass model.parameters() as a list.")


def _core_from_config(config: Mapping[str, Any]) -> Any:
    import kerasopt

    try:
        return kerasopt.deserialize(dict(config))
    except (TypeError, ValueError) as error:
        raise KerasFileError(f"The optimizer config cannot be loaded: {error}") from error


def _constructor_args(core: Any) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """``(class_name, kwargs, loss_scale_kwargs)`` for the torch / optax front ends."""
    from kerasopt.loss_scale import LossScaleOptimizer
    from kerasopt.schedules import deserialize as deserialize_schedule

    scale = None
    if isinstance(core, LossScaleOptimizer):
        cfg = core.get_config()
        scale = {"initial_scale": cfg["initial_scale"],
                 "dynamic_growth_steps": cfg["dynamic_growth_steps"]}
        core = core.inner_optimizer
    kwargs = dict(core.get_config())
    kwargs.pop("name", None)
    if isinstance(kwargs.get("learning_rate"), Mapping):
        kwargs["learning_rate"] = deserialize_schedule(kwargs["learning_rate"])
    for key in ("beta_1", "beta_2"):
        if isinstance(kwargs.get(key), Mapping):  # pragma: no cover - callables don't serialize
            raise KerasFileError(f"`{key}` is not a number in this config.")
    return type(core).__name__, kwargs, scale


# --------------------------------------------------------------------------- loading


def load_keras_optimizer(
    path: str | os.PathLike,
    variables: Any,
    *,
    config: Mapping[str, Any] | None = None,
    exclude_from_weight_decay: Iterable[str] | None = None,
) -> Any:
    """Create the optimizer a Keras file describes, for ``variables``, with its state.

    Args:
        path: a ``.keras`` file (config and state) or a ``.weights.h5`` file (state only:
            then pass ``config``).
        variables: the variables to train, **in the order of the Keras model's
            ``trainable_variables``**: a list of :class:`kerasopt.Variable` (returns a
            ``kerasopt.Adam`` / ``Adamax`` / ``LossScaleOptimizer``), a list of torch tensors
            or ``(name, tensor)`` pairs (returns a ``kerasopt.torch`` optimizer), or a pytree
            of JAX arrays (returns ``(tx, state)`` of ``kerasopt.optax``).
        config: the optimizer's config (Keras's dict, e.g. ``keras.optimizers.serialize(opt)``
            or ``kerasopt.serialize(opt)``); default: the one in the ``.keras`` file.
        exclude_from_weight_decay: variable-name patterns excluded from weight decay (Keras
            does not save them).

    The next step continues exactly where Keras stopped (same iteration counter, slots,
    accumulators, EMA averages, loss scale).
    """
    config = dict(config) if config is not None else read_optimizer_config(path)
    kind = _kind(variables)
    core = _core_from_config(config)
    excluded = list(exclude_from_weight_decay or [])
    if kind == "numpy":
        target = getattr(core, "inner_optimizer", core)
        if excluded:
            target.exclude_from_weight_decay(var_names=excluded)
        core.build(list(variables))
        return load_keras_optimizer_state(path, core)
    class_name, kwargs, scale = _constructor_args(core)
    if kind == "torch":
        import kerasopt.torch as kt

        params = list(variables)
        optimizer = getattr(kt, class_name)(params, **kwargs)
        if excluded:
            optimizer.exclude_from_weight_decay(var_names=excluded)
        if scale is not None:
            optimizer = kt.LossScaleOptimizer(optimizer, **scale)
        return load_keras_optimizer_state(path, optimizer)
    import kerasopt.optax as ko

    if excluded:
        kwargs["exclude_from_weight_decay"] = excluded
    tx = getattr(ko, class_name.lower())(**kwargs)
    if scale is not None:
        tx = ko.loss_scale(tx, **scale)
    state = tx.init(variables)
    return tx, load_keras_optimizer_state(path, state)


def load_keras_optimizer_state(path: str | os.PathLike, optimizer: Any) -> Any:
    """Load the optimizer state of a Keras file into an existing kerasopt optimizer.

    ``optimizer`` is a built ``kerasopt.Adam`` / ``Adamax`` / ``LossScaleOptimizer`` (returned
    after loading), a ``kerasopt.torch`` optimizer (its parameters in the Keras model's
    ``trainable_variables`` order; returned after loading), or a ``kerasopt.optax`` state
    from ``tx.init(params)`` (a new state is returned). Everything is checked (count and
    shapes) before anything changes.
    """
    arrays = read_optimizer_variables(path)
    where = os.fspath(path)
    from kerasopt.optimizer import Optimizer

    if isinstance(optimizer, Optimizer):
        if not optimizer.built:
            raise KerasFileError(
                f"{optimizer.name}: build the optimizer first (optimizer.build(variables), with "
                "the variables in the Keras model's trainable_variables order), or use "
                "load_keras_optimizer(path, variables).")
        own = optimizer.variables
        if len(own) != len(arrays):
            raise KerasFileError(
                f"{where}: the file holds {len(arrays)} optimizer variables; "
                f"{optimizer.name} has {len(own)}. The optimizer's options (use_ema, "
                "gradient_accumulation_steps, amsgrad, a float vs a scheduled rate) must match "
                "the Keras optimizer's, and the variables must be the Keras model's "
                "trainable_variables, all of them, in their order.")
        for j, (variable, array) in enumerate(zip(own, arrays)):
            if tuple(array.shape) != variable.shape:
                raise KerasFileError(
                    f"{where}: optimizer variable {j} has shape {tuple(array.shape)}; "
                    f"{variable.name} has shape {variable.shape}. The variables must be in the "
                    "order of the Keras model's trainable_variables.")
        optimizer.load_own_variables({str(i): a for i, a in enumerate(arrays)})
        return optimizer
    if _is_torch_optimizer(optimizer):
        _load_torch(optimizer, arrays, where)
        return optimizer
    return _load_optax(optimizer, arrays, where)


def _is_torch_optimizer(optimizer: Any) -> bool:
    try:
        import kerasopt.torch as kt
    except ImportError:
        return False
    return isinstance(optimizer, (kt.KerasOptimizer, kt.LossScaleOptimizer))


def _torch_layout_and_params(optimizer: Any) -> tuple[list[tuple[str, int]], list[Any], Any]:
    import kerasopt.torch as kt

    scale = optimizer if isinstance(optimizer, kt.LossScaleOptimizer) else None
    inner = scale.inner_optimizer if scale is not None else optimizer
    params = [p[1] if isinstance(p, tuple) else p
              for group in inner.param_groups for p in group["params"]]
    group = inner.param_groups[0]
    cfg = {
        "learning_rate": {} if group.get("learning_rate") is not None else 0.0,
        "use_ema": any(g["use_ema"] for g in inner.param_groups),
        "gradient_accumulation_steps": inner.gradient_accumulation_steps,
        "amsgrad": group.get("amsgrad", False),
    }
    class_name = "Adam" if isinstance(inner, kt.Adam) else "Adamax"
    return _frontend_layout(class_name, cfg, len(params), scale is not None), params, scale


def _load_torch(optimizer: Any, arrays: list[np.ndarray], where: str) -> None:
    import torch

    layout, params, scale = _torch_layout_and_params(optimizer)
    inner = scale.inner_optimizer if scale is not None else optimizer
    _check_arrays(layout, arrays, [tuple(p.shape) for p in params], where)
    state_dict = inner.state_dict()
    index = {}
    for group in state_dict["param_groups"]:
        index.update(dict(enumerate(group["params"], start=len(index))))
    new_state: dict[Any, dict[str, Any]] = {index[i]: {} for i in range(len(params))}
    values: dict[str, Any] = {}
    for (kind, i), array in zip(layout, arrays):
        if i >= 0:
            new_state[index[i]][kind] = torch.from_numpy(np.array(array))
        else:
            values[kind] = array
    state_dict["state"] = new_state
    for group in state_dict["param_groups"]:
        group["iterations"] = int(values["iteration"])
        if "learning_rate" in values:
            group["lr"] = float(values["learning_rate"])
    inner.load_state_dict(state_dict)
    if scale is not None:
        scale.step_counter = int(values["step_counter"])
        scale.dynamic_scale = float(np.float32(values["dynamic_scale"]))


_OPTAX_FIELD = {"average": "average", "gradient_accumulator": "accumulator",
                "momentum": "momentum", "velocity": "velocity", "norm": "norm",
                "velocity_hat": "velocity_hat"}


def _optax_parts(state: Any) -> tuple[Any, Any]:
    import kerasopt.optax as ko

    if isinstance(state, ko.LossScaleState):
        return state, state.inner_state
    if isinstance(state, (ko.AdamState, ko.AdamaxState)):
        return None, state
    raise TypeError(
        "load_keras_optimizer_state: expected a kerasopt optimizer, a kerasopt.torch optimizer "
        "or a kerasopt.optax state (AdamState, AdamaxState, LossScaleState from tx.init); "
        f"received {type(state).__name__}.")


def _optax_layout(state: Any, has_lr: bool) -> tuple[list[tuple[str, int]], list[Any], Any]:
    import jax

    import kerasopt.optax as ko

    scale, inner = _optax_parts(state)
    leaves, treedef = jax.tree_util.tree_flatten(inner.momentum)
    cfg = {"learning_rate": 0.0 if has_lr else {}, "use_ema": inner.average is not None,
           "gradient_accumulation_steps": inner.accumulator is not None,
           "amsgrad": getattr(inner, "velocity_hat", None) is not None}
    class_name = "Adam" if isinstance(inner, ko.AdamState) else "Adamax"
    return _frontend_layout(class_name, cfg, len(leaves), scale is not None), leaves, treedef


def _frontend_layout(class_name: str, cfg: dict[str, Any], n: int,
                     scaled: bool) -> list[tuple[str, int]]:
    """:func:`keras_variable_layout` of a frontend's optimizer, led by the loss-scale
    wrapper's variables when it has one."""
    layout = keras_variable_layout({"class_name": class_name, "config": cfg}, n)
    return [(k, -1) for k in _SCALE_KEYS] + layout if scaled else layout


def _load_optax(state: Any, arrays: list[np.ndarray], where: str) -> Any:
    import jax
    import jax.numpy as jnp

    scale, inner = _optax_parts(state)
    layout, leaves, treedef = _optax_layout(state, has_lr=True)
    if len(arrays) != len(layout):
        layout, leaves, treedef = _optax_layout(state, has_lr=False)
    _check_arrays(layout, arrays, [tuple(x.shape) for x in leaves], where)
    per_field: dict[str, list[Any]] = {}
    values: dict[str, Any] = {}
    for (kind, i), array in zip(layout, arrays):
        if i >= 0:
            per_field.setdefault(_OPTAX_FIELD[kind], [None] * len(leaves))[i] = array
        else:
            values[kind] = array
    replaced = {"count": jnp.asarray(values["iteration"], inner.count.dtype)}
    for field, arrays_of_field in per_field.items():
        template = jax.tree_util.tree_leaves(getattr(inner, field))
        replaced[field] = treedef.unflatten(
            [jnp.asarray(a, dtype=t.dtype) for a, t in zip(arrays_of_field, template)])
    new_inner = inner._replace(**replaced)
    if scale is None:
        return new_inner
    return scale._replace(
        inner_state=new_inner,
        step_counter=jnp.asarray(values["step_counter"], scale.step_counter.dtype),
        dynamic_scale=jnp.asarray(values["dynamic_scale"], scale.dynamic_scale.dtype))


# --------------------------------------------------------------------------- saving


def _keras_int(value: Any) -> np.ndarray:
    value = int(np.asarray(value))
    return np.array(value, np.int32 if -(2**31) <= value < 2**31 else np.int64)


def _arrays_from(optimizer: Any, learning_rate: float | None) -> tuple[list[np.ndarray], int]:
    """Keras-ordered arrays of any kerasopt optimizer / optax state, and how many of them
    belong to a LossScaleOptimizer itself (0 or 4)."""
    from kerasopt.loss_scale import LossScaleOptimizer
    from kerasopt.optimizer import Optimizer

    if isinstance(optimizer, Optimizer):
        if not optimizer.built:
            raise KerasFileError(
                f"{optimizer.name} is not built, so it has no state to save; build it "
                "(optimizer.build(variables)) or train a step first.")
        arrays = []
        for variable in optimizer.variables:
            value = variable.numpy()
            arrays.append(_keras_int(value) if value.dtype.kind in "iu" else value)
        return arrays, 4 if isinstance(optimizer, LossScaleOptimizer) else 0
    if _is_torch_optimizer(optimizer):
        layout, params, scale = _torch_layout_and_params(optimizer)
        inner = scale.inner_optimizer if scale is not None else optimizer
        group = inner.param_groups[0]
        arrays = []
        for kind, i in layout:
            if i >= 0:
                state = inner.state.get(params[i], {})
                value = state.get(kind)
                arrays.append(np.zeros(tuple(params[i].shape), _torch_numpy_dtype(params[i]))
                              if value is None else value.detach().cpu().numpy().copy())
            elif kind == "iteration":
                arrays.append(_keras_int(inner.raw_iterations))
            elif kind == "learning_rate":
                arrays.append(np.array(group["lr"], np.float32))
            else:
                arrays.append(_scale_value(kind, scale.step_counter, scale.dynamic_scale))
        return arrays, 4 if scale is not None else 0
    layout, leaves, _ = _optax_layout(optimizer, has_lr=learning_rate is not None)
    scale, inner = _optax_parts(optimizer)
    import jax

    arrays = []
    for kind, i in layout:
        if i >= 0:
            tree = getattr(inner, _OPTAX_FIELD[kind])
            arrays.append(np.asarray(jax.tree_util.tree_leaves(tree)[i]).copy())
        elif kind == "iteration":
            arrays.append(_keras_int(inner.count))
        elif kind == "learning_rate":
            arrays.append(np.array(learning_rate, np.float32))
        else:
            arrays.append(_scale_value(kind, scale.step_counter, scale.dynamic_scale))
    return arrays, 4 if scale is not None else 0


def _torch_numpy_dtype(p: Any) -> Any:
    import torch

    return torch.empty((), dtype=p.dtype).numpy().dtype


def _scale_value(kind: str, step_counter: Any, dynamic_scale: Any) -> np.ndarray:
    return {
        "scale/iteration": np.array(0, np.int32),
        "scale/learning_rate": np.array(0.0, np.float32),
        "step_counter": _keras_int(step_counter),
        "dynamic_scale": np.array(np.asarray(dynamic_scale), np.float32),
    }[kind]


def _write_optimizer(f: Any, arrays: Sequence[np.ndarray], n_scale: int, name: str) -> None:
    if "optimizer" in f:
        del f["optimizer"]
    group = f.create_group(OPTIMIZER_GROUP)
    group.attrs["name"] = name
    for i, array in enumerate(arrays):
        group.create_dataset(str(i), data=array)
    if n_scale:
        inner = f.create_group(INNER_GROUP)
        inner.attrs["name"] = name
        for i, array in enumerate(arrays[n_scale:]):
            inner.create_dataset(str(i), data=array)


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kerasopt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _weights_file(like_bytes: bytes | None, arrays: Sequence[np.ndarray], n_scale: int,
                  name: str, model_weights: Mapping[str, Any] | None, where: str) -> bytes:
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as out:
        if like_bytes is not None:
            with h5py.File(io.BytesIO(like_bytes), "r") as src:
                for key in src.keys():
                    if key != "optimizer":
                        src.copy(src[key], out, name=key)
                for key, value in src.attrs.items():
                    out.attrs[key] = value
        for key, value in (model_weights or {}).items():
            if key not in out:
                raise KerasFileError(
                    f"model_weights: {key!r} is not a weight of {where} (its weights: "
                    f"{sorted(k for k in _dataset_paths(out))[:8]}...). Use the paths "
                    "read_model_weights() returns.")
            array = np.asarray(value.detach().cpu().numpy() if is_torch(value) else value)
            if tuple(array.shape) != tuple(out[key].shape):
                raise KerasFileError(
                    f"model_weights[{key!r}] has shape {tuple(array.shape)}; the model's "
                    f"weight has shape {tuple(out[key].shape)}.")
            out[key][...] = array.astype(out[key].dtype)
        _write_optimizer(out, arrays, n_scale, name)
    return buffer.getvalue()


def _dataset_paths(f: Any) -> list[str]:
    found: list[str] = []
    f.visititems(lambda n, o: found.append(n) if hasattr(o, "shape") else None)
    return found


def save_keras_weights(
    path: str | os.PathLike,
    optimizer: Any,
    *,
    like: str | os.PathLike | None = None,
    model_weights: Mapping[str, Any] | None = None,
    learning_rate: float | None = None,
    name: str | None = None,
) -> None:
    """Write a kerasopt optimizer's state in Keras's layout, so Keras can load it.

    Args:
        path: where to write: a ``.weights.h5`` file, or a ``.keras`` archive (then ``like``
            must be a ``.keras`` file; its config is kept, with the optimizer config replaced
            by ``kerasopt.serialize(optimizer)`` for a NumPy optimizer).
        optimizer: a built ``kerasopt.Adam`` / ``Adamax`` / ``LossScaleOptimizer``, a
            ``kerasopt.torch`` optimizer, or a ``kerasopt.optax`` state (``AdamState``,
            ``AdamaxState``, ``LossScaleState``). Its variables must be in the order of the
            Keras model's ``trainable_variables``.
        like: a file Keras wrote for the target model (``model.save_weights(...)`` or
            ``model.save(...)``); its model weights (and, for ``.keras``, config) are copied,
            so ``model.load_weights(path)`` / ``keras.saving.load_model(path)`` work. Without
            it, the file holds only the optimizer: load it into a built Keras optimizer with
            ``optimizer.load_own_variables(h5py.File(path)["optimizer/vars"])``.
        model_weights: replace model weights of ``like``, by HDF5 path (the keys of
            :func:`read_model_weights`); arrays or torch tensors.
        learning_rate: for an optax state only: the float learning rate Keras's optimizer
            stores (optax states do not hold it); leave None when Keras's rate is a schedule.
        name: the optimizer's name attribute in the file (default: the optimizer's name).
    """
    path = os.fspath(path)
    arrays, n_scale = _arrays_from(optimizer, learning_rate)
    name = name or getattr(optimizer, "name", None) or "optimizer"
    if not isinstance(name, str):
        name = "optimizer"
    like_bytes = None
    archive_entries: dict[str, bytes] = {}
    if like is not None:
        like = os.fspath(like)
        if not os.path.exists(like):
            raise FileNotFoundError(f"like={like!r}: no such file.")
        data = _weights_bytes(like)
        if data is None:
            with open(like, "rb") as f:
                like_bytes = f.read()
        else:
            like_bytes = data
            with zipfile.ZipFile(like) as archive:
                archive_entries = {n: archive.read(n) for n in archive.namelist()
                                   if n != WEIGHTS_IN_ARCHIVE}
    elif model_weights:
        raise KerasFileError("model_weights needs like=<a Keras file of the model>.")
    weights = _weights_file(like_bytes, arrays, n_scale, name, model_weights, str(like))
    if not path.endswith(".keras"):
        _atomic_write(path, weights)
        return
    if not archive_entries:
        raise KerasFileError(
            f"{path}: writing a .keras archive needs like=<a .keras file of the model> (for "
            "its config); or write a .weights.h5 file.")
    from kerasopt.optimizer import Optimizer

    if isinstance(optimizer, Optimizer) and "config.json" in archive_entries:
        import kerasopt

        config = json.loads(archive_entries["config.json"])
        config.setdefault("compile_config", {})
        if isinstance(config["compile_config"], dict):
            config["compile_config"]["optimizer"] = kerasopt.serialize(optimizer)
            archive_entries["config.json"] = json.dumps(config).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry, data in archive_entries.items():
            archive.writestr(entry, data)
        archive.writestr(WEIGHTS_IN_ARCHIVE, weights)
    _atomic_write(path, buffer.getvalue())
