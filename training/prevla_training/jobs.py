"""Run independent jobs (episodes, tasks) on local processes or a Ray cluster, one interface.

    for result in map_jobs(fn, jobs, workers=2):                      # spawn pool of 2
    for result in map_jobs(fn, jobs, workers=16, ray_address="local"): # a local Ray cluster
    for result in map_jobs(fn, jobs, workers=0, ray_address="auto"):   # the running cluster

``fn`` must be a module-level function (picklable) taking one job and returning a result;
results come in completion order. Each Ray task asks for one CPU (a LIBERO job renders and
steps on one core); on a remote cluster the workers must have prevla installed (same as here).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator


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
        with mp.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(fn, jobs)


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
