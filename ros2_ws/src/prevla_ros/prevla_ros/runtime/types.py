"""Typed, ROS-free contracts shared by the runtime, the simulator adapter and the nodes.

Everything that crosses a node boundary is one of these dataclasses on the Python side;
``prevla_ros.conversions`` turns them into ROS messages and back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

#: LIBERO's OSC_POSE action: delta position (3), delta axis-angle rotation (3), gripper (1).
ACTION_DIM = 7
#: Gripper command convention in LIBERO / robosuite: -1 opens, +1 closes.
GRIPPER_OPEN = -1.0
GRIPPER_CLOSE = 1.0
#: Camera names used across prevla (upright images, rgb8).
CAMERAS = ("agentview", "wrist")


@dataclass
class ObjectPose:
    """Pose of one simulated object (privileged information: for the scripted expert only)."""

    pos: np.ndarray  # (3,) metres, world frame
    quat_xyzw: np.ndarray  # (4,)


@dataclass
class Observation:
    """One synchronized observation of the robot, taken at a decision point.

    Attributes:
        images: camera name (see ``CAMERAS``) -> upright HxWx3 uint8 RGB image.
        joint_positions: (7,) arm joint angles, radians.
        gripper_qpos: (2,) finger joint positions, metres.
        eef_pos: (3,) end-effector position, world frame.
        eef_quat_xyzw: (4,) end-effector orientation.
        instruction: the language instruction of the current task.
        stamp_ns: time the observation was taken; responses carry it back.
        objects: privileged object poses (name -> pose); ``None`` for a real robot.
    """

    images: dict[str, np.ndarray]
    joint_positions: np.ndarray
    gripper_qpos: np.ndarray
    eef_pos: np.ndarray
    eef_quat_xyzw: np.ndarray
    instruction: str = ""
    stamp_ns: int = 0
    objects: dict[str, ObjectPose] | None = None


@dataclass
class ActionChunk:
    """H consecutive actions proposed (or approved) for one decision.

    Attributes:
        actions: (H, D) float32 array, row = one control step.
        source: who produced it ("scripted_expert", "hold", a policy id, ...).
        stamp_ns: the stamp of the observation it answers.
    """

    actions: np.ndarray
    source: str = ""
    stamp_ns: int = 0

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])


@dataclass
class CandidateSet:
    """K candidate chunks sampled for one observation, with per-candidate sampling metadata."""

    chunks: list[ActionChunk]
    temperatures: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    policy_id: str = ""
    stamp_ns: int = 0
    round: int = 0  # resampling round that produced this set (0 = first)


@runtime_checkable
class Policy(Protocol):
    """The one contract every policy meets (scripted expert, learned VLA, remote VLA)."""

    policy_id: str

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        """Return a (k, H, ACTION_DIM) float32 array of candidate chunks for ``obs``.

        ``temperature`` scales sampling randomness; 0 must be deterministic.
        """
        ...

    def reset(self) -> None:
        """Forget per-episode state (called when a new episode starts)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """The contract of a learned verifier: score K candidate chunks of one observation.

    ``prevla_models.verifier_scorer.VerifierScorer`` meets it. An optional ``verifier_id``
    attribute names the scorer in verdicts.
    """

    @property
    def threshold(self) -> float:
        """Calibrated accept threshold tau on P(safe), in (0, 1)."""
        ...

    def score(self, obs: Observation, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_safe, advantage), two (K,) float32 arrays, for ``candidates`` (K, H, ACTION_DIM).

        Raises ``ValueError`` for candidates or an observation it cannot score.
        """
        ...
