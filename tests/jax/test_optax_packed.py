"""``packed=True``: the state as one flat buffer per kind of leaf gives the per-leaf
state's results bit for bit, on every feature, for every registered algorithm; with
``clipnorm`` / ``global_clipnorm`` the norms are XLA reductions over a slice of the buffer
instead of over the leaf, whose summation order XLA may choose differently: there the two
agree within a few ulps of each step's operands."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kerasopt
import kerasopt.optax as kx
from operand_ulps import assert_trajectories_close
from optimizer_db import ALGORITHMS, spec

SHAPES = {"dense": {"kernel": (7, 5), "bias": (5,)}, "emb": (9, 3), "scale": ()}


def _params(dtypes=None, seed=0):
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    dtypes = dtypes or [jnp.float32] * len(leaves)
    return treedef.unflatten([jnp.asarray(rng.normal(size=s), d)
                              for s, d in zip(leaves, dtypes)])


def _grads(params, steps, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    return [jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape) * scale, p.dtype), params)
        for _ in range(steps)]


def _run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    trajectory = []
    for g in grads:
        updates, state = step(params, state, g)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def _assert_identical(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


@settings(max_examples=12, deadline=None)
@given(
    algo=st.sampled_from(ALGORITHMS),
    weight_decay=st.sampled_from([None, 0.05]),
    exclude=st.booleans(),
    clip=st.sampled_from([None, ("clipnorm", 0.8), ("global_clipnorm", 1.5),
                          ("clipvalue", 0.6)]),
    ema=st.sampled_from([None, (0.9, None), (0.7, 3)]),
    accumulation=st.sampled_from([None, 2, 3]),
    loss_scale=st.sampled_from([None, 32.0]),
    seed=st.integers(0, 2**16),
)
def test_packed_equals_per_leaf(algo, weight_decay, exclude, clip, ema, accumulation,
                                loss_scale, seed):
    if weight_decay is None and "weight_decay" in spec(algo).required:
        weight_decay = 0.004
    kwargs = {"learning_rate": 0.02, "weight_decay": weight_decay,
              "gradient_accumulation_steps": accumulation, "loss_scale_factor": loss_scale}
    if clip:
        kwargs[clip[0]] = clip[1]
    if ema:
        kwargs.update(use_ema=True, ema_momentum=ema[0], ema_overwrite_frequency=ema[1])
    if exclude:
        kwargs["exclude_from_weight_decay"] = ["bias"]
    params = _params(seed=seed)
    grads = _grads(params, 7, seed=seed + 1, scale=loss_scale or 1.0)
    factory = kx.FACTORIES[algo]
    per_leaf, state = _run(factory(**kwargs), params, grads)
    packed, packed_state = _run(factory(**kwargs, packed=True), params, grads)
    assert isinstance(packed_state.momentum, kx.Packed)
    assert len(jax.tree_util.tree_leaves(packed_state.momentum)) == 1
    if clip and clip[0] in ("clipnorm", "global_clipnorm"):
        leaves = jax.tree_util.tree_leaves
        assert_trajectories_close([leaves(t) for t in packed], [leaves(t) for t in per_leaf],
                                  leaves(params), ulps=4)
        return
    for a, b in zip(per_leaf, packed):
        _assert_identical(a, b)
    if ema:
        _assert_identical(kx.ema_params(state), kx.ema_params(packed_state, params))
        _assert_identical(kx.finalize_params(params, state),
                          kx.finalize_params(params, packed_state))


def test_packed_groups_leaves_by_dtype_and_state_dtype():
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float32, jnp.bfloat16]
    params = _params(dtypes)
    grads = _grads(params, 4)
    for state_dtype, buffers in ((None, 2), ("float32", 2)):
        per_leaf, _ = _run(kx.adam(learning_rate=0.01, state_dtype=state_dtype, use_ema=True),
                           params, grads)
        packed, state = _run(kx.adam(learning_rate=0.01, state_dtype=state_dtype,
                                     use_ema=True, packed=True), params, grads)
        assert len(state.momentum.buffers) == buffers
        for a, b in zip(per_leaf, packed):
            _assert_identical(a, b)


def test_packed_state_takes_none_and_sparse_gradients_per_leaf():
    params = _params()
    grads = _grads(params, 5)
    grads[1] = {**grads[1], "emb": None}
    rows = jnp.array([0, 4, 4])
    grads[3] = {**grads[3], "emb": kerasopt.IndexedSlices(jnp.ones((3, 3)), rows, (9, 3))}
    tx = kx.adamax(learning_rate=0.01, weight_decay=0.1, use_ema=True)
    per_leaf, _ = _run(tx, params, grads)
    packed, state = _run(kx.adamax(learning_rate=0.01, weight_decay=0.1, use_ema=True,
                                   packed=True), params, grads)
    assert isinstance(state.norm, kx.Packed)
    for a, b in zip(per_leaf, packed):
        _assert_identical(a, b)


def test_packed_ema_params_needs_the_params():
    params = _params()
    _, state = _run(kx.adam(use_ema=True, packed=True), params, _grads(params, 1))
    with pytest.raises(ValueError, match="pass the params too"):
        kx.ema_params(state)


def test_packed_is_an_optax_argument_with_a_check():
    with pytest.raises(TypeError, match="packed"):
        kx.adam(packed="yes")


def _many_leaves(seed=0):
    """40 leaves of several shapes (scalars and an empty one too), float32 and bfloat16."""
    rng = np.random.default_rng(seed)
    shapes = [(17,), (), (3, 4), (0,), (64,), (5, 1, 2)] * 6 + [(130,), (2,), (9,), (1,)]
    dtypes = [jnp.float32, jnp.bfloat16] * 20
    return {f"layer{i}": {"w" if i % 3 else "bias": jnp.asarray(rng.normal(size=s), d)}
            for i, (s, d) in enumerate(zip(shapes, dtypes))}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_packed_many_leaves_cut_by_one_custom_call(algo):
    """With many leaves the updates are cut out of each packed buffer by one XLA custom call
    (``kerasopt.kernels.xla.split``) instead of one sliced kernel per leaf: the trajectories
    stay those of the per-leaf state, bit for bit."""
    from kerasopt.kernels import xla

    if not xla.available():
        pytest.skip("numba or jax.ffi missing")
    params = _many_leaves()
    grads = _grads(params, 4)
    kwargs = {"learning_rate": 0.02, "weight_decay": 0.05, "use_ema": True,
              "exclude_from_weight_decay": ["bias"]}
    factory = kx.FACTORIES[algo]
    per_leaf, _ = _run(factory(**kwargs), params, grads)
    tx = factory(**kwargs, packed=True)
    packed, state = _run(tx, params, grads)
    assert len(state.momentum.buffers) == 2
    for a, b in zip(per_leaf, packed):
        _assert_identical(a, b)
    hlo = jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(params, state, grads[0]) \
        .compile().as_text()
    assert hlo.count(f'custom_call_target="{xla.TARGET}"') == 2  # one per buffer
    assert " slice(" not in hlo  # no kernel per leaf


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64,
                                   jnp.int32, jnp.int8, jnp.bool_, jnp.float8_e4m3fn,
                                   jnp.float8_e5m2, jnp.complex64])
def test_split_gives_the_slices(dtype):
    from kerasopt.kernels import xla

    if not xla.available():
        pytest.skip("numba or jax.ffi missing")
    shapes = [(3, 4), (), (0,), (7,), (2, 0, 3), (1,)] * 4
    pieces, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        pieces.append((start, start + size, shape))
        start += size
    with jax.enable_x64(dtype == jnp.float64):
        buffer = jnp.asarray(np.arange(start) * 1.5 - 7, dtype)
        want = [buffer[a:b].reshape(shape) for a, b, shape in pieces]
        for got in (xla.split(buffer, pieces), jax.jit(lambda b: xla.split(b, pieces))(buffer)):
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_split_under_grad_and_vmap():
    from kerasopt.kernels import xla

    pieces = [(i * 5, i * 5 + 5, (5,)) for i in range(20)]
    buffer = jnp.arange(100, dtype=jnp.float32)
    grad = jax.grad(lambda b: sum(jnp.sum(x * k) for k, x in enumerate(xla.split(b, pieces))))
    np.testing.assert_array_equal(grad(buffer), np.repeat(np.arange(20.0), 5))
    batched = jax.vmap(lambda b: xla.split(b, pieces)[3])(jnp.stack([buffer, -buffer]))
    np.testing.assert_array_equal(batched, np.stack([buffer[15:20], -buffer[15:20]]))


def test_split_reads_only_the_ffi_layout_it_knows(tmp_path):
    """The custom call reads XLA's FFI structs by offset: it is registered only when the
    jaxlib's header has the major version whose layout it was written for."""
    from kerasopt.kernels import xla

    api = tmp_path / "xla" / "ffi" / "api"
    api.mkdir(parents=True)
    for text, major in (("#define XLA_FFI_API_MAJOR 0\n#define XLA_FFI_API_MINOR 7\n", 0),
                        ("#define XLA_FFI_API_MAJOR 1\n", 1), ("nothing\n", None)):
        (api / "c_api.h").write_text(text)
        assert xla._header_major(str(tmp_path)) == major
    assert xla._header_major(str(tmp_path / "absent")) is None
    assert xla.LAYOUT_MAJOR == 0
