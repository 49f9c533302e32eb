"""Lazy sparse updates with kerasopt.IndexedSlices, against a hand-written NumPy reference
of SPEC.md's formulas applied to the touched rows only."""

from __future__ import annotations

import numpy as np
import pytest

import kerasopt

F = np.float32
ROWS, COLS = 8, 3


# --------------------------------------------------------------------------- reference


def _sum_rows(values, indices):
    """Unique sorted rows and the summed values (duplicates summed first)."""
    rows = np.unique(indices)
    summed = np.zeros((len(rows), *values.shape[1:]), F)
    for value, index in zip(values, indices, strict=True):
        summed[np.searchsorted(rows, index)] += value
    return rows, summed


def _adam_rule(w, g, state, t, lr, b1, b2, eps, amsgrad):
    m, v = state["m"], state["v"]
    alpha = F(lr) * np.sqrt(F(1) - F(b2) ** F(t)) / (F(1) - F(b1) ** F(t))
    m = m + (g - m) * F(1 - b1)
    v = v + (g * g - v) * F(1 - b2)
    new = {"m": m, "v": v}
    den = v
    if amsgrad:
        new["vh"] = np.maximum(state["vh"], v)
        den = new["vh"]
    w = w - m * alpha / (np.sqrt(den) + F(eps))
    return w, new


def _adamax_rule(w, g, state, t, lr, b1, b2, eps, amsgrad=False):
    m, u = state["m"], state["u"]
    m = m + (g - m) * F(1 - b1)
    u = np.maximum(F(b2) * u, np.abs(g))
    w = w - F(lr) * m / ((F(1) - F(b1) ** F(t)) * (u + F(eps)))
    return w, {"m": m, "u": u}


class Reference:
    """Lazy Adam/Adamax on NumPy arrays, one variable."""

    def __init__(self, kind, w, lr=0.1, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False):
        self.rule = _adam_rule if kind == "adam" else _adamax_rule
        self.w = np.array(w, F)
        names = ["m", "v"] + (["vh"] if amsgrad else []) if kind == "adam" else ["m", "u"]
        self.state = {n: np.zeros_like(self.w) for n in names}
        self.hyper = {"lr": lr, "b1": b1, "b2": b2, "eps": eps, "amsgrad": amsgrad}
        self.t = 0

    def sparse(self, rows, g, weight_decay=None):
        self.t += 1
        w = self.w[rows]
        if weight_decay is not None:
            w = w - w * F(weight_decay) * F(self.hyper["lr"])
        state = {n: s[rows] for n, s in self.state.items()}
        w, state = self.rule(w, g, state, self.t, **self.hyper)
        self.w[rows] = w
        for n, s in state.items():
            self.state[n][rows] = s

    def dense(self, g):
        self.sparse(np.arange(self.w.shape[0]), g)


def _slot(opt, var, slot):
    matches = [v for v in opt.variables if v.name.endswith(f"{var.name}_{slot}")]
    assert len(matches) == 1, [v.name for v in opt.variables]
    return matches[0].numpy()


SLOT_NAMES = {"adam": {"m": "momentum", "v": "velocity", "vh": "velocity_hat"},
              "adamax": {"m": "momentum", "u": "norm"}}

CASES = [("adam", False), ("adam", True), ("adamax", False)]


def _make(kind, amsgrad=False, **kwargs):
    if kind == "adam":
        return kerasopt.Adam(amsgrad=amsgrad, **kwargs)
    return kerasopt.Adamax(**kwargs)


def _check_state(opt, var, ref, kind, rtol=1e-6):
    np.testing.assert_allclose(var.numpy(), ref.w, rtol=rtol, atol=1e-7)
    for n, s in ref.state.items():
        np.testing.assert_allclose(_slot(opt, var, SLOT_NAMES[kind][n]), s, rtol=rtol,
                                   atol=1e-8, err_msg=n)


def _w0(seed=0):
    return np.random.default_rng(seed).normal(size=(ROWS, COLS)).astype(F)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_only_touched_rows_move(kind, amsgrad):
    rng = np.random.default_rng(1)
    w0 = _w0()
    var = kerasopt.Variable(w0.copy(), name="emb")
    opt = _make(kind, amsgrad, learning_rate=0.1, beta_1=0.8, beta_2=0.9)
    ref = Reference(kind, w0, lr=0.1, b1=0.8, b2=0.9, amsgrad=amsgrad)
    # rows 6, 7 untouched until step 4; row 5 only touched at step 1 and 5.
    schedule = [[0, 5, 2], [1, 2, 2, 0], [3], [6, 0, 0, 0], [5, 7, 1]]
    for indices in schedule:
        indices = np.array(indices)
        values = rng.normal(size=(len(indices), COLS)).astype(F)
        before_w = var.numpy()
        before = {n: _slot(opt, var, SLOT_NAMES[kind][n]) for n in ref.state} if opt.built else None
        opt.apply([kerasopt.IndexedSlices(values, indices, (ROWS, COLS))], [var])
        rows, summed = _sum_rows(values, indices)
        ref.sparse(rows, summed)
        _check_state(opt, var, ref, kind)
        untouched = np.setdiff1d(np.arange(ROWS), rows)
        # untouched rows keep their value and their state exactly
        assert np.array_equal(var.numpy()[untouched], before_w[untouched])
        if before is not None:
            for n, s in before.items():
                assert np.array_equal(_slot(opt, var, SLOT_NAMES[kind][n])[untouched],
                                      s[untouched]), n
    assert int(opt.iterations.numpy()) == len(schedule)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_late_row_uses_global_step_for_bias_correction(kind, amsgrad):
    """A row first touched at step 4 is updated with t = 4, not t = 1."""
    w0 = np.ones((3, 1), F)
    var = kerasopt.Variable(w0.copy())
    opt = _make(kind, amsgrad, learning_rate=0.1)
    for _ in range(3):
        opt.apply([kerasopt.IndexedSlices(np.ones((1, 1), F), np.array([0]), (3, 1))], [var])
    opt.apply([kerasopt.IndexedSlices(np.full((1, 1), 2.0, F), np.array([2]), (3, 1))], [var])
    g = F(2.0)
    t = 4
    if kind == "adam":
        m, v = F(0.1) * g, F(0.001) * g * g
        alpha = F(0.1) * np.sqrt(F(1) - F(0.999) ** F(t)) / (F(1) - F(0.9) ** F(t))
        expected = F(1) - m * alpha / (np.sqrt(v) + F(1e-7))
    else:
        m, u = F(0.1) * g, g
        expected = F(1) - F(0.1) * m / ((F(1) - F(0.9) ** F(t)) * (u + F(1e-7)))
    np.testing.assert_allclose(var.numpy()[2, 0], expected, rtol=1e-6)
    # with t=1 it would have moved by ~lr; with t=4 by much less
    assert abs(1 - var.numpy()[2, 0]) < 0.07  # t=1 would move it by ~lr = 0.1
    assert var.numpy()[1, 0] == 1.0


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_duplicates_summed_before_update(kind, amsgrad):
    w0 = _w0(2)
    a = kerasopt.Variable(w0.copy())
    b = kerasopt.Variable(w0.copy())
    opt_a = _make(kind, amsgrad, learning_rate=0.05)
    opt_b = _make(kind, amsgrad, learning_rate=0.05)
    vals = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [2.0, 2.0, 2.0]], F)
    opt_a.apply([kerasopt.IndexedSlices(vals, np.array([3, 1, 3]), (ROWS, COLS))], [a])
    summed = np.stack([vals[1], vals[0] + vals[2]])
    opt_b.apply([kerasopt.IndexedSlices(summed, np.array([1, 3]), (ROWS, COLS))], [b])
    assert np.array_equal(a.numpy(), b.numpy())
    ref = Reference(kind, w0, lr=0.05, amsgrad=amsgrad)
    ref.sparse(np.array([1, 3]), summed)
    _check_state(opt_a, a, ref, kind)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_sparse_touching_every_row_once_equals_dense(kind, amsgrad):
    rng = np.random.default_rng(3)
    w0 = _w0(3)
    sparse_var = kerasopt.Variable(w0.copy())
    dense_var = kerasopt.Variable(w0.copy())
    opt_s = _make(kind, amsgrad, learning_rate=0.01)
    opt_d = _make(kind, amsgrad, learning_rate=0.01)
    for _ in range(4):
        g = rng.normal(size=(ROWS, COLS)).astype(F)
        perm = rng.permutation(ROWS)
        opt_s.apply([kerasopt.IndexedSlices(g[perm], perm, (ROWS, COLS))], [sparse_var])
        opt_d.apply([g], [dense_var])
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-6, atol=0)
    for a, b in zip(opt_s.variables, opt_d.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_clipnorm_uses_norm_of_summed_rows(kind, amsgrad):
    var = kerasopt.Variable(_w0(4))
    ref = Reference(kind, _w0(4), lr=0.01, amsgrad=amsgrad)
    opt = _make(kind, amsgrad, learning_rate=0.01, clipnorm=1.0)
    vals = np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [3.0, 0.0, 0.0]], F)
    idx = np.array([2, 5, 2])
    opt.apply([kerasopt.IndexedSlices(vals, idx, (ROWS, COLS))], [var])
    rows, summed = _sum_rows(vals, idx)  # rows 2: [6,0,0], 5: [0,4,0]; norm sqrt(52)
    norm = np.sqrt(np.sum(summed.astype(np.float64) ** 2))
    assert np.isclose(norm, np.sqrt(52))
    ref.sparse(rows, (summed * F(1.0) / F(norm)).astype(F))
    _check_state(opt, var, ref, kind, rtol=1e-5)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_global_clipnorm_sparse_and_dense(kind, amsgrad):
    emb0, dense0 = _w0(5), np.array([0.5, -0.5], F)
    emb = kerasopt.Variable(emb0.copy(), name="emb")
    dense = kerasopt.Variable(dense0.copy(), name="dense")
    opt = _make(kind, amsgrad, learning_rate=0.01, global_clipnorm=2.0)
    vals = np.array([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0]], F)
    idx = np.array([4, 4])  # summed: [2, 2, 2]
    g_dense = np.array([0.0, 4.0], F)
    opt.apply([kerasopt.IndexedSlices(vals, idx, (ROWS, COLS)), g_dense], [emb, dense])
    norm = np.sqrt(12.0 + 16.0)
    scale = 2.0 / norm
    ref_e = Reference(kind, emb0, lr=0.01, amsgrad=amsgrad)
    ref_e.sparse(np.array([4]), np.array([[2.0, 2.0, 2.0]], F) * F(scale))
    ref_d = Reference(kind, dense0, lr=0.01, amsgrad=amsgrad)
    ref_d.dense(g_dense * F(scale))
    _check_state(opt, emb, ref_e, kind, rtol=1e-5)
    _check_state(opt, dense, ref_d, kind, rtol=1e-5)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_clipvalue_applies_to_summed_rows(kind, amsgrad):
    var = kerasopt.Variable(_w0(6))
    ref = Reference(kind, _w0(6), lr=0.01, amsgrad=amsgrad)
    opt = _make(kind, amsgrad, learning_rate=0.01, clipvalue=1.0)
    vals = np.array([[0.8, -0.8, 0.1], [0.8, -0.8, 0.1]], F)
    opt.apply([kerasopt.IndexedSlices(vals, np.array([0, 0]), (ROWS, COLS))], [var])
    # summed [1.6, -1.6, 0.2] -> clipped [1, -1, 0.2]
    ref.sparse(np.array([0]), np.array([[1.0, -1.0, 0.2]], F))
    _check_state(opt, var, ref, kind)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_weight_decay_only_touched_rows(kind, amsgrad):
    w0 = _w0(7)
    var = kerasopt.Variable(w0.copy())
    ref = Reference(kind, w0, lr=0.1, amsgrad=amsgrad)
    opt = _make(kind, amsgrad, learning_rate=0.1, weight_decay=0.5)
    rng = np.random.default_rng(7)
    for idx in ([1, 3], [3, 3, 6]):
        idx = np.array(idx)
        vals = rng.normal(size=(len(idx), COLS)).astype(F)
        opt.apply([kerasopt.IndexedSlices(vals, idx, (ROWS, COLS))], [var])
        rows, summed = _sum_rows(vals, idx)
        ref.sparse(rows, summed, weight_decay=0.5)
        _check_state(opt, var, ref, kind)
    for r in (0, 2, 4, 5, 7):
        assert np.array_equal(var.numpy()[r], w0[r])


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_ema_is_dense_over_whole_variable(kind, amsgrad):
    w0 = _w0(8)
    var = kerasopt.Variable(w0.copy(), name="emb")
    ref = Reference(kind, w0, lr=0.1, amsgrad=amsgrad)
    opt = _make(kind, amsgrad, learning_rate=0.1, use_ema=True, ema_momentum=0.5)
    rng = np.random.default_rng(8)
    average = None
    for step, idx in enumerate(([1], [2, 2], [1, 7])):
        idx = np.array(idx)
        vals = rng.normal(size=(len(idx), COLS)).astype(F)
        opt.apply([kerasopt.IndexedSlices(vals, idx, (ROWS, COLS))], [var])
        rows, summed = _sum_rows(vals, idx)
        ref.sparse(rows, summed)
        mom = F(0.0) if step == 0 else F(0.5)
        average = ref.w.copy() if average is None else mom * average + (F(1) - mom) * ref.w
        np.testing.assert_allclose(_slot(opt, var, "average"), average, rtol=1e-6, atol=1e-7)
    _check_state(opt, var, ref, kind)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_accumulation_is_dense_and_equals_dense_run(kind, amsgrad):
    rng = np.random.default_rng(9)
    w0 = _w0(9)
    sparse_var = kerasopt.Variable(w0.copy(), name="emb")
    dense_var = kerasopt.Variable(w0.copy(), name="emb")
    opt_s = _make(kind, amsgrad, learning_rate=0.1, gradient_accumulation_steps=3)
    opt_d = _make(kind, amsgrad, learning_rate=0.1, gradient_accumulation_steps=3)
    ref = Reference(kind, w0, lr=0.1, amsgrad=amsgrad)
    acc = np.zeros_like(w0)
    for step in range(6):
        idx = rng.integers(0, ROWS, size=3)
        vals = rng.normal(size=(3, COLS)).astype(F)
        dense_g = np.zeros_like(w0)
        np.add.at(dense_g, idx, vals)
        opt_s.apply([kerasopt.IndexedSlices(vals, idx, (ROWS, COLS))], [sparse_var])
        opt_d.apply([dense_g], [dense_var])
        if (step + 1) % 3:
            acc = acc + dense_g
            np.testing.assert_allclose(_slot(opt_s, sparse_var, "gradient_accumulator"), acc,
                                       rtol=1e-6, atol=1e-7)
        else:
            ref.dense((dense_g + acc) / F(3))
            acc = np.zeros_like(w0)
        np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-6, atol=1e-7)
    for a, b in zip(opt_s.variables, opt_d.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    # the update steps were dense: every row's state moved
    _check_state(opt_s, sparse_var, ref, kind, rtol=1e-5)


@pytest.mark.parametrize("kind,amsgrad", CASES)
def test_loss_scale_factor_divides_sparse_values(kind, amsgrad):
    var = kerasopt.Variable(_w0(10))
    ref = Reference(kind, _w0(10), lr=0.1, amsgrad=amsgrad)
    opt = _make(kind, amsgrad, learning_rate=0.1, loss_scale_factor=4.0)
    vals = np.array([[4.0, 8.0, -4.0]], F)
    opt.apply([kerasopt.IndexedSlices(vals, np.array([6]), (ROWS, COLS))], [var])
    ref.sparse(np.array([6]), vals / F(4))
    _check_state(opt, var, ref, kind)


def _snapshot(opt, variables):
    return [v.numpy() for v in variables], [v.numpy() for v in opt.variables]


BAD_SLICES = {
    "index_too_large": lambda: kerasopt.IndexedSlices(np.ones((2, COLS), F), np.array([0, ROWS]),
                                                      (ROWS, COLS)),
    "negative_index": lambda: kerasopt.IndexedSlices(np.ones((2, COLS), F), np.array([-1, 0]),
                                                     (ROWS, COLS)),
    "values_wrong_row_shape": lambda: kerasopt.IndexedSlices(
        np.ones((2, COLS + 1), F), np.array([0, 1]), (ROWS, COLS)),
    "values_wrong_count": lambda: kerasopt.IndexedSlices(np.ones((3, COLS), F), np.array([0, 1]),
                                                         (ROWS, COLS)),
    "wrong_dense_shape": lambda: kerasopt.IndexedSlices(np.ones((2, COLS), F), np.array([0, 1]),
                                                        (ROWS + 1, COLS)),
    "float_indices": lambda: kerasopt.IndexedSlices(np.ones((2, COLS), F), np.array([0.0, 1.0]),
                                                    (ROWS, COLS)),
    "2d_indices": lambda: kerasopt.IndexedSlices(np.ones((2, COLS), F), np.array([[0], [1]]),
                                                 (ROWS, COLS)),
}


@pytest.mark.parametrize("kind,amsgrad", CASES)
@pytest.mark.parametrize("bad", sorted(BAD_SLICES))
def test_bad_indexed_slices_raise_before_anything_changes(kind, amsgrad, bad):
    first = kerasopt.Variable(np.ones((4,), F), name="first")
    emb = kerasopt.Variable(_w0(11), name="emb")
    opt = _make(kind, amsgrad, learning_rate=0.1, use_ema=True)
    good = kerasopt.IndexedSlices(np.ones((1, COLS), F), np.array([2]), (ROWS, COLS))
    opt.apply([np.ones((4,), F), good], [first, emb])
    before = _snapshot(opt, [first, emb])
    with pytest.raises(ValueError):
        # the first (dense) gradient is fine; the second is bad: nothing may change
        opt.apply([np.ones((4,), F), BAD_SLICES[bad]()], [first, emb])
    after = _snapshot(opt, [first, emb])
    for x, y in zip(before[0] + before[1], after[0] + after[1], strict=True):
        assert np.array_equal(x, y)
    assert int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("bad", sorted(BAD_SLICES))
def test_bad_indexed_slices_on_unbuilt_optimizer(bad):
    emb = kerasopt.Variable(_w0(12))
    before = emb.numpy()
    opt = kerasopt.Adamax()
    with pytest.raises(ValueError):
        opt.apply([BAD_SLICES[bad]()], [emb])
    assert np.array_equal(emb.numpy(), before)
    assert int(opt.iterations.numpy()) == 0


def test_indexed_slices_to_dense_sums_duplicates():
    s = kerasopt.IndexedSlices(np.array([[1.0], [2.0], [3.0]], F), np.array([2, 0, 2]), (4, 1))
    np.testing.assert_array_equal(s.to_dense(), [[2.0], [0.0], [4.0], [0.0]])
    assert s.shape == (4, 1)
    assert s.dtype == np.float32


def test_sparse_on_1d_variable():
    w0 = np.arange(6, dtype=F)
    var = kerasopt.Variable(w0.copy())
    opt = kerasopt.Adamax(learning_rate=0.5)
    opt.apply([kerasopt.IndexedSlices(np.array([1.0, -2.0], F), np.array([4, 1]), (6,))], [var])
    ref = Reference("adamax", w0, lr=0.5)
    ref.sparse(np.array([1, 4]), np.array([-2.0, 1.0], F))
    _check_state(opt, var, ref, "adamax")
