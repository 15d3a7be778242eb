"""``InferenceWorker``: one thread owns a policy and serves many clients' requests in slices.

Why one owner thread: policies keep a noise generator, a task and per-episode state, so calls
must not overlap; a thread that alone touches the policy makes that true without a lock held
across a whole request, and keeps inference off the threads that read and write the sockets.

Fairness. A request for k samples is cut into slices of at most ``slice_samples``; pending
requests sit in one round-robin queue: the worker runs one slice of the request at the head,
then moves that request to the tail if it has more to do. A request that arrives while another
is in progress therefore waits for at most one slice of each other pending request before its
own first slice, instead of for whole requests: a client asking for k = 1 is not stalled by a
client asking for k = 256. The price is one policy call (one observation encoding) per slice.

Each result reports what it waited for (``queue_samples``: samples of other requests computed
between its submission and its first slice), so the bound can be checked by counting, not by
timing. A request whose ``cancelled()`` turns true (its client hung up) is dropped before its
next slice.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from prevla_ros.runtime.types import Observation, Policy


class WorkerClosed(RuntimeError):
    """The worker stopped (server shutting down) before the request was answered."""


class RequestCancelled(RuntimeError):
    """The request's client went away; its remaining slices were not computed."""


@dataclass
class SampleResult:
    """What one request got.

    Attributes:
        chunks: (k, H, D) float32, the slices in order.
        compute_s: seconds spent inside the policy for this request.
        queue_s: seconds from submission to the start of its first slice.
        queue_samples: samples of other requests computed between submission and first slice.
        slices: policy calls it took.
    """

    chunks: np.ndarray
    compute_s: float
    queue_s: float
    queue_samples: int
    slices: int


@dataclass
class _Job:
    obs: Observation | None  # None: a reset
    k: int
    temperature: float
    task: tuple[str, int] | None
    cancelled: Callable[[], bool]
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    done_at_submit: int = 0  # worker's sample counter when submitted
    queue_s: float | None = None
    queue_samples: int = 0
    parts: list[np.ndarray] = field(default_factory=list)
    compute_s: float = 0.0

    @property
    def remaining(self) -> int:
        return self.k - sum(len(p) for p in self.parts)


class InferenceWorker:
    """Runs every call to ``policy`` on one thread, round-robin over requests in slices.

    Args:
        policy: the policy this worker alone calls from now on.
        slice_samples: most samples per policy call (>= 1).
        name: thread name.
    """

    def __init__(self, policy: Policy, slice_samples: int, name: str = "inference-worker") -> None:
        if not isinstance(slice_samples, int) or slice_samples < 1:
            raise ValueError(f"slice_samples: expected an int >= 1, got {slice_samples!r}")
        self.policy = policy
        self.slice_samples = slice_samples
        self.completed = 0  # answered sample requests
        self.samples_done = 0  # samples computed, all requests
        self._queue: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._task: tuple[str, int] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def sample(self, obs: Observation, k: int, temperature: float = 1.0,
               task: tuple[str, int] | None = None,
               cancelled: Callable[[], bool] = lambda: False) -> Future:
        """Queue a request for ``k`` chunks; the future gives a :class:`SampleResult`, or raises
        what the policy raised, :class:`RequestCancelled` or :class:`WorkerClosed`."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        return self._submit(_Job(obs, k, float(temperature), task, cancelled))

    def reset(self) -> Future:
        """Queue ``policy.reset()`` (in turn with the other requests); the future gives None."""
        return self._submit(_Job(None, 1, 1.0, None, lambda: False))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after the slice in progress; every request still queued raises WorkerClosed."""
        with self._cv:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in pending:
            job.future.set_exception(WorkerClosed("policy server shutting down"))
        self._thread.join(timeout_s)

    # -- the worker thread ------------------------------------------------------------------

    def _submit(self, job: _Job) -> Future:
        with self._cv:
            if self._closed:
                raise WorkerClosed("policy server shutting down")
            job.done_at_submit = self.samples_done
            self._queue.append(job)
            self._cv.notify()
        return job.future

    def _next(self) -> _Job | None:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            return None if self._closed else self._queue.popleft()

    def _run(self) -> None:
        while (job := self._next()) is not None:
            if job.queue_s is None:
                job.queue_s = time.monotonic() - job.submitted
                job.queue_samples = self.samples_done - job.done_at_submit
            if job.cancelled():
                job.future.set_exception(RequestCancelled("client went away"))
                continue
            try:
                finished = self._step(job)
            except Exception as exc:  # the policy's failure is this request's answer
                job.future.set_exception(exc)
                continue
            if finished:
                self._finish(job)
                continue
            with self._cv:
                if self._closed:
                    job.future.set_exception(WorkerClosed("policy server shutting down"))
                    return
                self._queue.append(job)

    def _step(self, job: _Job) -> bool:
        """Run one slice of ``job``; True when it has nothing left to do."""
        if job.obs is None:
            self.policy.reset()
            return True
        if job.task is not None and job.task != self._task and hasattr(self.policy, "set_task"):
            self.policy.set_task(*job.task)
            self._task = job.task
        n = min(self.slice_samples, job.remaining)
        start = time.monotonic()
        part = np.asarray(self.policy.sample(job.obs, n, job.temperature), dtype=np.float32)
        job.compute_s += time.monotonic() - start
        if part.ndim != 3 or part.shape[0] != n:
            raise ValueError(f"policy {getattr(self.policy, 'policy_id', '?')!r}: sample(k={n}) "
                             f"returned shape {part.shape}, expected ({n}, H, D)")
        job.parts.append(part)
        self.samples_done += n
        return job.remaining == 0

    def _finish(self, job: _Job) -> None:
        if job.obs is None:
            job.future.set_result(None)
            return
        chunks = job.parts[0] if len(job.parts) == 1 else np.concatenate(job.parts)
        self.completed += 1
        job.future.set_result(SampleResult(chunks, job.compute_s, job.queue_s or 0.0,
                                           job.queue_samples, len(job.parts)))
