"""Assemble one ``Observation`` from the parts that arrive on separate topics (ROS-free).

The simulator (or a robot driver) stamps every part of one observation with the same time.
Parts arrive in any order; an observation is complete when every required part for one
stamp is in. Newer stamps evict older incomplete ones, so a lost message never blocks
the pipeline for more than one observation.

Stamps going backwards: a part older than the newest observation handed out is a late part
and ignored, unless it is older by more than ``jump_back_s`` — then the clock jumped back
(a simulator restarted, a replay looped) and the monotonic check restarts from that stamp
(counted in ``time_jumps``), so a stream that restarts its clock is served, not dropped.
:meth:`ObservationAssembler.restart` does the same on a new episode. Stamps from the future
never get here: the node's :class:`~prevla_ros.runtime.limits.InputGuard` rejects them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from prevla_ros.runtime.types import Observation, ObjectPose

PART_NAMES = ("agentview", "wrist", "joints", "eef", "objects")
#: Longest wait for the rest of an observation that a message answers (topics are not
#: ordered across each other): then the message is handled without it.
OBSERVATION_WAIT_S = 1.0
#: Default of ``InputLimits.stamp_jump_back_s``: a stamp this much older than the newest is a
#: clock that jumped back, not a late part.
JUMP_BACK_S = 5.0
T = TypeVar("T")


@dataclass
class _Pending:
    parts: dict[str, Any]


class ObservationAssembler:
    """Collects observation parts by stamp and returns complete observations.

    Args:
        required: the parts that must arrive (subset of ``PART_NAMES``). "objects" is the
            privileged object-pose part: require it only for the scripted expert.
        max_pending: how many incomplete stamps to keep before evicting the oldest.
        jump_back_s: a part older than the newest observation handed out by more than this
            restarts the monotonic check (a clock jump); older by less it is a late part.
    """

    def __init__(self, required: tuple[str, ...] = ("agentview", "wrist", "joints", "eef"),
                 max_pending: int = 4, jump_back_s: float = JUMP_BACK_S) -> None:
        unknown = set(required) - set(PART_NAMES)
        if unknown:
            raise ValueError(f"unknown observation parts {sorted(unknown)}; known: {PART_NAMES}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.required = tuple(required)
        self.max_pending = max_pending
        self.instruction = ""
        self.jump_back_ns = int(jump_back_s * 1e9)
        self.time_jumps = 0
        self._pending: dict[int, _Pending] = {}
        self._last_emitted = -1

    def restart(self) -> None:
        """Forget the newest stamp handed out (a new episode): any stamp is taken next."""
        self._last_emitted = -1

    def add(self, stamp_ns: int, part: str, value: Any) -> Observation | None:
        """Add one part; return the observation if this completed it."""
        if part not in PART_NAMES:
            raise ValueError(f"unknown observation part {part!r}; known: {PART_NAMES}")
        if stamp_ns <= self._last_emitted:
            if self._last_emitted - stamp_ns <= self.jump_back_ns:
                return None  # late part of an observation already handed out (or older)
            self.time_jumps += 1  # the clock jumped back: take stamps from this one on
            self.restart()
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
    The one evicted is the oldest by stamp. An observation older than the newest kept by more
    than ``jump_back_s`` means the clock jumped back: the observations of the old timeline
    (newer than it by more than ``jump_back_s``) go, or they would outrank every new one.
    """

    def __init__(self, capacity: int = 8, jump_back_s: float = JUMP_BACK_S) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.jump_back_ns = int(jump_back_s * 1e9)
        self._by_stamp: dict[int, Observation] = {}

    def add(self, obs: Observation) -> None:
        for stamp in [s for s in self._by_stamp if s - obs.stamp_ns > self.jump_back_ns]:
            del self._by_stamp[stamp]  # the timeline before a clock jump back
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
                 keep: int = 8, jump_back_s: float = JUMP_BACK_S) -> None:
        self.assembler = ObservationAssembler(required, keep, jump_back_s)
        self.observations = RecentObservations(keep, jump_back_s)
        self.malformed: dict[int, str] = {}  # stamp -> why its observation was not stored
        self.newest_part = -1  # newest stamp of any part received
        self.keep = keep

    def add(self, stamp_ns: int, part: str, convert, assemble: bool = True) -> tuple[Any, Observation | None]:
        """Convert and add one part: ``(value, the observation it completed or None)``.

        Raises:
            ValueError: ``convert()`` failed; the stamp is remembered as malformed (the
                message says why).
        """
        if stamp_ns > self.newest_part or \
                self.newest_part - stamp_ns > self.assembler.jump_back_ns:
            self.newest_part = stamp_ns  # newer, or the clock jumped back
        try:
            value = convert()
        except ValueError as exc:
            self.malformed.pop(stamp_ns, None)
            self.malformed[stamp_ns] = f"malformed {part}: {exc}"
            while len(self.malformed) > self.keep:  # the first reported go first
                del self.malformed[next(iter(self.malformed))]
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


class ObservationWait(Generic[T]):
    """Messages that answer an observation (by its stamp) held until that observation is in.

    Topics are not ordered across each other: a candidate set or chunk may arrive before
    (or between) the parts of the observation it answers. :meth:`offer` releases a message
    at once when its observation is stored, or can no longer come (malformed, older than
    the parts received); else it is held until its observation completes, a newer one does
    (its own can then never complete: the assembler drops older stamps), a part of its stamp
    turns out malformed, or ``wait_s`` has passed. Released messages go to
    ``release(stamp_ns, message)``, which looks the observation up (None: it never came).
    Observation parts go in through :meth:`add`.

    Args:
        intake: assembles the parts and keeps the recent observations.
        release: handles one message, with or without its observation.
        report: one line for a malformed part (it is not stored).
        wait_s: the longest hold (call :meth:`expire` a few times per ``wait_s``).
        in_order: a new message releases every held one first (verifier_node: verdicts keep
            the order of their candidate sets).
        assemble: False: parts are only converted (checked), never assembled.
        clock: seconds, monotonic.
    """

    def __init__(self, intake: ObservationIntake, release: Callable[[int, T], None],
                 report: Callable[[str], None], wait_s: float = OBSERVATION_WAIT_S,
                 in_order: bool = False, assemble: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.intake, self.wait_s, self.in_order, self.assemble = intake, wait_s, in_order, assemble
        self._release, self._report, self._clock = release, report, clock
        self._held: list[tuple[int, T, float]] = []  # (stamp, message, arrival), in arrival order
        self.observations = 0  # complete observations stored

    def __len__(self) -> int:
        return len(self._held)

    def add(self, stamp_ns: int, part: str, convert: Callable[[], Any]) -> Observation | None:
        """Convert and add one observation part (:meth:`ObservationIntake.add`); release the
        messages it decides: on a completed observation its own and older ones, on a
        malformed part (reported) those of its stamp. Returns the completed observation."""
        try:
            _, obs = self.intake.add(stamp_ns, part, convert, self.assemble)
        except ValueError as exc:
            self._report(str(exc))
            self._release_where(lambda stamp, arrival: stamp == stamp_ns)
            return None
        if obs is not None:
            self.observations += 1
            self._release_where(lambda stamp, arrival: stamp <= obs.stamp_ns)
        return obs

    def offer(self, stamp_ns: int, message: T, wait: bool = True) -> None:
        """Release ``message`` now or hold it for its observation (``wait=False``: now)."""
        if self.in_order:
            self._release_where(lambda stamp, arrival: True)
        if wait and self.intake.coming(stamp_ns):
            self._held.append((stamp_ns, message, self._clock()))
        else:
            self._release(stamp_ns, message)

    def expire(self) -> None:
        """Release the messages held longer than ``wait_s``."""
        now = self._clock()
        self._release_where(lambda stamp, arrival: now - arrival > self.wait_s)

    def _release_where(self, due: Callable[[int, float], bool]) -> None:
        held, released = [], []
        for h in self._held:
            (released if due(h[0], h[2]) else held).append(h)
        self._held = held  # before releasing: ``release`` may offer again
        for stamp, message, _ in released:
            self._release(stamp, message)
