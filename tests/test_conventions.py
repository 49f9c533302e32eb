"""Keras's and optax's conventions in the NumPy core and kerasopt.optax (issue 13 items 9-13,
issue 17 items 5-7, issue 14 item 11 for the core), each checked against Keras's own
behaviour or a hand-derived truth."""

from __future__ import annotations

import copy
import os
import pickle
import threading
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kerasopt  # noqa: E402
from kerasopt.optimizer import reset_names  # noqa: E402
from optimizer_db import ALGORITHMS, KERAS_NAMES, core_class, optax_factory  # noqa: E402

F = np.float32


# --------------------------------------------------------------------------- names (13.10)


def test_unnamed_optimizers_get_keras_unique_names():
    keras = pytest.importorskip("keras")
    sequence = ["Adam", "Adam", "Adamax", "AdamW", "Adam", "AdamW"]
    keras.utils.clear_session()
    expected = [getattr(keras.optimizers, name)().name for name in sequence]
    explicit = keras.optimizers.Adam(name="adam").name  # an explicit name is not counted
    expected.append(keras.optimizers.Adam().name)
    reset_names()
    got = [getattr(kerasopt, name)().name for name in sequence]
    assert kerasopt.Adam(name="adam").name == explicit
    got.append(kerasopt.Adam().name)
    assert got == expected == ["adam", "adam_1", "adamax", "adam_w", "adam_2", "adam_w_1",
                               "adam_3"]


def test_the_unique_name_is_in_the_config_and_the_variable_paths():
    first, second = kerasopt.Adam(), kerasopt.Adam()
    var = kerasopt.Variable(np.zeros(2, F), name="w")
    second.build([var])
    assert second.get_config()["name"] == "adam_1" and first.name == "adam"
    assert [v.name for v in second.variables][:2] == ["adam_1/iteration",
                                                       "adam_1/learning_rate"]


# --------------------------------------------------------------------------- get (13.11)


def test_get_none_is_none_as_in_keras():
    keras = pytest.importorskip("keras")
    assert keras.optimizers.get(None) is None
    assert kerasopt.get(None) is None


# --------------------------------------------------------------------------- loss scale (13.9)


def _keras_311_loss_scale_config(**overrides):
    """A LossScaleOptimizer config as Keras 3.0-3.11 wrote it: the base optimizer's keys
    at their defaults beside its own."""
    config = {"name": "loss_scale_optimizer", "weight_decay": None, "clipnorm": None,
              "global_clipnorm": None, "clipvalue": None, "use_ema": False,
              "ema_momentum": 0.99, "ema_overwrite_frequency": None,
              "loss_scale_factor": None, "gradient_accumulation_steps": None,
              "inner_optimizer": {"module": "keras.optimizers", "class_name": "Adam",
                                  "config": {"learning_rate": 0.01}, "registered_name": None},
              "initial_scale": 64.0, "dynamic_growth_steps": 10}
    config.update(overrides)
    return {"module": "keras.optimizers", "class_name": "LossScaleOptimizer",
            "config": config, "registered_name": None}


def test_old_loss_scale_configs_with_default_base_keys_load_as_in_keras():
    keras = pytest.importorskip("keras")
    config = _keras_311_loss_scale_config()
    reference = keras.optimizers.deserialize(copy.deepcopy(config))
    opt = kerasopt.deserialize(config)
    assert isinstance(opt, kerasopt.LossScaleOptimizer)
    assert (opt.initial_scale, opt.dynamic_growth_steps) == (
        reference.initial_scale, reference.dynamic_growth_steps)
    assert opt.inner_optimizer.learning_rate == pytest.approx(0.01)


@pytest.mark.parametrize("key, value", [("weight_decay", 0.1), ("use_ema", True),
                                        ("clipnorm", 1.0), ("gradient_accumulation_steps", 2)])
def test_old_loss_scale_configs_with_other_base_values_are_refused(key, value):
    keras = pytest.importorskip("keras")
    config = _keras_311_loss_scale_config(**{key: value})
    with pytest.raises(ValueError):
        keras.optimizers.deserialize(copy.deepcopy(config))
    with pytest.raises(ValueError, match=f"does not take `{key}`"):
        kerasopt.deserialize(config)


# --------------------------------------------------------------------------- exclusions (13.12)


def test_core_warns_when_an_exclusion_pattern_matches_no_variable():
    variables = [kerasopt.Variable(np.ones(2, F), name="dense/kernel"),
                 kerasopt.Variable(np.ones(2, F), name="dense/bias")]
    opt = kerasopt.AdamW()
    opt.exclude_from_weight_decay(var_names=["bias", "norm"])
    with pytest.warns(UserWarning, match=r"\['norm'\] match no variable name"):
        opt.build(variables)
    quiet = kerasopt.AdamW()
    quiet.exclude_from_weight_decay(var_names=["bias"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.build(variables)


def _optax_run(tx, params, steps=3):
    import jax.numpy as jnp
    import optax

    state = tx.init(params)
    for k in range(steps):
        grads = [jnp.full(p.shape, 0.5 * (k + 1), p.dtype) for p in params] if isinstance(
            params, list) else {n: jnp.full(p.shape, 0.5 * (k + 1), p.dtype)
                                for n, p in params.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_optax_names_let_list_params_exclude_leaves():
    jnp = pytest.importorskip("jax.numpy")
    ko = pytest.importorskip("kerasopt.optax")
    kernel, bias = jnp.ones((3, 2)), jnp.ones((2,))
    by_dict = _optax_run(ko.adamw(learning_rate=0.1, weight_decay=0.5,
                                  exclude_from_weight_decay=["bias"]),
                         {"kernel": kernel, "bias": bias})
    by_list = _optax_run(ko.adamw(learning_rate=0.1, weight_decay=0.5,
                                  exclude_from_weight_decay=["bias"],
                                  names=["dense/kernel", "dense/bias"]), [kernel, bias])
    decayed = _optax_run(ko.adamw(learning_rate=0.1, weight_decay=0.5), [kernel, bias])
    np.testing.assert_array_equal(by_list[0], by_dict["kernel"])
    np.testing.assert_array_equal(by_list[1], by_dict["bias"])
    assert not np.array_equal(by_list[1], decayed[1])  # the bias was excluded


def test_optax_warns_once_when_an_exclusion_matches_no_leaf():
    jnp = pytest.importorskip("jax.numpy")
    ko = pytest.importorskip("kerasopt.optax")
    tx = ko.adamw(learning_rate=0.1, exclude_from_weight_decay=["bias"])
    params = [jnp.ones(2), jnp.ones(3)]  # list leaves are named "[0]", "[1]"
    with pytest.warns(UserWarning, match=r"\['bias'\] match no variable name"):
        _optax_run(tx, params, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _optax_run(tx, params, steps=2)


def test_optax_names_must_name_every_leaf():
    jnp = pytest.importorskip("jax.numpy")
    ko = pytest.importorskip("kerasopt.optax")
    tx = ko.adam(weight_decay=0.1, exclude_from_weight_decay=["b"], names=["a"])
    with pytest.raises(ValueError, match="`names` must give one string per parameter leaf"):
        _optax_run(tx, [jnp.ones(2), jnp.ones(2)], steps=1)


# --------------------------------------------------------------------------- sparse (13.13)


def _sparse_run(cls, mode, densify=False, steps=6):
    rng = np.random.default_rng(0)
    table = kerasopt.Variable(rng.normal(size=(8, 3)).astype(F), name="emb")
    opt = cls(learning_rate=0.05, sparse_updates=mode) if mode else cls(learning_rate=0.05)
    history = []
    for k in range(steps):
        rows = np.array([1, 3, 3]) if k < 3 else np.array([0, 1])
        values = rng.normal(size=(len(rows), 3)).astype(F)
        g = kerasopt.IndexedSlices(values, rows, (8, 3))
        opt.apply([g.to_dense() if densify else g], [table])
        history.append(table.numpy())
    return history, [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_sparse_dense_mode_is_the_densified_gradient(name):
    """"dense" gives Keras 3's result: the step of the densified gradient (whose parity
    with Keras test_parity_keras checks), bit for bit."""
    cls = core_class(name)
    dense, dense_state = _sparse_run(cls, "dense")
    reference, reference_state = _sparse_run(cls, None, densify=True)
    for a, b in zip(dense + dense_state, reference + reference_state):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_sparse_lazy_mode_leaves_untouched_rows_and_their_state(name):
    cls = core_class(name)
    lazy, lazy_state = _sparse_run(cls, "lazy")
    dense, _ = _sparse_run(cls, "dense")
    # Rows 0 and 1 are touched late; rows 2 and 4-7 never: they keep value and state.
    for k in range(3):
        np.testing.assert_array_equal(lazy[k][[0, 2, 4, 5, 6, 7]], lazy[0][[0, 2, 4, 5, 6, 7]])
    slots = [s for s in lazy_state if s.shape == (8, 3)]
    assert slots and all(not s[[2, 4, 5, 6, 7]].any() for s in slots)
    assert not np.array_equal(lazy[-1], dense[-1])  # densified, untouched rows move too


def test_sparse_updates_is_checked_and_kept_in_the_config():
    with pytest.raises(ValueError, match="sparse_updates"):
        kerasopt.Adam(sparse_updates="eager")
    opt = kerasopt.Adamax(sparse_updates="dense")
    assert opt.get_config()["sparse_updates"] == "dense"
    assert "sparse_updates" not in kerasopt.Adamax().get_config()  # Keras reads the default
    assert kerasopt.Adamax.from_config(opt.get_config()).sparse_updates == "dense"


def test_optax_sparse_dense_mode_is_the_densified_gradient():
    jnp = pytest.importorskip("jax.numpy")
    ko = pytest.importorskip("kerasopt.optax")
    rows = jnp.array([1, 3, 3])
    values = jnp.arange(9.0, dtype=jnp.float32).reshape(3, 3) / 10
    sparse = kerasopt.IndexedSlices(values, rows, (5, 3))
    dense = jnp.zeros((5, 3)).at[rows].add(values)
    params = {"emb": jnp.ones((5, 3))}
    tx = ko.adam(learning_rate=0.1, sparse_updates="dense")
    u1, _ = tx.update({"emb": sparse}, tx.init(params), params)
    tx2 = ko.adam(learning_rate=0.1)
    u2, _ = tx2.update({"emb": dense}, tx2.init(params), params)
    np.testing.assert_array_equal(u1["emb"], u2["emb"])
    lazy, _ = tx2.update({"emb": sparse}, tx2.init(params), params)
    assert not np.asarray(lazy["emb"])[[0, 2, 4]].any()


# --------------------------------------------------------------------------- mistakes (17.5-7)


@pytest.mark.parametrize("foreign, keras_name", [("lr", "learning_rate"), ("b1", "beta_1"),
                                                 ("b2", "beta_2"), ("eps", "epsilon"),
                                                 ("mask", "weight_decay_mask")])
def test_optax_users_names_get_did_you_mean(foreign, keras_name):
    pytest.importorskip("kerasopt.optax")
    for name in ALGORITHMS:
        with pytest.raises(TypeError, match=f"Did you mean `{keras_name}` for `{foreign}`"):
            optax_factory(name)(**{foreign: 0.5})


def test_apply_gradients_with_an_exhausted_zip_raises():
    var = kerasopt.Variable(np.zeros(2, F))
    pairs = zip([np.ones(2, F)], [var])
    opt = kerasopt.Adam()
    opt.apply_gradients(pairs)
    with pytest.raises(ValueError, match="exhausted zip or generator"):
        opt.apply_gradients(pairs)
    assert int(opt.iterations.numpy()) == 1


def test_apply_gradients_with_bare_gradients_says_what_it_expects():
    var = kerasopt.Variable(np.zeros(2, F))
    opt = kerasopt.Adam()
    with pytest.raises(TypeError, match=r"expects \(gradient, variable\) pairs.*apply\(grads"):
        opt.apply_gradients([np.ones(2, F)])
    assert not opt.built and var.numpy().tolist() == [0, 0]


def test_one_rule_for_an_integer_learning_rate():
    opt = kerasopt.Adam(learning_rate=0.1)
    with pytest.raises(TypeError, match="not an integer.*Write it as 1.0"):
        kerasopt.Adam(learning_rate=1)
    with pytest.raises(TypeError, match="not an integer.*Write it as 1.0"):
        opt.learning_rate = 1
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -0.1
    assert opt.learning_rate == np.float32(0.1)
    opt.learning_rate = 0.5
    assert opt.learning_rate == np.float32(0.5)


def test_amsgrad_on_adamax_names_the_algorithms_that_have_it():
    takers = [n for n in KERAS_NAMES if "amsgrad" in kerasopt.algorithms.get(n).defaults()]
    with pytest.raises(TypeError, match=f"argument of {' and '.join(takers)}, not of Adamax"):
        kerasopt.Adamax(amsgrad=True)


# --------------------------------------------------------------------------- threads (14.11)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_concurrent_applies_lose_nothing(name):
    """Two threads applying 100 steps each to one optimizer: every step is applied whole
    (the gradients are constant, so the result equals 200 steps in one thread)."""
    cls = core_class(name)

    def run(threads):
        var = kerasopt.Variable(np.linspace(-1, 1, 4096).astype(F), name="w")
        opt = cls(learning_rate=0.001, use_ema=True)
        grad = np.linspace(0.5, -0.5, 4096).astype(F)

        def steps(n):
            for _ in range(n):
                opt.apply([grad], [var])

        workers = [threading.Thread(target=steps, args=(200 // threads,))
                   for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return var.numpy(), int(opt.iterations.numpy())

    sequential, count = run(1)
    concurrent, concurrent_count = run(2)
    assert count == concurrent_count == 200
    np.testing.assert_array_equal(concurrent, sequential)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_core_optimizers_pickle_and_copy(name):
    var = kerasopt.Variable(np.ones(3, F), name="w")
    opt = core_class(name)(learning_rate=0.1)
    opt.apply([np.ones(3, F)], [var])
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert int(clone.iterations.numpy()) == 1
        clone.apply([np.ones(3, F)], [clone._trainable_variables[0]])
        assert int(clone.iterations.numpy()) == 2
