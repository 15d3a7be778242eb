"""Chunk validation, the hold chunk and the one-action-per-step broker."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.chunks import HOLD_SOURCE, ActionChunkBroker, chunk_problem, hold_chunk
from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_CLOSE, GRIPPER_OPEN, ActionChunk


def _chunk(h: int = 5, d: int = ACTION_DIM, source: str = "test") -> ActionChunk:
    # Row i is filled with i / 10 and its gripper alternates, so every step is distinguishable.
    actions = np.repeat((np.arange(h, dtype=np.float32) / 10)[:, None], d, axis=1)
    actions[:, -1] = [GRIPPER_CLOSE if i % 2 else GRIPPER_OPEN for i in range(h)]
    return ActionChunk(actions=actions, source=source, stamp_ns=42)


def test_valid_chunk_has_no_problem():
    assert chunk_problem(np.zeros((8, ACTION_DIM), dtype=np.float32)) is None
    assert chunk_problem(np.ones((1, 3)), action_dim=3, max_abs=1.0) is None  # limit inclusive
    assert chunk_problem(np.full((2, 7), 1e6)) is None  # no limit given: magnitude unchecked


@pytest.mark.parametrize("actions, kwargs, expected", [
    ([[0.0] * 7], {}, "expected a numpy array, got list"),
    (np.array([["a"] * 7], dtype=object), {}, "real numeric array"),
    (np.zeros(7), {}, "expected shape (H, 7), got (7,)"),
    (np.zeros((2, 8, 7)), {}, "expected shape (H, 7), got (2, 8, 7)"),
    (np.zeros((0, 7)), {}, "empty chunk"),
    (np.zeros((4, 6)), {}, "action dimension 6 != expected 7"),
    (np.zeros((4, 7)), {"action_dim": 4}, "action dimension 7 != expected 4"),
    (np.array([[0, 0, np.nan, 0, 0, np.inf, 0]], dtype=np.float32), {}, "2 non-finite"),
    (np.full((2, 7), -1.5), {"max_abs": 1.0}, "exceeds limit 1.0"),
])
def test_chunk_problem_names_each_rejection(actions, kwargs, expected):
    problem = chunk_problem(actions, **kwargs)
    assert problem is not None and expected in problem


def test_hold_chunk_is_still_and_keeps_gripper():
    chunk = hold_chunk(6, gripper=GRIPPER_CLOSE, stamp_ns=7)
    assert chunk.actions.shape == (6, ACTION_DIM) and chunk.actions.dtype == np.float32
    assert np.all(chunk.actions[:, :-1] == 0.0)
    assert np.all(chunk.actions[:, -1] == GRIPPER_CLOSE)
    assert chunk.source == HOLD_SOURCE and chunk.stamp_ns == 7
    assert chunk_problem(chunk.actions) is None


def test_hold_chunk_defaults_and_degenerate_horizon():
    chunk = hold_chunk(0, action_dim=4)
    assert chunk.actions.shape == (1, 4)  # never an empty (invalid) chunk
    assert chunk.actions[0, -1] == GRIPPER_OPEN


def test_broker_whole_chunk_with_execute_steps_0():
    broker = ActionChunkBroker(execute_steps=0)
    assert broker.remaining == 0 and broker.next_action() is None
    chunk = _chunk(5)
    broker.load(chunk)
    got = []
    while (action := broker.next_action()) is not None:
        got.append(action)
    assert len(got) == 5
    np.testing.assert_array_equal(np.stack(got), chunk.actions)
    assert broker.remaining == 0 and broker.next_action() is None


def test_broker_receding_horizon_with_execute_steps_3():
    broker = ActionChunkBroker(execute_steps=3)
    chunk = _chunk(5)
    broker.load(chunk)
    assert broker.remaining == 3
    for i in range(3):
        np.testing.assert_array_equal(broker.next_action(), chunk.actions[i])
    assert broker.remaining == 0 and broker.next_action() is None
    broker.load(_chunk(2))  # shorter than execute_steps: the whole chunk
    assert broker.remaining == 2


def test_broker_reload_mid_chunk_restarts_from_the_new_chunk():
    broker = ActionChunkBroker()
    broker.load(_chunk(5))
    broker.next_action()
    broker.next_action()
    fresh = ActionChunk(actions=np.full((4, ACTION_DIM), 0.5, dtype=np.float32))
    broker.load(fresh)
    assert broker.remaining == 4
    np.testing.assert_array_equal(broker.next_action(), fresh.actions[0])
    broker.clear()
    assert broker.remaining == 0 and broker.next_action() is None


def test_broker_tracks_last_gripper():
    broker = ActionChunkBroker()
    assert broker.last_gripper == GRIPPER_OPEN
    broker.load(_chunk(4))
    broker.next_action()
    assert broker.last_gripper == GRIPPER_OPEN
    broker.next_action()
    assert broker.last_gripper == GRIPPER_CLOSE
    broker.clear()  # clearing the chunk keeps the last command: a hold must repeat it
    assert broker.last_gripper == GRIPPER_CLOSE
    assert isinstance(broker.last_gripper, float)


def test_broker_rejects_negative_execute_steps():
    with pytest.raises(ValueError, match="execute_steps"):
        ActionChunkBroker(execute_steps=-1)
