"""Porting a Keras optimizer (issue 17 item 10): kerasopt.interop.from_keras builds the
kerasopt.torch / kerasopt.optax / NumPy optimizer of a live Keras optimizer (its arguments,
schedule, exclusions from weight decay and state) or of its config, and the Keras-file
functions accept torch-layout nn.Linear weights ((out, in)), transposing the state.

The truth is Keras 3 itself (torch backend): a Keras model trains a few steps, is ported,
and the ported optimizer continues exactly as Keras continues."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

import kerasopt  # noqa: E402
import kerasopt.torch as kt  # noqa: E402
from kerasopt import interop  # noqa: E402

STEPS = 6
IN, HIDDEN, OUT = 4, 5, 3


def _close(ours, ref, what, rtol=1e-5, atol=1e-6):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                       err_msg=f"{what}: step {k + 1}, variable {j}")


def _data(batches, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(8, IN)).astype("float32"),
             rng.normal(size=(8, OUT)).astype("float32")) for _ in range(batches)]


def _keras_model(optimizer, exclude=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HIDDEN, activation="tanh"),
                              keras.layers.Dense(OUT)])
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if exclude == "names":
        inner.exclude_from_weight_decay(var_names=["bias"])
    elif exclude == "list":
        inner.exclude_from_weight_decay(var_list=[model.layers[1].kernel, model.layers[0].bias])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _keras_fit(model, batches):
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)


def _torch_twin(model):
    """nn.Linear layers holding the Keras model's weights (kernel transposed: (out, in))."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    net = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(),
                              torch.nn.Linear(HIDDEN, OUT))
    with torch.no_grad():
        for linear, layer in zip((net[0], net[2]), dense):
            linear.weight.copy_(torch.from_numpy(layer.kernel.numpy().T.copy()))
            linear.bias.copy_(torch.from_numpy(layer.bias.numpy()))
    # Keras's trainable_variables order: kernel, bias of each layer
    return net, [net[0].weight, net[0].bias, net[2].weight, net[2].bias]


def _keras_weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _torch_weights(params):
    return [p.detach().numpy().T.copy() if p.ndim == 2 else p.detach().numpy().copy()
            for p in params]


CONFIGS = {
    "adam-schedule-names-ema-accumulation": (lambda: keras.optimizers.Adam(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.7), amsgrad=True,
        weight_decay=0.05, clipnorm=0.5, use_ema=True, ema_overwrite_frequency=3,
        gradient_accumulation_steps=2, beta_1=0.8, beta_2=0.99, epsilon=1e-6), "names"),
    "adamax-global-clipnorm-var-list": (lambda: keras.optimizers.Adamax(
        learning_rate=keras.optimizers.schedules.PiecewiseConstantDecay([3, 6], [0.05, 0.02,
                                                                                  0.01]),
        weight_decay=0.1, global_clipnorm=1.0, use_ema=True, ema_momentum=0.9), "list"),
    "loss-scale-adam-clipvalue": (lambda: keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.02, clipvalue=0.05, weight_decay=0.02), initial_scale=8.0,
        dynamic_growth_steps=2), "names"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keras_model_ported_to_torch_trains_on_like_keras(name):
    """Keras trains 4 batches (fit), the optimizer is ported to a torch nn.Module with
    nn.Linear layers (weights (out, in)), and both train on the same batches."""
    make, exclude = CONFIGS[name]
    model = _keras_model(make(), exclude)
    data = _data(4 + STEPS)
    _keras_fit(model, data[:4])
    net, params = _torch_twin(model)
    opt = interop.from_keras(model.optimizer, params)  # torch layout found from the shapes
    assert isinstance(opt, kt.LossScaleOptimizer if "loss-scale" in name else kt.KerasOptimizer)
    keras_steps, torch_steps = [], []
    for x, y in data[4:]:
        model.train_on_batch(x, y)
        keras_steps.append(_keras_weights(model))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        (opt.scale_loss(loss) if hasattr(opt, "scale_loss") else loss).backward()
        opt.step()
        torch_steps.append(_torch_weights(params))
    _close(torch_steps, keras_steps, name)
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    assert opt.iterations == int(inner.iterations.numpy())  # completed updates
    if "loss-scale" in name:
        assert opt.dynamic_scale == float(model.optimizer.dynamic_scale.numpy())


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    shapes = [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]
    return [[rng.normal(size=s).astype("float32") * 0.3 for s in shapes]
            for _ in range(STEPS)]


def _keras_apply(model, grads):
    out = []
    for step in grads:
        model.optimizer.apply([torch.from_numpy(g) for g in step], model.trainable_variables)
        out.append(_keras_weights(model))
    return out


@pytest.mark.parametrize("frontend", ["numpy", "optax", "torch"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ported_optimizer_continues_with_keras_gradients(name, frontend):
    """The same gradients into Keras and into the port (Keras's own (in, out) layout)."""
    make, exclude = CONFIGS[name]
    model = _keras_model(make(), exclude)
    _keras_fit(model, _data(4))
    start = _keras_weights(model)
    grads = _grads()
    ours = []
    if frontend == "numpy":
        variables = [kerasopt.Variable(w.copy()) for w in start]
        opt = interop.from_keras(model.optimizer, variables, frontend="numpy")
        for step in grads:
            opt.apply(step, variables)
            ours.append([v.numpy() for v in variables])
    elif frontend == "torch":
        params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in start]
        opt = interop.from_keras(model.optimizer, params, frontend="torch")
        for step in grads:
            for p, g in zip(params, step):
                p.grad = torch.from_numpy(g)
            opt.step()
            ours.append([p.detach().numpy().copy() for p in params])
    else:
        jnp = pytest.importorskip("jax.numpy")
        optax = pytest.importorskip("optax")
        params = [jnp.asarray(w) for w in start]
        tx, state = interop.from_keras(model.optimizer, params, frontend="optax")
        for step in grads:
            updates, state = tx.update([jnp.asarray(g) for g in step], state, params)
            params = optax.apply_updates(params, updates)
            ours.append([np.asarray(p) for p in params])
    _close(ours, _keras_apply(model, grads), f"{name}/{frontend}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_port_from_a_config_matches_a_fresh_keras_optimizer(name):
    """keras.optimizers.serialize(opt) ported: every argument carried over (checked against
    Keras's config) and the schedule rebuilt as the kerasopt.schedules class; no state."""
    make, exclude = CONFIGS[name]
    keras_opt = make()
    config = keras.optimizers.serialize(keras_opt)
    variables = [kerasopt.Variable(np.zeros(s, np.float32)) for s in
                 [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]]
    port = interop.from_keras(config, variables)
    ours = kerasopt.serialize(port)["config"]
    theirs = keras_opt.get_config()
    if "inner_optimizer" in theirs:
        ours_inner, theirs_inner = ours["inner_optimizer"]["config"], theirs[
            "inner_optimizer"]["config"]
        assert ours["initial_scale"] == theirs["initial_scale"]
        assert ours["dynamic_growth_steps"] == theirs["dynamic_growth_steps"]
        ours, theirs = ours_inner, theirs_inner
    for key, value in theirs.items():
        if key == "name":
            continue
        if isinstance(value, dict):  # a schedule: same class and arguments
            assert ours[key]["class_name"] == value["class_name"], key
            assert ours[key]["config"] == value["config"], key
        else:
            assert ours[key] == pytest.approx(value), key
    # the torch port of the same config holds the same values in its param groups
    params = [torch.zeros(s, requires_grad=True) for s in [(IN, HIDDEN), (HIDDEN,)]]
    torch_port = interop.from_keras(config, params, frontend="torch")
    group = getattr(torch_port, "inner_optimizer", torch_port).param_groups[0]
    for key, value in theirs.items():
        if key == "learning_rate" and isinstance(value, dict):
            schedule = group["learning_rate"]
            assert type(schedule).__module__ == "kerasopt.schedules"
            assert type(schedule).__name__ == value["class_name"]
        elif key == "learning_rate":
            assert group["learning_rate"] is None and group["lr"] == pytest.approx(value)
        elif key in group:
            assert group[key] == pytest.approx(value), key


def _square_model_files(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=(16, 3)), batch_size=8, verbose=0)
    model.save(tmp_path / "sq.keras")
    return model


def test_load_keras_optimizer_transposes_torch_layout_state(tmp_path):
    model = _keras_model(CONFIGS["adam-schedule-names-ema-accumulation"][0](), "names")
    _keras_fit(model, _data(4))
    model.save(tmp_path / "m.keras")
    reference = keras.saving.load_model(tmp_path / "m.keras")
    net, params = _torch_twin(model)
    opt = interop.load_keras_optimizer(tmp_path / "m.keras", params,
                                       exclude_from_weight_decay=None)
    # the momentum of the first kernel is Keras's, transposed
    keras_momentum = interop.read_optimizer_variables(tmp_path / "m.keras")
    layout = interop.keras_variable_layout(interop.read_optimizer_config(tmp_path / "m.keras"),
                                           4)
    j = layout.index(("momentum", 0))
    assert np.array_equal(opt.state[params[0]]["momentum"].numpy(), keras_momentum[j].T)
    grads = _grads(seed=4)
    ours = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.from_numpy(g.T.copy() if g.ndim == 2 else g)
        opt.step()
        ours.append(_torch_weights(params))
    # Keras's exclusions are not in the file: neither side excludes anything here.
    _close(ours, _keras_apply(reference, grads), "load_keras_optimizer, torch layout")
    # explicit layouts: "keras" refuses (out, in) shapes, "torch" accepts them
    with pytest.raises(interop.KerasFileError, match="trainable_variables"):
        interop.load_keras_optimizer(tmp_path / "m.keras", _torch_twin(model)[1],
                                     weight_layout="keras")
    interop.load_keras_optimizer(tmp_path / "m.keras", _torch_twin(model)[1],
                                 weight_layout="torch")
    with pytest.raises(ValueError, match="weight_layout"):
        interop.load_keras_optimizer(tmp_path / "m.keras", params, weight_layout="TORCH")


def test_square_matrices_need_an_explicit_layout(tmp_path):
    model = _square_model_files(tmp_path)
    params = [torch.nn.Parameter(torch.from_numpy(v.numpy().T.copy() if v.ndim == 2
                                                  else v.numpy().copy()))
              for v in model.trainable_variables]
    with pytest.raises(interop.KerasFileError, match="weight_layout='torch'"):
        interop.load_keras_optimizer(tmp_path / "sq.keras", params)
    opt = interop.load_keras_optimizer(tmp_path / "sq.keras", params, weight_layout="torch")
    momentum = interop.read_optimizer_variables(tmp_path / "sq.keras")[2]  # kernel 0
    assert np.array_equal(opt.state[params[0]]["momentum"].numpy(), momentum.T)
    # NumPy variables are Keras's layout: no question asked
    variables = [kerasopt.Variable(v.numpy()) for v in model.trainable_variables]
    numpy_opt = interop.load_keras_optimizer(tmp_path / "sq.keras", variables)
    assert np.array_equal(numpy_opt.variables[2].numpy(), momentum)


def test_torch_layout_state_exported_to_keras(tmp_path):
    """A kerasopt.torch optimizer over nn.Linear weights writes Keras's (in, out) layout
    (weight_layout="torch"); Keras loads it and continues as torch does."""
    model = _keras_model(keras.optimizers.Adam(0.01, amsgrad=True))
    model.optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "template.weights.h5")
    net, params = _torch_twin(model)
    opt = kt.Adam(params, learning_rate=0.01, amsgrad=True)
    for x, y in _data(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    paths = sorted(interop.read_model_weights(tmp_path / "template.weights.h5"))
    interop.save_keras_weights(tmp_path / "out.weights.h5", opt,
                               like=tmp_path / "template.weights.h5",
                               model_weights=dict(zip(paths, params)), weight_layout="torch")
    model.load_weights(tmp_path / "out.weights.h5")
    _close([_keras_weights(model)], [_torch_weights(params)], "exported weights", 0, 0)
    grads = _grads(seed=6)
    ref = _keras_apply(model, grads)
    ours = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.from_numpy(g.T.copy() if g.ndim == 2 else g)
        opt.step()
        ours.append(_torch_weights(params))
    _close(ours, ref, "Keras continuing from kerasopt.torch's state")
    with pytest.raises(ValueError, match="weight_layout"):
        interop.save_keras_weights(tmp_path / "x.weights.h5", opt, weight_layout="auto")


@pytest.mark.parametrize("frontend", ["numpy", "optax"])
def test_adamw_ported_continues_like_keras(frontend):
    """Keras's AdamW (weight decay 0.004 by default, exclusions by name) trained with fit,
    ported with its state, then given the same gradients as Keras."""
    model = _keras_model(keras.optimizers.AdamW(learning_rate=0.02, amsgrad=True,
                                                use_ema=True), "names")
    _keras_fit(model, _data(4))
    start = _keras_weights(model)
    grads = _grads(seed=9)
    ours = []
    if frontend == "numpy":
        variables = [kerasopt.Variable(w.copy()) for w in start]
        opt = interop.from_keras(model.optimizer, variables)
        assert type(opt).__name__ == "AdamW" and opt.weight_decay == pytest.approx(0.004)
        for step in grads:
            opt.apply(step, variables)
            ours.append([v.numpy() for v in variables])
    else:
        jnp = pytest.importorskip("jax.numpy")
        optax = pytest.importorskip("optax")
        params = [jnp.asarray(w) for w in start]
        tx, state = interop.from_keras(model.optimizer, params)
        assert type(state).__name__ == "AdamWState"
        for step in grads:
            updates, state = tx.update([jnp.asarray(g) for g in step], state, params)
            params = optax.apply_updates(params, updates)
            ours.append([np.asarray(p) for p in params])
    _close(ours, _keras_apply(model, grads), f"AdamW/{frontend}")


def test_adamw_to_torch_says_what_is_missing():
    keras_opt = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.02)
    params = [torch.ones(3, requires_grad=True)]
    if not hasattr(kt, "AdamW"):
        with pytest.raises(interop.KerasFileError, match="AdamW"):
            interop.from_keras(keras_opt, params)
    else:  # pragma: no cover - once kerasopt.torch has AdamW
        assert type(interop.from_keras(keras_opt, params)).__name__ == "AdamW"


class _MyKerasAdam(keras.optimizers.Adam):
    pass


def test_port_errors_name_the_fix():
    params = [torch.ones(3, requires_grad=True)]
    with pytest.raises(interop.KerasFileError, match="serialize"):
        interop.from_keras(keras.optimizers.Adam().get_config(), params)
    with pytest.raises(TypeError, match="frontend"):
        interop.from_keras(keras.optimizers.Adam(), params, frontend="optax")
    with pytest.raises(ValueError, match="frontend"):
        interop.from_keras(keras.optimizers.Adam(), params, frontend="jax")
    with pytest.raises(interop.KerasFileError, match="Lion"):
        interop.from_keras(keras.optimizers.Lion(), params)
    with pytest.raises(TypeError, match="Keras optimizer"):
        interop.from_keras(torch.optim.Adam(params), params)
    unbuilt = keras.optimizers.Adam(weight_decay=0.1)
    unbuilt.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(interop.KerasFileError, match="keras_variables"):
        interop.from_keras(unbuilt, params)
    # a user's subclass of a Keras optimizer ports as its base
    assert isinstance(interop.from_keras(_MyKerasAdam(0.1), params), kt.Adam)


def test_a_packed_optax_state_is_refused_clearly(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    import kerasopt.optax as ko

    state = ko.adam(0.01, packed=True).init([jnp.ones((2, 3)), jnp.ones(3)])
    with pytest.raises(interop.KerasFileError, match="packed=False"):
        interop.save_keras_weights(tmp_path / "p.weights.h5", state, learning_rate=0.01)
    assert not (tmp_path / "p.weights.h5").exists()


def test_exclusions_of_an_unbuilt_optimizer_with_keras_variables():
    model = _keras_model(keras.optimizers.Adam(0.05, weight_decay=0.5), "list")
    _, params = _torch_twin(model)
    with torch.no_grad():
        for p in params:
            p.fill_(1.0)  # Keras's biases start at 0, which decay would not move
    opt = interop.from_keras(model.optimizer, params,
                             keras_variables=model.trainable_variables)
    # model.layers[0].bias and model.layers[1].kernel: positions 1 and 2
    w0 = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves the weights
    moved = [not torch.equal(a, p.detach()) for a, p in zip(w0, params)]
    assert moved == [True, False, False, True]
