"""Run independent jobs (episodes, tasks) on local processes or a Ray cluster, one interface.

    for result in map_jobs(fn, jobs, workers=2):                      # spawn pool of 2
    for result in map_jobs(fn, jobs, workers=16, ray_address="local"): # a local Ray cluster
    for result in map_jobs(fn, jobs, workers=0, ray_address="auto"):   # the running cluster

``fn`` must be a module-level function (picklable) taking one job and returning a result;
results come in completion order. Each Ray task asks for one CPU (a LIBERO job renders and
steps on one core); on a remote cluster the workers must have prevla installed (same as here).

A spawn pool's workers never outlive this process: while the pool runs, SIGTERM exits this
process through ``SystemExit`` (so the pool terminates its workers and ``finally`` blocks run,
:func:`exit_on_sigterm`), and on Linux each worker is also killed when this process dies in
any other way (``SIGKILL``, a crash: ``PR_SET_PDEATHSIG``).

Jobs may report progress (e.g. one ``put(1)`` per episode) through :func:`progress_sink`.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def map_jobs(fn: Callable, jobs: Iterable, workers: int, ray_address: str = "") -> Iterator:
    """Yield ``fn(job)`` for every job (module docstring)."""
    jobs = list(jobs)
    if ray_address:
        yield from _ray_map(fn, jobs, workers, ray_address)
    elif workers == 0:
        for job in jobs:
            yield fn(job)
    else:
        # spawn: fresh interpreters, no inherited GL/MuJoCo state
        with exit_on_sigterm(), \
                mp.get_context("spawn").Pool(workers, _die_with_parent, (os.getpid(),)) as pool:
            yield from pool.imap_unordered(fn, jobs)


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM raises ``SystemExit(143)`` in the main thread instead of killing
    the process on the spot, so ``with`` blocks unwind (a pool terminates its workers, a
    manager shuts down). Only where SIGTERM still has its default action (a handler someone
    installed is left alone), and only in the main thread; restored on exit. A second SIGTERM
    during the unwinding kills at once."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # closed from another thread (a generator finalized there)
            pass


def _die_with_parent(parent: int) -> None:
    """Pool initializer: SIGTERM this worker when ``parent`` dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl: nobody would signal us
        os.kill(os.getpid(), signal.SIGTERM)


def _discard(n: int) -> None:
    pass


class _CallSink:
    """Queue-like ``put(n)`` that calls ``update(n)`` (jobs run in this process)."""

    def __init__(self, update: Callable[[int], object]) -> None:
        self.update = update

    def put(self, n: int) -> None:
        self.update(n)


@contextmanager
def progress_sink(update: Callable[[int], object], workers: int, ray_address: str = "") -> Iterator:
    """A queue-like object (``put(n)``, picklable into a spawn pool's jobs) through which jobs
    of ``map_jobs(fn, jobs, workers, ray_address)`` report progress: every ``put(n)`` becomes
    ``update(n)`` here, while the jobs run (for a spawn pool a thread drains a manager queue).
    On Ray it is a sink that drops everything (no queue reaches a cluster): count a job's
    progress from its result there."""
    if ray_address:
        yield _CallSink(_discard)
        return
    if workers == 0:
        yield _CallSink(update)
        return
    with exit_on_sigterm(), mp.get_context("spawn").Manager() as manager:
        q = manager.Queue()
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    update(q.get(timeout=0.5))
                except queue.Empty:
                    pass
                except (OSError, EOFError):  # the manager is gone (shutting down)
                    return

        thread = threading.Thread(target=drain, name="prevla-progress", daemon=True)
        thread.start()
        try:
            yield q
        finally:
            stop.set()
            thread.join()
            while True:  # what was put after the thread's last look
                try:
                    update(q.get_nowait())
                except (queue.Empty, OSError, EOFError):
                    break


def _ray_map(fn: Callable, jobs: list, workers: int, address: str) -> Iterator:
    import ray

    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False,
                     _temp_dir=os.path.join(tempfile.gettempdir(), "prevla_ray"))
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
