"""kerasopt.optax: composition with optax, EMA helpers, inputs, dtypes, sparse rows, and a
hypothesis comparison of random feature combinations with kerasopt's NumPy optimizers
(themselves checked against Keras in tests/test_parity_keras.py)."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optax_cases import SHAPES, from_tree, make_problem, to_tree

import kerasopt
import kerasopt.optax as kx
from kerasopt.algorithms import adam_update
from optimizer_db import ALGORITHMS, core_class, spec

FACTORIES = kx.FACTORIES
NUMPY_CLASSES = {name: core_class(name) for name in ALGORITHMS}


def _params(seed=0):
    w0, grads = make_problem(seed, steps=12)
    return (to_tree({k: jnp.asarray(v) for k, v in w0.items()}),
            [to_tree({k: jnp.asarray(v[i]) for k, v in grads.items()}) for i in range(12)])


def _run(tx, params, grads, jit=True):
    state = tx.init(params)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_jit_and_eager_agree_and_chain_composes(algo):
    params, grads = _params()
    kwargs = dict(learning_rate=0.01, use_ema=True, ema_overwrite_frequency=3,
                  gradient_accumulation_steps=2, weight_decay=0.05, global_clipnorm=2.0)
    alone, state = _run(FACTORIES[algo](**kwargs), params, grads)
    eager, _ = _run(FACTORIES[algo](**kwargs), params, grads[:4], jit=False)
    short, _ = _run(FACTORIES[algo](**kwargs), params, grads[:4])
    _assert_trees_close(short, eager, rtol=1e-6, atol=1e-6)  # XLA fusion: rounding only
    chained, chain_state = _run(optax.chain(optax.identity(), FACTORIES[algo](**kwargs)),
                                params, grads)
    _assert_trees_equal(alone, chained)
    assert int(state.count) == 12 and int(kx.iterations(chain_state)) == 12
    assert int(kx.iterations(chain_state, gradient_accumulation_steps=2)) == 6


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_inject_hyperparams(algo):
    params, grads = _params()
    plain, _ = _run(FACTORIES[algo](learning_rate=0.01, weight_decay=0.01), params, grads)
    injected_tx = optax.inject_hyperparams(
        FACTORIES[algo], static_args=("gradient_accumulation_steps", "ema_overwrite_frequency")
    )(learning_rate=0.01, weight_decay=0.01)
    injected, state = _run(injected_tx, params, grads)
    # Hyperparameters arrive as float32 arrays (1 - beta computed in float32): rounding level.
    _assert_trees_close(plain, injected, rtol=1e-5, atol=1e-6)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    # The learning rate can be changed in the state, as Keras's optimizer.learning_rate = x.
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    updates, _ = jax.jit(injected_tx.update)(grads[0], state, injected)
    # With weight decay 0.01 and lr 0: nothing moves at all.
    for u in jax.tree_util.tree_leaves(updates):
        assert float(jnp.max(jnp.abs(u))) == 0.0
    # An optax schedule through inject_hyperparams sees the raw count, as Keras's schedules.
    scheduled = optax.inject_hyperparams(FACTORIES[algo])(
        learning_rate=optax.exponential_decay(0.01, 10, 0.5)
    )
    _, state = _run(scheduled, params, grads[:3])
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 0.01 * 0.5 ** 0.2,
                               rtol=1e-6)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_learning_rate_forms_agree(algo):
    params, grads = _params()
    schedule = kerasopt.schedules.ExponentialDecay(0.01, decay_steps=5, decay_rate=0.5)
    a, _ = _run(FACTORIES[algo](learning_rate=schedule), params, grads)
    b, _ = _run(FACTORIES[algo](learning_rate=lambda count: schedule(count)), params, grads)
    _assert_trees_equal(a, b)
    c, _ = _run(FACTORIES[algo](learning_rate=0.003), params, grads)
    d, _ = _run(FACTORIES[algo](learning_rate=lambda: 0.003), params, grads)
    _assert_trees_close(c, d, rtol=1e-6, atol=1e-7)


def test_callable_betas_equal_constants():
    params, grads = _params()
    a, _ = _run(kx.adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99), params, grads)
    b, _ = _run(kx.adam(learning_rate=0.01, beta_1=lambda: 0.8, beta_2=lambda: 0.99),
                params, grads)
    _assert_trees_equal(a, b)


# ----------------------------------------------------------------------------- EMA, loss scale


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_ema_helpers(algo):
    params, grads = _params()
    tx = optax.chain(optax.identity(), FACTORIES[algo](learning_rate=0.01, use_ema=True))
    final, state = _run(tx, params, grads)
    averages = kx.ema_params(state)
    assert jax.tree_util.tree_structure(averages) == jax.tree_util.tree_structure(params)
    finalized = kx.finalize_params(final, state)
    _assert_trees_equal(finalized, averages)
    # The average lags the weights: it is neither the start nor the end.
    diff = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, p: a - p, averages, final))
    assert max(float(jnp.max(jnp.abs(d))) for d in diff) > 0
    no_ema, no_ema_state = _run(FACTORIES[algo](learning_rate=0.01), params, grads)
    assert kx.finalize_params(no_ema, no_ema_state) is no_ema
    with pytest.raises(ValueError, match="use_ema=True"):
        kx.ema_params(no_ema_state)
    with pytest.raises(ValueError, match="no kerasopt.optax state"):
        kx.ema_params(optax.adam(1e-3).init(params))


def test_ema_overwrite_writes_the_average():
    params, grads = _params()
    tx = kx.adamax(learning_rate=0.05, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=4)
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for i, g in enumerate(grads):
        updates, state = step(params, state, g)
        params = optax.apply_updates(params, updates)
        if (i + 1) % 4 == 0:  # iterations + 1 == 4, 8, 12: the weights are the averages
            _assert_trees_equal(params, state.average)


def test_scale_loss():
    params, _ = _params()
    state = kx.adam(loss_scale_factor=64.0).init(params)
    assert float(kx.scale_loss(jnp.float32(0.5), state)) == 32.0
    assert float(kx.scale_loss(jnp.float32(0.5), kx.adam().init(params))) == 0.5


def test_none_gradient_leaves_its_param_alone():
    params, grads = _params()
    tx = kx.adam(learning_rate=0.1)
    state = tx.init(params)
    g = dict(grads[0], emb=None)
    with pytest.warns(UserWarning, match=re.escape("['emb']")):
        updates, state = tx.update(g, state, params)
    assert float(jnp.max(jnp.abs(updates["emb"]))) == 0.0
    assert float(jnp.max(jnp.abs(state.momentum["emb"]))) == 0.0
    assert float(jnp.max(jnp.abs(updates["dense"]["kernel"]))) > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 1}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"beta_1": 1.0}, "beta_1"),
        ({"beta_2": -0.1}, "beta_2"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"clipnorm": float("nan")}, "clipnorm"),
        ({"clipnorm": 1.0, "clipvalue": 1.0}, "clipnorm"),
        ({"ema_momentum": 1.5}, "ema_momentum"),
        ({"ema_overwrite_frequency": 0}, "ema_overwrite_frequency"),
        ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps"),
        ({"gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps"),
        ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
        ({"use_ema": "yes"}, "use_ema"),
        ({"exclude_from_weight_decay": ["("]}, "exclude_from_weight_decay"),
        ({"state_dtype": "int32"}, "state_dtype"),
        ({"beta_1": jnp.ones(2)}, "beta_1"),
    ],
)
def test_invalid_hyperparameters_fail_at_construction(algo, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        FACTORIES[algo](**kwargs)


def test_unknown_keyword_and_amsgrad_type():
    with pytest.raises(TypeError):
        kx.adamax(amsgrad=True)
    with pytest.raises(TypeError, match="`amsgrad`"):
        kx.adam(amsgrad=1)


def test_grads_structure_mismatch_shows_the_difference():
    params, grads = _params()
    tx = kx.adam()
    state = tx.init(params)
    bad = {"dense": {"kernel": grads[0]["dense"]["kernel"], "bias_": grads[0]["dense"]["bias"]},
           "emb": grads[0]["emb"]}
    with pytest.raises(ValueError) as info:
        tx.update(bad, state, params)
    message = str(info.value)
    assert "structure does not match" in message
    assert "['dense']['bias']" in message and "['dense']['bias_']" in message
    with pytest.raises(ValueError, match="structure does not match"):
        jax.jit(tx.update)([grads[0]], state, params)


def test_shape_mismatch_params_none_and_all_none():
    params, grads = _params()
    tx = kx.adamax()
    state = tx.init(params)
    bad = dict(grads[0], emb=jnp.ones((6, 3)))
    with pytest.raises(ValueError, match=re.escape("params['emb'] has shape (6, 3)")):
        tx.update(bad, state, params)
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(grads[0], state)
    with pytest.raises(ValueError, match="all are None"):
        tx.update(jax.tree_util.tree_map(lambda _: None, params), state, params)
    with pytest.raises(TypeError, match="only floating-point"):
        tx.init({"a": jnp.arange(3)})


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(algo, dtype):
    params, grads = _params()
    reference, _ = _run(FACTORIES[algo](learning_rate=0.01), params, grads)
    cast = lambda t: jax.tree_util.tree_map(lambda x: x.astype(dtype), t)  # noqa: E731
    low, state = _run(FACTORIES[algo](learning_rate=0.01, use_ema=True), cast(params),
                      [cast(g) for g in grads])
    for leaf in jax.tree_util.tree_leaves((low, state.momentum, state.average)):
        assert leaf.dtype == dtype
    kept, kept_state = _run(FACTORIES[algo](learning_rate=0.01, state_dtype="float32"),
                            cast(params), [cast(g) for g in grads])
    for leaf in jax.tree_util.tree_leaves(kept):
        assert leaf.dtype == dtype
    for leaf in jax.tree_util.tree_leaves(kept_state.momentum):
        assert leaf.dtype == jnp.float32
    tol = 0.05 if dtype == jnp.bfloat16 else 0.01
    if spec(algo).rule is adam_update and dtype == jnp.bfloat16:
        # Keras's rule (hyperparameters cast to the variable's dtype): bfloat16(0.999) == 1,
        # so beta_2 ** t == 1 and alpha = lr * sqrt(1 - beta_2 ** t) / ... == 0: Keras's Adam
        # does not move bfloat16 weights with the default beta_2. state_dtype="float32" does.
        _assert_trees_equal(low, cast(params))
    else:
        _assert_trees_close(low, reference, rtol=tol, atol=tol)
    _assert_trees_close(kept, reference, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- sparse rows


def _numpy_reference(algo, kwargs, w0, grads_per_step, exclude=None):
    """kerasopt's NumPy optimizer (the core) on the same inputs."""
    opt = NUMPY_CLASSES[algo](**kwargs)
    variables = [kerasopt.Variable(np.array(w0[v]), name=v) for v in SHAPES]
    if exclude:
        opt.exclude_from_weight_decay(var_names=exclude)
    trajectory = []
    for grads in grads_per_step:
        opt.apply([grads[v] for v in SHAPES], variables)
        trajectory.append({v: var.numpy().copy() for v, var in zip(SHAPES, variables)})
    return trajectory


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_sparse_rows_under_jit_match_the_numpy_core(algo):
    rng = np.random.default_rng(3)
    w0, dense_grads = make_problem(5, steps=8)
    params = to_tree({k: jnp.asarray(v) for k, v in w0.items()})
    kwargs = dict(learning_rate=0.05, weight_decay=0.1, clipnorm=2.0)
    tx = FACTORIES[algo](**kwargs)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    state = tx.init(params)
    numpy_grads = []
    touched = set()
    for i in range(8):
        rows = rng.integers(0, 6, size=4)  # fixed count 4, duplicates likely
        touched.update(int(r) for r in rows)
        values = rng.normal(size=(4, 2)).astype(np.float32)
        g = {"kernel": dense_grads["kernel"][i], "bias": dense_grads["bias"][i],
             "emb": kerasopt.IndexedSlices(values, rows, (6, 2))}
        numpy_grads.append(g)
        jax_g = to_tree({**{k: jnp.asarray(v) for k, v in g.items() if k != "emb"},
                         "emb": kerasopt.IndexedSlices(jnp.asarray(values),
                                                       jnp.asarray(rows, jnp.int32), (6, 2))})
        updates, state = step(params, state, jax_g)
        params = optax.apply_updates(params, updates)
    reference = _numpy_reference(algo, kwargs, w0, numpy_grads)[-1]
    ours = from_tree(params)
    for v in SHAPES:
        np.testing.assert_allclose(ours[v], reference[v], rtol=2e-6, atol=1e-6)
    untouched = sorted(set(range(6)) - touched)
    for row in untouched:  # lazy: untouched rows and their state never move
        np.testing.assert_array_equal(np.asarray(params["emb"][row]), w0["emb"][row])
        assert float(jnp.max(jnp.abs(state.momentum["emb"][row]))) == 0.0
    assert step._cache_size() == 1  # one compilation for all steps (fixed row count)


def test_sparse_with_accumulation_densifies():
    params, grads = _params()
    tx = kx.adamax(learning_rate=0.05, gradient_accumulation_steps=2)
    rows = jnp.asarray([1, 1, 4], jnp.int32)
    values = jnp.ones((3, 2), jnp.float32)
    sparse = dict(grads[0], emb=kerasopt.IndexedSlices(values, rows, (6, 2)))
    dense = dict(grads[0], emb=jnp.zeros((6, 2)).at[rows].add(values))
    a, _ = _run(tx, params, [sparse, sparse])
    b, _ = _run(tx, params, [dense, dense])
    _assert_trees_equal(a, b)


def test_sparse_bad_rows_fail_clearly():
    params, _ = _params()
    tx = kx.adam()
    state = tx.init(params)
    g = jax.tree_util.tree_map(jnp.zeros_like, params)
    g["emb"] = kerasopt.IndexedSlices(jnp.ones((2, 3)), jnp.asarray([0, 1]), (6, 2))
    with pytest.raises(ValueError, match="IndexedSlices values have shape"):
        tx.update(g, state, params)
    g["emb"] = kerasopt.IndexedSlices(jnp.ones((2, 2)), jnp.asarray([0, 1]), (7, 2))
    with pytest.raises(ValueError, match="dense_shape"):
        tx.update(g, state, params)


# ----------------------------------------------------------------------------- hypothesis


@settings(max_examples=15, deadline=None)
@given(
    algo=st.sampled_from(ALGORITHMS),
    amsgrad=st.booleans(),
    weight_decay=st.sampled_from([None, 0.05]),
    clip=st.sampled_from([None, ("clipnorm", 0.8), ("global_clipnorm", 1.5), ("clipvalue", 0.6)]),
    ema=st.sampled_from([None, (0.9, None), (0.7, 3)]),
    accumulation=st.sampled_from([None, 2, 3]),
    loss_scale=st.sampled_from([None, 32.0]),
    seed=st.integers(0, 2**16),
)
def test_random_combinations_match_the_numpy_core(
    algo, amsgrad, weight_decay, clip, ema, accumulation, loss_scale, seed
):
    if weight_decay is None and "weight_decay" in spec(algo).required:
        weight_decay = 0.004  # AdamW: None is refused
    kwargs: dict = {"learning_rate": 0.02, "weight_decay": weight_decay,
                    "gradient_accumulation_steps": accumulation,
                    "loss_scale_factor": loss_scale}
    if "amsgrad" in spec(algo).defaults():
        kwargs["amsgrad"] = amsgrad
    if clip:
        kwargs[clip[0]] = clip[1]
    if ema:
        kwargs.update(use_ema=True, ema_momentum=ema[0], ema_overwrite_frequency=ema[1])
    steps = 12
    w0, grads = make_problem(seed, steps=steps, grad_scale=loss_scale or 1.0)
    per_step = [{v: grads[v][i] for v in SHAPES} for i in range(steps)]
    reference = _numpy_reference(algo, kwargs, w0, per_step, exclude=["bias"])
    tx = FACTORIES[algo](**kwargs, exclude_from_weight_decay=["bias"])
    params = to_tree({k: jnp.asarray(v) for k, v in w0.items()})
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    travel = {v: np.zeros(SHAPES[v]) for v in SHAPES}
    previous = dict(w0)
    for i in range(steps):
        updates, state = step(params, state, to_tree({v: jnp.asarray(g) for v, g in
                                                      per_step[i].items()}))
        params = optax.apply_updates(params, updates)
        ours = from_tree(params)
        for v in SHAPES:
            ref = reference[i][v].astype(np.float64)
            travel[v] += np.abs(ref - previous[v])
            bound = 1e-6 + 1e-5 * (np.abs(ref) + travel[v])
            assert np.all(np.abs(np.asarray(ours[v], np.float64) - ref) <= bound), (i, v)
        previous = {v: reference[i][v].astype(np.float64) for v in SHAPES}


def test_no_warnings_on_a_plain_step():
    params, grads = _params()
    tx = kx.adam()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(tx, params, grads[:2])


@pytest.mark.parametrize("argument", ["clipnorm", "global_clipnorm", "clipvalue",
                                      "weight_decay", "loss_scale_factor"])
def test_large_integer_hyperparameters_run_under_jit(argument):
    """A Python int beyond int32 (2**31) is a valid float hyperparameter; it must not be
    traced as an int32 (found by the hardening fuzz)."""
    tx = kx.adam(**{argument: 2**31})
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)({"w": jnp.full(3, 0.5)}, state, params)
    assert updates["w"].shape == (3,)
