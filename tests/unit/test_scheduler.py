"""The decision step: validation of every candidate, passthrough selection, hold fallback."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.chunks import HOLD_SOURCE
from prevla_ros.runtime.scheduler import (OUTCOME_ACCEPTED, OUTCOME_HOLD, Scheduler,
                                          SchedulerConfig)
from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_CLOSE


def _valid(value: float, h: int = 4) -> np.ndarray:
    return np.full((h, ACTION_DIM), value, dtype=np.float32)


def _nan() -> np.ndarray:
    bad = _valid(0.1)
    bad[1, 2] = np.nan
    return bad


def test_passthrough_picks_first_valid_candidate():
    scheduler = Scheduler(SchedulerConfig())
    candidates = [_nan(), np.zeros((4, 3), dtype=np.float32), _valid(0.2), _valid(0.3)]
    d = scheduler.decide(candidates, stamp_ns=99, source="expert")
    assert d.outcome == OUTCOME_ACCEPTED and d.accepted_index == 2
    np.testing.assert_array_equal(d.chunk.actions, candidates[2])
    assert d.chunk.actions.dtype == np.float32
    assert d.chunk.source == "expert" and d.chunk.stamp_ns == 99
    assert d.samples_drawn == 4 and d.rounds == 1
    assert sorted(d.rejected) == [0, 1]
    assert "passthrough" in d.reason
    assert d.total_ms >= d.verify_ms >= 0.0


def test_per_candidate_scores_zero_for_rejected_nan_for_unscored():
    d = Scheduler(SchedulerConfig()).decide([_valid(0.1), _nan(), _valid(50.0), _valid(0.2)])
    assert d.accepted_index == 0
    assert d.safety_probs.shape == (4,) and d.advantages.shape == (4,)
    assert d.safety_probs[1] == 0.0 and d.safety_probs[2] == 0.0  # NaN values, |a| > 10
    assert np.isnan(d.safety_probs[0]) and np.isnan(d.safety_probs[3])  # passthrough: unscored
    assert np.all(np.isnan(d.advantages))
    assert "non-finite" in d.rejected[1] and "exceeds limit" in d.rejected[2]


def test_float64_candidate_is_accepted_as_float32():
    d = Scheduler(SchedulerConfig()).decide([np.full((3, ACTION_DIM), 0.25)])
    assert d.outcome == OUTCOME_ACCEPTED and d.chunk.actions.dtype == np.float32


def test_all_invalid_holds_with_last_gripper_and_names_problems():
    config = SchedulerConfig(hold_horizon=5)
    candidates = [_nan(), np.zeros((4, 6), dtype=np.float32), np.zeros(28, dtype=np.float32)]
    d = Scheduler(config).decide(candidates, stamp_ns=7, last_gripper=GRIPPER_CLOSE)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.chunk.source == HOLD_SOURCE and d.chunk.stamp_ns == 7
    assert d.chunk.actions.shape == (5, ACTION_DIM)
    assert np.all(d.chunk.actions[:, :-1] == 0.0)
    assert np.all(d.chunk.actions[:, -1] == GRIPPER_CLOSE)
    np.testing.assert_array_equal(d.safety_probs, np.zeros(3, dtype=np.float32))
    assert "#0: 1 non-finite" in d.reason
    assert "#1: action dimension 6 != expected 7" in d.reason
    assert "#2: expected shape (H, 7), got (28,)" in d.reason


def test_no_candidates_holds():
    d = Scheduler(SchedulerConfig(hold_horizon=3)).decide([], last_gripper=GRIPPER_CLOSE)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.reason == "no candidates"
    assert d.samples_drawn == 0 and d.safety_probs.shape == (0,)
    assert d.chunk.actions.shape == (3, ACTION_DIM)
    assert np.all(d.chunk.actions[:, -1] == GRIPPER_CLOSE)


def test_action_dim_and_limit_come_from_config():
    scheduler = Scheduler(SchedulerConfig(action_dim=3, max_abs_action=0.5))
    d = scheduler.decide([np.full((2, 3), 0.6), np.full((2, 7), 0.1), np.full((2, 3), 0.4)])
    assert d.accepted_index == 2 and sorted(d.rejected) == [0, 1]
    hold = scheduler.decide([np.full((2, 7), 0.1)])
    assert hold.chunk.actions.shape == (SchedulerConfig().hold_horizon, 3)
    assert scheduler.verifier_id == "passthrough"


@pytest.mark.parametrize("field, value", [
    ("mode", "dream"), ("verifier", "oracle"), ("action_dim", 0),
    ("max_abs_action", 0.0), ("max_abs_action", float("nan")), ("hold_horizon", 0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SchedulerConfig\.{field}"):
        SchedulerConfig(**{field: value})


def test_config_accepts_both_modes():
    assert SchedulerConfig(mode="imagine").mode == "imagine"
    assert SchedulerConfig(mode="execute").mode == "execute"
