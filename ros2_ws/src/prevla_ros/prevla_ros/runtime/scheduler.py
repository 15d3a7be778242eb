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

import math
import time
from dataclasses import dataclass, field

import numpy as np

from prevla_ros.runtime.chunks import chunk_problem, hold_chunk
from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_OPEN, ActionChunk, Observation, Scorer

MODES = ("execute", "imagine")
VERIFIERS = ("passthrough", "model")
RANKINGS = ("advantage", "policy_order")
OUTCOME_ACCEPTED = "accepted"
OUTCOME_FALLBACK = "fallback_best"
OUTCOME_HOLD = "hold"


@dataclass
class SchedulerConfig:
    """Configuration of the decision step.

    Attributes:
        mode: "execute" gates chunks before the robot moves; "imagine" before world-model rollout.
        verifier: which verifier scores candidates (see module docstring).
        action_dim: action dimension the robot accepts; other candidates are rejected.
        max_abs_action: candidates with any |value| above this are rejected (broken policy).
        hold_horizon: length of the hold chunk published when nothing is usable.
        threshold: accept threshold tau on P(safe) of the model verifier; 0 uses the
            scorer's calibrated threshold.
        max_rounds: sampling rounds per decision in :meth:`Scheduler.run` (1 = no resampling).
        max_samples: candidates per decision over all rounds (the sample budget).
        max_ms: wall-clock budget of a decision in ms (0 = none); no new round starts after it.
        temperature_step: each resampling round samples at a temperature this much higher.
        fallback_min_p_safe: when the budget is spent and nothing passed tau, the scored
            candidate with the highest P(safe) is executed if its P(safe) is at least this
            (outcome ``fallback_best``); otherwise the robot holds.
        ranking: among the candidates that pass tau, "advantage" takes the highest predicted
            advantage, "policy_order" the first in the policy's order (the verifier as a
            pure safety gate).
        imagine_threshold: imagine mode (:meth:`Scheduler.gate`): the P(safe) a candidate needs
            to be rolled out by the world model; 0 uses tau (``threshold``, or calibrated).
        imagine_max_candidates: imagine mode: at most this many candidates forwarded per
            observation (the imagination budget).
    """

    mode: str = "execute"
    verifier: str = "passthrough"
    action_dim: int = ACTION_DIM
    max_abs_action: float = 10.0
    hold_horizon: int = 8
    threshold: float = 0.0
    max_rounds: int = 3
    max_samples: int = 24
    max_ms: float = 0.0
    temperature_step: float = 0.5
    fallback_min_p_safe: float = 0.5
    ranking: str = "advantage"
    imagine_threshold: float = 0.0
    imagine_max_candidates: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"SchedulerConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.verifier not in VERIFIERS:
            raise ValueError(
                f"SchedulerConfig.verifier must be one of {VERIFIERS}, got {self.verifier!r}")
        if self.action_dim < 1:
            raise ValueError(f"SchedulerConfig.action_dim must be >= 1, got {self.action_dim}")
        if not self.max_abs_action > 0:
            raise ValueError(
                f"SchedulerConfig.max_abs_action must be > 0, got {self.max_abs_action}")
        if self.hold_horizon < 1:
            raise ValueError(f"SchedulerConfig.hold_horizon must be >= 1, got {self.hold_horizon}")
        for name, zero in (("threshold", "the scorer's calibrated threshold"), ("imagine_threshold", "tau")):
            t = getattr(self, name)
            if (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                    or not 0.0 <= t < 1.0):
                raise ValueError(f"SchedulerConfig.{name} must be 0 ({zero}) or in (0, 1), got {t!r}")
        for name, ok, text in (("ranking", self.ranking in RANKINGS, f"one of {RANKINGS}"),
                               ("max_rounds", self.max_rounds >= 1, ">= 1"),
                               ("max_samples", self.max_samples >= 1, ">= 1"),
                               ("max_ms", self.max_ms >= 0, ">= 0 (0 = no time budget)"),
                               ("temperature_step", self.temperature_step >= 0, ">= 0"),
                               ("fallback_min_p_safe", 0 <= self.fallback_min_p_safe <= 1, "in [0, 1]"),
                               ("imagine_max_candidates", self.imagine_max_candidates >= 1,
                                ">= 1")):
            if not ok:
                raise ValueError(f"SchedulerConfig.{name} must be {text}, got {getattr(self, name)!r}")


@dataclass
class Decision:
    """What the scheduler decided for one observation.

    ``safety_probs``/``advantages`` have one entry per candidate considered: 0.0 / NaN for a
    rejected (invalid) candidate, the model's P(safe) / advantage for a scored one, NaN / NaN
    where nothing was scored (passthrough, or the model verifier could not score). After
    resampling (:meth:`Scheduler.run`, :class:`Resampling`) they, ``accepted_index`` and
    ``rejected`` span every candidate of every round, in the order they were drawn.
    ``verify_ms`` is the time the verifier took (the scoring call for ``model``).
    """

    chunk: ActionChunk
    accepted_index: int
    outcome: str
    reason: str
    safety_probs: np.ndarray
    advantages: np.ndarray
    samples_drawn: int
    rounds: int = 1
    verify_ms: float = 0.0
    total_ms: float = 0.0
    rejected: dict[int, str] = field(default_factory=dict)
    #: imagine mode (:meth:`Scheduler.gate`): the candidates forwarded to the world model,
    #: in rollout order (best first); empty in execute mode.
    forwarded: list[int] = field(default_factory=list)

    def scored(self) -> np.ndarray:
        """Indices of the candidates the verifier scored (valid ones with a finite P(safe))."""
        valid = np.ones(len(self.safety_probs), dtype=bool)
        valid[list(self.rejected)] = False
        return np.where(valid & np.isfinite(self.safety_probs))[0]


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
        return Resampling(self, observation, k, temperature, stamp_ns, last_gripper, source)

    def run(self, sample, observation: Observation | None, k: int, temperature: float = 1.0,
            stamp_ns: int = 0, last_gripper: float = GRIPPER_OPEN, source: str = "") -> Decision:
        """Decide with adaptive resampling: ``sample(k, temperature) -> (k, H, A)`` candidates.

        Round r samples ``k`` candidates at ``temperature + r * temperature_step`` and decides
        on them (:meth:`decide`); the first accepted candidate ends the decision. Rounds stop
        when ``max_rounds``, ``max_samples`` or ``max_ms`` is reached; then the fallback: the
        highest-P(safe) candidate seen if it reaches ``fallback_min_p_safe``, else a hold.
        Passthrough (or a verifier that cannot score) never resamples: its answer is final.
        """
        resampling = self.start(observation, k, temperature, stamp_ns, last_gripper, source)
        while (request := resampling.next_request()) is not None:
            resampling.add(list(np.asarray(sample(*request))))
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
        return ("no candidates" if k == 0 else "no valid candidate: " + "; ".join(
            f"#{i}: {why}" for i, why in sorted(rejected.items())))

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
        return valid[j], (f"model: #{valid[j]} p_safe={p_safe[j]:.3f} >= tau={tau:.3f}, "
                          f"advantage={adv[j]:.3f} (best of {len(safe)} safe / "
                          f"{len(valid)} scored)"), verify_ms


def _passing(p_safe: np.ndarray, tau: float) -> list[int]:
    """Positions whose P(safe) reaches ``tau`` (NaN never passes)."""
    return [j for j in range(len(p_safe)) if p_safe[j] >= tau]


def _best(p_safe: np.ndarray) -> float:
    """The highest finite P(safe) (NaN if none), for reasons."""
    return float(np.nanmax(p_safe)) if np.any(np.isfinite(p_safe)) else float("nan")


class Resampling:
    """One adaptive-resampling decision as a state machine (see :meth:`Scheduler.run`).

    Whoever samples drives it: ask :meth:`next_request` what to sample (``(k, temperature)``,
    or ``None`` when the decision is made), hand the candidates to :meth:`add`, then take
    :meth:`finish`. :meth:`Scheduler.run` drives it with direct policy calls, ``verifier_node``
    with asynchronous service calls; :meth:`stop` ends it early (a sampler that failed) with
    the budget's fallback. Decisions use the scheduler's verifier as it was at the start, so
    a model hot-swapped meanwhile never mixes two verifiers' scores in one decision.
    """

    def __init__(self, scheduler: Scheduler, observation: Observation | None, k: int,
                 temperature: float, stamp_ns: int, last_gripper: float, source: str) -> None:
        self._scheduler = Scheduler(scheduler.config, scheduler.scorer)
        self._t0 = time.perf_counter()
        self._args = (stamp_ns, last_gripper, source, observation)
        self.k, self.temperature = k, temperature
        self.samples = self.rounds = 0
        self.verify_ms = 0.0
        self.decision: Decision | None = None  # the latest round's
        self._history: list[Decision] = []  # every round's, in order
        self._best: tuple[float, np.ndarray] | None = None
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
        self._history.append(decision)
        self.verify_ms += decision.verify_ms
        scored = decision.scored()  # invalid candidates never count, not even as a fallback
        if cfg.verifier != "model" or decision.outcome == OUTCOME_ACCEPTED or not len(scored):
            self._done = True  # accepted, passthrough, or nothing scorable: no point resampling
            return
        i = int(scored[np.argmax(decision.safety_probs[scored])])
        if self._best is None or decision.safety_probs[i] > self._best[0]:
            self._best = (float(decision.safety_probs[i]),
                          np.asarray(candidates[i], dtype=np.float32))
        if (self.rounds >= cfg.max_rounds or self.samples >= cfg.max_samples
                or (cfg.max_ms > 0 and self.elapsed_ms() >= cfg.max_ms)):
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
        latest round's hold; ``head`` starts the reason."""
        self._done = True
        decision, best = self.decision, self._best
        stamp_ns, _, source, _ = self._args
        if best is not None and best[0] >= self._scheduler.config.fallback_min_p_safe:
            decision.chunk = ActionChunk(best[1], source, stamp_ns)
            decision.outcome, decision.accepted_index = OUTCOME_FALLBACK, -1
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
        if decision.accepted_index >= 0:
            decision.accepted_index += offset - len(decision.safety_probs)
        decision.safety_probs = np.concatenate([d.safety_probs for d in self._history])
        decision.advantages = np.concatenate([d.advantages for d in self._history])
        decision.rejected = rejected
        if decision.outcome == OUTCOME_ACCEPTED and self.rounds > 1:
            decision.reason = (f"resampled {self.rounds} rounds ({self.samples} samples): "
                               + decision.reason)
        decision.samples_drawn, decision.rounds = self.samples, self.rounds
        decision.verify_ms = self.verify_ms
        decision.total_ms = self.elapsed_ms()
        return decision
