"""Crafted checkpoints with a *valid* SHA-256 (an attacker, or a buggy tool, rewrote the
content and recomputed the hash): every check past the checksum refuses them with
kerasopt.CheckpointError naming the entry, and the optimizer is unchanged (weights, state,
counters and every param-group value compared before and after, and a step still runs).
Also: user subclasses save and resume like their base, and a JAX pytree with Python scalar
leaves round-trips (or is refused at save, naming the leaf).

The files are rewritten here with the format's own definition (safetensors layout, SHA-256
of the canonical header JSON and the data), not with kerasopt's encoder."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
import pytest
import torch
from hardening_helpers import assert_same_numpy, assert_same_torch, snapshot_numpy, snapshot_torch

import kerasopt
import kerasopt.torch as kt

F = np.float32


# --------------------------------------------------------------------------- crafting


def _canonical(header):
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _read(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def _craft(path, out, edit):
    """``edit(header, meta, payload) -> payload`` on the file at ``path``; writes ``out``
    with the SHA-256 recomputed, so only the checks past the checksum can refuse it."""
    header, payload = _read(path)
    metadata = header["__metadata__"]
    metadata.pop("sha256")
    meta = json.loads(metadata["kerasopt"])
    payload = edit(header, meta, payload)
    metadata["kerasopt"] = json.dumps(meta, sort_keys=True)
    digest = hashlib.sha256(_canonical(header) + payload).hexdigest()
    metadata["sha256"] = digest
    encoded = _canonical(header)
    encoded += b" " * (-len(encoded) % 8)
    out.write_bytes(struct.pack("<Q", len(encoded)) + encoded + payload)
    return out


def _meta(change):
    def edit(header, meta, payload):
        change(meta)
        return payload

    return edit


def _entry(name, change):
    def edit(header, meta, payload):
        change(header[name])
        return payload

    return edit


def _array_bytes(name, make):
    """Replace the bytes of array ``name`` (same size) with ``make(old bytes)``."""

    def edit(header, meta, payload):
        begin, stop = header[name]["data_offsets"]
        new = make(payload[begin:stop])
        assert len(new) == stop - begin
        return payload[:begin] + new + payload[stop:]

    return edit


def _extra_array(name, dtype="F32", data=b"\0" * 12, shape=(3,)):
    def edit(header, meta, payload):
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(payload), len(payload) + len(data)]}
        return payload + data

    return edit


# --------------------------------------------------------------------------- NumPy


def _numpy_trained(cls=kerasopt.Adam, wrap=False, seed=0, **kwargs):
    a = kerasopt.Variable(np.linspace(-1, 1, 12, dtype=F).reshape(4, 3), name="a")
    b = kerasopt.Variable(np.array([0.5, -2.0, 1.0], F), name="b")
    opt = cls(learning_rate=0.01, **kwargs)
    if wrap:
        opt = kerasopt.LossScaleOptimizer(opt)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        opt.apply([rng.normal(size=v.shape).astype(F) for v in (a, b)], [a, b])
    return opt, [a, b]


def _numpy_refuses(path, crafted, match, wrap=False):
    target, variables = _numpy_trained(seed=7, wrap=wrap)
    before = snapshot_numpy(target, variables)
    with pytest.raises(kerasopt.CheckpointError, match=match) as info:
        kerasopt.load(crafted, target)
    assert str(crafted) in str(info.value)
    assert_same_numpy(before, snapshot_numpy(target, variables))
    target.apply([np.ones((4, 3), F), np.ones(3, F)], variables)  # still usable
    return info.value


NUMPY_META = {
    "skipped_steps=[]": (lambda m: m.update(skipped_steps=[]), "skipped_steps"),
    "skipped_steps=[0, 0] (no inner optimizer)": (lambda m: m.update(skipped_steps=[0, 0]),
                                                   "skipped_steps"),
    "skipped_steps=['0']": (lambda m: m.update(skipped_steps=["0"]), "skipped_steps"),
    "skipped_steps=[-1]": (lambda m: m.update(skipped_steps=[-1]), "skipped_steps"),
    "skipped_steps=[1.5]": (lambda m: m.update(skipped_steps=[1.5]), "skipped_steps"),
    "skipped_steps=[true]": (lambda m: m.update(skipped_steps=[True]), "skipped_steps"),
    "skipped_steps=null": (lambda m: m.update(skipped_steps=None), "skipped_steps"),
    "skipped_steps missing": (lambda m: m.pop("skipped_steps"), "skipped_steps"),
    "skipped_steps=[2**64]": (lambda m: m.update(skipped_steps=[2**64]), "skipped_steps"),
}

STATE0 = "state/0"  # the iteration counter (int64)
NUMPY_HEADER = {
    "shape [10**30]": (_entry("state/2", lambda e: e.update(shape=[10**30])), "shape"),
    "shape [Infinity]": (_entry("state/2", lambda e: e.update(shape=[math.inf])), "shape"),
    "shape [-Infinity]": (_entry("state/2", lambda e: e.update(shape=[-math.inf])), "shape"),
    "shape [NaN]": (_entry("state/2", lambda e: e.update(shape=[math.nan])), "shape"),
    "shape [-1]": (_entry("state/2", lambda e: e.update(shape=[-1])), "shape"),
    "shape [1.5]": (_entry("state/2", lambda e: e.update(shape=[1.5])), "shape"),
    "shape ['3']": (_entry("state/2", lambda e: e.update(shape=["3"])), "shape"),
    "shape [true]": (_entry("state/2", lambda e: e.update(shape=[True])), "shape"),
    "shape '12'": (_entry("state/2", lambda e: e.update(shape="12")), "shape"),
    "shape [[12]]": (_entry("state/2", lambda e: e.update(shape=[[12]])), "shape"),
    "shape of 65 dims": (_entry("state/2", lambda e: e.update(shape=[1] * 65)), "shape"),
    "shape [2**62, 2**62]": (_entry("state/2", lambda e: e.update(shape=[2**62, 2**62])),
                             "needs"),
    "data_offsets [0, 10**30]": (_entry(STATE0, lambda e: e.update(data_offsets=[0, 10**30])),
                                 "data_offsets"),
    "data_offsets [Infinity, 0]": (_entry(STATE0, lambda e: e.update(
        data_offsets=[math.inf, 0])), "data_offsets"),
    "data_offsets [-8, 0]": (_entry(STATE0, lambda e: e.update(data_offsets=[-8, 0])),
                             "data_offsets"),
    "data_offsets [8, 0]": (_entry(STATE0, lambda e: e.update(data_offsets=[8, 0])),
                            "data_offsets"),
    "data_offsets ['0', '8']": (_entry(STATE0, lambda e: e.update(data_offsets=["0", "8"])),
                                "data_offsets"),
    "data_offsets [0]": (_entry(STATE0, lambda e: e.update(data_offsets=[0])), "data_offsets"),
    "dtype 'F128'": (_entry(STATE0, lambda e: e.update(dtype="F128")), "dtype"),
    "dtype ['I64']": (_entry(STATE0, lambda e: e.update(dtype=["I64"])), "dtype"),
    "dtype null": (_entry(STATE0, lambda e: e.update(dtype=None)), "dtype"),
    "entry with an extra key": (_entry(STATE0, lambda e: e.update(x=1)), "header entry"),
    "entry that is a list": (lambda h, m, p: (h.update({STATE0: [1, 2]}), p)[1], "header entry"),
    "dtype I64 -> U64 (same bytes)": (_entry(STATE0, lambda e: e.update(dtype="U64")),
                                      "uint64"),
    "iteration counter -3": (_array_bytes(STATE0, lambda b: np.int64(-3).tobytes()),
                             "counter"),
    "an extra array 'evil/0'": (_extra_array("evil/0"), "unexpected arrays"),
    "an extra array 'state/99'": (_extra_array("state/99"), "optimizer variables"),
    "an extra array 'weights/9'": (_extra_array("weights/9"), "weights"),
}


@pytest.mark.parametrize("case", sorted(NUMPY_META) + sorted(NUMPY_HEADER))
def test_crafted_numpy_checkpoints_are_refused_before_any_change(tmp_path, case,
                                                                 hardening_count):
    opt, _ = _numpy_trained()
    path = tmp_path / "c.ckpt"
    kerasopt.save(path, opt)
    if case in NUMPY_META:
        change, match = NUMPY_META[case]
        edit = _meta(change)
    else:
        edit, match = NUMPY_HEADER[case]
    crafted = _craft(path, tmp_path / "crafted.ckpt", edit)
    _numpy_refuses(path, crafted, match)
    hardening_count("crafted checkpoints with a valid hash refused (NumPy)")


def test_crafted_loss_scale_skipped_steps_are_refused(tmp_path, hardening_count):
    opt, _ = _numpy_trained(wrap=True)
    path = tmp_path / "c.ckpt"
    kerasopt.save(path, opt)
    for skipped in ([0], [0, 0, 0], [0, -1]):
        crafted = _craft(path, tmp_path / "crafted.ckpt",
                         _meta(lambda m, s=skipped: m.update(skipped_steps=s)))
        _numpy_refuses(path, crafted, "skipped_steps", wrap=True)
        hardening_count("crafted checkpoints with a valid hash refused (NumPy)")
    # the untouched file loads (the crafting itself is faithful)
    target, variables = _numpy_trained(seed=7, wrap=True)
    kerasopt.load(_craft(path, tmp_path / "same.ckpt", _meta(lambda m: None)), target)
    assert_same_numpy(snapshot_numpy(opt, variables), snapshot_numpy(target, variables))


# --------------------------------------------------------------------------- torch


def _torch_trained(cls=kt.Adam, learning_rate=0.01, seed=1, **kwargs):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = cls([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.1}],
              learning_rate=learning_rate, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt, params


def _groups(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _torch_refuses(crafted, match, make):
    target, params = make()
    before, groups = snapshot_torch(target), _groups(target)  # copies of each dict
    with pytest.raises(kerasopt.CheckpointError, match=match) as info:
        kerasopt.load(crafted, target)
    assert str(crafted) in str(info.value)
    assert_same_torch(before, snapshot_torch(target))
    assert _groups(target) == groups
    for p in params:
        p.grad = torch.ones_like(p)
    target.step()  # still usable: no KeyError, TypeError or device error
    return info.value


def _rename_slot(old, new):
    def edit(header, meta, payload):
        index = meta["state_index"]["0"]
        index[index.index(old)] = new
        header[f"state/0/{new}"] = header.pop(f"state/0/{old}")
        return payload

    return edit


def _add_slot(slot, like="momentum"):
    def edit(header, meta, payload):
        meta["state_index"]["0"].append(slot)
        entry = dict(header[f"state/0/{like}"])
        begin, stop = entry["data_offsets"]
        entry["data_offsets"] = [len(payload), len(payload) + stop - begin]
        header[f"state/0/{slot}"] = entry
        return payload + payload[begin:stop]

    return edit


def _group_value(index, key, value):
    return _meta(lambda m: m["param_groups"][index].__setitem__(key, value))


TORCH = {
    "unknown slot 'momentum_typo'": (_rename_slot("momentum", "momentum_typo"),
                                     "momentum_typo"),
    "unknown slot '../x'": (_rename_slot("momentum", "../x"), r"'\.\./x'"),
    "velocity_hat without amsgrad": (_add_slot("velocity_hat"), "velocity_hat"),
    "gradient_accumulator without accumulation": (_add_slot("gradient_accumulator"),
                                                  "gradient_accumulator"),
    "average without use_ema": (_add_slot("average"), "average"),
    "learning_rate 0.5 (the group has a float rate)": (
        _group_value(0, "learning_rate", 0.5), "learning_rate"),
    "state_dtype 'float32'": (_group_value(1, "state_dtype", "float32"), "state_dtype"),
    "state_dtype 1": (_group_value(0, "state_dtype", 1), "state_dtype"),
    "state int32 for a float32 parameter": (
        _entry("state/0/momentum", lambda e: e.update(dtype="I32")), "int32"),
    "state uint32 for a float32 parameter": (
        _entry("state/0/velocity", lambda e: e.update(dtype="U32")), "uint32"),
    "state float16 for a float32 parameter": (
        lambda h, m, p: _entry("state/0/momentum",
                               lambda e: e.update(dtype="F16", shape=[5, 6]))(h, m, p),
        "float16"),
    "unknown group key 'foo'": (_group_value(0, "foo", 1), "foo"),
    "lr 'fast'": (_group_value(0, "lr", "fast"), "learning_rate"),
    "lr -1": (_group_value(0, "lr", -1.0), "learning_rate"),
    "lr NaN": (_group_value(1, "lr", math.nan), "learning_rate"),
    "reported_lr 'x'": (_group_value(0, "reported_lr", "x"), "reported_lr"),
    "initial_lr [1]": (_group_value(0, "initial_lr", [1]), "initial_lr"),
    "param_names 5": (_group_value(0, "param_names", 5), "param_names"),
    "param_names of the wrong length": (_group_value(0, "param_names", ["a", "b"]),
                                        "param_names"),
    "kerasopt marker 5": (_group_value(0, "kerasopt", 5), "class that saved"),
    "kerasopt marker 'Adamax'": (_group_value(1, "kerasopt", "Adamax"), "class that saved"),
    "params [0, 0] (duplicate ids)": (_meta(lambda m: m["param_groups"][1].update(params=[0])),
                                      "twice"),
    "params ['a']": (_group_value(0, "params", ["a"]), "parameter ids"),
    "iterations 2**70": (_group_value(0, "iterations", 2**70), "iterations"),
    "iterations differ between groups": (_group_value(1, "iterations", 99), "iterations"),
    "state for an unlisted parameter": (
        _meta(lambda m: m["state_index"].update({"7": ["momentum"]})), "no param group"),
    "an extra array 'weights/5/0'": (_extra_array("weights/5/0"), "parameters"),
    "an extra array 'evil'": (_extra_array("evil"), "unexpected arrays"),
    "beta_1 5.0": (_group_value(0, "beta_1", 5.0), "beta_1"),
    "use_ema 'yes'": (_group_value(1, "use_ema", "yes"), "use_ema"),
    "class 'Adamax'": (_meta(lambda m: m.update({"class": "Adamax"})), "Adamax"),
}


@pytest.mark.parametrize("case", sorted(TORCH))
def test_crafted_torch_checkpoints_are_refused_before_any_change(tmp_path, case,
                                                                 hardening_count):
    opt, _ = _torch_trained()
    path = tmp_path / "t.ckpt"
    kerasopt.save(path, opt)
    edit, match = TORCH[case]
    crafted = _craft(path, tmp_path / "crafted.ckpt", edit)
    _torch_refuses(crafted, match, lambda: _torch_trained(seed=5))
    hardening_count("crafted checkpoints with a valid hash refused (torch)")


def _schedule():
    return kerasopt.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)


@pytest.mark.parametrize("value", [0.5, "ExponentialDecay", {"class_name": "ExponentialDecay"}])
def test_a_number_where_a_schedule_is_kept_is_refused(tmp_path, value, hardening_count):
    """The file stores a schedule as "kept" (the loader keeps its own): a crafted number
    there would replace the schedule and crash the next step (``rate()`` on a float)."""
    opt, _ = _torch_trained(learning_rate=_schedule())
    path = tmp_path / "t.ckpt"
    kerasopt.save(path, opt)
    assert json.loads(_read(path)[0]["__metadata__"]["kerasopt"])["param_groups"][0][
        "learning_rate"] == {"__kerasopt_kept__": "ExponentialDecay"}
    crafted = _craft(path, tmp_path / "crafted.ckpt", _group_value(0, "learning_rate", value))
    _torch_refuses(crafted, "learning_rate", lambda: _torch_trained(learning_rate=_schedule()))
    hardening_count("crafted checkpoints with a valid hash refused (torch)")


def test_state_in_another_dtype_than_state_dtype_is_refused(tmp_path, hardening_count):
    """bf16 parameters with float32 state (state_dtype): a file whose state is bf16 (saved
    without state_dtype) is not cast silently into the float32 state, nor the reverse."""
    def make(state_dtype):
        torch.manual_seed(0)
        p = torch.randn(6, dtype=torch.bfloat16, requires_grad=True)
        opt = kt.Adam([p], state_dtype=state_dtype)
        p.grad = torch.ones_like(p)
        opt.step()
        return opt, [p]

    saved, _ = make(None)
    path = tmp_path / "t.ckpt"
    kerasopt.save(path, saved)
    # the file's group says state_dtype=None (plain), which replaces the loader's float32:
    # consistent with its bf16 state, so it loads...
    target, _ = make(torch.float32)
    kerasopt.load(path, target)
    assert target.param_groups[0]["state_dtype"] is None
    # ...but bf16 state under a group that keeps float32 state is refused.
    saved32, _ = make(torch.float32)
    kerasopt.save(path, saved32)
    crafted = _craft(path, tmp_path / "c.ckpt",
                     _entry("state/0/momentum", lambda e: e.update(dtype="BF16", shape=[12])))
    _torch_refuses(crafted, "bfloat16", lambda: make(torch.float32))
    hardening_count("crafted checkpoints with a valid hash refused (torch)")


def test_the_untouched_torch_file_loads(tmp_path):
    opt, _ = _torch_trained()
    path = tmp_path / "t.ckpt"
    kerasopt.save(path, opt)
    target, _ = _torch_trained(seed=5)
    kerasopt.load(_craft(path, tmp_path / "same.ckpt", _meta(lambda m: None)), target)
    assert_same_torch(snapshot_torch(opt), snapshot_torch(target))
    assert _groups(target) == _groups(opt)


# --------------------------------------------------------------------------- subclasses


class MyTorchAdam(kt.Adam):
    pass


class MyTorchAdamax(kt.Adamax):
    pass


class MyAdam(kerasopt.Adam):
    pass


class MyAdamax(kerasopt.Adamax):
    pass


def _torch_run(cls, wrap=False):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = cls(params, learning_rate=0.01, use_ema=True, gradient_accumulation_steps=2)
    if wrap:
        opt = kt.LossScaleOptimizer(opt, dynamic_growth_steps=2)
    return opt, params


def _torch_steps(opt, params, start, stop):
    for k in range(start, stop):
        g = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("saver,loader", [
    (MyTorchAdam, MyTorchAdam), (MyTorchAdamax, MyTorchAdamax), (MyTorchAdam, kt.Adam),
    (kt.Adam, MyTorchAdam)])
def test_torch_subclasses_save_and_resume_like_their_base(tmp_path, saver, loader, wrap):
    straight, params = _torch_run(saver, wrap)
    _torch_steps(straight, params, 0, 8)
    first, first_params = _torch_run(saver, wrap)
    _torch_steps(first, first_params, 0, 5)
    kerasopt.save(tmp_path / "s.ckpt", first)
    resumed, resumed_params = _torch_run(loader, wrap)
    kerasopt.load(tmp_path / "s.ckpt", resumed)
    _torch_steps(resumed, resumed_params, 5, 8)
    assert_same_torch(snapshot_torch(straight), snapshot_torch(resumed))  # bit for bit
    if wrap:
        assert resumed.dynamic_scale == straight.dynamic_scale
    other = MyTorchAdamax if issubclass(saver, kt.Adam) else MyTorchAdam
    refused, _ = _torch_run(other, wrap)
    with pytest.raises(kerasopt.CheckpointError, match="same algorithm"):
        kerasopt.load(tmp_path / "s.ckpt", refused)


def _numpy_run(cls, wrap=False):
    variables = [kerasopt.Variable(np.linspace(-1, 1, 6, dtype=F), name="w")]
    opt = cls(learning_rate=0.01, use_ema=True)
    if wrap:
        opt = kerasopt.LossScaleOptimizer(opt, dynamic_growth_steps=2)
    return opt, variables


def _numpy_steps(opt, variables, start, stop):
    for k in range(start, stop):
        opt.apply([np.random.default_rng(k).normal(size=6).astype(F)], variables)


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("saver,loader", [
    (MyAdam, MyAdam), (MyAdamax, MyAdamax), (MyAdam, kerasopt.Adam), (kerasopt.Adam, MyAdam),
    (kerasopt.AdamW, kerasopt.AdamW)])
def test_numpy_subclasses_save_and_resume_like_their_base(tmp_path, saver, loader, wrap):
    straight, v = _numpy_run(saver, wrap)
    _numpy_steps(straight, v, 0, 6)
    first, v1 = _numpy_run(saver, wrap)
    _numpy_steps(first, v1, 0, 3)
    kerasopt.save(tmp_path / "s.ckpt", first)
    resumed, v2 = _numpy_run(loader, wrap)
    resumed.build(v2)
    kerasopt.load(tmp_path / "s.ckpt", resumed)
    _numpy_steps(resumed, v2, 3, 6)
    assert_same_numpy(snapshot_numpy(straight, v), snapshot_numpy(resumed, v2))
    other, v3 = _numpy_run(kerasopt.Adamax if saver is not MyAdamax else kerasopt.Adam, wrap)
    other.build(v3)
    with pytest.raises(kerasopt.CheckpointError, match="same algorithm"):
        kerasopt.load(tmp_path / "s.ckpt", other)


# --------------------------------------------------------------------------- JAX pytrees


def test_pytree_python_scalar_leaves_round_trip(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    tree = {"w": jnp.arange(3.0), "lr": 0.125, "step": 7, "flag": True,
            "nested": (1e-300, -(2**62))}
    kerasopt.save(tmp_path / "j.ckpt", tree)
    template = {"w": jnp.zeros(3), "lr": 0.0, "step": 0, "flag": False, "nested": (0.0, 0)}
    restored = kerasopt.load(tmp_path / "j.ckpt", template)
    assert np.array_equal(np.asarray(restored["w"]), [0.0, 1.0, 2.0])
    for key in ("lr", "step", "flag"):
        assert type(restored[key]) is type(tree[key]) and restored[key] == tree[key]
    assert restored["nested"] == (1e-300, -(2**62))
    assert [type(x) for x in restored["nested"]] == [float, int]
    # a template whose leaf is an array where the file has a scalar (or the reverse)
    with pytest.raises(kerasopt.CheckpointError, match=r"\['lr'\]"):
        kerasopt.load(tmp_path / "j.ckpt", {**template, "lr": jnp.zeros(())})
    with pytest.raises(kerasopt.CheckpointError, match=r"\['step'\]"):
        kerasopt.load(tmp_path / "j.ckpt", {**template, "step": 0.0})


@pytest.mark.parametrize("leaf,match", [
    ("a string", "str"), (object(), "object"), (2**70, "int64"), (1j, "complex"),
    (np.array(["x"]), "str")])
def test_pytree_leaves_that_cannot_be_stored_are_refused_at_save(tmp_path, leaf, match):
    jnp = pytest.importorskip("jax.numpy")
    path = tmp_path / "j.ckpt"
    with pytest.raises(TypeError, match=match) as info:
        kerasopt.save(path, {"w": jnp.ones(2), "bad": [leaf]})
    assert "['bad'][0]" in str(info.value)
    assert not path.exists()
