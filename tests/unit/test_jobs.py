"""map_jobs: the same results in-process, on a spawn pool and on a real local Ray cluster;
progress from the jobs; no pool worker outlives a killed parent."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from prevla_training.ceiling import cross_fitted_oracle
from prevla_training.jobs import map_jobs, progress_sink

TABLES = [np.random.default_rng(i).integers(0, 2, (4, 3)) for i in range(6)]
EXPECTED = sorted(cross_fitted_oracle(t) for t in TABLES)


@pytest.mark.parametrize("workers", [0, 2])
def test_local_processes(workers):
    before = signal.getsignal(signal.SIGTERM)
    assert sorted(map_jobs(cross_fitted_oracle, TABLES, workers)) == EXPECTED
    assert signal.getsignal(signal.SIGTERM) is before  # map_jobs's SIGTERM handler is gone


def test_ray_local_cluster(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import ray

    assert sorted(map_jobs(cross_fitted_oracle, TABLES, 2, ray_address="local")) == EXPECTED
    assert not ray.is_initialized()  # the cluster it started is shut down


def _report(job: dict) -> int:
    """A job that reports its number as progress, then returns it."""
    job["progress"].put(job["n"])
    return job["n"]


@pytest.mark.parametrize("workers", [0, 2])
def test_progress_reaches_this_process(workers):
    got: list[int] = []
    with progress_sink(got.append, workers) as progress:
        results = list(map_jobs(_report, [dict(n=n, progress=progress) for n in range(1, 6)], workers))
    assert sorted(results) == sorted(got) == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- killing the parent
def _sleep_reporting(seconds: float) -> float:
    """A job that says which worker runs it (its pid on stdout, one write: with
    PYTHONUNBUFFERED a print is two writes, and two workers' lines could interleave), then sleeps."""
    os.write(1, f"{os.getpid()}\n".encode())
    time.sleep(seconds)
    return seconds


def _start_time(pid: int) -> str | None:
    """The start time of a live process (its identity with the pid), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _pool_then(sig: int) -> tuple[int, dict[int, str]]:
    """A parent running a 2-worker map_jobs pool (jobs sleep 10 minutes) gets ``sig`` once
    both workers run a job; returns its exit status and the workers (pid -> start time)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from prevla_training.jobs import map_jobs
        from test_jobs import _sleep_reporting
        for _ in map_jobs(_sleep_reporting, [600.0] * 4, 2):
            pass
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert time.monotonic() < deadline, "the pool's workers did not start"
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                assert line, f"the parent exited ({proc.wait()}) before both workers ran"
                pid = int(line)
                workers[pid] = _start_time(pid)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, workers


def _survivors(workers: dict[int, str], wait_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p, t in workers.items() if t is not None and _start_time(p) == t]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in alive:  # leave nothing behind, whatever the verdict
        os.kill(p, signal.SIGKILL)
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_to_the_parent_ends_the_pool_workers():
    rc, workers = _pool_then(signal.SIGTERM)
    assert _survivors(workers, wait_s=0.0) == []  # already gone when the parent has exited
    assert rc == 128 + signal.SIGTERM  # it exited through SystemExit (the pool terminated)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_to_the_parent_ends_the_pool_workers():
    rc, workers = _pool_then(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert _survivors(workers) == []  # the kernel signals them (PR_SET_PDEATHSIG)
