"""kerasopt.interop with real Keras 3 files (torch backend): Keras trains, saves a .keras /
.weights.h5 file, kerasopt loads it (NumPy, torch, JAX) and continues with the same
gradients as Keras; and the other way, kerasopt's state is exported and Keras continues."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

import kerasopt  # noqa: E402
from kerasopt import interop  # noqa: E402

STEPS = 5


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, batches=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * batches, 4)).astype("float32")
    y = rng.normal(size=(8 * batches, 2)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


def _grads(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [[(rng.normal(size=s) * 10 ** rng.uniform(-2, 0.5)).astype("float32") for s in shapes]
            for _ in range(STEPS)]


def _keras_continue(model, grads):
    out = []
    for step in grads:
        model.optimizer.apply([torch.from_numpy(g) for g in step], model.trainable_variables)
        out.append([v.numpy().copy() for v in model.trainable_variables])
    return out


def _close(ours, ref):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {k + 1}")


CONFIGS = {
    "adam-everything": lambda: keras.optimizers.Adam(
        learning_rate=0.01, amsgrad=True, use_ema=True, ema_overwrite_frequency=4,
        gradient_accumulation_steps=2, weight_decay=0.01, global_clipnorm=1.0),
    "adamax-schedule": lambda: keras.optimizers.Adamax(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.02, 5, 0.9), clipnorm=0.5),
    "loss-scale": lambda: keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.01), initial_scale=8.0, dynamic_growth_steps=2),
}


@pytest.fixture(params=list(CONFIGS))
def saved(request, tmp_path):
    model = _fit(_model(CONFIGS[request.param]()))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    return tmp_path, model


def _continue_numpy(path, model, grads, **kwargs):
    variables = [kerasopt.Variable(v.numpy(), name=v.name) for v in model.trainable_variables]
    opt = interop.load_keras_optimizer(path, variables, **kwargs)
    out = []
    for step in grads:
        opt.apply(step, variables)
        out.append([v.numpy() for v in variables])
    return opt, out


def test_keras_file_into_numpy(saved):
    tmp_path, model = saved
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    grads = _grads(shapes)
    reference = keras.saving.load_model(tmp_path / "m.keras")  # the file is the truth
    opt, ours = _continue_numpy(tmp_path / "m.keras", model, grads)
    ref = _keras_continue(reference, grads)
    _close(ours, ref)
    assert int(opt.iterations) == int(reference.optimizer.iterations)
    # A weights file carries no config: pass Keras's.
    config = keras.optimizers.serialize(model.optimizer)
    _, ours_h5 = _continue_numpy(tmp_path / "m.weights.h5", model, grads, config=config)
    _close(ours_h5, ref)


def test_keras_file_into_torch(saved):
    import kerasopt.torch  # noqa: F401

    tmp_path, model = saved
    grads = _grads([tuple(v.shape) for v in model.trainable_variables])
    params = [torch.nn.Parameter(torch.tensor(v.numpy())) for v in model.trainable_variables]
    opt = interop.load_keras_optimizer(tmp_path / "m.keras", params)
    ours = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.from_numpy(g)
        opt.step()
        ours.append([p.detach().numpy().copy() for p in params])
    _close(ours, _keras_continue(keras.saving.load_model(tmp_path / "m.keras"), grads))


def test_keras_file_into_optax(saved):
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    tmp_path, model = saved
    grads = _grads([tuple(v.shape) for v in model.trainable_variables])
    params = [jnp.asarray(v.numpy()) for v in model.trainable_variables]
    tx, state = interop.load_keras_optimizer(tmp_path / "m.keras", params)
    ours = []
    for step in grads:
        updates, state = tx.update([jnp.asarray(g) for g in step], state, params)
        params = optax.apply_updates(params, updates)
        ours.append([np.asarray(p) for p in params])
    _close(ours, _keras_continue(keras.saving.load_model(tmp_path / "m.keras"), grads))


def _trained_kerasopt(kind, variables_np, grads):
    """A kerasopt optimizer of each front end trained on ``grads``; returns (state object,
    final weights)."""
    kwargs = dict(learning_rate=0.01, use_ema=True, gradient_accumulation_steps=2)
    if kind == "numpy":
        variables = [kerasopt.Variable(w) for w in variables_np]
        opt = kerasopt.Adam(amsgrad=True, **kwargs)
        for step in grads:
            opt.apply(step, variables)
        return opt, [v.numpy() for v in variables]
    if kind == "torch":
        import kerasopt.torch as kt

        params = [torch.nn.Parameter(torch.tensor(w)) for w in variables_np]
        opt = kt.Adam(params, amsgrad=True, **kwargs)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = torch.from_numpy(g)
            opt.step()
        return opt, [p.detach().numpy().copy() for p in params]
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    import kerasopt.optax as ko

    tx = ko.adam(amsgrad=True, **kwargs)
    params = [jnp.asarray(w) for w in variables_np]
    state = tx.init(params)
    for step in grads:
        updates, state = tx.update([jnp.asarray(g) for g in step], state, params)
        params = optax.apply_updates(params, updates)
    return state, [np.array(p) for p in params]


@pytest.mark.parametrize("kind", ["numpy", "torch", "jax"])
def test_export_to_keras(kind, tmp_path):
    optimizer = keras.optimizers.Adam(learning_rate=0.01, amsgrad=True, use_ema=True,
                                      gradient_accumulation_steps=2)
    model = _model(optimizer)
    optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "template.weights.h5")
    start = [v.numpy() for v in model.trainable_variables]
    shapes = [w.shape for w in start]
    state, weights = _trained_kerasopt(kind, start, _grads(shapes, seed=3))
    names = sorted(interop.read_model_weights(tmp_path / "template.weights.h5"))
    assert names == ["layers/dense/vars/0", "layers/dense/vars/1", "layers/dense_1/vars/0",
                     "layers/dense_1/vars/1"]  # the trainable order for this model
    interop.save_keras_weights(
        tmp_path / "out.weights.h5", state, like=tmp_path / "template.weights.h5",
        model_weights=dict(zip(names, weights)),
        learning_rate=0.01 if kind == "jax" else None)
    fresh = _model(keras.optimizers.Adam(learning_rate=0.01, amsgrad=True, use_ema=True,
                                         gradient_accumulation_steps=2))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "out.weights.h5")
    assert int(fresh.optimizer._iterations.numpy()) == STEPS
    _close([[v.numpy() for v in fresh.trainable_variables]], [weights])
    more = _grads(shapes, seed=4)
    ref = _keras_continue(fresh, more)
    # kerasopt continues the same way from its own state.
    variables = [kerasopt.Variable(w) for w in weights]
    ours = kerasopt.Adam(learning_rate=0.01, amsgrad=True, use_ema=True,
                         gradient_accumulation_steps=2)
    ours.build(variables)
    interop.load_keras_optimizer_state(tmp_path / "out.weights.h5", ours)
    trajectory = []
    for step in more:
        ours.apply(step, variables)
        trajectory.append([v.numpy() for v in variables])
    _close(trajectory, ref)


def test_export_keras_archive(tmp_path):
    model = _fit(_model(keras.optimizers.Adamax(learning_rate=0.02)))
    model.save(tmp_path / "m.keras")
    variables = [kerasopt.Variable(v.numpy()) for v in model.trainable_variables]
    opt = kerasopt.Adamax(learning_rate=0.005, weight_decay=0.01)
    grads = _grads([v.shape for v in variables], seed=5)
    for step in grads:
        opt.apply(step, variables)
    paths = sorted(interop.read_model_weights(tmp_path / "m.keras"))
    interop.save_keras_weights(tmp_path / "out.keras", opt, like=tmp_path / "m.keras",
                               model_weights={p: v.numpy() for p, v in zip(paths, variables)})
    loaded = keras.saving.load_model(tmp_path / "out.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Adamax)
    assert loaded.optimizer.weight_decay == pytest.approx(0.01)
    assert int(loaded.optimizer.iterations) == STEPS
    config = json.loads(zipfile.ZipFile(tmp_path / "out.keras").read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == "Adamax"
    more = _grads([v.shape for v in variables], seed=6)
    ref = _keras_continue(loaded, more)
    ours = []
    for step in more:
        opt.apply(step, variables)
        ours.append([v.numpy() for v in variables])
    _close(ours, ref)


@pytest.mark.parametrize("config", [
    {"class_name": "Adam", "config": {"learning_rate": 0.01}},
    {"class_name": "Adam", "config": {"learning_rate": 0.01, "amsgrad": True, "use_ema": True,
                                      "gradient_accumulation_steps": 2}},
    {"class_name": "Adamax", "config": {"learning_rate": {"class_name": "ExponentialDecay",
     "config": {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5}}}},
    {"class_name": "LossScaleOptimizer", "config": {"inner_optimizer": {
        "class_name": "Adamax", "config": {"use_ema": True}}}},
])
def test_layout_matches_kerasopt_variables(config):
    opt = kerasopt.deserialize(config)
    variables = [kerasopt.Variable(np.zeros(s, np.float32), name=n)
                 for n, s in (("kernel", (2, 3)), ("bias", (3,)))]
    opt.build(variables)
    layout = interop.keras_variable_layout(kerasopt.serialize(opt), len(variables))
    names = [v.name.rsplit("/", 1)[-1] for v in opt.variables]
    expected = [kind.rsplit("/", 1)[-1] if i < 0 else f"{['kernel', 'bias'][i]}_{kind}"
                for kind, i in layout]
    assert names == expected


def test_errors_name_the_fix(saved):
    tmp_path, model = saved
    variables = [kerasopt.Variable(v.numpy()) for v in model.trainable_variables]
    with pytest.raises(interop.KerasFileError, match="config="):
        interop.load_keras_optimizer(tmp_path / "m.weights.h5", variables)
    with pytest.raises(interop.KerasFileError, match="trainable_variables"):
        interop.load_keras_optimizer(tmp_path / "m.keras", variables[::-1])
    with pytest.raises(interop.KerasFileError, match="trainable_variables"):
        interop.load_keras_optimizer(tmp_path / "m.keras", variables[:2])
    with pytest.raises(TypeError, match="kerasopt.Variable"):
        interop.load_keras_optimizer(tmp_path / "m.keras", [v.numpy() for v in variables])
