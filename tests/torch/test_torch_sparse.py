"""Sparse gradients (``nn.Embedding(sparse=True)``) in kerasopt.torch: ``sparse_updates="dense"``
follows Keras 3's trajectory (Keras densifies), ``"lazy"`` (the default) leaves the rows a
step does not touch, and their state, bit-identical (issue 13, item 13); and a weight-decay
exclusion that matches no parameter name warns (item 12)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch_helpers import compare  # noqa: E402

import kerasopt.torch as kt  # noqa: E402

STEPS = 40
CLASSES = ["Adam", "Adamax"]
CONFIG = {"learning_rate": 0.02, "weight_decay": 0.05}


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(12, 4, sparse=True)
        self.out = torch.nn.Linear(4, 1)

    def forward(self, ids):
        return self.out(self.emb(ids)).sum()


def _ids(step):
    """A few rows per step, with duplicates; rows 10 and 11 are never used."""
    g = np.random.default_rng(step)
    return torch.from_numpy(g.integers(0, 10, size=5))


def _gradients(model, step):
    model.zero_grad()
    model(_ids(step)).backward()
    return [p.grad for p in model.parameters()]


def _run_kerasopt(cls, sparse_updates, steps=STEPS, **config):
    model = Model()
    kwargs = {} if sparse_updates is None else {"sparse_updates": sparse_updates}
    opt = getattr(kt, cls)(model.parameters(), **{**CONFIG, **config}, **kwargs)
    out = []
    for step in range(steps):
        grads = _gradients(model, step)
        assert grads[0].is_sparse
        opt.step()
        out.append([p.detach().double().numpy().copy() for p in model.parameters()])
    return out, model, opt


def _run_keras(cls, steps=STEPS):
    """Keras 3 (torch backend): the same model's gradients, at Keras's weights, densified
    (Keras 3 has no sparse update)."""
    import keras

    model = Model()
    variables = [keras.Variable(p.detach().numpy().copy()) for p in model.parameters()]
    opt = getattr(keras.optimizers, cls)(**CONFIG)
    opt.build(variables)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(steps):
            with torch.no_grad():
                for p, v in zip(model.parameters(), variables):
                    p.copy_(torch.as_tensor(np.asarray(v.numpy())))
            grads = [g.to_dense() if g.is_sparse else g for g in _gradients(model, step)]
            opt.apply(grads, variables)
            out.append([np.asarray(v.numpy(), np.float64).copy() for v in variables])
    return out


@pytest.mark.parametrize("cls", CLASSES)
def test_dense_sparse_updates_follow_keras(cls, torch_parity):
    keras_run = _run_keras(cls)
    dense, model, _ = _run_kerasopt(cls, "dense")
    lazy, _, _ = _run_kerasopt(cls, None)
    w0 = [p.detach().double().numpy() for p in Model().parameters()]
    normalized, worst = compare(dense, keras_run, w0)
    torch_parity("keras", f"{cls} sparse_updates=dense", normalized, worst, STEPS)
    assert normalized <= 1.0, (normalized, worst)
    # The default (lazy) is another algorithm: it does not follow Keras 3.
    lazy_normalized, _ = compare(lazy, keras_run, w0)
    assert lazy_normalized > 100, lazy_normalized


@pytest.mark.parametrize("config", [{}, {"use_ema": True}, {"clipnorm": 0.5}])
@pytest.mark.parametrize("cls", CLASSES)
def test_lazy_leaves_untouched_rows_and_their_state_bit_identical(cls, config):
    model = Model()
    opt = getattr(kt, cls)(model.parameters(), **CONFIG, **config, sparse_updates="lazy")
    assert opt.param_groups[0]["sparse_updates"] == "lazy"
    for step in range(3):  # rows get state
        _gradients(model, step)
        opt.step()
    emb = model.emb.weight
    rows = torch.tensor([0, 1, 2])
    untouched = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11])
    before = emb.detach()[untouched].clone()
    slots = {k: v[untouched].clone() for k, v in opt.state[emb].items() if k != "average"}
    assert any(torch.count_nonzero(v) for v in slots.values())
    for _ in range(4):
        model.zero_grad()
        model(rows[torch.tensor([0, 1, 1, 2])]).backward()
        opt.step()
    assert torch.equal(emb.detach()[untouched], before)
    for key, value in slots.items():
        assert torch.equal(opt.state[emb][key][untouched], value), key
    assert not torch.equal(emb.detach()[rows], before[:3])


@pytest.mark.parametrize("cls", CLASSES)
def test_dense_sparse_updates_equal_a_densified_gradient(cls):
    """"dense" is exactly the dense path on the densified gradient (duplicates summed),
    through the fused kernel as for any dense gradient."""
    dense, _, _ = _run_kerasopt(cls, "dense", steps=10)
    model = Model()
    opt = getattr(kt, cls)(model.parameters(), **CONFIG)
    for step in range(10):
        grads = _gradients(model, step)
        model.emb.weight.grad = grads[0].coalesce().to_dense()
        opt.step()
        for got, want in zip(dense[step], model.parameters()):
            assert np.array_equal(got, want.detach().double().numpy())


def test_sparse_updates_per_group_and_validated():
    model = Model()
    opt = kt.Adam([{"params": [model.emb.weight], "sparse_updates": "dense"},
                   {"params": model.out.parameters()}])
    assert [g["sparse_updates"] for g in opt.param_groups] == ["dense", "lazy"]
    with pytest.raises(ValueError, match=r"sparse_updates.*'lazy'.*'dense'.*'eager'"):
        kt.Adam(model.parameters(), sparse_updates="eager")
    with pytest.raises(ValueError, match=r"sparse_updates.*received sparse_updates=True"):
        kt.Adam([{"params": model.out.parameters(), "sparse_updates": True}])


# ------------------------------------------------------------ unmatched exclusions


def test_an_exclusion_matching_no_parameter_name_warns_once():
    model = Model()
    opt = kt.Adam(model.named_parameters(), weight_decay=0.1)
    with pytest.warns(UserWarning, match=r"\['bais'\] match no variable name.*'out.bias'") as seen:
        opt.exclude_from_weight_decay(var_names=["bais", "emb"])
    assert len(seen) == 1 and "'emb'" not in str(seen[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.exclude_from_weight_decay(var_names=["bias", "emb"])  # all match: quiet
        _gradients(model, 0)
        opt.step()
