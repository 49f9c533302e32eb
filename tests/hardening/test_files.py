"""One atomic writer and one bounded reader for every file kerasopt writes and reads back
(kerasopt.files): kerasopt.save, kerasopt.interop.save_keras_weights and
kerasopt.optax.save_state create files with the mode the umask gives and keep an existing
file's mode, fsync the file and its directory, and leave the old file whole on an error;
kerasopt.load, the interop readers and kerasopt.optax.restore_state refuse a FIFO, a device
or a directory at once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hardening_helpers import PYTHON, child_env

import kerasopt
from kerasopt import files

h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import kerasopt.optax as ko  # noqa: E402
import kerasopt.torch as kt  # noqa: E402
from kerasopt import interop  # noqa: E402

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes, umask and FIFOs")


def _numpy_optimizer():
    v = kerasopt.Variable(np.ones(3, np.float32), name="v")
    opt = kerasopt.Adam(learning_rate=0.1)
    opt.apply([np.full(3, 0.5, np.float32)], [v])
    return opt


def _save_numpy(path):
    kerasopt.save(path, _numpy_optimizer())


def _save_torch(path):
    p = torch.ones(3, requires_grad=True)
    opt = kt.Adamax([p])
    p.grad = torch.ones(3)
    opt.step()
    kerasopt.save(path, opt)


def _save_keras_weights(path):
    interop.save_keras_weights(path, _numpy_optimizer())


def _save_optax(path):
    tx = ko.adam(0.1)
    ko.save_state(path, tx.init({"w": jnp.ones(3)}))


def _atomic_write(path):
    files.atomic_write(path, b"data")


WRITERS = {
    "kerasopt.save(numpy)": (_save_numpy, "c.ckpt"),
    "kerasopt.save(torch)": (_save_torch, "t.ckpt"),
    "interop.save_keras_weights": (_save_keras_weights, "o.weights.h5"),
    "optax.save_state": (_save_optax, "s.npz"),
    "files.atomic_write": (_atomic_write, "f.bin"),
}


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
@pytest.mark.parametrize("umask", [0o077, 0o027, 0o022, 0o002], ids=oct)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_new_files_get_the_umask_mode(tmp_path, writer, umask, hardening_count):
    write, name = WRITERS[writer]
    old = os.umask(umask)
    try:
        write(tmp_path / name)
    finally:
        os.umask(old)
    assert _mode(tmp_path / name) == 0o666 & ~umask, oct(_mode(tmp_path / name))
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file left
    hardening_count("file modes checked (new files under a umask)")


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o660, 0o444], ids=oct)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_existing_files_keep_their_mode(tmp_path, writer, mode, hardening_count):
    write, name = WRITERS[writer]
    path = tmp_path / name
    write(path)
    os.chmod(path, mode)
    old = os.umask(0o022)  # would give 0644 to a new file; 0o444: a read-only file
    try:
        write(path)
    finally:
        os.umask(old)
    assert _mode(path) == mode, oct(_mode(path))
    assert sorted(os.listdir(tmp_path)) == [name]
    hardening_count("file modes checked (existing files)")


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writes_fsync_the_file_and_its_directory_then_rename_in_place(
        tmp_path, monkeypatch, writer):
    write, name = WRITERS[writer]
    path = tmp_path / name
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.dirname(os.fspath(src)) == str(tmp_path)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write(path)
    assert events == [("fsync", "file"), ("replace", True), ("fsync", "dir")], events


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch, writer):
    write, name = WRITERS[writer]
    path = tmp_path / name
    path.write_bytes(b"old checkpoint")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write(path)
    assert path.read_bytes() == b"old checkpoint"
    assert sorted(os.listdir(tmp_path)) == [name]


def test_atomic_write_takes_a_writer_function(tmp_path):
    path = tmp_path / "a.npz"
    files.atomic_write(path, lambda f: np.savez(f, x=np.arange(3)))
    with np.load(path) as data:
        assert np.array_equal(data["x"], np.arange(3))
    with pytest.raises(ZeroDivisionError):
        files.atomic_write(path, lambda f: (f.write(b"partial"), 1 / 0))
    with np.load(path) as data:  # unchanged
        assert np.array_equal(data["x"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]


def test_read_regular_reads_exactly_the_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc" * 1000)
    assert files.read_regular(path) == b"abc" * 1000
    with pytest.raises(files.NotRegularFileError, match="at most 10"):
        files.read_regular(path, limit=10)
    with pytest.raises(FileNotFoundError):
        files.read_regular(tmp_path / "missing")


# --------------------------------------------------------------------------- non-regular files

# Run in a child process with a bounded address space and a timeout: before the fix a FIFO
# blocked the reader forever and /dev/zero was read until memory ran out.
READER = textwrap.dedent(r"""
    import json, os, resource, socket, sys, time
    import numpy as np
    import kerasopt, kerasopt.optax as ko
    from kerasopt import interop
    import jax.numpy as jnp
    directory = sys.argv[1]
    fifo = os.path.join(directory, "fifo")
    os.mkfifo(fifo)
    sock_path = os.path.join(directory, "sock")
    server = socket.socket(socket.AF_UNIX); server.bind(sock_path)
    link = os.path.join(directory, "zero-link")
    os.symlink("/dev/zero", link)
    targets = {"fifo": fifo, "/dev/zero": "/dev/zero", "/dev/urandom": "/dev/urandom",
               "directory": directory, "socket": sock_path, "symlink to /dev/zero": link}
    v = kerasopt.Variable(np.ones(3, np.float32))
    opt = kerasopt.Adam(); opt.build([v])
    state = ko.adam().init({"w": jnp.ones(3)})
    before = [x.numpy().copy() for x in opt.variables + [v]]
    loaders = {
        "kerasopt.load": lambda p: kerasopt.load(p, opt),
        "interop.load_keras_optimizer": lambda p: interop.load_keras_optimizer(
            p, [v], config={"class_name": "Adam", "config": {}}),
        "interop.read_optimizer_config": interop.read_optimizer_config,
        "interop.read_model_weights": interop.read_model_weights,
        "interop.save_keras_weights(like=)": lambda p: interop.save_keras_weights(
            os.path.join(directory, "out.weights.h5"), opt, like=p),
        "optax.restore_state": lambda p: ko.restore_state(p, state),
    }
    # at most 2 GiB more address space than now: reading /dev/zero without bound fails fast
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + (2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for target, path in targets.items():
        for loader, load in loaders.items():
            start = time.monotonic()
            try:
                load(path)
                outcome = "loaded"
            except BaseException as error:
                outcome = f"{type(error).__name__}: {str(error)[:300]}"
            same = all(np.array_equal(a, b.numpy())
                       for a, b in zip(before, opt.variables + [v]))
            print(json.dumps({"target": target, "loader": loader, "outcome": outcome,
                              "seconds": time.monotonic() - start, "unchanged": same}),
                  flush=True)
""")

EXPECTED = {
    "kerasopt.load": "CheckpointError",
    "interop.load_keras_optimizer": "KerasFileError",
    "interop.read_optimizer_config": "KerasFileError",
    "interop.read_model_weights": "KerasFileError",
    "interop.save_keras_weights(like=)": "KerasFileError",
    "optax.restore_state": "NotRegularFileError",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero, /proc")
def test_non_regular_files_are_refused_at_once(tmp_path, hardening_count):
    try:
        result = subprocess.run([PYTHON, "-c", READER, str(tmp_path)], env=child_env(),
                                capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
        pytest.fail(f"a reader blocked (no result within 240 s); results so far:\n{out}")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and len(rows) == 6 * len(EXPECTED), (
        result.stdout[-3000:] + result.stderr[-3000:])
    for row in rows:
        assert row["outcome"].startswith(EXPECTED[row["loader"]] + ":"), row
        assert "not a regular file" in row["outcome"], row
        assert row["unchanged"], row
        hardening_count("non-regular files refused")
    # each refusal is immediate: nothing was read (reported, not a threshold)
    hardening_count("non-regular refusals slower than 1 s",
                    sum(row["seconds"] > 1.0 for row in rows))
