"""The decision step between a policy's candidates and the robot (ROS-free).

Every candidate is validated first (shape, action dimension, finite values, magnitude);
invalid ones are never executable whatever the verifier says. Then the configured
verifier scores the valid ones and the scheduler picks one, or falls back to a hold chunk.

Verifiers available now:
- ``passthrough``: no scoring; accept the first valid candidate. This is the *policy
  alone* baseline the evaluation keeps, not a placeholder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from prevla_ros.runtime.chunks import chunk_problem, hold_chunk
from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_OPEN, ActionChunk

MODES = ("execute", "imagine")
VERIFIERS = ("passthrough",)
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
    """

    mode: str = "execute"
    verifier: str = "passthrough"
    action_dim: int = ACTION_DIM
    max_abs_action: float = 10.0
    hold_horizon: int = 8

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


@dataclass
class Decision:
    """What the scheduler decided for one observation.

    ``safety_probs``/``advantages`` have one entry per candidate considered: 0.0 / NaN for a
    rejected (invalid) candidate, NaN / NaN where the verifier does not score (passthrough).
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


class Scheduler:
    """Validates, scores and selects candidate chunks for one observation at a time."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    @property
    def verifier_id(self) -> str:
        return self.config.verifier

    def decide(self, candidates: list[np.ndarray], stamp_ns: int = 0,
               last_gripper: float = GRIPPER_OPEN, source: str = "") -> Decision:
        """Pick the chunk to publish among ``candidates`` (each expected (H, action_dim))."""
        t0 = time.perf_counter()
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
        t1 = time.perf_counter()
        # Passthrough: the first valid candidate, exactly as the policy ranked them.
        if valid:
            index = valid[0]
            chunk = ActionChunk(np.asarray(candidates[index], dtype=np.float32), source, stamp_ns)
            outcome, reason = OUTCOME_ACCEPTED, f"{self.config.verifier}: first valid candidate"
        else:
            index = -1
            chunk = hold_chunk(self.config.hold_horizon, last_gripper, stamp_ns,
                               self.config.action_dim)
            outcome = OUTCOME_HOLD
            reason = ("no candidates" if k == 0 else "no valid candidate: " + "; ".join(
                f"#{i}: {why}" for i, why in sorted(rejected.items())))
        t2 = time.perf_counter()
        return Decision(chunk=chunk, accepted_index=index, outcome=outcome, reason=reason,
                        safety_probs=safety, advantages=advantage, samples_drawn=k, rounds=1,
                        verify_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3, rejected=rejected)
