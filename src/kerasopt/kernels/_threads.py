"""The threads that run the CPU kernels: the calling thread and a few workers.

A launch calls one compiled kernel from every thread at once with the same arguments; the
kernel claims its work from a shared counter (see :mod:`kerasopt.kernels._numba`) and
releases the GIL while it runs, so the threads work in parallel and a thread that starts
late, or is descheduled, leaves its share to the others. The workers are plain Python
threads that sleep on a lock between launches: no thread pool of another runtime (numba's
OpenMP layer shared its libgomp with torch, and changed torch's thread count when it
started), nothing spinning between steps. Imports nothing from kerasopt or numba.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Pool:
    """Worker threads, each waiting on its own lock for the next launch."""

    def __init__(self, workers: int) -> None:
        self.pid = os.getpid()
        self.busy = threading.Lock()
        self.job: tuple[Callable[..., Any], Sequence[Any]] | None = None
        self.errors: list[BaseException] = []
        self.go: list[threading.Lock] = []
        self.done: list[threading.Lock] = []
        for k in range(workers):
            go, done = threading.Lock(), threading.Lock()
            go.acquire()
            done.acquire()
            self.go.append(go)
            self.done.append(done)
            threading.Thread(target=self._work, args=(go, done), daemon=True,
                             name=f"kerasopt-kernels-{k + 1}").start()

    def _work(self, go: threading.Lock, done: threading.Lock) -> None:
        while True:
            go.acquire()
            function, args = self.job
            try:
                function(*args)
            except BaseException as error:  # re-raised by the launching thread
                self.errors.append(error)
            done.release()

    def run(self, function: Callable[..., Any], args: Sequence[Any], workers: int) -> None:
        self.job = (function, args)
        self.errors = []
        for go in self.go[:workers]:
            go.release()
        try:
            function(*args)
        finally:
            for done in self.done[:workers]:
                done.acquire()
        if self.errors:
            raise self.errors[0]


_pool: _Pool | None = None
_creating = threading.Lock()


def run(function: Callable[..., Any], args: Sequence[Any], threads: int) -> None:
    """``function(*args)`` on ``threads`` threads at once (the calling one included), returning
    when all have returned. On the calling thread alone when ``threads`` is 1 or another
    launch is under way (two threads stepping at once do not queue behind each other)."""
    global _pool
    if threads <= 1:
        function(*args)
        return
    pool = _pool
    if pool is None or pool.pid != os.getpid() or len(pool.go) < threads - 1:
        with _creating:  # (a forked child has none of its parent's threads: start anew)
            pool = _pool
            if pool is None or pool.pid != os.getpid() or len(pool.go) < threads - 1:
                pool = _pool = _Pool(threads - 1)
    if not pool.busy.acquire(blocking=False):
        function(*args)
        return
    try:
        pool.run(function, args, threads - 1)
    finally:
        pool.busy.release()
