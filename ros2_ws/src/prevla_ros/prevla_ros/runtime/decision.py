"""What one decision step returns: the :class:`Decision` and its outcomes (ROS-free, a leaf).

Its own module so that the scheduler (one round) and :mod:`~prevla_ros.runtime.resampling`
(several rounds) both build decisions without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prevla_ros.runtime.types import ActionChunk

OUTCOME_ACCEPTED = "accepted"
OUTCOME_FALLBACK = "fallback_best"
OUTCOME_HOLD = "hold"


@dataclass
class Decision:
    """What the scheduler decided for one observation.

    ``safety_probs``/``advantages`` have one entry per candidate considered: 0.0 / NaN for a
    rejected (invalid) candidate, the model's P(safe) / advantage for a scored one, NaN / NaN
    where nothing was scored (passthrough, or the model verifier could not score). After
    resampling (:meth:`Scheduler.run`, :class:`Resampling`) they, ``accepted_index`` and
    ``rejected`` span every candidate of every round, in the order they were drawn.
    ``accepted_index`` names the candidate whose chunk is published: the accepted one, or for
    ``fallback_best`` the safest one executed; -1 only for a hold.
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
    #: preemptive resampling (``overlap``): candidates sampled ahead and then not needed.
    dropped_samples: int = 0

    def scored(self) -> np.ndarray:
        """Indices of the candidates the verifier scored (valid ones with a finite P(safe))."""
        valid = np.ones(len(self.safety_probs), dtype=bool)
        valid[list(self.rejected)] = False
        return np.where(valid & np.isfinite(self.safety_probs))[0]
