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

Reading uses h5py (the ``interop`` extra: ``pip install ".[interop]"`` from a kerasopt
checkout, or ``pip install h5py``) and never unpickles or imports anything a file
names. Writes are atomic (:func:`kerasopt.files.atomic_write`: a temporary file in the same
directory, fsync, rename, directory fsync; a new file gets the umask's mode, an existing one
keeps its mode); reads accept regular files only.

Example::

    opt = kerasopt.interop.load_keras_optimizer("model.keras", variables)   # NumPy
    opt = kerasopt.interop.load_keras_optimizer("model.keras", model.parameters())  # torch
    tx, state = kerasopt.interop.load_keras_optimizer("model.keras", params)  # JAX/optax
    ...
    kerasopt.interop.save_keras_weights("out.weights.h5", opt, like="model.weights.h5")
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from kerasopt import files
from kerasopt.backend import is_jax, is_torch

__all__ = [
    "KerasFileError",
    "from_keras",
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
            "kerasopt.interop reads and writes Keras's HDF5 weight files with h5py, which is "
            f"not installed; install it with kerasopt's interop extra: {fix_command('interop')}"
        ) from error
    return h5py


# config.json of a .keras archive is small; a larger entry is refused before it is inflated.
_MAX_CONFIG_BYTES = 64 << 20


@contextlib.contextmanager
def _open_file(path: str | os.PathLike) -> Iterator[Any]:
    """``path`` opened for reading if it is a regular file (a FIFO, a device or a directory
    is refused at once with KerasFileError: never blocking, never reading without bound)."""
    path = os.fspath(path)
    try:
        f = files.open_regular(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"No such Keras file: {path!r}.") from None
    except files.NotRegularFileError as error:
        raise KerasFileError(f"{path}: not a Keras file ({error}).") from None
    with f:
        yield f


def _weights_bytes(f: Any, path: str) -> bytes | None:
    """``model.weights.h5`` of a ``.keras`` archive opened as ``f``, or None for a plain
    weights file."""
    if not zipfile.is_zipfile(f):
        return None
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        if WEIGHTS_IN_ARCHIVE not in archive.namelist():
            raise KerasFileError(
                f"{path}: this zip archive has no {WEIGHTS_IN_ARCHIVE} (entries: "
                f"{archive.namelist()}); is it a Keras 3 .keras file?")
        return archive.read(WEIGHTS_IN_ARCHIVE)


@contextlib.contextmanager
def _open_h5(path: str | os.PathLike) -> Iterator[Any]:
    h5py = _h5py()
    path = os.fspath(path)
    with _open_file(path) as f:
        data = _weights_bytes(f, path)
        f.seek(0)
        try:
            h5 = h5py.File(io.BytesIO(data) if data is not None else f, "r")
        except OSError as error:
            raise KerasFileError(
                f"{path}: not a Keras .keras archive or .weights.h5 HDF5 file ({error})."
            ) from None
        with h5:
            yield h5


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
    with _open_file(path) as f:
        if not zipfile.is_zipfile(f):
            raise KerasFileError(
                f"{path}: a weights file holds no optimizer config (only a .keras archive "
                "does); pass the optimizer's config with config=... (e.g. "
                "kerasopt.serialize(opt) or the Keras optimizer's get_config()), or load into "
                "an existing optimizer with load_keras_optimizer_state().")
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            try:
                info = archive.getinfo("config.json")
            except KeyError:
                raise KerasFileError(f"{path}: the archive has no config.json.") from None
            if info.file_size > _MAX_CONFIG_BYTES:
                raise KerasFileError(
                    f"{path}: its config.json has {info.file_size} bytes (at most "
                    f"{_MAX_CONFIG_BYTES} are read); not a Keras config.")
            try:
                config = json.loads(archive.read(info))
            except (ValueError, RecursionError) as error:
                raise KerasFileError(
                    f"{path}: its config.json is not valid JSON ({str(error)[:200]}).") from None
    if not isinstance(config, Mapping):
        raise KerasFileError(f"{path}: its config.json is not a JSON object.")
    compile_config = config.get("compile_config") or {}
    optimizer = compile_config.get("optimizer") if isinstance(compile_config, Mapping) else None
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
    """``(class_name, config)`` of a Keras dict, or of a bare config: the registered
    algorithm whose arguments it holds (the first registered among those that store their
    state alike: a bare Adam config and a bare AdamW config give the same layout)."""
    if "class_name" in config and isinstance(config.get("config"), Mapping):
        return str(config["class_name"]), dict(config["config"])
    from kerasopt import algorithms

    keys = set(config)
    candidates = [s for s in algorithms.registered() if set(s.defaults()) <= keys]
    best = max((len(s.defaults()) for s in candidates), default=0)
    candidates = [s for s in candidates if len(s.defaults()) == best]
    if not candidates or len({s.all_slots for s in candidates}) > 1:
        names = ", ".join(s.keras_name for s in candidates or algorithms.registered())
        raise KerasFileError(
            "The optimizer config names no class and its arguments do not tell which "
            f"algorithm it is (one of {names}); pass Keras's serialized form "
            "({'class_name': ..., 'config': ...})."
        )
    return candidates[0].keras_name, dict(config)


def _spec(class_name: str) -> Any:
    """The registered algorithm Keras calls ``class_name``."""
    from kerasopt import algorithms

    try:
        spec = algorithms.get(class_name)
    except KeyError:
        spec = None
    if spec is None or spec.keras_name != class_name:
        known = ", ".join(s.keras_name for s in algorithms.registered())
        raise KerasFileError(
            f"kerasopt reads the state of {known} and LossScaleOptimizer; the optimizer is "
            f"{class_name!r}.")
    return spec


def keras_variable_layout(config: Mapping[str, Any], n_variables: int) -> list[tuple[str, int]]:
    """What each of Keras's optimizer variables is, for ``n_variables`` model variables.

    ``config`` is an optimizer dict as Keras serializes it (``{"class_name": "Adam", "config":
    {...}}``, a ``LossScaleOptimizer`` around one, or what :func:`kerasopt.serialize`
    returns). Returns ``[(kind, index), ...]`` in the file's order: ``("iteration", -1)``,
    ``("learning_rate", -1)``, ``("average", i)``, ``("gradient_accumulator", i)``, then the
    algorithm's slots interleaved per variable (``("momentum", i)``, ``("velocity", i)`` /
    ``("norm", i)``), then each optional slot (``("velocity_hat", i)``);
    a LossScaleOptimizer starts with ``("scale/iteration", -1)``,
    ``("scale/learning_rate", -1)``, ``("step_counter", -1)``, ``("dynamic_scale", -1)``.
    The slots come from the algorithm's registered spec (:mod:`kerasopt.specs`).
    """
    class_name, cfg = _unwrap(config)
    if class_name == "LossScaleOptimizer":
        inner = cfg.get("inner_optimizer")
        if not isinstance(inner, Mapping):
            raise KerasFileError(
                f"LossScaleOptimizer config has no inner_optimizer dict: {cfg!r}.")
        return [(k, -1) for k in _SCALE_KEYS] + keras_variable_layout(inner, n_variables)
    spec = _spec(class_name)
    n = range(n_variables)
    layout = [("iteration", -1)]
    if not isinstance(cfg.get("learning_rate"), Mapping):
        layout.append(("learning_rate", -1))
    if cfg.get("use_ema"):
        layout += [("average", i) for i in n]
    if cfg.get("gradient_accumulation_steps"):
        layout += [("gradient_accumulator", i) for i in n]
    for i in n:
        layout += [(slot, i) for slot in spec.slots]
    for slot in spec.slot_names(cfg)[len(spec.slots):]:
        layout += [(slot, i) for i in n]
    return layout


def _check_arrays(layout: Sequence[tuple[str, int]], arrays: Sequence[np.ndarray],
                  shapes: Sequence[tuple[int, ...]], where: str) -> None:
    _check_count(layout, arrays, len(shapes), where)
    for j, ((kind, i), array) in enumerate(zip(layout, arrays)):
        expected = tuple(shapes[i]) if i >= 0 else ()
        if tuple(np.shape(array)) != expected:
            what = f"{kind} of variable {i}" if i >= 0 else kind
            raise KerasFileError(
                f"{where}: optimizer variable {j} ({what}) has shape {tuple(np.shape(array))}; "
                f"expected {expected}. The variables must be in the order of the Keras model's "
                "trainable_variables.")


def _check_count(layout: Sequence[tuple[str, int]], arrays: Sequence[Any], n: int,
                 where: str) -> None:
    if len(arrays) != len(layout):
        raise KerasFileError(
            f"{where}: the file holds {len(arrays)} optimizer variables; an optimizer with this "
            f"config over {n} variables has {len(layout)}. Check that the config "
            "matches (use_ema, gradient_accumulation_steps, amsgrad, a float vs a scheduled "
            "learning rate) and that you passed the Keras model's trainable_variables, all of "
            "them, in their order.")


WEIGHT_LAYOUTS = ("auto", "keras", "torch")


def _transposed(layout: Sequence[tuple[str, int]], arrays: Sequence[np.ndarray],
                shapes: Sequence[tuple[int, ...]], weight_layout: str, kind: str,
                where: str) -> list[bool]:
    """For each variable, whether it is a 2-D weight in torch's ``(out, in)`` layout, so
    that its state (Keras's ``(in, out)``) is transposed.

    ``weight_layout="keras"``: none; ``"torch"``: every 2-D variable; ``"auto"``: decided
    from the shapes -- torch's layout when a 2-D variable has the transpose of Keras's
    (non-square) shape, Keras's when one has Keras's shape. Square matrices alone cannot
    tell: for torch tensors that is an error (pass ``weight_layout``); NumPy and JAX
    variables are taken in Keras's layout."""
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(
            f"Argument `weight_layout` must be one of {WEIGHT_LAYOUTS}; received "
            f"weight_layout={weight_layout!r}.")
    matrices = [len(s) == 2 for s in shapes]
    if weight_layout == "keras":
        return [False] * len(shapes)
    if weight_layout == "torch":
        return matrices
    keras_shape: dict[int, tuple[int, ...]] = {}
    for (_, i), array in zip(layout, arrays):
        if i >= 0:
            keras_shape.setdefault(i, tuple(np.shape(array)))
    torch_like = [i for i, s in enumerate(shapes)
                  if matrices[i] and s != s[::-1] and keras_shape.get(i) == tuple(s[::-1])]
    keras_like = [i for i, s in enumerate(shapes)
                  if matrices[i] and s != s[::-1] and keras_shape.get(i) == tuple(s)]
    if torch_like and keras_like:
        raise KerasFileError(
            f"{where}: some 2-D variables are in torch's (out, in) layout (variables "
            f"{torch_like}) and others in Keras's (in, out) (variables {keras_like}); pass "
            "them all in one layout.")
    if torch_like:
        return matrices
    if not keras_like and kind == "torch" and any(matrices):
        raise KerasFileError(
            f"{where}: every 2-D parameter is square, so kerasopt cannot tell whether they are "
            "in Keras's (in, out) layout or in torch's nn.Linear (out, in) layout; pass "
            "weight_layout='torch' (nn.Linear weights) or weight_layout='keras'.")
    return [False] * len(shapes)


def _to_frontend(layout: Sequence[tuple[str, int]], arrays: Sequence[np.ndarray],
                 transposed: Sequence[bool]) -> list[np.ndarray]:
    """Keras's arrays with the state of each transposed variable transposed (and back:
    transposing twice is the identity)."""
    return [np.ascontiguousarray(np.asarray(a).T) if i >= 0 and transposed[i] else a
            for (_, i), a in zip(layout, arrays)]


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
    from kerasopt.checkpoint import algorithm_of
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
    return algorithm_of(core), kwargs, scale


# --------------------------------------------------------------------------- building


def _build(config: Mapping[str, Any], variables: Any, kind: str,
           excluded_names: Sequence[str], excluded: Sequence[bool] | None) -> Any:
    """A new optimizer of ``kind`` for ``variables`` with Keras's ``config`` (every argument,
    a schedule as a :mod:`kerasopt.schedules` schedule), the weight-decay exclusions by name
    pattern and by position (``excluded[i]``: variable ``i`` is excluded), no state yet.
    Returns the optimizer (NumPy, torch) or ``(tx, state)`` (optax)."""
    core = _core_from_config(config)
    names = list(excluded_names)
    if kind == "numpy":
        target = getattr(core, "inner_optimizer", core)
        chosen = [v for v, e in zip(variables, excluded or []) if e]
        if names or chosen:
            target.exclude_from_weight_decay(var_list=chosen, var_names=names)
        core.build(list(variables))
        return core
    class_name, kwargs, scale = _constructor_args(core)
    if kind == "torch":
        import kerasopt.torch as kt

        cls = _frontend_class(kt, class_name, "kerasopt.torch")
        params = list(variables)
        optimizer = cls(params, **kwargs)
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        chosen = [p for p, e in zip(tensors, excluded or []) if e]
        if names or chosen:
            optimizer.exclude_from_weight_decay(var_list=chosen, var_names=names)
        if scale is not None:
            optimizer = kt.LossScaleOptimizer(optimizer, **scale)
        return optimizer
    import jax

    import kerasopt.optax as ko

    factory = _frontend_class(ko, _spec(class_name).name, "kerasopt.optax")
    if names:
        kwargs["exclude_from_weight_decay"] = names
    if excluded is not None and any(excluded):
        leaves, treedef = jax.tree_util.tree_flatten(variables)
        kwargs["weight_decay_mask"] = treedef.unflatten([not e for e in excluded])
    tx = factory(**kwargs)
    if scale is not None:
        tx = ko.loss_scale(tx, **scale)
    return tx, tx.init(variables)


def _frontend_class(module: Any, name: str, where: str) -> Any:
    found = getattr(module, name, None)
    if found is None:
        raise KerasFileError(f"{where} has no {name!r} yet; port this optimizer to NumPy "
                             "(kerasopt.Variable variables) or use Adam / Adamax.")
    return found


# --------------------------------------------------------------------------- loading


def load_keras_optimizer(
    path: str | os.PathLike,
    variables: Any,
    *,
    config: Mapping[str, Any] | None = None,
    exclude_from_weight_decay: Iterable[str] | None = None,
    weight_layout: str = "auto",
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
        weight_layout: ``"auto"`` (default), ``"keras"`` or ``"torch"``: whether 2-D
            variables are Keras's ``(in, out)`` kernels or torch's ``nn.Linear`` weights
            ``(out, in)``, whose state is then transposed (see :func:`from_keras`).

    The next step continues exactly where Keras stopped (same iteration counter, slots,
    accumulators, EMA averages, loss scale).
    """
    config = dict(config) if config is not None else read_optimizer_config(path)
    kind = _kind(variables)
    built = _build(config, variables, kind, list(exclude_from_weight_decay or []), None)
    arrays = read_optimizer_variables(path)
    if kind == "jax":
        tx, state = built
        return tx, _load_state(state, arrays, os.fspath(path), weight_layout)
    return _load_state(built, arrays, os.fspath(path), weight_layout)


def load_keras_optimizer_state(path: str | os.PathLike, optimizer: Any, *,
                               weight_layout: str = "auto") -> Any:
    """Load the optimizer state of a Keras file into an existing kerasopt optimizer.

    ``optimizer`` is a built ``kerasopt.Adam`` / ``Adamax`` / ``LossScaleOptimizer`` (returned
    after loading), a ``kerasopt.torch`` optimizer (its parameters in the Keras model's
    ``trainable_variables`` order; returned after loading), or a ``kerasopt.optax`` state
    from ``tx.init(params)`` (a new state is returned). Everything is checked (count and
    shapes) before anything changes. ``weight_layout``: see :func:`load_keras_optimizer`.
    """
    arrays = read_optimizer_variables(path)
    return _load_state(optimizer, arrays, os.fspath(path), weight_layout)


def _load_state(optimizer: Any, arrays: list[np.ndarray], where: str,
                weight_layout: str) -> Any:
    """Keras's optimizer ``arrays`` (in its order) into ``optimizer`` (returned) or into an
    optax state (a new state is returned); every check first."""
    from kerasopt.optimizer import Optimizer

    if isinstance(optimizer, Optimizer):
        _load_numpy(optimizer, arrays, where, weight_layout)
        return optimizer
    if _is_torch_optimizer(optimizer):
        _load_torch(optimizer, arrays, where, weight_layout)
        return optimizer
    return _load_optax(optimizer, arrays, where, weight_layout)


def _numpy_layout(optimizer: Any) -> tuple[list[tuple[str, int]], list[Any]]:
    from kerasopt.checkpoint import algorithm_of
    from kerasopt.loss_scale import LossScaleOptimizer

    scaled = isinstance(optimizer, LossScaleOptimizer)
    inner = optimizer.inner_optimizer if scaled else optimizer
    cfg = inner.get_config()
    variables = list(optimizer._trainable_variables)
    return _frontend_layout(algorithm_of(inner), cfg, len(variables), scaled), variables


def _load_numpy(optimizer: Any, arrays: list[np.ndarray], where: str,
                weight_layout: str) -> None:
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
    try:
        layout, variables = _numpy_layout(optimizer)
    except (KerasFileError, TypeError, ValueError):  # a config Keras has no layout for
        layout, variables = [], []
    if len(layout) == len(arrays):
        shapes = [tuple(v.shape) for v in variables]
        transposed = _transposed(layout, arrays, shapes, weight_layout, "numpy", where)
        arrays = _to_frontend(layout, arrays, transposed)
    for j, (variable, array) in enumerate(zip(own, arrays)):
        if tuple(array.shape) != variable.shape:
            raise KerasFileError(
                f"{where}: optimizer variable {j} has shape {tuple(array.shape)}; "
                f"{variable.name} has shape {variable.shape}. The variables must be in the "
                "order of the Keras model's trainable_variables.")
    optimizer.load_own_variables({str(i): a for i, a in enumerate(arrays)})


def _is_torch_optimizer(optimizer: Any) -> bool:
    from kerasopt.checkpoint import _is_torch_optimizer

    return _is_torch_optimizer(optimizer)


def _torch_layout_and_params(optimizer: Any) -> tuple[list[tuple[str, int]], list[Any], Any]:
    import kerasopt.torch as kt
    from kerasopt.checkpoint import algorithm_of

    scale = optimizer if isinstance(optimizer, kt.LossScaleOptimizer) else None
    inner = scale.inner_optimizer if scale is not None else optimizer
    params = [p[1] if isinstance(p, tuple) else p
              for group in inner.param_groups for p in group["params"]]
    group = inner.param_groups[0]
    cfg = {
        "learning_rate": {} if group.get("learning_rate") is not None else 0.0,
        "use_ema": any(g["use_ema"] for g in inner.param_groups),
        "gradient_accumulation_steps": inner.gradient_accumulation_steps,
        **{k: group[k] for k in inner._algorithm_keys if k in group},
    }
    layout = _frontend_layout(algorithm_of(inner), cfg, len(params), scale is not None)
    return layout, params, scale


def _load_torch(optimizer: Any, arrays: list[np.ndarray], where: str,
                weight_layout: str) -> None:
    import torch

    layout, params, scale = _torch_layout_and_params(optimizer)
    inner = scale.inner_optimizer if scale is not None else optimizer
    shapes = [tuple(p.shape) for p in params]
    _check_count(layout, arrays, len(shapes), where)
    transposed = _transposed(layout, arrays, shapes, weight_layout, "torch", where)
    arrays = _to_frontend(layout, arrays, transposed)
    _check_arrays(layout, arrays, shapes, where)
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


# Keras's names of the per-variable state that kerasopt.optax's state names otherwise (its
# slots keep the spec's names).
_OPTAX_FIELD = {"average": "average", "gradient_accumulator": "accumulator"}


def _optax_field(kind: str) -> str:
    return _OPTAX_FIELD.get(kind, kind)


def _optax_parts(state: Any) -> tuple[Any, Any, Any]:
    """``(loss-scale state or None, the algorithm's state, its spec)``."""
    import kerasopt.optax as ko

    scale = state if isinstance(state, ko.LossScaleState) else None
    inner = state.inner_state if scale is not None else state
    spec = ko.spec_of_state(inner)
    if spec is None:
        names = ", ".join(cls.__name__ for cls in ko.STATES.values())
        raise TypeError(
            "load_keras_optimizer_state: expected a kerasopt optimizer, a kerasopt.torch "
            f"optimizer or a kerasopt.optax state ({names} or LossScaleState, from tx.init); "
            f"received {type(state).__name__}.")
    if isinstance(getattr(inner, spec.slots[0]), getattr(ko, "Packed", ())):
        raise KerasFileError(
            "kerasopt.interop maps Keras's variables onto the state leaf by leaf: this "
            "kerasopt.optax state is packed (packed=True); use a transformation with "
            "packed=False (the default) for the Keras file.")
    return scale, inner, spec


def _optax_layout(state: Any, has_lr: bool) -> tuple[list[tuple[str, int]], list[Any], Any]:
    import jax

    scale, inner, spec = _optax_parts(state)
    leaves, treedef = jax.tree_util.tree_flatten(getattr(inner, spec.slots[0]))
    cfg = {"learning_rate": 0.0 if has_lr else {}, "use_ema": inner.average is not None,
           "gradient_accumulation_steps": inner.accumulator is not None}
    for h in spec.hyperparameters:  # an optional slot is there when its flag was set
        if h.adds_slot:
            cfg[h.name] = getattr(inner, h.adds_slot, None) is not None
    return (_frontend_layout(spec.keras_name, cfg, len(leaves), scale is not None), leaves,
            treedef)


def _frontend_layout(class_name: str, cfg: Mapping[str, Any], n: int,
                     scaled: bool) -> list[tuple[str, int]]:
    """:func:`keras_variable_layout` of a frontend's optimizer, led by the loss-scale
    wrapper's variables when it has one."""
    layout = keras_variable_layout({"class_name": class_name, "config": dict(cfg)}, n)
    return [(k, -1) for k in _SCALE_KEYS] + layout if scaled else layout


def _load_optax(state: Any, arrays: list[np.ndarray], where: str, weight_layout: str) -> Any:
    import jax
    import jax.numpy as jnp

    scale, inner, _ = _optax_parts(state)
    layout, leaves, treedef = _optax_layout(state, has_lr=True)
    if len(arrays) != len(layout):
        layout, leaves, treedef = _optax_layout(state, has_lr=False)
    shapes = [tuple(x.shape) for x in leaves]
    _check_count(layout, arrays, len(shapes), where)
    transposed = _transposed(layout, arrays, shapes, weight_layout, "jax", where)
    arrays = _to_frontend(layout, arrays, transposed)
    _check_arrays(layout, arrays, shapes, where)
    per_field: dict[str, list[Any]] = {}
    values: dict[str, Any] = {}
    for (kind, i), array in zip(layout, arrays):
        if i >= 0:
            per_field.setdefault(_optax_field(kind), [None] * len(leaves))[i] = array
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


# --------------------------------------------------------------------------- porting


FRONTENDS = ("numpy", "torch", "optax")


def from_keras(
    optimizer: Any,
    variables: Any,
    *,
    frontend: str | None = None,
    keras_variables: Sequence[Any] | None = None,
    exclude_from_weight_decay: Iterable[str] | None = None,
    weight_layout: str = "auto",
    state: bool = True,
) -> Any:
    """Port a Keras optimizer to kerasopt: the same algorithm and arguments, its exclusions
    from weight decay and (for a live, built optimizer) its state.

    Args:
        optimizer: a live Keras optimizer (``keras.optimizers.Adam(...)``, ``Adamax``,
            ``AdamW``, a ``LossScaleOptimizer`` around one, or a subclass of one), or its
            config as ``keras.optimizers.serialize(opt)`` returns it (a dict with
            ``class_name`` and ``config``; ``opt.get_config()`` alone does not name the
            class).
        variables: what to train, **in the order of the Keras model's
            ``trainable_variables``**: torch tensors or ``(name, tensor)`` pairs (returns a
            ``kerasopt.torch`` optimizer), a pytree of JAX arrays (returns ``(tx, state)`` of
            ``kerasopt.optax``), or :class:`kerasopt.Variable` s (returns a NumPy optimizer).
        frontend: ``"torch"``, ``"optax"`` or ``"numpy"``; by default the one ``variables``
            belong to (a mismatch is an error).
        keras_variables: the Keras model's ``trainable_variables``, to carry exclusions set
            with ``exclude_from_weight_decay`` (by ``var_list`` or ``var_names``) over to
            the same positions; needed only when the Keras optimizer is not built yet.
        exclude_from_weight_decay: more name patterns to exclude (matched against the names
            of ``variables``: torch's ``named_parameters()``, the optax leaf paths).
        weight_layout: ``"auto"``, ``"keras"`` or ``"torch"``: whether 2-D variables are
            Keras's ``(in, out)`` kernels or torch's ``nn.Linear`` weights ``(out, in)``.
            Their state is transposed for the latter. ``"auto"`` decides from the shapes (an
            error when every 2-D torch parameter is square: then say which).
        state: carry the Keras optimizer's state (iteration counter, slots, EMA averages,
            accumulators, loss scale) when it is built; False starts from zero.

    Every Keras argument is carried over (``learning_rate`` -- a Keras schedule becomes the
    :mod:`kerasopt.schedules` schedule of the same class and config --, the betas,
    ``epsilon``, ``amsgrad``, ``weight_decay``, the clipping, EMA, ``loss_scale_factor``,
    ``gradient_accumulation_steps``, a LossScaleOptimizer's scale settings), so the next
    step continues exactly as Keras would.
    """
    live = None if isinstance(optimizer, Mapping) else _keras_optimizer(optimizer)
    config = _keras_dict(live) if live is not None else _serialized_config(optimizer)
    kind = _kind(variables)
    wanted = {"numpy": "numpy", "torch": "torch", "jax": "optax"}[kind]
    if frontend is not None and frontend not in FRONTENDS:
        raise ValueError(
            f"Argument `frontend` must be one of {FRONTENDS} or None; received "
            f"frontend={frontend!r}.")
    if frontend is not None and frontend != wanted:
        raise TypeError(
            f"from_keras(frontend={frontend!r}) needs the variables of that frontend; "
            f"received {wanted} variables ({type(variables).__name__}).")
    n = len(_jax_leaves(variables)) if kind == "jax" else len(list(variables))
    excluded = _keras_exclusions(live, keras_variables, n) if live is not None else None
    built = _build(config, variables, kind, list(exclude_from_weight_decay or []), excluded)
    if state and live is not None and getattr(live, "built", False) and live.variables:
        arrays = [np.array(v.numpy()) for v in live.variables]
        where = f"the Keras optimizer {type(live).__name__}"
        if kind == "jax":
            tx, opt_state = built
            return tx, _load_state(opt_state, arrays, where, weight_layout)
        return _load_state(built, arrays, where, weight_layout)
    return built


def _jax_leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree_util.tree_leaves(tree)


def _keras_optimizer(optimizer: Any) -> Any:
    keras_class = any(c.__module__.startswith("keras.") for c in type(optimizer).__mro__)
    if not (keras_class and hasattr(optimizer, "get_config")
            and hasattr(optimizer, "variables")):
        raise TypeError(
            "from_keras expects a Keras optimizer (keras.optimizers.Adam(...), ...) or its "
            "config (keras.optimizers.serialize(optimizer)); received "
            f"{type(optimizer).__name__}.")
    return optimizer


def _keras_class(optimizer: Any) -> str:
    """The Keras class name of the algorithm ``optimizer`` runs, through its class
    hierarchy (Keras's torch backend subclasses ``Adam``; so may a user)."""
    from kerasopt import algorithms

    known = {s.keras_name for s in algorithms.registered()} | {"LossScaleOptimizer"}
    for cls in type(optimizer).__mro__:
        if cls.__name__ in known and cls.__module__.startswith("keras"):
            return cls.__name__
    raise KerasFileError(
        f"from_keras: {type(optimizer).__name__} is not one of Keras's {sorted(known)} (nor a "
        "subclass of one); kerasopt implements only these.")


def _keras_dict(optimizer: Any) -> dict[str, Any]:
    """``{"class_name", "config"}`` of a live Keras optimizer (a LossScaleOptimizer's inner
    optimizer the same way, so that subclasses resolve to their base)."""
    class_name = _keras_class(optimizer)
    config = dict(optimizer.get_config())
    if class_name == "LossScaleOptimizer":
        config["inner_optimizer"] = _keras_dict(optimizer.inner_optimizer)
    rate = config.get("learning_rate")
    if isinstance(rate, Mapping) and rate.get("class_name") not in _schedule_names():
        raise KerasFileError(
            f"from_keras: the learning rate is a {rate.get('class_name')!r}, which kerasopt "
            f"cannot rebuild (kerasopt.schedules has {sorted(_schedule_names())}); pass "
            "learning_rate= to a kerasopt optimizer yourself.")
    return {"class_name": class_name, "config": config}


def _schedule_names() -> set[str]:
    from kerasopt import schedules

    return {name for name in dir(schedules)
            if isinstance(getattr(schedules, name), type)
            and issubclass(getattr(schedules, name), schedules.LearningRateSchedule)
            and name != "LearningRateSchedule"}


def _serialized_config(config: Mapping[str, Any]) -> dict[str, Any]:
    if not ("class_name" in config and isinstance(config.get("config"), Mapping)):
        raise KerasFileError(
            "from_keras: a config must name its class: pass keras.optimizers.serialize(opt) "
            "(a dict with 'class_name' and 'config') or the optimizer itself, not "
            "opt.get_config().")
    return dict(config)


def _keras_exclusions(optimizer: Any, keras_variables: Sequence[Any] | None,
                      n: int) -> list[bool] | None:
    """Which of the ``n`` variables Keras excludes from weight decay (its
    ``exclude_from_weight_decay`` by ``var_list`` or ``var_names``), by position; None when
    it excludes nothing."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    ids = getattr(inner, "_exclude_from_weight_decay", None)
    pattern = getattr(inner, "_exclude_from_weight_decay_pattern", None)
    if not ids and pattern is None:
        return None
    if keras_variables is None:
        keras_variables = inner._trainable_variables if getattr(inner, "built", False) else None
    if keras_variables is None:
        raise KerasFileError(
            "from_keras: the Keras optimizer excludes variables from weight decay but is not "
            "built, so kerasopt cannot tell which ones: pass "
            "keras_variables=model.trainable_variables.")
    keras_variables = list(keras_variables)
    if len(keras_variables) != n:
        raise KerasFileError(
            f"from_keras: {len(keras_variables)} Keras variables for {n} variables to train; "
            "pass the Keras model's trainable_variables and the variables in the same order.")
    return [not inner._use_weight_decay(v) for v in keras_variables]


# --------------------------------------------------------------------------- saving


def _keras_int(value: Any) -> np.ndarray:
    value = int(np.asarray(value))
    return np.array(value, np.int32 if -(2**31) <= value < 2**31 else np.int64)


def _arrays_from(optimizer: Any, learning_rate: float | None,
                 weight_layout: str = "keras") -> tuple[list[np.ndarray], int]:
    """Keras-ordered arrays of any kerasopt optimizer / optax state, and how many of them
    belong to a LossScaleOptimizer itself (0 or 4); with ``weight_layout="torch"`` the state
    of each 2-D variable is transposed to Keras's ``(in, out)``."""
    if weight_layout not in ("keras", "torch"):
        raise ValueError(
            "Argument `weight_layout` must be 'keras' or 'torch' when saving (the file's "
            f"layout cannot be guessed); received weight_layout={weight_layout!r}.")
    arrays, n_scale, layout, shapes = _frontend_arrays(optimizer, learning_rate)
    if weight_layout == "torch":
        arrays = _to_frontend(layout, arrays, [len(s) == 2 for s in shapes])
    return arrays, n_scale


def _frontend_arrays(optimizer: Any, learning_rate: float | None
                     ) -> tuple[list[np.ndarray], int, list[tuple[str, int]], list[tuple]]:
    """The arrays in Keras's order, as the frontend holds them, with their layout and the
    shapes of the variables."""
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
        layout, variables = _numpy_layout(optimizer)
        return (arrays, 4 if isinstance(optimizer, LossScaleOptimizer) else 0, layout,
                [tuple(v.shape) for v in variables])
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
        return (arrays, 4 if scale is not None else 0, layout,
                [tuple(p.shape) for p in params])
    layout, leaves, _ = _optax_layout(optimizer, has_lr=learning_rate is not None)
    scale, inner, _ = _optax_parts(optimizer)
    import jax

    arrays = []
    for kind, i in layout:
        if i >= 0:
            tree = getattr(inner, _optax_field(kind))
            arrays.append(np.asarray(jax.tree_util.tree_leaves(tree)[i]).copy())
        elif kind == "iteration":
            arrays.append(_keras_int(inner.count))
        elif kind == "learning_rate":
            arrays.append(np.array(learning_rate, np.float32))
        else:
            arrays.append(_scale_value(kind, scale.step_counter, scale.dynamic_scale))
    return arrays, 4 if scale is not None else 0, layout, [tuple(x.shape) for x in leaves]


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
            array = _numpy(value)
            if tuple(array.shape) != tuple(out[key].shape):
                raise KerasFileError(
                    f"model_weights[{key!r}] has shape {tuple(array.shape)}; the model's "
                    f"weight has shape {tuple(out[key].shape)}.")
            out[key][...] = array.astype(out[key].dtype)
        _write_optimizer(out, arrays, n_scale, name)
    return buffer.getvalue()


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if is_torch(value) else value)


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
    weight_layout: str = "keras",
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
        weight_layout: ``"keras"`` (default) or ``"torch"``: the optimizer's 2-D variables
            (and the 2-D ``model_weights``) are torch ``nn.Linear`` weights ``(out, in)``;
            they are written transposed, as Keras's ``(in, out)`` kernels.
    """
    path = os.fspath(path)
    arrays, n_scale = _arrays_from(optimizer, learning_rate, weight_layout)
    name = name or getattr(optimizer, "name", None) or "optimizer"
    if not isinstance(name, str):
        name = "optimizer"
    like_bytes = None
    archive_entries: dict[str, bytes] = {}
    if like is not None:
        like = os.fspath(like)
        if not os.path.exists(like):
            raise FileNotFoundError(f"like={like!r}: no such file.")
        with _open_file(like) as f:
            data = _weights_bytes(f, like)
            f.seek(0)
            if data is None:
                like_bytes = f.read()
            else:
                like_bytes = data
                with zipfile.ZipFile(f) as archive:
                    archive_entries = {n: archive.read(n) for n in archive.namelist()
                                       if n != WEIGHTS_IN_ARCHIVE}
    elif model_weights:
        raise KerasFileError("model_weights needs like=<a Keras file of the model>.")
    if weight_layout == "torch" and model_weights:
        model_weights = {k: _numpy(v).T if _numpy(v).ndim == 2 else v
                         for k, v in model_weights.items()}
    weights = _weights_file(like_bytes, arrays, n_scale, name, model_weights, str(like))
    if not path.endswith(".keras"):
        files.atomic_write(path, weights)
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
    files.atomic_write(path, buffer.getvalue())
