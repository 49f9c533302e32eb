"""Every file kerasopt writes or reads back: one atomic writer, one bounded reader.

:func:`atomic_write` is the only way kerasopt replaces a file (``kerasopt.save``,
``kerasopt.interop.save_keras_weights``, ``kerasopt.optax.save_state``):

1. the data goes to a new temporary file ``.<name>.<random>.tmp`` in the target's
   directory (the same file system, so the rename below is atomic), created with the mode
   the process's umask gives a new file (``0o666 & ~umask``; the kernel applies the umask and
   any default ACL) -- or, when ``path`` already exists, with that file's mode;
2. the temporary file is flushed and ``fsync``-ed;
3. ``os.replace`` renames it over ``path``;
4. the directory is ``fsync``-ed, so the rename itself survives a power cut.

A process killed at any point leaves either the old complete file or the new one (and
possibly a ``.<name>.*.tmp`` file, which nothing reads). On an error the temporary file is
removed and ``path`` is untouched.

:func:`open_regular` / :func:`read_regular` open a file for reading only if it is a regular
file: a FIFO, a character device (``/dev/zero``), a socket or a directory is refused at once
with :class:`NotRegularFileError` (an ``OSError``), without blocking (the file is opened with
``O_NONBLOCK``, so opening a FIFO that has no writer does not wait for one) and without
reading anything. :func:`read_regular` reads at most the size the file had when it was
opened, and refuses a file that grows while it is read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import IO, Any

__all__ = ["NotRegularFileError", "atomic_write", "open_regular", "read_regular"]

# Bits of st_mode that chmod sets (permissions, setuid/setgid, sticky).
_MODE_BITS = 0o7777


class NotRegularFileError(OSError):
    """``path`` is not a regular file (a FIFO, a device, a socket, a directory...), or it
    changed while it was read."""


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring).

    Args:
        path: the file to write; its directory must exist.
        data: the bytes to write, or ``data(f)``: a function that writes them to the binary
            file object ``f`` (e.g. ``lambda f: numpy.savez(f, **arrays)``).

    A new file gets the mode the umask gives (``0o666 & ~umask``: 0644 under umask 022,
    0600 under umask 077); a file that exists keeps its mode (a checkpoint made 0600 stays
    0600).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        existing: int | None = os.stat(path).st_mode & _MODE_BITS
    except (FileNotFoundError, NotADirectoryError):
        existing = None
    fd, tmp = _create_temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:  # the umask may have cleared bits the file had
                _chmod(f, tmp, existing)
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` in ``directory``, opened for writing, created
    with mode 0o666 so that the kernel applies the umask (``tempfile.mkstemp`` would give
    0600 whatever the umask)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r}")


def _chmod(f: IO[bytes], name: str, mode: int) -> None:
    try:
        os.fchmod(f.fileno(), mode)
    except (AttributeError, NotImplementedError):  # pragma: no cover - Windows
        os.chmod(name, mode)


def _fsync_directory(directory: str) -> None:
    """``fsync`` the directory so that the rename is durable (not possible on Windows, nor
    on some file systems: then the rename is as durable as the platform makes it)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - Windows cannot open a directory
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for binary reading, if it is a regular file; else
    :class:`NotRegularFileError` at once (nothing read, never blocking on a FIFO).

    The check is made on the opened file (``fstat``), so a path swapped for a FIFO between
    a check and the open cannot slip through."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # a socket cannot be opened; a directory on some platforms
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        _refuse(path, mode)
        raise
    try:
        _refuse(path, os.fstat(fd).st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, *, limit: int | None = None) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`).

    Reads at most the size the file had when it was opened (and at most ``limit`` bytes
    when given: a larger file raises :class:`NotRegularFileError` before anything is read);
    a file that grows while it is read is refused."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise NotRegularFileError(
                f"{os.fspath(path)!r} has {size} bytes; at most {limit} are accepted here."
            )
        data = _read_exactly(f, size)
        if f.read(1):
            raise NotRegularFileError(
                f"{os.fspath(path)!r} grew while it was read (another process is writing "
                "it); read it again once it is complete."
            )
    return data


def _read_exactly(f: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes of ``f`` (fewer if the file was truncated meanwhile); one read
    in the usual case, so the content is not copied."""
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = f.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _refuse(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(
            f"{path!r} is {_describe(mode)}, not a regular file; kerasopt reads files only (a "
            "FIFO or a device could block or never end)."
        )


def _describe(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"  # pragma: no cover
