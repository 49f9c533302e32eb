"""kerasopt.keras's checks on one Keras backend, run in a process of its own.

``KERAS_BACKEND`` is fixed when Keras is imported, so each backend's checks run here, in a
subprocess started by ``test_keras_<backend>.py``::

    python tests/keras/keras_checks.py BACKEND OUT.json [CHECK ...]

Every check trains or steps the same thing with ``kerasopt.keras.X`` and with Keras's own
``keras.optimizers.X`` (the truth) or with kerasopt's NumPy optimizers (for lazy sparse
updates, which Keras 3 does not have), and returns what it measured (errors, counts); the
pytest files assert on those figures. A check that raises is recorded with its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

BACKEND = sys.argv[1]
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerasopt.keras  # noqa: E402
from kerasopt.cli import oracle  # noqa: E402

assert keras.backend.backend() == BACKEND, keras.backend.backend()

ALGORITHMS = ("Adam", "Adamax", "AdamW")
CHECKS = {}

# Parity: float32 rounding after 3 epochs (issue 16): |a - b| <= 1e-6 + 1e-5 * |b|.
ATOL, RTOL = oracle.tolerance(np.float32)  # the one parity rule, with no travel term


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- spies


class Spy:
    """Counts calls of the function that runs kerasopt's step on this backend (the fused
    kernel launch on torch, the traced pipeline on JAX, the traced step on TensorFlow)."""

    def __init__(self):
        self.calls = 0
        if BACKEND == "torch":
            from kerasopt.keras import _torch as module
            name = "_run"
        elif BACKEND == "jax":
            from kerasopt.keras import _jax as module
            name = "stateless_apply"
        else:
            from kerasopt.keras import _tensorflow as module
            name = "_step"
        original = getattr(module, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        setattr(module, name, counted)


SPY = Spy()


# --------------------------------------------------------------------------- the model


def data(n=64, features=6, outputs=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    w = rng.standard_normal((features, outputs)).astype("float32")
    y = (np.tanh(x @ w) + 0.1 * rng.standard_normal((n, outputs))).astype("float32")
    return x, y


def mlp(features=6, outputs=3):
    return keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(12, activation="tanh", name="hidden"),
        keras.layers.Dense(outputs, name="out"),
    ])


INITIAL = {}


def initial_weights(model, seed=1):
    key = (tuple(tuple(w.shape) for w in model.weights), seed)
    if key not in INITIAL:
        rng = np.random.default_rng(seed)
        INITIAL[key] = [(0.5 * rng.standard_normal(w.shape)).astype("float32")
                        for w in model.weights]
    return INITIAL[key]


class EpochWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([np.array(w) for w in self.model.get_weights()])


def train(make_optimizer, epochs=3, jit_compile="auto", exclude=None, model_fn=mlp,
          x_y=None, batch_size=16, nan_batch=False):
    """Weights after each epoch and after fit (EMA finalized), and the losses."""
    model = model_fn()
    model.set_weights(initial_weights(model))
    optimizer = make_optimizer()
    if exclude:
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        inner.exclude_from_weight_decay(var_names=exclude)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x, y = x_y if x_y is not None else data()
    record = EpochWeights()
    if nan_batch:
        y = y.copy()
        y[batch_size:2 * batch_size] = np.nan
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=[record])
    return {
        "epochs": record.epochs,
        "final": [np.array(w) for w in model.get_weights()],
        "loss": [float(v) for v in history.history["loss"]],
        "model": model,
    }


def compare(ours, theirs):
    """Largest absolute error, and the largest ratio error / (ATOL + RTOL * |truth|) (<= 1
    is within tolerance), over all weights, per epoch and after fit."""
    def measure(a_list, b_list):
        abs_err, ratio = 0.0, 0.0
        for a, b in zip(a_list, b_list):
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            abs_err = max(abs_err, float(d.max()))
            ratio = max(ratio, float((d / (ATOL + RTOL * np.abs(b))).max()))
        return abs_err, ratio

    per_epoch = [measure(a, b) for a, b in zip(ours["epochs"], theirs["epochs"])]
    final = measure(ours["final"], theirs["final"])
    start = initial_weights(theirs["model"])
    moved = max(float(np.abs(a - b).max()) for a, b in zip(theirs["final"], start))
    return {
        "abs": [e for e, _ in per_epoch] + [final[0]],
        "ratio": [r for _, r in per_epoch] + [final[1]],
        "moved": moved,
        "loss_ours": ours["loss"],
        "loss_keras": theirs["loss"],
    }


def schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.6)


# (name, Keras arguments, algorithms, options)
CONFIGS = [
    ("defaults", lambda: {}, ALGORITHMS, {}),
    ("schedule+clipnorm+weight_decay+exclude",
     lambda: dict(learning_rate=schedule(), clipnorm=0.3, weight_decay=0.05),
     ("Adam", "Adamax"), {"exclude": ["bias"]}),
    ("global_clipnorm+ema+overwrite",
     lambda: dict(learning_rate=0.01, global_clipnorm=0.4, use_ema=True, ema_momentum=0.8,
                  ema_overwrite_frequency=3),
     ("Adam", "Adamax"), {}),
    ("accumulation+clipvalue",
     lambda: dict(learning_rate=0.02, gradient_accumulation_steps=3, clipvalue=0.05),
     ("Adam", "Adamax"), {}),
    ("amsgrad", lambda: dict(learning_rate=0.02, amsgrad=True), ("Adam",), {}),
    ("loss_scale_optimizer", lambda: dict(learning_rate=0.02), ("Adam", "Adamax"),
     {"loss_scale": True, "nan_batch": True}),
]


def optimizer_factory(module, algorithm, arguments, loss_scale):
    def make():
        inner = getattr(module, algorithm)(**arguments())
        if loss_scale:
            # The scale doubles every 2 finite steps; the NaN targets of the second batch
            # of every epoch give NaN gradients: that step is skipped, the scale halved.
            return keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**10,
                                                       dynamic_growth_steps=2)
        return inner
    return make


@check
def parity():
    """Same model, data and initial weights with kerasopt.keras.X and keras.optimizers.X,
    compared after every epoch and after fit."""
    cases = {}
    for name, arguments, algorithms, options in CONFIGS:
        for algorithm in algorithms:
            before = SPY.calls
            common = dict(exclude=options.get("exclude"),
                          nan_batch=options.get("nan_batch", False))
            ours = train(optimizer_factory(kerasopt.keras, algorithm, arguments,
                                           options.get("loss_scale")), **common)
            steps = SPY.calls - before
            theirs = train(optimizer_factory(keras.optimizers, algorithm, arguments,
                                             options.get("loss_scale")), **common)
            result = compare(ours, theirs)
            result["kerasopt_steps"] = steps
            if options.get("loss_scale"):
                for label, run in (("", ours), ("keras_", theirs)):
                    optimizer = run["model"].optimizer
                    result[label + "final_scale"] = float(np.array(optimizer.dynamic_scale))
                    result[label + "applied_steps"] = int(
                        np.array(optimizer.inner_optimizer.iterations))
            cases[f"{name}/{algorithm}"] = result
    return {"cases": cases}


@check
def ema_finalized_by_fit():
    """fit() ends with finalize_variable_values: the weights become the EMA averages."""
    make = optimizer_factory(kerasopt.keras, "Adamax",
                             lambda: dict(learning_rate=0.05, use_ema=True, ema_momentum=0.7),
                             False)
    ours = train(make, epochs=2)
    theirs = train(optimizer_factory(keras.optimizers, "Adamax",
                                     lambda: dict(learning_rate=0.05, use_ema=True,
                                                  ema_momentum=0.7), False), epochs=2)
    optimizer = ours["model"].optimizer
    averages = [np.array(a) for a in optimizer._model_variables_moving_average]
    return {
        "final_minus_average": max(float(np.abs(f - a).max())
                                   for f, a in zip(ours["final"], averages)),
        "last_epoch_minus_final": max(float(np.abs(e - f).max())
                                      for e, f in zip(ours["epochs"][-1], ours["final"])),
        "versus_keras": compare(ours, theirs),
    }


@check
def jit_compiled():
    """jit_compile=True: XLA on TensorFlow (JAX always jits); on torch, torch.compile with
    the step kept out of the graph (Dynamo's aot_eager backend here: the graph breaks are
    Dynamo's, Inductor's code generation would only cost a minute)."""
    if BACKEND == "jax":
        return {"skipped": "JAX always compiles the train step"}
    arguments = lambda: dict(learning_rate=schedule(), clipnorm=0.3, weight_decay=0.05)  # noqa: E731
    out = {}
    if BACKEND == "torch":
        import functools

        import torch
        from torch._dynamo.utils import counters

        original = torch.compile
        torch.compile = functools.partial(original, backend="aot_eager")
        try:
            small = dict(model_fn=lambda: keras.Sequential(
                [keras.Input((6,)), keras.layers.Dense(3, name="out")]), epochs=2,
                x_y=data(n=32), batch_size=16)
            before = SPY.calls
            ours = train(optimizer_factory(kerasopt.keras, "Adamax", arguments, False),
                         jit_compile=True, **small)
            out["kerasopt_steps"] = SPY.calls - before
            out["compiled"] = bool(ours["model"].jit_compile)
            breaks = [k for k in counters["graph_break"] if "FusedOptimizer.apply" in k]
            out["graph_breaks_at_apply"] = len(breaks)
            out["graph_break_reason"] = breaks[0].split("\n")[0] if breaks else ""
            theirs = train(optimizer_factory(keras.optimizers, "Adamax", arguments, False),
                           jit_compile=False, **small)
            out["Adamax"] = compare(ours, theirs)
        finally:
            torch.compile = original
        return out
    for algorithm in ("Adamax",):
        before = SPY.calls
        ours = train(optimizer_factory(kerasopt.keras, algorithm, arguments, False),
                     jit_compile=True, exclude=["bias"])
        theirs = train(optimizer_factory(keras.optimizers, algorithm, arguments, False),
                       jit_compile=True, exclude=["bias"])
        out[algorithm] = compare(ours, theirs)
        out[algorithm]["kerasopt_traces"] = SPY.calls - before
        out[algorithm]["compiled"] = bool(ours["model"].jit_compile)
    return out


@check
def one_computation_per_step():
    """The step is traced into the trainer's compiled function, not run per step in Python
    (JAX, TensorFlow); one kernel launch per step on torch."""
    before = SPY.calls
    result = train(optimizer_factory(kerasopt.keras, "Adam",
                                     lambda: dict(weight_decay=0.01, use_ema=True), False))
    return {"steps": 3 * 4, "calls": SPY.calls - before,
            "iterations": int(np.array(result["model"].optimizer.iterations))}


@check
def save_and_load():
    """model.save(.keras) / keras.models.load_model: the optimizer comes back as the same
    kerasopt.keras class with the same config and variables, and training on continues
    bit-identically."""
    make = optimizer_factory(
        kerasopt.keras, "Adamax",
        lambda: dict(learning_rate=schedule(), gradient_accumulation_steps=2,
                     sparse_updates="dense"), False)
    trained = train(make, epochs=2)
    model = trained["model"]
    x, y = data()
    optimizer = model.optimizer
    saved_variables = [np.array(v) for v in optimizer.variables]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        loaded = keras.models.load_model(path)
    other = loaded.optimizer
    same_variables = all(np.array_equal(a, np.array(b))
                         for a, b in zip(saved_variables, other.variables))
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    continued = max(float(np.abs(np.array(a) - np.array(b)).max())
                    for a, b in zip(model.weights, loaded.weights))
    evaluation = loaded.evaluate(x, y, verbose=0)
    config = keras.optimizers.serialize(optimizer)
    return {
        "loaded_class": f"{type(other).__module__}.{type(other).__qualname__}",
        "same_config": other.get_config() == optimizer.get_config(),
        "sparse_updates": other.sparse_updates,
        "registered_name": config.get("registered_name"),
        "same_variables": same_variables,
        "variable_count": len(other.variables),
        "continued_max_difference": continued,
        "evaluate_is_finite": bool(np.isfinite(evaluation)),
    }


@check
def custom_loop_with_missing_gradients():
    """optimizer.apply(grads, variables) in a custom loop, with a variable whose gradient is
    None on some steps, under EMA and accumulation (its accumulator is reset and its average
    still updated, as Keras does)."""
    rng = np.random.default_rng(3)
    shapes = [(4, 3), (3,), (5,)]
    init = [rng.standard_normal(s).astype("float32") for s in shapes]
    grads = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(7)]
    out = {}
    for algorithm in ("Adamax",):
        finals = []
        for module in (kerasopt.keras, keras.optimizers):
            variables = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(init)]
            optimizer = getattr(module, algorithm)(
                learning_rate=0.05, use_ema=True, ema_momentum=0.6, ema_overwrite_frequency=2,
                gradient_accumulation_steps=2, weight_decay=0.1)
            optimizer.build(variables)
            for step, gs in enumerate(grads[:5]):
                gs = [keras.ops.convert_to_tensor(g) for g in gs]
                if step in (1, 4):
                    gs[2] = None
                optimizer.apply(gs, variables)
            finals.append([np.array(v, dtype=np.float64) for v in variables] +
                          [np.array(v, dtype=np.float64) for v in optimizer.variables])
        out[algorithm] = {
            "abs": max(float(np.abs(a - b).max()) for a, b in zip(*finals)),
            "ratio": max(float((np.abs(a - b) / (ATOL + RTOL * np.abs(b))).max())
                         for a, b in zip(*finals)),
            "moved": max(float(np.abs(a - b).max()) for a, b in zip(finals[1], init)),
        }
    return out


@check
def triton_kernels():
    """The torch plan drives the Triton kernels (kerasopt.kernels.cuda) as on a GPU: here in
    Triton's interpreter (TRITON_INTERPRET=1, set by the runner) on CPU tensors, every
    feature on, against Keras."""
    import importlib.util

    if BACKEND != "torch":
        return {"skipped": "torch only"}
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1":
        return {"skipped": "needs Triton and TRITON_INTERPRET=1"}
    from kerasopt import kernels
    from kerasopt.kernels import cuda

    launches = [0]
    real_step, real_for_device = cuda.fused_step_table, kernels.for_device

    def counted(*args, **kwargs):
        launches[0] += 1
        return real_step(*args, **kwargs)

    cuda.fused_step_table = counted
    kernels.for_device = lambda device: cuda
    arguments = lambda: dict(learning_rate=0.02, global_clipnorm=0.5, weight_decay=0.05,  # noqa: E731
                             use_ema=True, ema_overwrite_frequency=3,
                             gradient_accumulation_steps=2, loss_scale_factor=8.0)
    small = dict(epochs=2, x_y=data(n=32))
    try:
        ours = train(optimizer_factory(kerasopt.keras, "Adam", arguments, False), **small)
    finally:
        cuda.fused_step_table, kernels.for_device = real_step, real_for_device
    theirs = train(optimizer_factory(keras.optimizers, "Adam", arguments, False), **small)
    return {"launches": launches[0], "versus_keras": compare(ours, theirs)}


# --------------------------------------------------------------------------- TensorFlow


def embedding_model(rows=200, width=8, length=4):
    return keras.Sequential([
        keras.Input((length,), dtype="int32"),
        keras.layers.Embedding(rows, width, name="embedding"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1, name="out"),
    ])


def id_data(low, high, n=64, length=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(low, high, size=(n, length)).astype("int32")
    y = (np.sin(x.astype("float32")).mean(axis=1, keepdims=True)).astype("float32")
    return x, y


@check
def lazy_sparse_embedding():
    """Issue 16 item 4: train on ids 0..199, then one epoch (64 samples, 4 steps) on ids
    0..99 only. With sparse_updates="lazy" rows 100..199 of the embedding and of both slots
    do not move in phase 2; Keras 3 moves them; "dense" equals Keras."""
    if BACKEND != "tensorflow":
        return {"skipped": "tf.IndexedSlices gradients exist on the TensorFlow backend only"}
    out = {}
    runs = [("lazy", kerasopt.keras, {"sparse_updates": "lazy"}, False),
            ("lazy_xla", kerasopt.keras, {"sparse_updates": "lazy"}, True),
            ("dense", kerasopt.keras, {"sparse_updates": "dense"}, False),
            ("keras", keras.optimizers, {}, False)]
    for label, module, extra, jit in runs:
        model = embedding_model()
        model.set_weights(initial_weights(model))
        optimizer = module.Adamax(learning_rate=0.01, **extra)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
        model.fit(*id_data(0, 200), batch_size=16, epochs=1, shuffle=False, verbose=0)
        table = model.get_layer("embedding").embeddings
        slots = [optimizer._m[optimizer._get_variable_index(table)],
                 optimizer._u[optimizer._get_variable_index(table)]]
        before = [np.array(v)[100:] for v in (table, *slots)]
        model.fit(*id_data(0, 100, seed=1), batch_size=16, epochs=1, shuffle=False,
                  verbose=0)
        after = [np.array(v)[100:] for v in (table, *slots)]
        out[label] = {
            "untouched_rows_bit_identical": [bool(np.array_equal(a, b))
                                             for a, b in zip(before, after)],
            "untouched_rows_moved": float(np.abs(after[0] - before[0]).max()),
            "weights": [np.array(w).tolist() for w in model.get_weights()],
            "compiled": bool(model.jit_compile),
        }
    keras_weights = out["keras"]["weights"]
    out["dense_minus_keras"] = max(
        float(np.abs(np.array(a) - np.array(b)).max())
        for a, b in zip(out["dense"]["weights"], keras_weights))
    out["lazy_xla_minus_lazy"] = max(
        float(np.abs(np.array(a) - np.array(b)).max())
        for a, b in zip(out["lazy_xla"]["weights"], out["lazy"]["weights"]))
    for label, *_ in runs:
        del out[label]["weights"]
    return out


def _custom_loop(tf, model, optimizer, variables):
    """tf.functions for the gradients of a scaled loss and for one optimizer step."""
    @tf.function
    def gradients(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2) * 4.0
        return tape.gradient(loss, variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return gradients, step


@check
def lazy_sparse_versus_numpy_reference():
    """The lazy update of a tf.IndexedSlices gradient (duplicate ids in every batch) against
    kerasopt's NumPy optimizers given the same rows as a kerasopt.IndexedSlices: the same
    values after every step (float32 rounding), with clipnorm, weight decay and the loss
    scale factor on."""
    if BACKEND != "tensorflow":
        return {"skipped": "TensorFlow only"}
    import tensorflow as tf

    import kerasopt as core

    out = {}
    x, y = id_data(0, 30, n=48, length=5, seed=2)
    for algorithm in ("Adam", "Adamax"):
        model = embedding_model(rows=30, width=4, length=5)
        model.set_weights(initial_weights(model, seed=4))
        arguments = dict(learning_rate=0.05, clipnorm=0.5, weight_decay=0.1,
                         loss_scale_factor=4.0)
        optimizer = getattr(kerasopt.keras, algorithm)(**arguments)
        variables = model.trainable_variables
        optimizer.build(variables)
        reference = getattr(core, algorithm)(**arguments)
        mirrors = [core.Variable(np.array(v), name=v.name) for v in variables]
        reference.build(mirrors)

        gradients, step = _custom_loop(tf, model, optimizer, variables)

        worst, sparse_seen, duplicates = 0.0, 0, 0
        for start in range(0, len(x), 16):
            grads = gradients(x[start:start + 16], y[start:start + 16])
            step(grads)
            converted = []
            for g in grads:
                if isinstance(g, tf.IndexedSlices):
                    sparse_seen += 1
                    indices = g.indices.numpy()
                    duplicates += len(indices) - len(np.unique(indices))
                    converted.append(core.IndexedSlices(g.values.numpy(), indices,
                                                        tuple(g.dense_shape.numpy())))
                else:
                    converted.append(g.numpy())
            reference.apply(converted, mirrors)
            for v, m in zip(variables, mirrors):
                a, b = np.array(v), m.numpy()
                worst = max(worst, float((np.abs(a - b) / (1e-7 + 1e-6 * np.abs(b))).max()))
        out[algorithm] = {"max_ratio": worst, "sparse_gradients": sparse_seen,
                          "duplicate_ids": int(duplicates)}
    return out


# --------------------------------------------------------------------------- JAX


@check
def sharded_variables():
    """JAX with 8 host devices and a ModelParallel layout: the optimizer's variables keep
    their model variable's sharding, and training equals Keras's."""
    if BACKEND != "jax":
        return {"skipped": "JAX only"}
    import jax

    devices = keras.distribution.list_devices("cpu")
    mesh = keras.distribution.DeviceMesh((2, 4), axis_names=("batch", "model"),
                                         devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*hidden/kernel"] = (None, "model")
    layout_map[".*hidden/bias"] = ("model",)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
    try:
        make_ours = optimizer_factory(kerasopt.keras, "Adam",
                                      lambda: dict(learning_rate=0.01, use_ema=True,
                                                   global_clipnorm=0.5), False)
        ours = train(make_ours, epochs=2)
        theirs = train(optimizer_factory(keras.optimizers, "Adam",
                                         lambda: dict(learning_rate=0.01, use_ema=True,
                                                      global_clipnorm=0.5), False), epochs=2)
        model = ours["model"]
        optimizer = model.optimizer
        kernel = model.get_layer("hidden").kernel
        index = optimizer._get_variable_index(kernel)
        kernel_sharding = kernel.value.sharding
        slot_shardings = [optimizer._momentums[index].value.sharding,
                          optimizer._velocities[index].value.sharding,
                          optimizer._model_variables_moving_average[index].value.sharding]
        return {
            "devices": len(jax.devices()),
            "kernel_sharding": str(kernel_sharding.spec),
            "kernel_is_sharded": not kernel_sharding.is_fully_replicated,
            "slots_share_sharding": [bool(s.is_equivalent_to(kernel_sharding, 2))
                                     for s in slot_shardings],
            "versus_keras": compare(ours, theirs),
        }
    finally:
        keras.distribution.set_distribution(None)


# --------------------------------------------------------------------------- main


def main():
    out_path = Path(sys.argv[2])
    selected = sys.argv[3:] or list(CHECKS)
    results = {}
    for name in selected:
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **CHECKS[name]()}
        except Exception:  # noqa: BLE001 - reported to the test
            results[name] = {"ok": False, "error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
