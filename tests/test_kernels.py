"""The fused kernels (kerasopt.kernels) agree with the pure reference path.

The reference (tests/fused_reference.py) composes kerasopt.algorithms and kerasopt.pipeline
in Keras 3's order, as kerasopt.Optimizer does: unscale -> accumulate -> clip -> decay ->
update -> EMA. Every
feature is compared on NumPy arrays and on CPU torch tensors, in float32 and float64, on
many tensors at once, for several steps.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fused_reference import reference_step
from kerasopt import pipeline
from kerasopt.algorithms import adam_update, adamax_update
from optimizer_db import KERNELS

kernels = pytest.importorskip("kerasopt.kernels")
if not kernels.available():  # pragma: no cover
    pytest.skip("numba is not installed", allow_module_level=True)

torch = pytest.importorskip("torch")

MAX_ULP = 4


# ----------------------------------------------------------------------------- helpers


def make_problem(backend, dtype, sizes, algorithm, amsgrad, accumulate, ema, seed=0):
    """Two identical copies of (params, slots, accumulators, averages)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in sizes]
    n_slots = 3 if (algorithm == "adam" and amsgrad) else 2
    slots = [[np.zeros(p.shape, dtype) for p in params] for _ in range(n_slots)]
    accs = [np.zeros(p.shape, dtype) for p in params] if accumulate else None
    avgs = [p.copy() for p in params] if ema else None

    def convert(arrays):
        if arrays is None:
            return None
        if backend == "numpy":
            return [a.copy() for a in arrays]
        return [torch.from_numpy(a.copy()) for a in arrays]

    def copy():
        return {
            "params": convert(params),
            "slots": [convert(s) for s in slots],
            "accumulators": convert(accs),
            "ema_averages": convert(avgs),
        }

    return copy(), copy()


def make_grads(backend, dtype, sizes, rng, scale=1.0):
    grads = [(rng.standard_normal(s) * scale).astype(dtype) for s in sizes]
    if backend == "torch":
        return [torch.from_numpy(g) for g in grads]
    return grads


def as_numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


def assert_close(state_a, state_b, maxulp=MAX_ULP):
    names = ("params", "slots", "accumulators", "ema_averages")
    for name in names:
        a, b = state_a[name], state_b[name]
        if a is None:
            continue
        if name == "slots":
            a = [x for s in a for x in s]
            b = [x for s in b for x in s]
        for x, y in zip(a, b):
            x, y = as_numpy(x), as_numpy(y)
            assert x.dtype == y.dtype
            if maxulp == 0:
                np.testing.assert_array_equal(x, y)
                continue
            # A few ulps of each array's scale: an ulp of a step's increment becomes many
            # ulps of a weight that the step brings close to zero.
            eps = np.finfo(x.dtype).eps
            scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
            np.testing.assert_allclose(x, y, rtol=maxulp * eps, atol=maxulp * eps * scale)


def run_both(backend, dtype, algorithm, *, sizes=(7, 1, 300, 64), steps=3, amsgrad=False,
             accumulation_steps=None, use_ema=False, ema_overwrite_frequency=None,
             weight_decay=None, weight_decay_mask=None, grad_scale=1.0, seed=0,
             maxulp=MAX_ULP, **options):
    """Run ``steps`` optimizer calls through both paths and compare after each.

    NumPy's reference is matched bit for bit (``maxulp=0``) where no norm is summed;
    torch's own ``sqrt`` of float32 tensors is not always correctly rounded on CPU (it
    differs from NumPy's in about 1 element out of 6), so torch gets ``MAX_ULP``.
    """
    if backend == "torch":
        maxulp = max(maxulp, MAX_ULP)
    fused, ref = make_problem(backend, dtype, sizes, algorithm, amsgrad,
                              accumulation_steps is not None, use_ema, seed)
    rng = np.random.default_rng(seed + 1)
    hyper = dict(learning_rate=np.float32(0.01), beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    for raw in range(steps):
        grads = make_grads(backend, dtype, sizes, rng, grad_scale)
        grads_ref = [g.clone() if isinstance(g, torch.Tensor) else g.copy() for g in grads]
        n = accumulation_steps
        iterations = raw // n if n else raw
        phase = None
        if n:
            phase = "update" if (raw + 1) % n == 0 else "micro"
        kwargs = dict(hyper, step=iterations + 1, accumulation_steps=n,
                      accumulation_phase=phase, weight_decay=weight_decay,
                      weight_decay_mask=weight_decay_mask, **options)
        if use_ema:
            kwargs["ema_momentum"] = pipeline.ema_momentum_at(iterations, 0.99)
            kwargs["ema_overwrite"] = bool(
                ema_overwrite_frequency and (iterations + 1) % ema_overwrite_frequency == 0
            )
        kernels.fused_step(algorithm, fused["params"], grads, fused["slots"],
                           accumulators=fused["accumulators"],
                           ema_averages=fused["ema_averages"], **kwargs)
        reference_step(algorithm, ref["params"], grads_ref, ref["slots"],
                       accumulators=ref["accumulators"], ema_averages=ref["ema_averages"],
                       **kwargs)
        assert_close(fused, ref, maxulp)
    return fused, ref


BACKENDS = ["numpy", "torch"]
DTYPES = [np.float32, np.float64]
ALGORITHMS = KERNELS  # the kernel bodies of the registered algorithms


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_plain(backend, dtype, algorithm):
    run_both(backend, dtype, algorithm, maxulp=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_amsgrad(backend, dtype):
    run_both(backend, dtype, "adam", amsgrad=True, steps=4, maxulp=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "option", [{"clipvalue": 0.5}, {"clipnorm": 1.0}, {"global_clipnorm": 2.0}],
    ids=["clipvalue", "clipnorm", "global_clipnorm"],
)
def test_clip(backend, dtype, algorithm, option):
    run_both(backend, dtype, algorithm, **option)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_clip_not_binding(backend, algorithm):
    """Norms below the threshold leave the gradients as they are."""
    run_both(backend, np.float32, algorithm, clipnorm=1e6)
    run_both(backend, np.float32, algorithm, global_clipnorm=1e6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_decay_with_mask(backend, dtype, algorithm):
    run_both(backend, dtype, algorithm, weight_decay=0.05,
             weight_decay_mask=[True, False, True, False], maxulp=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ema(backend, dtype, algorithm):
    run_both(backend, dtype, algorithm, use_ema=True, ema_overwrite_frequency=2, steps=5,
             maxulp=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_accumulation(backend, dtype, algorithm):
    """Micro-steps (only the accumulator moves) and update steps (mean, then reset)."""
    fused, _ = run_both(backend, dtype, algorithm, accumulation_steps=3, steps=7, maxulp=0)
    acc = as_numpy(fused["accumulators"][0])
    assert np.any(acc != 0)  # step 7 is a micro-step of the third cycle


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_scale(backend, dtype, algorithm):
    run_both(backend, dtype, algorithm, loss_scale_factor=1024.0, grad_scale=1024.0,
             maxulp=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_everything_at_once(backend, algorithm):
    run_both(backend, np.float32, algorithm, loss_scale_factor=8.0, accumulation_steps=2,
             global_clipnorm=3.0, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=3,
             amsgrad=algorithm == "adam", steps=8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_small_tensors(backend):
    sizes = [int(s) for s in np.random.default_rng(3).integers(0, 40, 500)] + [70_000]
    run_both(backend, np.float32, "adamax", sizes=sizes, steps=2, clipnorm=0.5,
             weight_decay=0.1, use_ema=True)
    run_both(backend, np.float32, "adam", sizes=sizes, steps=2, global_clipnorm=0.5)


def test_large_tensor_spans_chunks_and_blocks():
    from kerasopt.kernels import _numba

    size = 2 * _numba.CHUNK + 3 * _numba.BLOCK + 17
    run_both("numpy", np.float32, "adam", sizes=(size, 5), steps=2, clipnorm=100.0,
             use_ema=True)


def test_non_finite_gradients_propagate():
    """NaN and inf behave as in the reference (Keras semantics: they propagate)."""
    for option in ({}, {"clipvalue": 1.0}, {"global_clipnorm": 1.0}, {"clipnorm": 1.0}):
        fused, ref = make_problem("numpy", np.float32, (5, 3), "adam", True, False, False)
        grads = [np.array([1.0, np.nan, -np.inf, np.inf, 0.5], np.float32),
                 np.array([0.0, 2.0, -1.0], np.float32)]
        kwargs = dict(learning_rate=np.float32(0.1), beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                      step=1, **option)
        kernels.fused_step("adam", fused["params"], grads, fused["slots"], **kwargs)
        reference_step("adam", ref["params"], grads, ref["slots"], **kwargs)
        for x, y in zip(fused["params"] + fused["slots"][2], ref["params"] + ref["slots"][2]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("option", [{}, {"clipnorm": 1.0}, {"global_clipnorm": 1.0},
                                    {"clipvalue": 1.0}])
@pytest.mark.parametrize("threads", ["one thread", "threaded"])
def test_division_by_zero_gives_inf_and_nan(option, threads, request):
    """A loss scale that rounds to 0 in float32 divides every gradient by zero: inf and NaN,
    as in the reference, on one thread and several (numba's default error model raises
    ZeroDivisionError)."""
    if threads == "threaded":
        request.getfixturevalue("threaded")
    for algorithm in ALGORITHMS:
        fused, ref = make_problem("numpy", np.float32, (5, 3), algorithm, False, False, False)
        grads = [np.array([1.0, 0.0, -2.0, 0.5, 0.0], np.float32),
                 np.array([0.0, 2.0, -1.0], np.float32)]
        kwargs = dict(learning_rate=np.float32(0.1), beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                      step=1, loss_scale_factor=1e-50, **option)
        kernels.fused_step(algorithm, fused["params"], grads, fused["slots"], **kwargs)
        with np.errstate(all="ignore"):
            reference_step(algorithm, ref["params"], grads, ref["slots"], **kwargs)
        for x, y in zip(fused["params"] + fused["slots"][1], ref["params"] + ref["slots"][1]):
            np.testing.assert_array_equal(x, y)
        assert not np.isfinite(fused["params"][0]).all()


@pytest.mark.parametrize("threads", ["one thread", "threaded"])
def test_rows_step_zero_over_zero_gives_nan(threads, request):
    """Lazy sparse Adam with epsilon 0 and a zero gradient row: 0 / 0 is NaN, as in the
    reference."""
    if threads == "threaded":
        request.getfixturevalue("threaded")
    w = np.ones((4, 3), np.float32)
    slots = [np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)]
    rows, values = np.array([1, 2]), np.zeros((2, 3), np.float32)
    values[1] = 1.0
    hyper = dict(learning_rate=np.float32(0.1), beta_1=0.9, beta_2=0.999, epsilon=0.0, step=1)
    ref_w, ref_slots = w.copy(), [s.copy() for s in slots]
    kernels.fused_rows_step("adam", w, rows, values, slots, **hyper)
    with np.errstate(all="ignore"):
        new = adam_update(ref_w[rows], values, *(s[rows] for s in ref_slots), **hyper)
    for target, value in zip([ref_w, *ref_slots], new):
        target[rows] = value
    np.testing.assert_array_equal(w, ref_w)
    assert np.isnan(w[1]).all() and np.isfinite(w[2]).all()


# ----------------------------------------------------------------------------- hypothesis


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES),
    algorithm=st.sampled_from(ALGORITHMS),
    amsgrad=st.booleans(),
    clip=st.sampled_from([{}, {"clipvalue": 0.3}, {"clipnorm": 0.7}, {"global_clipnorm": 1.5}]),
    weight_decay=st.sampled_from([None, 0.004]),
    loss_scale_factor=st.sampled_from([None, 128.0, 3.0]),
    accumulation_steps=st.sampled_from([None, 2, 3]),
    use_ema=st.booleans(),
    ema_overwrite_frequency=st.sampled_from([None, 2]),
    sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_random_feature_combinations(backend, dtype, algorithm, amsgrad, clip, weight_decay,
                                     loss_scale_factor, accumulation_steps, use_ema,
                                     ema_overwrite_frequency, sizes, seed):
    mask = [i % 3 != 1 for i in range(len(sizes))]
    run_both(backend, dtype, algorithm, sizes=tuple(sizes), steps=4,
             amsgrad=amsgrad and algorithm == "adam", weight_decay=weight_decay,
             weight_decay_mask=mask, loss_scale_factor=loss_scale_factor,
             accumulation_steps=accumulation_steps, use_ema=use_ema,
             ema_overwrite_frequency=ema_overwrite_frequency, seed=seed, **clip)


# ----------------------------------------------------------------------------- contract


def test_not_fusable_inputs_raise_before_writing():
    params = [np.ones(4, np.float32), np.ones(3, np.float32)]
    slots = [[np.zeros(4, np.float32), np.zeros(3, np.float32)] for _ in range(2)]
    hyper = dict(learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    bad_grads = [
        [np.ones(4, np.float32), np.ones(4, np.float32)],  # wrong size
        [np.ones(4, np.float32), np.ones(3, np.float64)],  # wrong dtype
        [np.ones(4, np.float32), np.ones(6, np.float32)[::2]],  # not contiguous
        [np.ones(4, np.float32), [1.0, 2.0, 3.0]],  # not an array
        [np.ones(4, np.float32), torch.ones(3)],  # mixed libraries
    ]
    for grads in bad_grads:
        with pytest.raises(kernels.NotFusable):
            kernels.fused_step("adamax", params, grads, slots, **hyper)
        for p in params:
            np.testing.assert_array_equal(p, 1.0)
    with pytest.raises(kernels.NotFusable):
        kernels.fused_step("adam", [np.ones(3, np.float16)], [np.ones(3, np.float16)],
                           [[np.zeros(3, np.float16)]] * 2, **hyper)
    with pytest.raises(kernels.NotFusable):
        read_only = np.ones(4, np.float32)
        read_only.flags.writeable = False
        kernels.fused_step("adamax", [read_only], [np.ones(4, np.float32)],
                           [[np.zeros(4, np.float32)]] * 2, **hyper)
    with pytest.raises(ValueError, match="algorithm"):
        kernels.fused_step("sgd", params, params, slots, **hyper)


def test_fusable():
    assert kernels.fusable(np.zeros(3, np.float32))
    assert kernels.fusable(torch.zeros(3, dtype=torch.float64))
    assert not kernels.fusable(np.zeros(3, np.float16))
    assert not kernels.fusable(torch.zeros(3, dtype=torch.bfloat16))
    assert not kernels.fusable([1.0])


def test_torch_autograd_sees_the_in_place_update():
    w = torch.nn.Parameter(torch.ones(5))
    version = w._version
    kernels.fused_step("adam", [w], [torch.ones(5)], [[torch.zeros(5)], [torch.zeros(5)]],
                       learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    assert w._version > version
    assert torch.all(w.detach() < 1)


# ----------------------------------------------------------------------------- threads


THREADS = 3  # more threads than this machine may have cores: the claims still interleave


@pytest.fixture
def threaded(monkeypatch):
    """Every launch runs on ``THREADS`` threads at once (normally only steps of
    ``PARALLEL_THRESHOLD`` elements or more run on more than the calling thread, and on
    ``thread_count()`` of them); yields the thread counts of the launches that ran."""
    from kerasopt.kernels import _threads, fused

    ran = []
    run = _threads.run

    def spy(function, args, threads):
        ran.append(threads)
        return run(function, args, threads)

    monkeypatch.setattr(fused, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(fused, "thread_count", lambda: THREADS)
    monkeypatch.setattr(_threads, "run", spy)
    yield ran
    assert ran and set(ran) == {THREADS}, ran


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_threaded_launches_match_the_reference(backend, algorithm, threaded):
    run_both(backend, np.float32, algorithm, loss_scale_factor=8.0, accumulation_steps=2,
             clipnorm=0.5, weight_decay=0.01, use_ema=True, amsgrad=algorithm == "adam",
             steps=4, sizes=(7, 1, 3000, 64, 40_000))


@pytest.mark.parametrize("algorithm", ["adam", "amsgrad", "adamax"])
def test_threaded_rows_launches_match_the_reference(algorithm, threaded):
    test_rows_step_matches_the_lazy_reference("numpy", np.float32, algorithm, (50, 300))


def _step_once(sizes, seed, **options):
    """One fused Adam step (amsgrad, EMA) over fresh arrays; returns every array after it."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    slots = [[np.abs(rng.standard_normal(s)).astype(np.float32) for s in sizes]
             for _ in range(3)]
    averages = [p.copy() for p in params]
    kernels.fused_step("adam", params, grads, slots, ema_averages=averages, ema_momentum=0.9,
                       learning_rate=np.float32(0.01), beta_1=0.9, beta_2=0.999,
                       epsilon=1e-7, step=3, **options)
    return params + [x for s in slots for x in s] + averages


@pytest.mark.parametrize("option", [{}, {"clipnorm": 0.5}, {"global_clipnorm": 2.0}])
def test_results_do_not_depend_on_the_thread_count(option, monkeypatch):
    """The chunks that each thread claims change from launch to launch; the results (the
    norms' sums included) are the reference's, and the same bits on one thread and on
    several. The sizes put chunk boundaries on and off the claims' boundaries."""
    from kerasopt.kernels import _numba, fused

    sizes = [3 * _numba.CHUNK + 5, 0, 17, _numba.CHUNK, 1, 2 * _numba.CHUNK - 1] + [300] * 40
    kwargs = dict(sizes=sizes, steps=2, amsgrad=True, use_ema=True, weight_decay=0.01,
                  maxulp=0 if not option else MAX_ULP, **option)
    one, _ = run_both("numpy", np.float32, "adam", **kwargs)
    monkeypatch.setattr(fused, "PARALLEL_THRESHOLD", 0)
    for threads in (2, 5):
        monkeypatch.setattr(fused, "thread_count", lambda threads=threads: threads)
        several, _ = run_both("numpy", np.float32, "adam", **kwargs)
        assert_close(several, one, maxulp=0)


def test_plain_and_full_builds_agree_bit_for_bit(monkeypatch):
    """A step without gradient transforms or EMA runs the plain build of the update kernel;
    the full build, forced onto the same step, gives the same bits."""
    from kerasopt.kernels import _numba

    for algorithm, amsgrad in (("adam", False), ("adam", True), ("adamax", False)):
        kwargs = dict(amsgrad=amsgrad, weight_decay=0.05,
                      weight_decay_mask=[True, False, True, True])
        plain, _ = run_both("numpy", np.float32, algorithm, maxulp=0, **kwargs)
        monkeypatch.setattr(_numba, "PLAIN", 0)  # every feature set takes the full build
        full, _ = run_both("numpy", np.float32, algorithm, maxulp=0, **kwargs)
        monkeypatch.undo()
        assert_close(plain, full, maxulp=0)
    assert _numba.update_step("adam", _numba.DECAY | _numba.AMSGRAD).py_func.__name__ == (
        "update_step_adam_plain")
    assert _numba.update_step("adam", _numba.UNSCALE).py_func.__name__ == "update_step_adam"


def test_chunk_table_covers_every_element_once():
    from kerasopt.kernels import _numba, fused

    chunk = _numba.CHUNK
    sizes = np.array([0, 5, chunk, chunk + 1, 0, 3 * chunk, 2, 0], np.int64)
    table = fused.chunk_table(sizes)
    assert table.shape[1] == 4
    covered = [np.zeros(s, np.int64) for s in sizes]
    elements = 0
    for tensor, start, stop, first in table:
        assert 0 <= stop - start <= chunk and first == elements
        covered[tensor][start:stop] += 1
        elements += stop - start
    assert all((c == 1).all() for c in covered)
    assert sorted(set(table[:, 0])) == list(range(len(sizes)))  # empty tensors too
    assert (np.diff(table[:, 0]) >= 0).all() and (np.diff(table[:, 3]) >= 0).all()


def test_a_kernel_error_on_a_worker_thread_reaches_the_caller():
    from kerasopt.kernels import _threads

    calls = []

    def kernel(cursor):
        calls.append(cursor)
        if len(calls) > 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _threads.run(kernel, ("x",), 2)
    _threads.run(lambda: None, (), 2)  # the pool still works


def test_steps_from_several_threads_at_once(monkeypatch):
    """Two Python threads stepping at the same time (one of them finds the pool busy and
    runs its launch alone) get the results of steps taken one after the other."""
    import threading

    from kerasopt.kernels import fused

    monkeypatch.setattr(fused, "PARALLEL_THRESHOLD", 0)
    sizes = [5000, 300, 70_000]
    expected = [_step_once(sizes, seed, clipnorm=1.0) for seed in range(6)]
    results = [None] * 6
    barrier = threading.Barrier(2)

    def work(offset):
        barrier.wait()
        for seed in range(offset, 6, 2):
            results[seed] = _step_once(sizes, seed, clipnorm=1.0)

    workers = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    for got, want in zip(results, expected):
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)


def test_first_compilation_is_announced_once(tmp_path):
    """With an empty numba cache, the first step says once (on the ``kerasopt`` logger)
    that it compiles; a second process, with that cache, says nothing."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from kerasopt import kernels\n"
        "def step(**options):\n"
        "    kernels.fused_step('adamax', [np.zeros(5, np.float32)], [np.ones(5, np.float32)],\n"
        "                       [[np.zeros(5, np.float32)], [np.zeros(5, np.float32)]],\n"
        "                       learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7,\n"
        "                       step=1, **options)\n"
        "step()\n"
        "step(clipvalue=1.0)\n"  # a second kernel compiles: no second notice
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=600, check=True, env=env).stderr for _ in range(2)]
    assert runs[0].count("kerasopt: compiling the fused CPU kernels") == 1, runs[0]
    assert "compiling" not in runs[1], runs[1]


def test_starting_the_thread_pool_keeps_torchs_thread_count():
    """The kernels' threads are plain Python threads; a user's ``torch.set_num_threads``
    survives the first multi-threaded step (numba's OpenMP pool, which kerasopt used before,
    changed the thread count of the libgomp that torch shares when it started)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1\n"  # (torch applies the setting on first use)
        "import numpy as np\n"
        "from kerasopt import kernels\n"
        "n = 1 << 19\n"
        "kernels.fused_step('adam', [np.zeros(n, np.float32)], [np.ones(n, np.float32)],\n"
        "                   [[np.zeros(n, np.float32)], [np.zeros(n, np.float32)]],\n"
        "                   learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)\n"
        "print(torch.get_num_threads(), kernels.thread_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[0] == "1", out


# ----------------------------------------------------------------------------- sparse rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ["adam", "amsgrad", "adamax"])
@pytest.mark.parametrize("shape", [(50, 8), (30, 3, 4)])
def test_rows_step_matches_the_lazy_reference(backend, dtype, algorithm, shape):
    """Only the touched rows of the weight and its slots move, exactly as the reference's
    gather -> rule -> scatter does."""
    rng = np.random.default_rng(7)
    n_slots = 3 if algorithm == "amsgrad" else 2
    rule = adamax_update if algorithm == "adamax" else adam_update
    name = "adamax" if algorithm == "adamax" else "adam"
    w0 = rng.standard_normal(shape).astype(dtype)
    slots0 = [np.abs(rng.standard_normal(shape)).astype(dtype) * 0.01 for _ in range(n_slots)]
    convert = (lambda a: a.copy()) if backend == "numpy" else (lambda a: torch.tensor(a))
    fused_w, fused_slots = convert(w0), [convert(s) for s in slots0]
    ref_w, ref_slots = convert(w0), [convert(s) for s in slots0]
    hyper = dict(learning_rate=np.float32(0.01), beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    touched = set()
    for step in (1, 2, 3):
        rows = np.sort(rng.choice(shape[0], 7, replace=False))
        touched.update(rows.tolist())
        values = rng.standard_normal((7, *shape[1:])).astype(dtype)
        if backend == "torch":
            rows_t, values_t = torch.from_numpy(rows), torch.from_numpy(values)
        else:
            rows_t, values_t = rows, values
        kernels.fused_rows_step(name, fused_w, rows_t, values_t, fused_slots, step=step,
                                **hyper)
        new = rule(ref_w[rows_t], values_t, *(s[rows_t] for s in ref_slots), step=step,
                   **hyper)
        for target, value in zip([ref_w, *ref_slots], new):
            target[rows_t] = value
        maxulp = MAX_ULP if backend == "torch" else 0
        assert_close({"params": [fused_w], "slots": [[s] for s in fused_slots],
                      "accumulators": None, "ema_averages": None},
                     {"params": [ref_w], "slots": [[s] for s in ref_slots],
                      "accumulators": None, "ema_averages": None}, maxulp)
    untouched = sorted(set(range(shape[0])) - touched)
    assert np.array_equal(as_numpy(fused_w)[untouched], w0[untouched])
    for fused_slot, slot0 in zip(fused_slots, slots0):
        assert np.array_equal(as_numpy(fused_slot)[untouched], slot0[untouched])


def test_rows_step_rejects_bad_rows_before_writing():
    w = np.ones((4, 2), np.float32)
    slots = [np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32)]
    hyper = dict(learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    for rows, values in (([5], np.ones((1, 2), np.float32)), ([0], np.ones((2, 2), np.float32)),
                         ([0.5], np.ones((1, 2), np.float32))):
        with pytest.raises(kernels.NotFusable):
            kernels.fused_rows_step("adamax", w, np.asarray(rows), values, slots, **hyper)
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_rows_matches_add_at(dtype):
    rng = np.random.default_rng(5)
    inverse = rng.integers(0, 20, 200)
    values = rng.standard_normal((200, 3, 2)).astype(dtype)
    expected = np.zeros((20, 3, 2), dtype)
    np.add.at(expected, inverse, values)
    summed = kernels.sum_rows(inverse, values, 20)
    np.testing.assert_array_equal(summed, expected)
    assert summed.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("features", ["plain", "unscale", "accumulate", "both"])
def test_norm_pass_reassociates_only_the_sum(dtype, features):
    """The norm pass's per-element values (``g / scale``, ``(g + acc) / n``, their squares)
    are exactly the IEEE ones: its sum is within float64 rounding of the exact sum of the
    strictly computed squares. One altered element (e.g. a division turned into a multiply
    by the reciprocal) would move it by ~1e-8 relative in float32, far beyond 1e-12."""
    import math

    from kerasopt.kernels import _numba, fused, layout

    rng = np.random.default_rng(7)
    n = 3 * _numba.CHUNK + 123
    g = (rng.standard_normal(n) * 3).astype(dtype)
    acc = (rng.standard_normal(n) * 5).astype(dtype)
    bits = {"plain": 0, "unscale": layout.UNSCALE, "accumulate": layout.ACCUMULATE,
            "both": layout.UNSCALE | layout.ACCUMULATE}[features]
    hyper = np.zeros(layout.HYPER, dtype)
    hyper[layout.H_SCALE] = 3.0  # neither 3 nor 7 has an exact reciprocal
    hyper[layout.H_STEPS] = 7.0
    table = np.zeros((1, layout.COLUMNS), np.int64)
    table[0, layout.G] = g.ctypes.data
    table[0, layout.ACC] = acc.ctypes.data
    chunks = fused.chunk_table(np.array([n], np.int64))
    partial = np.zeros(chunks.shape[0])
    _numba.squared_sums(np.zeros(1, np.int64), table, chunks, np.zeros(1, dtype), bits, hyper,
                        partial)
    got = partial.sum()

    x = g
    if bits & layout.UNSCALE:
        x = x / hyper[layout.H_SCALE]
    if bits & layout.ACCUMULATE:
        x = (x + acc) / hyper[layout.H_STEPS]
    exact = math.fsum((x * x).astype(np.float64).tolist())
    assert abs(got - exact) <= 1e-12 * exact


def test_same_numpy_layouts_reads_dtype_and_shape_from_headers():
    a = [np.zeros((3, 4), np.float32), np.zeros(5, np.float64), np.zeros((), np.float32)]
    same = [np.ones((3, 4), np.float32), np.ones(5, np.float64), np.ones((), np.float32)]
    assert kernels.same_numpy_layouts(a, same)
    for i, other in [(0, np.ones((4, 3), np.float32)), (0, np.ones(12, np.float32)),
                     (1, np.ones(5, np.float32)), (2, np.ones(1, np.float32)),
                     (1, np.ones(5, np.float64).view(np.recarray)), (1, [0.0] * 5)]:
        changed = list(same)
        changed[i] = other
        assert not kernels.same_numpy_layouts(a, changed)
    assert not kernels.same_numpy_layouts(a, same[:2])
