"""kerasopt's kernel threads (``kerasopt.kernels._threads``): a launch returns only when every
thread has finished it, even when the launching thread is interrupted (a Ctrl-C in a notebook),
and the pool stays usable afterwards."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from kerasopt.kernels import _threads


class Interrupted(Exception):
    """What the test's SIGINT handler raises (not KeyboardInterrupt, which would stop pytest
    if it ever arrived outside the test's ``try``)."""


def _job(log: list, tag: str, worker_seconds: float) -> None:
    if threading.current_thread().name.startswith("kerasopt-kernels"):
        time.sleep(worker_seconds)
        log.append((tag, "worker"))
    else:
        log.append((tag, "caller"))


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_an_interrupted_launch_waits_for_its_workers_and_the_pool_still_works():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    pool = _threads._Pool(1)
    log: list = []
    previous = signal.signal(signal.SIGINT, lambda *_: (_ for _ in ()).throw(Interrupted()))
    try:
        main = threading.main_thread().ident
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
        start = time.perf_counter()
        with pytest.raises(Interrupted):
            pool.run(_job, (log, "first", 1.0), 1)
        # the interrupt arrived at 0.2 s; the launch still waited for its worker
        assert time.perf_counter() - start >= 0.9
        assert ("first", "worker") in log
    finally:
        signal.signal(signal.SIGINT, previous)
    log.clear()
    pool.run(_job, (log, "second", 0.3), 1)
    assert sorted(log) == [("second", "caller"), ("second", "worker")]
    for k in range(5):  # and every later launch is whole when it returns
        log.clear()
        pool.run(_job, (log, k, 0.01), 1)
        assert sorted(log) == [(k, "caller"), (k, "worker")]


def test_a_workers_error_reaches_the_caller_and_the_pool_goes_on():
    pool = _threads._Pool(2)

    def job(fail):
        if fail and threading.current_thread().name == "kerasopt-kernels-2":
            raise ValueError("from worker 2")

    with pytest.raises(ValueError, match="from worker 2"):
        pool.run(job, (True,), 2)
    pool.run(job, (False,), 2)
    ran: list = []
    pool.run(lambda: ran.append(threading.current_thread().name), (), 1)  # fewer threads
    assert sorted(ran) == sorted([threading.current_thread().name, "kerasopt-kernels-1"])
