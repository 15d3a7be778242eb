"""Approved action chunks -> a real robot's Cartesian velocity commands (ROS-free).

A LIBERO action ``a = [dp (3), dr (3), g]`` is robosuite's OSC_POSE command for one control step
of ``dt = 1 / control_rate_hz``: each of the six motion values is clipped to the controller's
input range [-1, 1] and scaled to a displacement of at most ``pos_scale_m`` metres (position,
robot base axes) or ``rot_scale_rad`` radians (axis-angle rotation, same axes) during that step
(robosuite's ``output_max``: 0.05 m, 0.5 rad). The gripper value is absolute: > 0 closes,
< 0 opens, 0 leaves it as it is (robosuite moves the fingers by its sign). As a twist:

    v* = clip(dp, -1, 1) * pos_scale_m / dt          (m/s)
    w* = clip(dr, -1, 1) * rot_scale_rad / dt        (rad/s; exact for a constant w over dt)

Limits, by **norm** (linear and angular separately; scaling the whole vector keeps the
commanded direction, where clipping each axis would bend the path), every control period:

    velocity:      v* <- v* * min(1, v_max / |v*|)
    acceleration:  v_k = v_{k-1} + d * min(1, a_max * dt / |d|),   d = v* - v_{k-1}

Both ``v_{k-1}`` and the clipped ``v*`` lie in the ball |v| <= v_max, so ``v_k`` (between them)
does too: no published command exceeds either limit, across chunk boundaries as well, since
the ramp always starts from the last *published* command.

**Hold** (target zero twist, gripper unchanged) follows the same ramp: from any speed within
the limits the command reaches exactly zero within ``ceil(v_max / (a_max * dt))`` periods.
The controller holds when the executing chunk runs out before the next one arrives (*late*)
or when what arrived meanwhile was *stale* (older than ``max_chunk_age_s``, or not newer than
the last accepted chunk: never executed, it does not cut the executing chunk short either),
and before the first chunk (*idle*). A verifier's hold chunk (zeros) ramps down the same way,
as an ordinary chunk.

**Emergency stop.** A chunk that is out of range — wrong shape, NaN/inf, or any raw value
beyond ``hard_max_abs_action`` (well above the controller's [-1, 1]) — latches the e-stop: the
twist is zero at once (no ramp: it is a stop; the robot's controller decelerates within its
own limits), the gripper keeps its last command, every further chunk is ignored until
:meth:`ChunkController.reset`, and chunks planned before the reset are stale after it.

Map: :class:`ControllerConfig` (the settings) · :class:`Command` (one period's output) ·
:class:`Submitted` (what became of a chunk) · :class:`ChunkController` (the state machine:
``submit`` a chunk, ``step`` once per control period, ``reset`` the e-stop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prevla_ros.runtime.settings import check, setting
from prevla_ros.runtime.types import ACTION_DIM

#: robosuite's OSC input range: each motion value is clipped to [-OSC_INPUT_MAX, OSC_INPUT_MAX].
OSC_INPUT_MAX = 1.0

#: A chunk's ``source`` is kept to this many characters (it goes into logs and diagnostics).
MAX_SOURCE_CHARS = 64

IDLE, EXECUTING, HOLDING, ESTOP = "idle", "executing", "holding", "estop"
ACCEPTED, STALE, ESTOPPED, IGNORED = "accepted", "stale", "estop", "ignored"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


@dataclass
class ControllerConfig:
    """How approved chunks become velocity commands: rate, scaling, limits, staleness,
    e-stop bound and gripper positions (composed into ``controller_adapter_node``'s config)."""

    control_rate_hz: float = setting(
        "commands published per second, one action of the chunk per period; must be the rate "
        "the policy's actions were made for (LIBERO: 20 Hz), since an action is a displacement "
        "per control step", 20.0)
    pos_scale_m: float = setting(
        "metres moved during one control step by a unit position action (robosuite OSC_POSE "
        "output_max, LIBERO: 0.05); the linear velocity is clip(action, -1, 1) * pos_scale_m * "
        "control_rate_hz", 0.05)
    rot_scale_rad: float = setting(
        "radians turned during one control step by a unit rotation action (axis-angle; "
        "robosuite OSC_POSE output_max, LIBERO: 0.5)", 0.5)
    max_linear_velocity: float = setting(
        "linear velocity limit in m/s, on the norm of the linear part of the twist (the "
        "direction is kept); a unit position action at the defaults asks for 1 m/s", 0.25)
    max_angular_velocity: float = setting(
        "angular velocity limit in rad/s, on the norm of the angular part of the twist", 1.0)
    max_linear_acceleration: float = setting(
        "linear acceleration limit in m/s^2, on the norm of the change between consecutive "
        "commands (also how fast a hold decelerates)", 2.0)
    max_angular_acceleration: float = setting(
        "angular acceleration limit in rad/s^2, on the norm of the change between consecutive "
        "commands", 8.0)
    hard_max_abs_action: float = setting(
        "emergency stop: a chunk with any raw action value beyond this (the controller's range "
        "is [-1, 1]), a NaN/inf or a wrong shape latches the e-stop (zero twist, chunks ignored "
        "until ~/reset_estop)", 3.0)
    max_chunk_age_s: float = setting(
        "a chunk whose stamp (its observation's time) is older than this on arrival is stale: "
        "not executed, the robot holds when the current chunk runs out (0 = no age check)", 1.0)
    skip_elapsed_actions: bool = setting(
        "start a chunk at the action due now (action i is due at stamp + i/control_rate_hz) "
        "instead of its first action; a chunk whose every action is past is stale", False)
    gripper_open_position: float = setting(
        "gripper command published for an open action (< 0); e.g. a finger joint position", 0.04)
    gripper_closed_position: float = setting(
        "gripper command published for a close action (> 0); an action of 0 keeps the last one",
        0.0)

    def __post_init__(self) -> None:
        n = type(self).__name__
        for name in ("control_rate_hz", "pos_scale_m", "rot_scale_rad", "max_linear_velocity",
                     "max_angular_velocity", "max_linear_acceleration",
                     "max_angular_acceleration"):
            value = getattr(self, name)
            check(_positive(value), n, name, f"must be > 0, got {value!r}")
        check(self.control_rate_hz <= 1000, n, "control_rate_hz",
              f"must be <= 1000, got {self.control_rate_hz!r}")
        check(_positive(self.hard_max_abs_action) and self.hard_max_abs_action >= OSC_INPUT_MAX,
              n, "hard_max_abs_action",
              f"must be >= {OSC_INPUT_MAX} (the controller's input range), "
              f"got {self.hard_max_abs_action!r}")
        age = self.max_chunk_age_s
        check(isinstance(age, (int, float)) and math.isfinite(age) and age >= 0, n,
              "max_chunk_age_s", f"must be >= 0 (0 = no age check), got {age!r}")
        check(isinstance(self.skip_elapsed_actions, bool), n, "skip_elapsed_actions",
              f"must be true or false, got {self.skip_elapsed_actions!r}")
        for name in ("gripper_open_position", "gripper_closed_position"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value), n, name,
                  f"must be a finite number, got {value!r}")

    @property
    def dt(self) -> float:
        """The control period in seconds."""
        return 1.0 / self.control_rate_hz

    def hold_periods(self) -> int:
        """Periods a hold takes at most from the velocity limits to zero (both parts)."""
        return max(math.ceil(self.max_linear_velocity / (self.max_linear_acceleration * self.dt)),
                   math.ceil(self.max_angular_velocity /
                             (self.max_angular_acceleration * self.dt)))


@dataclass(frozen=True)
class Command:
    """One control period's output.

    Attributes:
        linear: (3,) m/s, robot base axes.
        angular: (3,) rad/s, robot base axes.
        gripper: the gripper position to command, None until a chunk has set one.
        state: idle, executing, holding or estop.
        action_index: the executed action's index in its chunk, -1 when none was.
    """

    linear: np.ndarray
    angular: np.ndarray
    gripper: float | None
    state: str
    action_index: int = -1


@dataclass(frozen=True)
class Submitted:
    """What became of a submitted chunk: ``outcome`` accepted, stale, estop (it latched the
    e-stop) or ignored (one was latched already), and why."""

    outcome: str
    reason: str = ""


def clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    """``v`` scaled down to norm ``limit`` if longer (direction kept)."""
    norm = float(np.linalg.norm(v))
    return v * (limit / norm) if norm > limit else v


def ramp(previous: np.ndarray, target: np.ndarray, max_step: float) -> np.ndarray:
    """One acceleration-limited period from ``previous`` toward ``target``: the change is at
    most ``max_step`` in norm; the target itself when it is within reach (so a hold ends at
    exactly zero; a relative 1e-12 absorbs rounding, so a speed of exactly n steps ends in n)."""
    delta = target - previous
    norm = float(np.linalg.norm(delta))
    if norm <= max_step * (1 + 1e-12):
        return target.copy()
    return previous + delta * (max_step / norm)


def chunk_problem(data: np.ndarray, horizon: int, action_dim: int,
                  hard_max: float) -> str | None:
    """Why a chunk's flat ``data`` of declared ``horizon`` x ``action_dim`` must e-stop the
    robot (wrong shape, non-finite, beyond ``hard_max``), or None."""
    if horizon < 1 or action_dim != ACTION_DIM or data.ndim != 1 \
            or data.size != horizon * action_dim:
        return (f"wrong shape: {data.size} values declared {horizon}x{action_dim}, expected "
                f"Hx{ACTION_DIM} with H >= 1")
    if not np.all(np.isfinite(data)):
        return f"{int(np.count_nonzero(~np.isfinite(data)))} non-finite value(s) (NaN/inf)"
    peak = float(np.max(np.abs(data)))
    if peak > hard_max:
        return f"|action| {peak:.4g} beyond hard_max_abs_action {hard_max:g}"
    return None


@dataclass
class _Chunk:
    actions: np.ndarray  # (H, 7) float64
    source: str
    index: int = 0
    started: bool = False  # its first action has been executed


class ChunkController:
    """Steps approved chunks into velocity commands within the limits; holds; latches e-stops.

    Call :meth:`submit` for every chunk that arrives, with the clock (``now_ns``; 0 = a clock
    that has not started, e.g. sim time before /clock, which checks no chunk's age), and
    :meth:`step` once per control period (``config.dt``). A newer accepted chunk replaces
    the rest of the executing one; the ramp runs on across the switch.

    Args:
        config: the settings.
        stamp_jump_back_s: a chunk older than the newest accepted one by more than this means
            the clock jumped back (a simulator restart, a replay looping): it is accepted and the
            ordering check restarts from it, so a jump never stalls the stream.
    """

    def __init__(self, config: ControllerConfig, stamp_jump_back_s: float = 5.0) -> None:
        self.config = config
        self.jump_back_ns = int(stamp_jump_back_s * 1e9)
        self.linear = np.zeros(3)
        self.angular = np.zeros(3)
        self.gripper: float | None = None
        self.estop_reason: str | None = None
        self.hold_reason = "waiting for the first chunk"
        self.counters = {"chunks_received": 0, "chunks_accepted": 0, "chunks_executed": 0,
                         "actions_executed": 0,
                         "holds": 0, "late": 0, "stale": 0, "estops": 0,
                         "ignored_while_estopped": 0, "clock_jumps": 0}
        self._chunk: _Chunk | None = None
        self._newest_ns: int | None = None  # stamp of the newest accepted chunk (or reset)
        self._started = False  # a chunk has been executed: holds are holds, not idling
        self._was_executing = False  # the last period executed an action
        self._last_stale: str | None = None  # the stale chunk since the last accepted one

    # --- input ------------------------------------------------------------------------------
    def submit(self, data, horizon: int, action_dim: int, stamp_ns: int, now_ns: int,
               source: str = "") -> Submitted:
        """Take a chunk (flat ``data``, declared ``horizon`` x ``action_dim``) answering the
        observation stamped ``stamp_ns``."""
        self.counters["chunks_received"] += 1
        source = str(source)[:MAX_SOURCE_CHARS]  # it goes into log lines and diagnostics
        if self.estop_reason is not None:
            self.counters["ignored_while_estopped"] += 1
            return Submitted(IGNORED, f"e-stop latched ({self.estop_reason})")
        data = np.asarray(data, dtype=np.float64)
        problem = chunk_problem(data, int(horizon), int(action_dim),
                                self.config.hard_max_abs_action)
        if problem is not None:
            self.estop(f"chunk from {source or '?'} stamped {stamp_ns}: {problem}")
            return Submitted(ESTOPPED, problem)
        stale = self._stale(stamp_ns, now_ns, int(horizon))
        if stale is not None:
            self.counters["stale"] += 1
            self._last_stale = f"stale chunk: {stale}"
            if not self._was_executing:
                self.hold_reason = self._last_stale
            return Submitted(STALE, stale)
        if self._newest_ns is not None and stamp_ns <= self._newest_ns:
            self.counters["clock_jumps"] += 1  # far older: the clock jumped back (see _stale)
        actions = data.reshape(int(horizon), ACTION_DIM)
        self._chunk = _Chunk(actions, source, self._first_index(stamp_ns, now_ns))
        self._newest_ns = stamp_ns
        self._last_stale = None
        self.counters["chunks_accepted"] += 1
        return Submitted(ACCEPTED)

    def _stale(self, stamp_ns: int, now_ns: int, horizon: int) -> str | None:
        c = self.config
        age_s = (now_ns - stamp_ns) / 1e9
        if now_ns > 0 and c.max_chunk_age_s > 0 and age_s > c.max_chunk_age_s:
            return f"{age_s:.3f} s old > max_chunk_age_s {c.max_chunk_age_s:g}"
        newest = self._newest_ns  # older by more than jump_back_ns: a new timeline, accepted
        if newest is not None and stamp_ns <= newest and newest - stamp_ns <= self.jump_back_ns:
            return f"stamp {stamp_ns} is not newer than the last accepted chunk's {newest}"
        if self._first_index(stamp_ns, now_ns) >= horizon:
            return f"all {horizon} actions are past due ({age_s:.3f} s old)"
        return None

    def _first_index(self, stamp_ns: int, now_ns: int) -> int:
        if not self.config.skip_elapsed_actions or now_ns <= 0 or now_ns <= stamp_ns:
            return 0
        return int((now_ns - stamp_ns) / 1e9 * self.config.control_rate_hz)

    # --- output -----------------------------------------------------------------------------
    def step(self) -> Command:
        """The command for this control period (one period of ``config.dt`` per call)."""
        c = self.config
        if self.estop_reason is not None:  # estop() zeroed the twist; nothing moves it since
            return Command(np.zeros(3), np.zeros(3), self.gripper, ESTOP)
        index = -1
        if self._remaining() > 0:
            assert self._chunk is not None
            index = self._chunk.index
            action = self._chunk.actions[index]
            if not self._chunk.started:
                self._chunk.started = True
                self.counters["chunks_executed"] += 1
            self._chunk.index += 1
            motion = np.clip(action[:6], -OSC_INPUT_MAX, OSC_INPUT_MAX)
            target_v = clip_norm(motion[:3] * c.pos_scale_m * c.control_rate_hz,
                                 c.max_linear_velocity)
            target_w = clip_norm(motion[3:] * c.rot_scale_rad * c.control_rate_hz,
                                 c.max_angular_velocity)
            if action[6] > 0:
                self.gripper = c.gripper_closed_position
            elif action[6] < 0:
                self.gripper = c.gripper_open_position
            self.counters["actions_executed"] += 1
            self._started = self._was_executing = True
        else:
            if self._was_executing:  # the chunk ran out with no usable successor: hold
                self.counters["holds"] += 1
                if self._last_stale is None:
                    self.counters["late"] += 1
                self.hold_reason = self._last_stale or "next chunk late: the current one ran out"
            self._was_executing = False
            target_v, target_w = np.zeros(3), np.zeros(3)
        self.linear = clip_norm(ramp(self.linear, target_v, c.max_linear_acceleration * c.dt),
                                c.max_linear_velocity)
        self.angular = clip_norm(ramp(self.angular, target_w,
                                      c.max_angular_acceleration * c.dt),
                                 c.max_angular_velocity)
        return Command(self.linear.copy(), self.angular.copy(), self.gripper, self.state, index)

    def _remaining(self) -> int:
        return 0 if self._chunk is None else max(0, len(self._chunk.actions) - self._chunk.index)

    # --- e-stop -------------------------------------------------------------------------------
    def estop(self, reason: str) -> None:
        """Latch the e-stop (zero twist from the next period, chunks ignored until reset)."""
        if self.estop_reason is None:
            self.counters["estops"] += 1
        self.estop_reason = reason
        self._chunk = None
        self._was_executing = False
        self.linear, self.angular = np.zeros(3), np.zeros(3)

    def reset(self, now_ns: int = 0) -> tuple[bool, str]:
        """Clear a latched e-stop; chunks stamped before ``now_ns`` stay stale. Returns
        (success, message) the way std_srvs/Trigger answers."""
        if self.estop_reason is None:
            return True, "no e-stop latched"
        reason, self.estop_reason = self.estop_reason, None
        if now_ns > 0:
            self._newest_ns = max(now_ns, self._newest_ns or 0)
        self.hold_reason = "e-stop reset: waiting for a new chunk"
        return True, f"e-stop cleared (was: {reason})"

    # --- state --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """idle, executing, holding or estop, as of the last period."""
        if self.estop_reason is not None:
            return ESTOP
        if self._was_executing:
            return EXECUTING
        return HOLDING if self._started else IDLE

    def values(self) -> dict[str, object]:
        """Diagnostics values: state, counters, the command's speeds, the e-stop's reason."""
        return {"state": self.state, **self.counters,
                "linear_speed": round(float(np.linalg.norm(self.linear)), 4),
                "angular_speed": round(float(np.linalg.norm(self.angular)), 4),
                "gripper": "" if self.gripper is None else self.gripper,
                "chunk_source": "" if self._chunk is None else self._chunk.source,
                "hold_reason": self.hold_reason, "estop_reason": self.estop_reason or ""}
