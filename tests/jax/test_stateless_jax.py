"""``kerasopt.Adam/Adamax(...).stateless_apply`` with JAX arrays, under ``jax.jit`` (issue 4,
item 4: Keras's stateless API on JAX): the results equal ``kerasopt.optax`` (itself tested
against Keras on JAX) step for step, and the whole call traces under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kerasopt
import kerasopt.optax as kx


@pytest.mark.parametrize("cls, factory", [(kerasopt.Adam, kx.adam),
                                          (kerasopt.Adamax, kx.adamax)])
@pytest.mark.parametrize("kwargs", [{}, {"use_ema": True, "ema_overwrite_frequency": 2,
                                         "gradient_accumulation_steps": 2}])
def test_stateless_apply_jax_jit(cls, factory, kwargs):
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in w0] for _ in range(4)]
    opt = cls(learning_rate=0.01, **kwargs)
    opt.build([kerasopt.Variable(jnp.asarray(w)) for w in w0])
    opt_vars = [jnp.asarray(v.value) for v in opt.variables]
    trainable = [jnp.asarray(w) for w in w0]
    step = jax.jit(opt.stateless_apply)
    for g in grads:
        trainable, opt_vars = step(opt_vars, [jnp.asarray(x) for x in g], trainable)
    assert all(isinstance(t, jax.Array) for t in trainable)

    tx = factory(learning_rate=0.01, **kwargs)
    params = [jnp.asarray(w) for w in w0]
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update([jnp.asarray(x) for x in g], state, params)
        params = [p + u for p, u in zip(params, updates)]
    for a, b in zip(trainable, params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
