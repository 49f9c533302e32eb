"""kerasopt.save / kerasopt.load survive faults: a writer killed at random points leaves the
old or the new complete checkpoint; truncated, corrupted or mismatched files are refused
with a clear error and nothing is half-loaded."""

from __future__ import annotations

import glob
import io
import json
import os
import random
import select
import signal
import struct
import subprocess
import time
import zipfile

import numpy as np
import pytest
import torch
from hardening_helpers import (
    PYTHON,
    assert_same_numpy,
    assert_same_torch,
    child_env,
    snapshot_numpy,
    snapshot_torch,
)

import kerasopt
import kerasopt.torch as kt

F = np.float32

# --------------------------------------------------------------------------- kill -9 while saving

# The child resumes from the checkpoint (when there is one) and saves versions k+1, k+2, ...
# as fast as it can; in version k every weight equals k and the iteration counter is k.
WRITER = r"""
import os, sys
import numpy as np
import kerasopt
path, n = sys.argv[1], int(sys.argv[2])
w = kerasopt.Variable(np.zeros(n, np.float32), name="w")
opt = kerasopt.Adam(learning_rate=0.5)
opt.build([w])
if os.path.exists(path):
    kerasopt.load(path, opt)
k = int(opt.iterations.numpy())
print("ready", k, flush=True)
while True:
    k += 1
    w.assign(np.full(n, k, np.float32))
    opt._iterations.assign(np.int64(k))
    for slot in opt.variables[2:]:
        slot.assign(np.full(n, -k, np.float32))
    kerasopt.save(path, opt)
    print("saved", k, flush=True)
"""

N_ELEMENTS = 1_000_000  # 12 MB per checkpoint: a save takes long enough to be hit mid-write
N_KILLS = 25  # a fixed count, not "as many as fit in a minute": the same test under any load


def _read_version(path):
    w = kerasopt.Variable(np.zeros(N_ELEMENTS, F), name="w")
    opt = kerasopt.Adam(learning_rate=0.5)
    opt.build([w])
    kerasopt.load(path, opt)
    k = int(opt.iterations.numpy())
    weights = w.numpy()
    assert np.all(weights == k), "weights from two different versions"
    for slot in opt.variables[2:]:
        assert np.all(slot.numpy() == -k), "state from two different versions"
    return k


def test_kill_during_repeated_saves_never_corrupts(tmp_path, hardening_count):
    path = str(tmp_path / "opt.ckpt")
    rng = random.Random(1234)
    last = 0
    kills = versions_seen = 0
    for _ in range(N_KILLS):
        child = subprocess.Popen(
            [PYTHON, "-c", WRITER, path, str(N_ELEMENTS)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            line = child.stdout.readline().decode()
            assert line.startswith("ready"), child.stderr.read().decode()[-2000:]
            assert int(line.split()[1]) == last
            if kills % 2 == 0:
                # Every other writer completes a save first, whatever the machine's load (so
                # the checkpoint advances); the kill then lands at a random point after it.
                ready, _, _ = select.select([child.stdout], [], [], 120)
                assert ready and child.stdout.readline().startswith(b"saved"), "no save"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()
        kills += 1
        if os.path.exists(path):
            k = _read_version(path)  # raises if the file is not a complete checkpoint
            assert k >= last, "an older checkpoint replaced a newer one"
            versions_seen += k > last
            last = k
    leftovers = glob.glob(str(tmp_path / ".opt.ckpt.*.tmp"))
    hardening_count("faults injected: SIGKILL during save", kills)
    hardening_count("checkpoints verified after a kill", kills)
    hardening_count("kills that left a partial temp file (mid-write)", len(leftovers))
    assert kills == N_KILLS and last > 0 and versions_seen > 0
    # the temporary files of interrupted writes are never taken for the checkpoint
    for leftover in leftovers:
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(leftover, kerasopt.Adam())


# --------------------------------------------------------------------------- corrupted files


def _numpy_setup(cls=kerasopt.Adam, shape=(4, 3), **kwargs):
    a = kerasopt.Variable(np.linspace(-1, 1, int(np.prod(shape)), dtype=F).reshape(shape),
                          name="a")
    b = kerasopt.Variable(np.array([0.5, -2.0], F), name="b")
    opt = cls(learning_rate=0.01, **kwargs)
    return opt, [a, b]


def _trained_checkpoint(path, cls=kerasopt.Adam, **kwargs):
    opt, variables = _numpy_setup(cls, **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(3):
        opt.apply([rng.normal(size=v.shape).astype(F) for v in variables], variables)
    kerasopt.save(path, opt)
    return opt, variables


def _fresh(cls=kerasopt.Adam, shape=(4, 3), **kwargs):
    opt, variables = _numpy_setup(cls, shape, **kwargs)
    rng = np.random.default_rng(7)
    opt.apply([rng.normal(size=v.shape).astype(F) for v in variables], variables)
    return opt, variables


def test_round_trip_is_exact_and_includes_weights(tmp_path):
    path = tmp_path / "c.ckpt"
    opt, variables = _trained_checkpoint(path, use_ema=True, gradient_accumulation_steps=2)
    fresh, fresh_vars = _fresh(use_ema=True, gradient_accumulation_steps=2)
    kerasopt.load(path, fresh)
    assert_same_numpy(snapshot_numpy(opt, variables), snapshot_numpy(fresh, fresh_vars))
    # the format is the safetensors layout: 8-byte header length, JSON header, raw data
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "kerasopt.checkpoint"
    assert len(header["__metadata__"]["sha256"]) == 64
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} <= {"F32", "I64"}


def test_byte_flips_are_refused_or_harmless(tmp_path, hardening_count):
    path = tmp_path / "c.ckpt"
    opt, variables = _trained_checkpoint(path)
    original = path.read_bytes()
    rng = random.Random(5)
    bad = tmp_path / "bad.ckpt"
    refused = 0
    positions = [rng.randrange(len(original)) for _ in range(150)]
    positions += list(range(0, 8)) + [len(original) - 1]  # header length and last byte
    for position in positions:
        data = bytearray(original)
        data[position] ^= rng.randrange(1, 256)
        bad.write_bytes(bytes(data))
        target, target_vars = _fresh()
        before = snapshot_numpy(target, target_vars)
        try:
            kerasopt.load(bad, target)
        except kerasopt.CheckpointError as error:
            assert str(bad) in str(error)
            assert_same_numpy(before, snapshot_numpy(target, target_vars))
            refused += 1
        else:  # only a flip that leaves the content identical (JSON whitespace) may load
            assert_same_numpy(snapshot_numpy(opt, variables), snapshot_numpy(target, target_vars))
    hardening_count("corrupted checkpoints (byte flips) tried", len(positions))
    assert refused >= len(positions) - 3


def test_truncations_are_refused(tmp_path, hardening_count):
    path = tmp_path / "c.ckpt"
    _trained_checkpoint(path)
    original = path.read_bytes()
    lengths = sorted({0, 1, 7, 8, 9, 100, len(original) // 2, len(original) - 1}
                     | set(random.Random(3).sample(range(len(original)), 40)))
    bad = tmp_path / "cut.ckpt"
    for length in lengths:
        bad.write_bytes(original[:length])
        target, target_vars = _fresh()
        before = snapshot_numpy(target, target_vars)
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(bad, target)
        assert_same_numpy(before, snapshot_numpy(target, target_vars))
    # appended garbage is refused too
    bad.write_bytes(original + b"\0")
    with pytest.raises(kerasopt.CheckpointError, match="integrity|data section"):
        kerasopt.load(bad, _fresh()[0])
    hardening_count("truncated checkpoints tried", len(lengths) + 1)


def _npz_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, a=np.ones(3))
    return buffer.getvalue()


WRONG_FILES = {
    "empty": b"",
    "random": bytes(random.Random(1).randrange(256) for _ in range(4096)),
    "npz": _npz_bytes(),
    "json": json.dumps({"__metadata__": {"format": "x"}}).encode(),
    "huge_length": struct.pack("<Q", 2**63) + b"{}",
    "other_safetensors": struct.pack("<Q", 2) + b"{}",
    "pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
}


@pytest.mark.parametrize("name", sorted(WRONG_FILES))
def test_wrong_magic_is_refused(tmp_path, name, hardening_count):
    bad = tmp_path / name
    bad.write_bytes(WRONG_FILES[name])
    target, target_vars = _fresh()
    before = snapshot_numpy(target, target_vars)
    with pytest.raises(kerasopt.CheckpointError, match="not a (complete )?kerasopt checkpoint"):
        kerasopt.load(bad, target)
    assert_same_numpy(before, snapshot_numpy(target, target_vars))
    hardening_count("wrong-format files tried")
    assert not zipfile.is_zipfile(bad) or name == "npz"


MISMATCHES = {
    "adam_into_adamax": lambda: _fresh(kerasopt.Adamax),
    "other_shapes": lambda: _fresh(shape=(3, 4)),
    "more_state_amsgrad": lambda: _fresh(amsgrad=True),
    "more_state_ema": lambda: _fresh(use_ema=True),
    "float64_weights": lambda: _float64(),
    "into_loss_scale": lambda: _loss_scaled(),
}


def _float64():
    a = kerasopt.Variable(np.zeros((4, 3)), name="a")
    b = kerasopt.Variable(np.zeros(2), name="b")
    opt = kerasopt.Adam()
    opt.build([a, b])
    return opt, [a, b]


def _loss_scaled():
    opt, variables = _numpy_setup()
    opt = kerasopt.LossScaleOptimizer(opt)
    opt.build(variables)
    return opt, variables


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_mismatched_optimizer_is_refused(tmp_path, name, hardening_count):
    path = tmp_path / "c.ckpt"
    _trained_checkpoint(path)
    target, target_vars = MISMATCHES[name]()
    before = snapshot_numpy(target, target_vars)
    with pytest.raises(kerasopt.CheckpointError) as info:
        kerasopt.load(path, target)
    assert str(path) in str(info.value) or "build" in str(info.value)
    assert_same_numpy(before, snapshot_numpy(target, target_vars))
    hardening_count("mismatched checkpoint loads tried")


def test_unbuilt_and_cross_frontend_loads_are_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    _trained_checkpoint(path)
    with pytest.raises(kerasopt.CheckpointError, match="build"):
        kerasopt.load(path, kerasopt.Adam())
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(kerasopt.CheckpointError, match="numpy"):
        kerasopt.load(path, kt.Adam([p]))
    with pytest.raises(ValueError, match="not built"):
        kerasopt.save(path, kerasopt.Adam())
    with pytest.raises(TypeError):
        kerasopt.save(path, "adam")


# --------------------------------------------------------------------------- torch


def _torch_setup(cls=kt.Adam, **kwargs):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = cls([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.1}],
              learning_rate=0.01, **kwargs)
    return opt, params


def _torch_train(opt, params, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("wrap", [False, True])
def test_torch_round_trip_and_refusals(tmp_path, wrap, hardening_count):
    path = tmp_path / "t.ckpt"
    opt, params = _torch_setup(use_ema=True, gradient_accumulation_steps=2)
    if wrap:
        opt = kt.LossScaleOptimizer(opt, dynamic_growth_steps=2)
    _torch_train(opt, params)
    kerasopt.save(path, opt)
    fresh, fresh_params = _torch_setup(use_ema=True, gradient_accumulation_steps=2)
    if wrap:
        fresh = kt.LossScaleOptimizer(fresh, dynamic_growth_steps=2)
    _torch_train(fresh, fresh_params, steps=1, seed=9)
    kerasopt.load(path, fresh)
    assert_same_torch(snapshot_torch(opt), snapshot_torch(fresh))
    # corrupted / truncated / wrong class: refused, nothing changed
    original = path.read_bytes()
    rng = random.Random(11)
    bad = tmp_path / "bad.ckpt"
    cases = [original[: rng.randrange(len(original))] for _ in range(10)]
    for _ in range(30):
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 0xFF
        cases.append(bytes(data))
    target, target_params = _torch_setup(use_ema=True, gradient_accumulation_steps=2)
    if wrap:
        target = kt.LossScaleOptimizer(target, dynamic_growth_steps=2)
    _torch_train(target, target_params, steps=2, seed=4)
    before = snapshot_torch(target)
    for data in cases:
        bad.write_bytes(data)
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(bad, target)
        assert_same_torch(before, snapshot_torch(target))
    other, _ = _torch_setup(kt.Adamax, use_ema=True, gradient_accumulation_steps=2)
    with pytest.raises(kerasopt.CheckpointError, match="Adam"):
        kerasopt.load(path, other)
    shapes = kt.Adam([torch.zeros(3, 5, requires_grad=True), torch.zeros(3, requires_grad=True)],
                     use_ema=True, gradient_accumulation_steps=2)
    with pytest.raises(kerasopt.CheckpointError):
        kerasopt.load(path, kt.LossScaleOptimizer(shapes) if wrap else shapes)
    hardening_count("corrupted torch checkpoints tried", len(cases) + 2)


def test_jax_pytree_round_trip_and_refusal(tmp_path):
    import jax
    import jax.numpy as jnp

    import kerasopt.optax as ko

    params = {"w": jnp.arange(6.0, dtype=jnp.bfloat16).reshape(2, 3), "b": jnp.zeros(3)}
    tx = ko.loss_scale(ko.adamax(use_ema=True, skip_nonfinite=True))
    state = tx.init(params)
    grads = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3)}
    updates, state = tx.update(grads, state, params)
    path = tmp_path / "j.ckpt"
    kerasopt.save(path, (params, state))
    restored = kerasopt.load(path, (params, tx.init(params)))
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves((params, state)), leaves(restored)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(kerasopt.CheckpointError, match="structure"):
        kerasopt.load(path, ko.adam().init(params))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(kerasopt.CheckpointError, match="integrity"):
        kerasopt.load(path, (params, state))
