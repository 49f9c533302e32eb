"""The threads that run the CPU kernels: the calling thread and a few workers.

A launch calls one compiled kernel from every thread at once with the same arguments; the
kernel claims its work from a shared counter (see :mod:`kerasopt.kernels._numba`) and
releases the GIL while it runs, so the threads work in parallel and a thread that starts
late, or is descheduled, leaves its share to the others. The workers are plain Python
threads that sleep on a condition between launches: no thread pool of another runtime (numba's
OpenMP layer shared its libgomp with torch, and changed torch's thread count when it
started), nothing spinning between steps. Imports nothing from kerasopt or numba.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Launch:
    """One call of a function on the workers: how many have yet to finish it, and their
    errors."""

    def __init__(self, function: Callable[..., Any], args: Sequence[Any], workers: int) -> None:
        self.function, self.args = function, args
        self.workers = self.pending = workers
        self.errors: list[BaseException] = []
        self.finished = threading.Condition()

    def done(self, error: BaseException | None) -> None:
        with self.finished:
            if error is not None:
                self.errors.append(error)
            self.pending -= 1
            if self.pending == 0:
                self.finished.notify_all()

    def wait(self) -> None:
        """Until every worker has finished, even through a ``KeyboardInterrupt`` (re-raised
        afterwards): a launch must not return while a worker still writes its arrays."""
        interrupted: BaseException | None = None
        while True:
            try:
                with self.finished:
                    while self.pending > 0:
                        self.finished.wait()
                break
            except BaseException as error:  # a Ctrl-C while waiting: keep waiting first
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted


class _Pool:
    """Worker threads that sleep until the launcher publishes the next launch."""

    def __init__(self, workers: int) -> None:
        self.pid = os.getpid()
        self.busy = threading.Lock()
        self.published = threading.Condition()
        self.generation = 0
        self.launch: _Launch | None = None
        self.workers = workers
        for k in range(workers):
            threading.Thread(target=self._work, args=(k,), daemon=True,
                             name=f"kerasopt-kernels-{k + 1}").start()

    def _work(self, index: int) -> None:
        seen = 0
        while True:
            with self.published:
                while self.generation == seen:
                    self.published.wait()
                seen, launch = self.generation, self.launch
            if index >= launch.workers:  # a launch on fewer threads than the pool has
                continue
            error = None
            try:
                launch.function(*launch.args)
            except BaseException as caught:  # re-raised by the launching thread
                error = caught
            launch.done(error)

    def run(self, function: Callable[..., Any], args: Sequence[Any], workers: int) -> None:
        """``function(*args)`` on the calling thread and the first ``workers`` workers; returns
        when all have returned (the launcher waits for them before it publishes another
        launch, so none of them misses one)."""
        launch = _Launch(function, args, workers)
        target = self.generation + 1
        try:
            with self.published:
                self.launch = launch
                self.generation = target
                self.published.notify_all()
            function(*args)
        finally:
            with self.published:
                sent = self.generation == target
            if sent:
                launch.wait()
        if launch.errors:
            raise launch.errors[0]


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
    if pool is None or pool.pid != os.getpid() or pool.workers < threads - 1:
        with _creating:  # (a forked child has none of its parent's threads: start anew)
            pool = _pool
            if pool is None or pool.pid != os.getpid() or pool.workers < threads - 1:
                pool = _pool = _Pool(threads - 1)
    if not pool.busy.acquire(blocking=False):
        function(*args)
        return
    try:
        pool.run(function, args, threads - 1)
    finally:
        pool.busy.release()
