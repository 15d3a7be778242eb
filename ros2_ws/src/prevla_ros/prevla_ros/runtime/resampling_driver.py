"""Drive a :class:`~prevla_ros.runtime.resampling.Resampling` over an asynchronous sampler
(ROS-free).

``verifier_node`` resamples over policy_node's ``sample_candidates`` service; this module is
that loop without ROS, so that it can be tested with a fake sampler and a fake clock. The
node only adapts: it hands the driver callables that send a request (``call_async``), cancel
one (``remove_pending_request``), schedule and cancel a deadline (``create_timer``,
``destroy_timer``) and publish a decision; and it calls :meth:`ResamplingDriver.answered`
when a request's answer arrives.

The rules, those of :meth:`Scheduler.run <prevla_ros.runtime.scheduler.Scheduler.run>`:

- When no candidate of a set passes, the next round is requested (hotter, by the
  scheduler's ``temperature_step``) and decided on when it comes; the caller keeps working
  meanwhile (nothing here blocks).
- A late answer (``timeout_s``, or the rest of ``max_ms`` when that is sooner), a refused
  or malformed one, or no sampler at all ends the decision with the scheduler's fallback
  (the safest candidate seen if safe enough, else a hold), logged in one line; so does
  :meth:`~ResamplingDriver.stop` (a newer candidate set: verdicts keep the order of their
  sets).
- With ``overlap`` (preemptive resampling) a resampled round that arrives makes the driver
  request the round after it *before* deciding on it, so the policy samples while the
  verifier scores; that request's deadline runs from when it was sent. When the round
  decides, the request ahead is cancelled (its answer, if any, is ignored) and its k is
  counted in ``Decision.dropped_samples``.
- Only the answer to the one request awaited is ever added, so no round is added twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from prevla_ros.runtime.chunks import chunk_problem
from prevla_ros.runtime.decision import OUTCOME_HOLD, Decision
from prevla_ros.runtime.resampling import Resampling
from prevla_ros.runtime.scheduler_config import SchedulerConfig

#: ``read()`` of an answer: ``(the observation stamp it answers, its candidates)``.
Answer = tuple[int, list[np.ndarray]]


class SamplingFailed(Exception):
    """The sampler cannot serve a request, or refused it; the message says why."""


@dataclass
class _Request:
    """One request sent to the sampler."""

    handle: Any  # what ``send`` returned (verifier_node: the service call's Future)
    k: int  # candidates asked for
    sent: float  # clock() when it went out
    timeout_s: float  # its deadline after ``sent``: timeout_s or the rest of max_ms


@dataclass
class _Pending:
    """A decision waiting for the sampler's answer to one request."""

    resampling: Resampling
    stamp_ns: int  # the observation every round answers
    context: Any  # handed back to ``publish`` (verifier_node: the policy's first set)
    request: _Request | None = None  # the one whose answer is the next round
    timer: Any = None  # the request's deadline
    failure: str = ""  # why the resampling stopped early, if it did


class ResamplingDriver:
    """At most one resampling decision at a time, over an asynchronous sampler.

    Args:
        config: the scheduler's config (answers are checked against its action bounds).
        send: ``send(stamp_ns, k, temperature, round) -> handle`` sends one request and
            returns at once; it raises :class:`SamplingFailed` when it cannot send.
        cancel: ``cancel(handle)``: that request's answer must never be delivered.
        schedule: ``schedule(delay_s, callback) -> timer`` (a repeating timer is fine: the
            first call cancels it).
        cancel_timer: ``cancel_timer(timer)``.
        publish: ``publish(context, decision, verifier_id)``, once per decision.
        timeout_s: the longest wait for one answer (``resample_timeout_s``).
        warn: one line when a failure ends a decision other than with a hold (a hold is
            logged where it is published).
        stats: counts ``resample_requests`` and ``resample_failures`` and sets
            ``last_resample_ms`` in it (the caller's diagnostics).
        name: the sampler, as the reasons name it.
        clock: seconds, monotonic (``time.perf_counter``).
    """

    def __init__(self, config: SchedulerConfig, send: Callable[[int, int, float, int], Any],
                 cancel: Callable[[Any], None],
                 schedule: Callable[[float, Callable[[], None]], Any],
                 cancel_timer: Callable[[Any], None],
                 publish: Callable[[Any, Decision, str], None], timeout_s: float,
                 warn: Callable[[str], None] = lambda line: None, stats: dict | None = None,
                 name: str = "the sampler", clock: Callable[[], float] = time.perf_counter) -> None:
        self.config, self.timeout_s, self.name = config, timeout_s, name
        self._send_fn, self._cancel, self._schedule = send, cancel, schedule
        self._cancel_timer, self._publish, self._warn, self._clock = (
            cancel_timer, publish, warn, clock)
        self.stats = stats if stats is not None else {}
        for key, zero in (("resample_requests", 0), ("resample_failures", 0),
                          ("last_resample_ms", 0.0)):
            self.stats.setdefault(key, zero)
        self._pending: _Pending | None = None

    @property
    def busy(self) -> bool:
        """A decision awaits an answer."""
        return self._pending is not None

    def start(self, resampling: Resampling, candidates: list[np.ndarray], stamp_ns: int,
              context: Any) -> None:
        """Decide on the policy's first set (round 0) and resample as the scheduler says.

        Raises:
            RuntimeError: a decision is still pending (:meth:`stop` it first).
        """
        if self._pending is not None:
            raise RuntimeError("ResamplingDriver.start while a decision is pending")
        resampling.add(candidates)
        self._resample(_Pending(resampling, stamp_ns, context))

    def stop(self, why: str) -> None:
        """End the pending decision, if any, now with the fallback; its answer is dropped."""
        p = self._pending
        if p is None:
            return
        self._cancel(p.request.handle)  # its answer is never delivered
        self._end_wait(p)
        self._fail(p, why)

    def answered(self, handle: Any, read: Callable[[], Answer]) -> None:
        """The answer to request ``handle`` is in; ``read()`` gives it (or raises, saying
        why). Ignored unless it is the request awaited (timed out, superseded or dropped
        meanwhile: never a second answer)."""
        p = self._pending
        if p is None or p.request is None or p.request.handle is not handle:
            return
        r = p.request
        self._end_wait(p)
        self.stats["last_resample_ms"] = round((self._clock() - r.sent) * 1e3, 3)
        try:
            got, candidates = read()
        except SamplingFailed as exc:
            self._fail(p, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 -- whatever broke, fall back and stay up
            self._fail(p, f"{self.name} failed: {exc}")
            return
        cfg = self.config
        problems = [chunk_problem(c, cfg.action_dim, cfg.max_abs_action) for c in candidates]
        if got != p.stamp_ns:
            self._fail(p, f"{self.name} answered for stamp {got}, not {p.stamp_ns}")
        elif not candidates or all(problems):
            self._fail(p, f"malformed candidates from {self.name}: " + (
                "; ".join(sorted(set(problems))) if problems else "none"))
        else:
            self._add_round(p, candidates)

    def _resample(self, p: _Pending) -> None:
        """Ask for the scheduler's next round, or publish its decision when it has made one."""
        request = p.resampling.next_request()
        if request is None:
            self._finish(p)
            return
        try:
            r = self._send(p, *request, p.resampling.rounds)
        except SamplingFailed as exc:
            self._fail(p, str(exc))
            return
        self._await(p, r)

    def _send(self, p: _Pending, k: int, temperature: float, round_: int) -> _Request:
        budget_s = p.resampling.remaining_ms() / 1e3
        handle = self._send_fn(p.stamp_ns, int(k), float(temperature), round_)
        self.stats["resample_requests"] += 1
        return _Request(handle, int(k), self._clock(), max(1e-3, min(self.timeout_s, budget_s)))

    def _await(self, p: _Pending, r: _Request) -> None:
        """Wait for ``r``'s answer (the next round) until its deadline, counted from its send."""
        p.request, self._pending = r, p
        left_s = r.timeout_s - (self._clock() - r.sent)
        p.timer = self._schedule(max(1e-3, left_s), lambda: self._on_timeout(p, r))

    def _add_round(self, p: _Pending, candidates: list[np.ndarray]) -> None:
        """Decide on a resampled round. With ``overlap`` the round after it is requested
        first (as :meth:`Scheduler.run` does), and dropped if this round decides."""
        ahead, request = None, p.resampling.speculative_request()  # None without overlap
        if request is not None:
            try:  # its round: after the one about to be added
                ahead = self._send(p, *request, p.resampling.rounds + 1)
            except SamplingFailed:
                pass  # the next round's own request will say why
        p.resampling.add(candidates)
        if ahead is None:
            self._resample(p)
        elif p.resampling.done:  # not needed: a late answer is never delivered
            self._cancel(ahead.handle)
            p.resampling.drop(ahead.k)
            self._finish(p)
        else:
            self._await(p, ahead)

    def _on_timeout(self, p: _Pending, r: _Request) -> None:
        if self._pending is not p or p.request is not r:
            return
        self._end_wait(p)
        self._cancel(r.handle)  # a late answer is dropped
        budget = ("the rest of the max_ms budget" if r.timeout_s < self.timeout_s
                  else "resample_timeout_s")
        self._fail(p, f"no answer from {self.name} within {r.timeout_s:.3f} s ({budget})")

    def _end_wait(self, p: _Pending) -> None:
        self._pending, p.request = None, None
        if p.timer is not None:
            self._cancel_timer(p.timer)
            p.timer = None

    def _fail(self, p: _Pending, why: str) -> None:
        """Stop resampling: the scheduler's fallback decides."""
        p.failure = why
        self.stats["resample_failures"] += 1
        p.resampling.stop(why)
        self._finish(p)

    def _finish(self, p: _Pending) -> None:
        decision = p.resampling.finish()
        if p.failure and decision.outcome != OUTCOME_HOLD:  # a hold is logged when published
            self._warn(f"stamp {p.stamp_ns}, {decision.outcome}: {decision.reason}")
        self._publish(p.context, decision, p.resampling.verifier_id)
