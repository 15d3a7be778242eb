"""The decision settings (ROS-free): how the scheduler gates, ranks, resamples and holds.

Declared once here, with their help and the defaults the closed-loop evidence supports
(the verifier as a gate in the policy's order; resampled rounds at the same temperature:
docs/results.md). ``verifier_node`` and ``prevla eval`` compose this config whole
(:func:`~prevla_ros.runtime.settings.section`); its settings keep their names there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prevla_ros.runtime.settings import check, setting
from prevla_ros.runtime.types import ACTION_DIM

MODES = ("execute", "imagine")
VERIFIERS = ("passthrough", "model")
RANKINGS = ("advantage", "policy_order")


def _unit_or_zero(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0.0 <= value < 1.0)


def _nonneg(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


@dataclass
class SchedulerConfig:
    """Configuration of the decision step (:class:`~prevla_ros.runtime.scheduler.Scheduler`)."""

    verifier: str = setting(
        "verifier: " + ", ".join(VERIFIERS) + " (model = the learned Pre-VLA verifier in "
        "`checkpoint`: the safe candidate with the highest advantage; passthrough = accept the "
        "first valid candidate: the policy-alone baseline)", "passthrough")
    mode: str = setting("execute: gate before the robot moves; imagine: gate before the world "
                        "model rolls a chunk out", "execute")
    threshold: float = setting("accept threshold tau on P(safe) (verifier model); 0 = the "
                               "checkpoint's calibrated threshold, else in (0, 1)", 0.0)
    action_dim: int = setting("action dimension the robot accepts; other candidates are "
                              "rejected", ACTION_DIM)
    max_abs_action: float = setting("reject candidates with any absolute action value above "
                                    "this (a broken policy)", 10.0)
    hold_horizon: int = setting("length of the hold chunk published when no candidate is "
                                "usable", 8)
    ranking: str = setting("verifier model: among the candidates that pass tau, advantage = the "
                           "highest predicted advantage; policy_order = the policy's first (the "
                           "verifier as a pure safety gate)", "policy_order")
    advantage_margin: float = setting("ranking advantage: the best candidate replaces the "
                                      "policy's first passing one only if its predicted "
                                      "advantage is higher by at least this (0 = always the "
                                      "best)", 0.0)
    max_rounds: int = setting("sampling rounds per decision, the policy's set included "
                              "(1 = no resampling)", 3)
    max_samples: int = setting("candidates per decision over all rounds", 24)
    max_ms: float = setting("time budget of a decision in ms (0 = none); no round starts after "
                            "it and no answer is awaited past it", 0.0)
    temperature_step: float = setting("each resampling round asks for a temperature this much "
                                      "higher than the set before", 0.0)
    fallback_min_p_safe: float = setting(
        "resample: when the budget is spent (or resampling fails) and nothing passed tau, the "
        "safest candidate is executed if its P(safe) is at least this, else the robot holds",
        0.5)
    overlap: bool = setting("resample: once a set has been rejected, request the next set "
                            "before scoring the current one (preemptive; an unneeded set is "
                            "dropped)", False)
    imagine_threshold: float = setting("mode imagine: P(safe) a candidate needs to be forwarded "
                                       "to the world model on imagine_candidates; 0 = tau (the "
                                       "threshold in use), else in (0, 1)", 0.0)
    imagine_max_candidates: int = setting("mode imagine: at most this many candidates forwarded "
                                          "per observation, highest predicted advantage first "
                                          "(passthrough: the first valid ones)", 2)

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(self.verifier in VERIFIERS, n, "verifier",
              f"must be one of {VERIFIERS}, got {self.verifier!r}")
        check(self.mode in MODES, n, "mode", f"must be one of {MODES}, got {self.mode!r}")
        check(_unit_or_zero(self.threshold), n, "threshold",
              f"must be 0 (the scorer's calibrated threshold) or in (0, 1), got {self.threshold!r}")
        check(self.action_dim >= 1, n, "action_dim", f"must be >= 1, got {self.action_dim}")
        check(_nonneg(self.max_abs_action) and self.max_abs_action > 0, n, "max_abs_action",
              f"must be > 0, got {self.max_abs_action}")
        check(self.hold_horizon >= 1, n, "hold_horizon", f"must be >= 1, got {self.hold_horizon}")
        check(self.ranking in RANKINGS, n, "ranking",
              f"must be one of {RANKINGS}, got {self.ranking!r}")
        check(_nonneg(self.advantage_margin), n, "advantage_margin",
              f"must be >= 0, got {self.advantage_margin!r}")
        check(self.max_rounds >= 1, n, "max_rounds", f"must be >= 1, got {self.max_rounds}")
        check(self.max_samples >= 1, n, "max_samples", f"must be >= 1, got {self.max_samples}")
        check(_nonneg(self.max_ms), n, "max_ms",
              f"must be >= 0 (0 = no time budget), got {self.max_ms}")
        check(_nonneg(self.temperature_step), n, "temperature_step",
              f"must be >= 0, got {self.temperature_step}")
        check(_nonneg(self.fallback_min_p_safe) and self.fallback_min_p_safe <= 1, n,
              "fallback_min_p_safe", f"must be in [0, 1], got {self.fallback_min_p_safe}")
        check(isinstance(self.overlap, bool), n, "overlap",
              f"must be true or false, got {self.overlap!r}")
        check(_unit_or_zero(self.imagine_threshold), n, "imagine_threshold",
              f"must be 0 (tau) or in (0, 1), got {self.imagine_threshold!r}")
        check(self.imagine_max_candidates >= 1, n, "imagine_max_candidates",
              f"must be >= 1, got {self.imagine_max_candidates}")
