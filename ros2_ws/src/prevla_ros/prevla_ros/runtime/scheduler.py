"""The decision step between a policy's candidates and the robot (ROS-free).

Every candidate is validated first (shape, action dimension, finite values, magnitude);
invalid ones are never executable whatever the verifier says. Then the configured
verifier scores the valid ones and the scheduler picks one, or falls back to a hold chunk.

Verifiers:
- ``passthrough``: no scoring; accept the first valid candidate. This is the *policy
  alone* baseline the evaluation keeps, not a placeholder.
- ``model``: the learned Pre-VLA verifier (a :class:`~prevla_ros.runtime.types.Scorer`)
  scores every valid candidate against the observation they answer, in one call. Among the
  candidates with P(safe) >= tau (tau: ``SchedulerConfig.threshold``, or the scorer's
  calibrated threshold when that is 0) the one with the highest predicted advantage is
  accepted (ties: the policy's order). When none passes, or nothing can be scored (no
  scorer, no observation, the scorer rejects its input), the robot gets a hold chunk and
  the decision says why: a verifier that cannot judge never lets a chunk through.

Modes: in ``execute`` mode :meth:`Scheduler.decide` picks the one chunk the robot executes.
In ``imagine`` mode :meth:`Scheduler.gate` picks which candidates the world model may roll
out: those with P(safe) >= the imagine threshold (``imagine_threshold``, or tau when 0),
highest predicted advantage first, at most ``imagine_max_candidates`` (passthrough: the
first valid ones in the policy's order). Nothing is executed and nothing is resampled.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from prevla_ros.runtime.chunks import chunk_problem, hold_chunk
from prevla_ros.runtime.decision import (  # noqa: F401 (re-exported: a leaf module, so
    OUTCOME_ACCEPTED, OUTCOME_FALLBACK, OUTCOME_HOLD, Decision)  # resampling needs no scheduler)
from prevla_ros.runtime.limits import summary
from prevla_ros.runtime.resampling import Resampling
from prevla_ros.runtime.scheduler_config import SchedulerConfig
from prevla_ros.runtime.types import GRIPPER_OPEN, ActionChunk, Observation, Scorer


class UnavailableScorer:
    """Stands where the verifier model failed to load (missing or corrupt checkpoint).

    The scheduler answers every decision with a hold that carries ``reason``: the robot
    holds, the node stays up and keeps saying why.
    """

    available = False
    threshold = float("nan")

    def __init__(self, reason: str, verifier_id: str = "model") -> None:
        self.reason = reason
        self.verifier_id = verifier_id

    def score(self, obs, candidates):
        raise RuntimeError(self.reason)


class Scheduler:
    """Validates, scores and selects candidate chunks for one observation at a time.

    Args:
        config: the decision step's configuration.
        scorer: the learned verifier (any :class:`Scorer`); used when ``config.verifier`` is
            "model", where its absence makes every decision a hold.
    """

    def __init__(self, config: SchedulerConfig, scorer: Scorer | None = None) -> None:
        self.config = config
        self.scorer = scorer
        self._sampler_thread: ThreadPoolExecutor | None = None  # overlap: one, kept

    @property
    def verifier_id(self) -> str:
        if self.config.verifier == "model" and self.scorer is not None:
            return str(getattr(self.scorer, "verifier_id", "model"))
        return self.config.verifier

    @property
    def threshold(self) -> float:
        """The tau in use: the configured one, else the scorer's calibrated one (NaN: none)."""
        if self.config.threshold > 0:
            return float(self.config.threshold)
        if self.scorer is None or not getattr(self.scorer, "available", True):
            return float("nan")
        return float(self.scorer.threshold)

    def decide(self, candidates: list[np.ndarray], stamp_ns: int = 0,
               last_gripper: float = GRIPPER_OPEN, source: str = "",
               observation: Observation | None = None) -> Decision:
        """Pick the chunk to publish among ``candidates`` (each expected (H, action_dim)).

        ``observation`` is the one the candidates answer; the model verifier needs it.
        """
        t0 = time.perf_counter()
        k = len(candidates)
        safety, advantage, rejected, valid = self._validate(candidates)
        t1 = time.perf_counter()
        if not valid:
            index, verify_ms = -1, 0.0
            reason = self._no_valid_reason(k, rejected)
        elif self.config.verifier == "passthrough":
            # The first valid candidate, exactly as the policy ranked them.
            index, reason = valid[0], "passthrough: first valid candidate"
            verify_ms = (time.perf_counter() - t1) * 1e3
        else:
            index, reason, verify_ms = self._select_by_model(
                candidates, valid, observation, stamp_ns, safety, advantage)
        chunk = self._chunk(candidates, index, source, stamp_ns, last_gripper)
        outcome = OUTCOME_ACCEPTED if index >= 0 else OUTCOME_HOLD
        total_ms = (time.perf_counter() - t0) * 1e3
        return Decision(chunk=chunk, accepted_index=index, outcome=outcome, reason=reason,
                        safety_probs=safety, advantages=advantage, samples_drawn=k, rounds=1,
                        verify_ms=verify_ms, total_ms=total_ms, rejected=rejected)

    def start(self, observation: Observation | None, k: int, temperature: float = 1.0,
              stamp_ns: int = 0, last_gripper: float = GRIPPER_OPEN,
              source: str = "") -> Resampling:
        """Begin an adaptive-resampling decision; drive it with the returned
        :class:`Resampling` (its clock, for ``max_ms``, starts now)."""
        # A copy: a model hot-swapped meanwhile never mixes two verifiers in one decision.
        return Resampling(Scheduler(self.config, self.scorer), observation, k, temperature,
                          stamp_ns, last_gripper, source)

    def run(self, sample, observation: Observation | None, k: int, temperature: float = 1.0,
            stamp_ns: int = 0, last_gripper: float = GRIPPER_OPEN, source: str = "") -> Decision:
        """Decide with adaptive resampling: ``sample(k, temperature) -> (k, H, A)`` candidates.

        Round r samples ``k`` candidates at ``temperature + r * temperature_step`` and decides
        on them (:meth:`decide`); the first accepted candidate ends the decision. Rounds stop
        when ``max_rounds``, ``max_samples`` or ``max_ms`` is reached; then the fallback: the
        highest-P(safe) candidate seen if it reaches ``fallback_min_p_safe``, else a hold.
        Passthrough (or a verifier that cannot score) never resamples: its answer is final.

        With ``overlap`` every ``sample`` call runs on one worker thread of this scheduler
        (calls never run concurrently, so ``sample`` need not be thread-safe) and, from the
        second round on, the next round is submitted before the current one is scored. A
        speculative round that is not needed finishes in the background and is dropped.
        """
        resampling = self.start(observation, k, temperature, stamp_ns, last_gripper, source)
        if not self.config.overlap:
            while (request := resampling.next_request()) is not None:
                resampling.add(list(np.asarray(sample(*request))))
            return resampling.finish()
        if self._sampler_thread is None:
            self._sampler_thread = ThreadPoolExecutor(1, thread_name_prefix="prevla-sampler")
        submit = self._sampler_thread.submit
        request = resampling.next_request()
        pending = submit(sample, *request) if request is not None else None
        while pending is not None:
            candidates = list(np.asarray(pending.result()))
            ahead = resampling.speculative_request()
            pending = submit(sample, *ahead) if ahead is not None else None
            resampling.add(candidates)
            if resampling.done:
                if pending is not None:  # not needed: left to finish, never waited for
                    resampling.drop(ahead[0])
                break
            if pending is None and (request := resampling.next_request()) is not None:
                pending = submit(sample, *request)
        return resampling.finish()

    @property
    def imagine_threshold(self) -> float:
        """The P(safe) a candidate needs to be imagined: ``imagine_threshold``, else tau."""
        t = self.config.imagine_threshold
        return float(t) if t > 0 else self.threshold

    def gate(self, candidates: list[np.ndarray], observation: Observation | None = None,
             stamp_ns: int = 0, last_gripper: float = GRIPPER_OPEN,
             source: str = "") -> tuple[list[int], Decision]:
        """Imagine mode: which candidates the world model may roll out (see module docstring).

        Returns (forwarded indices, best first, at most ``imagine_max_candidates``; the
        decision, whose ``accepted_index`` is the first forwarded one (-1 and a hold chunk
        when none is) and whose ``forwarded`` repeats the indices).
        """
        t0 = time.perf_counter()
        k, budget = len(candidates), self.config.imagine_max_candidates
        safety, advantage, rejected, valid = self._validate(candidates)
        verify_ms, forwarded = 0.0, []
        if not valid:
            reason = self._no_valid_reason(k, rejected)
        elif self.config.verifier == "passthrough":
            forwarded = valid[:budget]
            reason = f"passthrough: first {len(forwarded)} valid candidates"
        else:
            tau = self.imagine_threshold
            scored = self._score(candidates, valid, observation, stamp_ns, safety, advantage, tau)
            verify_ms = scored[1]
            if isinstance(scored[0], str):
                reason = scored[0]
            else:
                p_safe, adv = scored[0]
                safe = _passing(p_safe, tau)
                safe.sort(key=lambda j: (-adv[j] if np.isfinite(adv[j]) else np.inf, j))
                forwarded = [valid[j] for j in safe[:budget]]
                reason = (f"imagine: {len(forwarded)} of {len(safe)} safe / {len(valid)} scored "
                          f"forwarded (p_safe >= {tau:.3f}, budget {budget})")
                if not safe:
                    reason = (f"no candidate passed the imagine threshold {tau:.3f}; "
                              f"best p_safe={_best(p_safe):.3f}")
        index = forwarded[0] if forwarded else -1
        decision = Decision(chunk=self._chunk(candidates, index, source, stamp_ns, last_gripper),
                            accepted_index=index,
                            outcome=OUTCOME_ACCEPTED if forwarded else OUTCOME_HOLD,
                            reason=reason, safety_probs=safety, advantages=advantage,
                            samples_drawn=k, verify_ms=verify_ms,
                            total_ms=(time.perf_counter() - t0) * 1e3, rejected=rejected,
                            forwarded=list(forwarded))
        return list(forwarded), decision

    def _chunk(self, candidates: list[np.ndarray], index: int, source: str, stamp_ns: int,
               last_gripper: float) -> ActionChunk:
        """Candidate ``index`` as the chunk to publish, or a hold chunk when ``index`` is -1."""
        if index >= 0:
            return ActionChunk(np.asarray(candidates[index], dtype=np.float32), source, stamp_ns)
        return hold_chunk(self.config.hold_horizon, last_gripper, stamp_ns, self.config.action_dim)

    def _validate(self, candidates: list[np.ndarray]):
        """(safety, advantage, rejected, valid): invalid candidates get P(safe) 0 and a reason."""
        k = len(candidates)
        safety = np.full(k, np.nan, dtype=np.float32)
        advantage = np.full(k, np.nan, dtype=np.float32)
        rejected: dict[int, str] = {}
        valid: list[int] = []
        for i, actions in enumerate(candidates):
            problem = chunk_problem(actions, self.config.action_dim, self.config.max_abs_action)
            if problem is None:
                valid.append(i)
            else:
                rejected[i] = problem
                safety[i] = 0.0
        return safety, advantage, rejected, valid

    @staticmethod
    def _no_valid_reason(k: int, rejected: dict[int, str]) -> str:
        # one bounded line, however many candidates there were (K is bounded by limit_k too)
        return "no candidates" if k == 0 else "no valid candidate: " + summary(rejected)

    def _score(self, candidates: list[np.ndarray], valid: list[int],
               observation: Observation | None, stamp_ns: int, safety: np.ndarray,
               advantage: np.ndarray, tau: float):
        """Score the valid candidates (filling ``safety``/``advantage`` in place).

        Returns ((p_safe, advantage) of the valid ones, or why they could not be scored;
        scoring time in ms).
        """
        scorer = self.scorer
        if scorer is None:
            return "model verifier has no scorer (no verifier model loaded)", 0.0
        if not getattr(scorer, "available", True):
            return f"verifier unavailable: {getattr(scorer, 'reason', 'not loaded')}", 0.0
        if observation is None:
            return f"no observation for stamp {stamp_ns} to score the candidates against", 0.0
        if not 0.0 < tau < 1.0:
            return f"verifier threshold tau={tau} is not in (0, 1)", 0.0
        t = time.perf_counter()
        try:
            p_safe, adv = scorer.score(observation, np.stack(
                [np.asarray(candidates[i], dtype=np.float32) for i in valid]))
            p_safe = np.asarray(p_safe, dtype=np.float32)
            adv = np.asarray(adv, dtype=np.float32)
            if p_safe.shape != (len(valid),) or adv.shape != (len(valid),):
                raise ValueError(f"scorer returned shapes {p_safe.shape} and {adv.shape}, "
                                 f"expected ({len(valid)},) each")
        except (ValueError, RuntimeError) as exc:  # e.g. horizons differ, or the model's do not
            return (f"verifier could not score the candidates: {exc}",
                    (time.perf_counter() - t) * 1e3)
        safety[valid], advantage[valid] = p_safe, adv
        return (p_safe, adv), (time.perf_counter() - t) * 1e3

    def _select_by_model(self, candidates: list[np.ndarray], valid: list[int],
                         observation: Observation | None, stamp_ns: int, safety: np.ndarray,
                         advantage: np.ndarray) -> tuple[int, str, float]:
        """Score the valid candidates (filling ``safety``/``advantage`` in place) and pick one.

        Returns (accepted index or -1, reason, scoring time in ms).
        """
        tau = self.threshold
        scored, verify_ms = self._score(candidates, valid, observation, stamp_ns, safety,
                                        advantage, tau)
        if isinstance(scored, str):
            return -1, scored, verify_ms
        p_safe, adv = scored
        safe = _passing(p_safe, tau)
        if not safe:
            return -1, (f"no candidate passed the safety threshold tau={tau:.3f}; "
                        f"best p_safe={_best(p_safe):.3f}"), verify_ms
        if self.config.ranking == "policy_order":  # a pure safety gate: the policy's choice
            j = min(safe)
        else:  # highest advantage among the safe ones; NaN ranks last, ties keep the policy's order
            j = max(safe, key=lambda j: (adv[j] if np.isfinite(adv[j]) else -np.inf, -j))
            first = min(safe)
            if self.config.advantage_margin > 0 and not adv[j] - adv[first] >= self.config.advantage_margin:
                j = first  # not clearly better than the policy's own choice
        return valid[j], (f"model: #{valid[j]} p_safe={p_safe[j]:.3f} >= tau={tau:.3f}, "
                          f"advantage={adv[j]:.3f} (best of {len(safe)} safe / "
                          f"{len(valid)} scored)"), verify_ms


def _passing(p_safe: np.ndarray, tau: float) -> list[int]:
    """Positions whose P(safe) reaches ``tau`` (NaN never passes)."""
    return [j for j in range(len(p_safe)) if p_safe[j] >= tau]


def _best(p_safe: np.ndarray) -> float:
    """The highest finite P(safe) (NaN if none), for reasons."""
    return float(np.nanmax(p_safe)) if np.any(np.isfinite(p_safe)) else float("nan")
