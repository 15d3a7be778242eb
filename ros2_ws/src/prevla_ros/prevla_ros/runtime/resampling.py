"""Adaptive resampling: one decision over several sampling rounds (ROS-free).

:class:`Resampling` is the state machine of :meth:`Scheduler.run
<prevla_ros.runtime.scheduler.Scheduler.run>`: whoever samples (a direct policy call, or
:class:`~prevla_ros.runtime.resampling_driver.ResamplingDriver` over an asynchronous sampler:
verifier_node's ``sample_candidates`` service) drives it. With
``SchedulerConfig.overlap`` the driver may sample the round after next while the current
round is scored (:meth:`Resampling.speculative_request`); a speculative round that turns out
unneeded is dropped and counted in ``Decision.dropped_samples``.
"""
from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np

from prevla_ros.runtime.decision import OUTCOME_ACCEPTED, OUTCOME_FALLBACK, Decision
from prevla_ros.runtime.scheduler_config import SchedulerConfig
from prevla_ros.runtime.types import ActionChunk, Observation


class RoundDecider(Protocol):
    """What a resampling decision needs of the scheduler: its config and one round's decision
    (:class:`~prevla_ros.runtime.scheduler.Scheduler` is one; typed here, not imported, so
    the scheduler can import this module)."""

    config: SchedulerConfig

    @property
    def verifier_id(self) -> str: ...

    def decide(self, candidates: list[np.ndarray], stamp_ns: int, last_gripper: float,
               source: str, observation: Observation | None) -> Decision: ...


class Resampling:
    """One adaptive-resampling decision as a state machine (see :meth:`Scheduler.run`).

    Whoever samples drives it: ask :meth:`next_request` what to sample (``(k, temperature)``,
    or ``None`` when the decision is made), hand the candidates to :meth:`add`, then take
    :meth:`finish`. :meth:`Scheduler.run` drives it with direct policy calls, ``verifier_node``
    with asynchronous service calls; :meth:`stop` ends it early (a sampler that failed) with
    the budget's fallback. Every round is decided by ``scheduler``: :meth:`Scheduler.start`
    hands it a copy with the verifier of the moment, so a model hot-swapped meanwhile never
    mixes two verifiers' scores in one decision.
    """

    def __init__(self, scheduler: RoundDecider, observation: Observation | None, k: int,
                 temperature: float, stamp_ns: int, last_gripper: float, source: str) -> None:
        self._scheduler = scheduler
        self._t0 = time.perf_counter()
        self._args = (stamp_ns, last_gripper, source, observation)
        self.k, self.temperature = k, temperature
        self.samples = self.rounds = 0
        self.dropped_samples = 0  # sampled ahead (overlap) and not needed: :meth:`drop`
        self.verify_ms = 0.0
        self.decision: Decision | None = None  # the latest round's
        self._history: list[Decision] = []  # every round's, in order
        # the safest scored candidate so far: (P(safe), actions, index over every round's)
        self._best: tuple[float, np.ndarray, int] | None = None
        self._considered = 0  # candidates of the rounds before the latest one
        self._done = False
        self._final: Decision | None = None

    @property
    def verifier_id(self) -> str:
        return self._scheduler.verifier_id

    @property
    def done(self) -> bool:
        return self._done

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1e3

    def remaining_ms(self) -> float:
        """What is left of ``max_ms`` (infinite without a time budget)."""
        max_ms = self._scheduler.config.max_ms
        return max(0.0, max_ms - self.elapsed_ms()) if max_ms > 0 else math.inf

    def next_request(self) -> tuple[int, float] | None:
        """``(k, temperature)`` of the next round to sample, or None: call :meth:`finish`."""
        if self._done:
            return None
        cfg = self._scheduler.config
        return (min(self.k, cfg.max_samples - self.samples),
                self.temperature + self.rounds * cfg.temperature_step)

    def speculative_request(self) -> tuple[int, float] | None:
        """``(k, temperature)`` of the round after the one about to be added (the round the
        budget would allow if that one is rejected too): what a driver samples while the
        current round is scored. None without ``overlap``, before a first round was rejected
        (speculation starts at the first rejection) or when the budget leaves no such round."""
        cfg = self._scheduler.config
        if self._done or not cfg.overlap or self.rounds < 1:
            return None
        k_now, _ = self.next_request()
        samples, rounds = self.samples + k_now, self.rounds + 1
        if self._budget_spent(rounds, samples):
            return None
        return (min(self.k, cfg.max_samples - samples),
                self.temperature + rounds * cfg.temperature_step)

    def drop(self, k: int) -> None:
        """A speculative round of ``k`` candidates turned out unneeded (``dropped_samples``)."""
        self.dropped_samples += k

    def _budget_spent(self, rounds: int, samples: int) -> bool:
        cfg = self._scheduler.config
        return (rounds >= cfg.max_rounds or samples >= cfg.max_samples
                or (cfg.max_ms > 0 and self.elapsed_ms() >= cfg.max_ms))

    def add(self, candidates: list[np.ndarray]) -> None:
        """Decide on one round's candidates; the decision may end here (accepted, final, or
        the budget spent)."""
        if self._done:
            raise RuntimeError("Resampling.add after the decision was made")
        cfg = self._scheduler.config
        stamp_ns, last_gripper, source, observation = self._args
        self.samples, self.rounds = self.samples + len(candidates), self.rounds + 1
        decision = self.decision = self._scheduler.decide(candidates, stamp_ns, last_gripper,
                                                          source, observation)
        offset = self._considered  # this round's first candidate, over every round's
        self._considered += len(decision.safety_probs)
        self._history.append(decision)
        self.verify_ms += decision.verify_ms
        scored = decision.scored()  # invalid candidates never count, not even as a fallback
        if cfg.verifier != "model" or decision.outcome == OUTCOME_ACCEPTED or not len(scored):
            self._done = True  # accepted, passthrough, or nothing scorable: no point resampling
            return
        i = int(scored[np.argmax(decision.safety_probs[scored])])
        if self._best is None or decision.safety_probs[i] > self._best[0]:
            self._best = (float(decision.safety_probs[i]),
                          np.asarray(candidates[i], dtype=np.float32), offset + i)
        if self._budget_spent(self.rounds, self.samples):
            self._fall_back(f"budget spent ({self.rounds} rounds, {self.samples} samples)")

    def stop(self, why: str) -> None:
        """End the decision now (the sampler failed: ``why``) with the budget's fallback."""
        if self._done:
            return
        if self.decision is None:  # nothing sampled at all: a hold that says why
            self.add([])
            self.decision.reason = f"{why}; {self.decision.reason}"
            return
        self._fall_back(f"resampling stopped after {self.rounds} rounds ({self.samples} "
                        f"samples): {why}")

    def _fall_back(self, head: str) -> None:
        """The highest-P(safe) candidate seen if it reaches ``fallback_min_p_safe``, else the
        latest round's hold; ``head`` starts the reason. A fallback's ``accepted_index`` names
        the candidate executed (its index over every round's candidates)."""
        self._done = True
        decision, best = self.decision, self._best
        stamp_ns, _, source, _ = self._args
        if best is not None and best[0] >= self._scheduler.config.fallback_min_p_safe:
            decision.chunk = ActionChunk(best[1], source, stamp_ns)
            decision.outcome, decision.accepted_index = OUTCOME_FALLBACK, best[2]
            decision.reason = (f"{head}: fallback to the safest candidate, "
                               f"p_safe={best[0]:.3f}; " + decision.reason)
        else:
            decision.reason = f"{head}: " + decision.reason

    def finish(self) -> Decision:
        """The decision over all its rounds: rounds, samples, time, and per-candidate scores
        (and ``accepted_index``, ``rejected``) over every candidate considered, in order."""
        if not self._done:
            raise RuntimeError("Resampling.finish before the decision was made "
                               "(next_request() is not None; stop() ends it early)")
        if self._final is not None:
            return self._final
        decision = self._final = self.decision
        offset, rejected = 0, {}
        for d in self._history:
            rejected.update({offset + i: why for i, why in d.rejected.items()})
            offset += len(d.safety_probs)
        if decision.outcome == OUTCOME_ACCEPTED:  # a fallback's index already spans every round
            decision.accepted_index += offset - len(decision.safety_probs)
        decision.safety_probs = np.concatenate([d.safety_probs for d in self._history])
        decision.advantages = np.concatenate([d.advantages for d in self._history])
        decision.rejected = rejected
        if decision.outcome == OUTCOME_ACCEPTED and self.rounds > 1:
            decision.reason = (f"resampled {self.rounds} rounds ({self.samples} samples): "
                               + decision.reason)
        decision.samples_drawn, decision.rounds = self.samples, self.rounds
        decision.dropped_samples = self.dropped_samples
        decision.verify_ms = self.verify_ms
        decision.total_ms = self.elapsed_ms()
        return decision
