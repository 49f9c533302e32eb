"""Under jax.jit, kerasopt.optax's step compiles to no more array loops than optax's own
adam/adamax (issue 5, item 4). XLA's CPU backend emits one loop fusion per output array
(new m, new v or u, new w), for optax and kerasopt alike, so the check is "no more
parameter-sized fusions than optax", not "one fusion per parameter"."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import kerasopt.optax as ko

PARAMS = [jnp.ones((300, 40)), jnp.ones((37,)), jnp.ones((64, 64))]


def _array_fusions(tx) -> int:
    state = tx.init(PARAMS)

    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    text = jax.jit(step, donate_argnums=(1, 2)).lower(PARAMS, state, PARAMS).compile().as_text()
    shapes = {f"f32[{','.join(map(str, p.shape))}]" for p in PARAMS}
    return sum(
        1
        for line in text.splitlines()
        if " fusion(" in line and "calls=" in line and line.split("=", 1)[1].split()[0]
        .split("{")[0] in shapes
    )


@pytest.mark.parametrize("ours, theirs", [(ko.adam(), optax.adam(1e-3, eps=1e-7)),
                                          (ko.adamax(), optax.adamax(1e-3, eps=1e-7))])
def test_no_more_fusions_than_optax(ours, theirs):
    mine, reference = _array_fusions(ours), _array_fusions(theirs)
    assert 0 < mine <= reference, (mine, reference)
    assert mine <= 3 * len(PARAMS)  # at most one loop per written array: w and two moments
