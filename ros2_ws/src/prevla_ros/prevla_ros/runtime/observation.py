"""Assemble one ``Observation`` from the parts that arrive on separate topics (ROS-free).

The simulator (or a robot driver) stamps every part of one observation with the same time.
Parts arrive in any order; an observation is complete when every required part for one
stamp is in. Newer stamps evict older incomplete ones, so a lost message never blocks
the pipeline for more than one observation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from prevla_ros.runtime.types import Observation, ObjectPose

PART_NAMES = ("agentview", "wrist", "joints", "eef", "objects")


@dataclass
class _Pending:
    parts: dict[str, Any]


class ObservationAssembler:
    """Collects observation parts by stamp and returns complete observations.

    Args:
        required: the parts that must arrive (subset of ``PART_NAMES``). "objects" is the
            privileged object-pose part: require it only for the scripted expert.
        max_pending: how many incomplete stamps to keep before evicting the oldest.
    """

    def __init__(self, required: tuple[str, ...] = ("agentview", "wrist", "joints", "eef"),
                 max_pending: int = 4) -> None:
        unknown = set(required) - set(PART_NAMES)
        if unknown:
            raise ValueError(f"unknown observation parts {sorted(unknown)}; known: {PART_NAMES}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.required = tuple(required)
        self.max_pending = max_pending
        self.instruction = ""
        self._pending: dict[int, _Pending] = {}
        self._last_emitted = -1

    def add(self, stamp_ns: int, part: str, value: Any) -> Observation | None:
        """Add one part; return the observation if this completed it."""
        if part not in PART_NAMES:
            raise ValueError(f"unknown observation part {part!r}; known: {PART_NAMES}")
        if stamp_ns <= self._last_emitted:
            return None  # late part of an observation already handed out (or older)
        pending = self._pending.setdefault(stamp_ns, _Pending(parts={}))
        pending.parts[part] = value
        # Completion first: evicting first could drop this very stamp (when it is the oldest)
        # and then fail to find it, although it is complete.
        if all(name in pending.parts for name in self.required):
            del self._pending[stamp_ns]
            for older in [s for s in self._pending if s < stamp_ns]:
                del self._pending[older]
            self._last_emitted = stamp_ns
            return self._build(stamp_ns, pending.parts)
        while len(self._pending) > self.max_pending:
            del self._pending[min(self._pending)]
        return None

    def is_pending(self, stamp_ns: int) -> bool:
        """True while some but not all parts of ``stamp_ns`` are in."""
        return stamp_ns in self._pending

    def _build(self, stamp_ns: int, parts: dict[str, Any]) -> Observation:
        joints = parts.get("joints", (np.zeros(7), np.zeros(2)))
        eef = parts.get("eef", (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])))
        images = {name: parts[name] for name in ("agentview", "wrist") if name in parts}
        objects: dict[str, ObjectPose] | None = parts.get("objects")
        return Observation(images=images, joint_positions=joints[0], gripper_qpos=joints[1],
                           eef_pos=eef[0], eef_quat_xyzw=eef[1], instruction=self.instruction,
                           stamp_ns=stamp_ns, objects=objects)


class RecentObservations:
    """The newest ``capacity`` complete observations, by stamp.

    A verifier scores a candidate set against the observation whose stamp the set carries;
    keeping a few lets a set that arrives after a newer observation still find its own.
    """

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._by_stamp: dict[int, Observation] = {}

    def add(self, obs: Observation) -> None:
        self._by_stamp[obs.stamp_ns] = obs
        while len(self._by_stamp) > self.capacity:
            del self._by_stamp[min(self._by_stamp)]

    def get(self, stamp_ns: int) -> Observation | None:
        return self._by_stamp.get(stamp_ns)

    def __len__(self) -> int:
        return len(self._by_stamp)


class ObservationIntake:
    """Observation parts in, complete observations by stamp out; malformed stamps remembered.

    What every node that matches messages to the observation they answer needs (the verifier
    matches candidate sets, the world model chunks): an assembler, the recent complete
    observations, why a stamp's observation was not stored, and the newest stamp seen.
    """

    def __init__(self, required: tuple[str, ...] = ("agentview", "wrist", "joints", "eef"),
                 keep: int = 8) -> None:
        self.assembler = ObservationAssembler(required, keep)
        self.observations = RecentObservations(keep)
        self.malformed: dict[int, str] = {}  # stamp -> why its observation was not stored
        self.newest_part = -1  # newest stamp of any part received
        self.keep = keep

    def add(self, stamp_ns: int, part: str, convert, assemble: bool = True) -> tuple[Any, Observation | None]:
        """Convert and add one part: ``(value, the observation it completed or None)``.

        Raises:
            ValueError: ``convert()`` failed; the stamp is remembered as malformed (the
                message says why).
        """
        self.newest_part = max(self.newest_part, stamp_ns)
        try:
            value = convert()
        except ValueError as exc:
            self.malformed[stamp_ns] = f"malformed {part}: {exc}"
            for old in sorted(self.malformed)[:-self.keep]:
                del self.malformed[old]
            raise ValueError(f"observation {stamp_ns}: {self.malformed[stamp_ns]} (not stored)") from exc
        obs = self.assembler.add(stamp_ns, part, value) if assemble else None
        if obs is not None:
            self.observations.add(obs)
        return value, obs

    def get(self, stamp_ns: int) -> Observation | None:
        return self.observations.get(stamp_ns)

    def coming(self, stamp_ns: int) -> bool:
        """Parts of this stamp's observation are in, or none yet of a stamp this new."""
        return (self.observations.get(stamp_ns) is None and stamp_ns not in self.malformed
                and (self.assembler.is_pending(stamp_ns) or stamp_ns > self.newest_part))
