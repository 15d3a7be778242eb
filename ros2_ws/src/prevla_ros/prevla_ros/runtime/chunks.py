"""Action-chunk helpers: validation, the safe hold chunk, and a broker that hands out one
action per control step (the openpi ``ActionChunkBroker`` idea, without the policy call)."""
from __future__ import annotations

import numpy as np

from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_OPEN, ActionChunk

HOLD_SOURCE = "hold"


def chunk_problem(actions: np.ndarray, action_dim: int = ACTION_DIM,
                  max_abs: float | None = None) -> str | None:
    """Say what is wrong with a candidate chunk, or ``None`` when it is usable.

    Args:
        actions: the chunk, expected (H, action_dim) with H >= 1.
        action_dim: the action dimension the robot accepts.
        max_abs: when set, reject chunks with any |value| above it (LIBERO: 1.0 after clipping
            is what the controller uses; far larger values signal a broken policy).
    """
    if not isinstance(actions, np.ndarray):
        return f"expected a numpy array, got {type(actions).__name__}"
    if actions.dtype.kind not in "fiu":  # np.isfinite below raises on object/str arrays
        return f"expected a real numeric array, got dtype {actions.dtype}"
    if actions.ndim != 2:
        return f"expected shape (H, {action_dim}), got {tuple(actions.shape)}"
    if actions.shape[0] < 1:
        return "empty chunk (horizon 0)"
    if actions.shape[1] != action_dim:
        return f"action dimension {actions.shape[1]} != expected {action_dim}"
    if not np.all(np.isfinite(actions)):
        bad = int(np.count_nonzero(~np.isfinite(actions)))
        return f"{bad} non-finite value(s) (NaN/inf)"
    if max_abs is not None and float(np.max(np.abs(actions))) > max_abs:
        return f"|action| {float(np.max(np.abs(actions))):.3g} exceeds limit {max_abs}"
    return None


def medoid_index(chunks: np.ndarray) -> int:
    """The training-free consensus pick: the candidate with the smallest summed Euclidean
    distance to the others (whole chunks, gripper included); ties go to the lowest index.

    Flow-policy samples scatter around the modes of the action distribution; the medoid is
    the sample nearest to where most of them agree, and unlike the mean chunk it is a real
    sample (a mean of 'close' and 'open' gripper commands is neither).
    """
    flat = np.asarray(chunks, np.float64).reshape(len(chunks), -1)
    if len(flat) == 0:
        raise ValueError("medoid_index: no candidates")
    dist = np.sqrt(((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1))
    return int(np.argmin(dist.sum(1)))


def hold_chunk(horizon: int, gripper: float = GRIPPER_OPEN, stamp_ns: int = 0,
               action_dim: int = ACTION_DIM) -> ActionChunk:
    """A chunk that keeps the arm still and the gripper as it was commanded last.

    OSC_POSE actions are deltas, so zeros hold position; the gripper channel is absolute
    (-1 open, +1 close) and must repeat the last command, or a held object would be dropped.
    """
    actions = np.zeros((max(1, horizon), action_dim), dtype=np.float32)
    actions[:, -1] = gripper
    return ActionChunk(actions=actions, source=HOLD_SOURCE, stamp_ns=stamp_ns)


class ActionChunkBroker:
    """Hands out the actions of the current chunk one control step at a time.

    Args:
        execute_steps: how many actions of each chunk to execute before asking for a new
            decision (receding horizon); 0 executes the whole chunk.
    """

    def __init__(self, execute_steps: int = 0) -> None:
        if execute_steps < 0:
            raise ValueError(f"execute_steps must be >= 0, got {execute_steps}")
        self.execute_steps = execute_steps
        self._chunk: ActionChunk | None = None
        self._index = 0
        self.last_gripper = GRIPPER_OPEN

    def load(self, chunk: ActionChunk) -> None:
        """Replace whatever is left of the current chunk."""
        self._chunk = chunk
        self._index = 0

    def clear(self) -> None:
        self._chunk = None
        self._index = 0

    @property
    def remaining(self) -> int:
        if self._chunk is None:
            return 0
        limit = self._chunk.horizon if self.execute_steps == 0 else min(
            self.execute_steps, self._chunk.horizon)
        return max(0, limit - self._index)

    def next_action(self) -> np.ndarray | None:
        """The next action, or ``None`` when the chunk is used up (time for a new decision)."""
        if self.remaining == 0:
            return None
        assert self._chunk is not None
        action = self._chunk.actions[self._index]
        self._index += 1
        self.last_gripper = float(action[-1])
        return action
