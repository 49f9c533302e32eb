"""The state pytree saves and restores exactly: N steps, save, restore into the template of
a fresh ``init``, M more steps == N + M straight, bit for bit (kerasopt.optax.save_state /
restore_state; Orbax too when it is installed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_cases import make_problem, to_tree

import kerasopt
import kerasopt.optax as kx


def _setup(dtype=jnp.float32):
    w0, grads = make_problem(11, steps=10)
    params = to_tree({k: jnp.asarray(v, dtype) for k, v in w0.items()})
    grads = [to_tree({k: jnp.asarray(v[i], dtype) for k, v in grads.items()}) for i in range(10)]
    return params, grads


def _tx(algo):
    schedule = kerasopt.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7)
    factory = {"adam": lambda **k: kx.adam(amsgrad=True, **k), "adamax": kx.adamax}[algo]
    return optax.chain(
        optax.identity(),
        factory(learning_rate=schedule, use_ema=True, ema_overwrite_frequency=3,
                gradient_accumulation_steps=3, weight_decay=0.01, loss_scale_factor=8.0),
    )


def _steps(tx, params, state, grads):
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g))
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _apply(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                                      np.atleast_1d(np.asarray(y)).view(np.uint8))


@pytest.mark.parametrize("algo", ["adam", "adamax"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_resume_is_bit_identical(tmp_path, algo, dtype):
    params, grads = _setup(dtype)
    tx = _tx(algo)
    straight, straight_state = _steps(tx, params, tx.init(params), grads)

    half, half_state = _steps(tx, params, tx.init(params), grads[:4])
    path = tmp_path / "opt_state.npz"
    kx.save_state(path, half_state)
    assert not list(tmp_path.glob("*.tmp"))  # atomic: the temporary file was renamed
    fresh = _tx(algo)  # a new process would rebuild the transformation and its template
    restored = kx.restore_state(path, fresh.init(half))
    _equal(restored, half_state)
    resumed, resumed_state = _steps(fresh, half, restored, grads[4:])
    _equal(resumed, straight)
    _equal(resumed_state, straight_state)


def test_restore_checks_the_template(tmp_path):
    params, grads = _setup()
    _, state = _steps(kx.adamax(), params, kx.adamax().init(params), grads[:2])
    path = tmp_path / "s.npz"
    kx.save_state(path, state)
    with pytest.raises(ValueError, match="holds"):
        kx.restore_state(path, kx.adamax(use_ema=True).init(params))
    other = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    with pytest.raises(ValueError, match="template expects"):
        kx.restore_state(path, kx.adamax().init(other))


def test_orbax_roundtrip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params, grads = _setup()
    tx = _tx("adamax")
    _, state = _steps(tx, params, tx.init(params), grads[:4])
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    restored = checkpointer.restore(tmp_path / "ckpt", item=tx.init(params))
    _equal(restored, state)
