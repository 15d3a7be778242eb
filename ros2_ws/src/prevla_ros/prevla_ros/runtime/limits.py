"""Bounded inputs: what a node accepts from its peers, checked before any conversion (ROS-free).

Every input a node takes has a declared bound (:class:`InputLimits`, composed into each node's
config): candidates per set (K), actions per chunk, image side, instruction length, messages
per second per topic, and how far a stamp may lie in the future. :class:`InputGuard` checks a
message against them *before* it is converted or iterated, reading only its sizes (``len`` of
its sequences, its declared dimensions), so a rejected message costs O(1) and an accepted one
O(limit), whatever a peer sent. A rejected message is dropped, counted per reason and reported
by at most one log line per ``LOG_EVERY_S`` (that line says how many more were rejected since).

The size checks read messages by their field names only (a ROS message or any stand-in with
the same fields): this module imports no ROS.

Stamps. A message stamped more than ``max_future_stamp_s`` ahead of the node's clock is
rejected here: it is never stored and never advances the newest stamp, so it cannot make the
real stream look old. (A clock that reads 0, sim time before the first /clock, checks
nothing.) Stamps going backwards are the observation assembler's rule
(:class:`~prevla_ros.runtime.observation.ObservationAssembler`, ``stamp_jump_back_s``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from prevla_ros.runtime.settings import check, setting

#: Largest action dimension of any chunk (LIBERO's is 7): bounds a chunk's data with the
#: chunk length limit.
MAX_ACTION_DIM = 64
#: Joints in a joint_states message / objects in a sim_state message at most.
MAX_JOINTS = 64
MAX_OBJECTS = 256
#: Bytes per pixel an image may carry (rgb8 is 3; row padding allowed up to this).
MAX_BYTES_PER_PIXEL = 4
#: At most one log line per this many seconds for rejected messages.
LOG_EVERY_S = 5.0
#: The stamps a builtin_interfaces/Time can carry (int32 seconds, 0 <= nanosec < 1e9). A peer's
#: Time may declare nanosec >= 1e9, and so a stamp past MAX_STAMP_NS that no answer can carry.
MIN_STAMP_NS = -2**31 * 10**9
MAX_STAMP_NS = (2**31 - 1) * 10**9 + 999_999_999

OVERSIZE, RATE, STAMP = "oversize", "rate", "stamp"


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _nonneg(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


@dataclass
class InputLimits:
    """The bounds of a node's inputs (composed into every node config; a node hides the ones
    it has no input for)."""

    limit_k: int = setting("candidate chunks per set at most (candidates / imagine_candidates "
                           "messages, sample_candidates requests and answers); a larger set is "
                           "rejected whole, before any candidate is read", 64)
    limit_chunk_length: int = setting("actions per chunk at most (and at most "
                                      f"{MAX_ACTION_DIM} values per action); a message with a "
                                      "longer chunk is rejected whole", 64)
    limit_image_side: int = setting("camera images wider or taller than this many pixels are "
                                    "rejected before they are decoded", 1024)
    limit_instruction_chars: int = setting("instructions longer than this are rejected; the "
                                           "last accepted instruction stays in use", 1024)
    limit_rate_hz: float = setting("messages per second per input topic at most (bursts of "
                                   "one second's worth pass); above it messages are dropped and "
                                   "counted (0 = no limit)", 100.0)
    max_future_stamp_s: float = setting("a message stamped more than this many seconds ahead "
                                        "of the node's clock is rejected: never stored, it "
                                        "cannot make the real stream look old", 1.0)
    stamp_jump_back_s: float = setting("an observation part older than the newest observation "
                                       "by less than this is late and ignored; older by more, "
                                       "the clock jumped back (sim restart, replay) and stamps "
                                       "are taken from it on", 5.0)

    def __post_init__(self) -> None:
        n = type(self).__name__
        for name in ("limit_k", "limit_chunk_length", "limit_image_side",
                     "limit_instruction_chars"):
            value = getattr(self, name)
            check(_positive_int(value), n, name, f"must be an integer >= 1, got {value!r}")
        check(_nonneg(self.limit_rate_hz), n, "limit_rate_hz",
              f"must be >= 0 (0 = no limit), got {self.limit_rate_hz!r}")
        check(_nonneg(self.max_future_stamp_s), n, "max_future_stamp_s",
              f"must be >= 0, got {self.max_future_stamp_s!r}")
        check(_nonneg(self.stamp_jump_back_s) and self.stamp_jump_back_s > 0, n,
              "stamp_jump_back_s", f"must be > 0, got {self.stamp_jump_back_s!r}")


# --- size checks: sizes only, never the data ----------------------------------------------
def chunk_problem(msg, limits: InputLimits) -> str | None:
    """An ActionChunk (``horizon``, ``action_dim``, ``data``) over the limits, or None.
    (Whether its data fits its shape is the conversion's and the scheduler's business.)"""
    h, d, n = int(msg.horizon), int(msg.action_dim), len(msg.data)
    if h > limits.limit_chunk_length:
        return f"chunk of {h} actions > limit_chunk_length {limits.limit_chunk_length}"
    if d > MAX_ACTION_DIM:
        return f"action_dim {d} > {MAX_ACTION_DIM}"
    if n > limits.limit_chunk_length * MAX_ACTION_DIM:
        return (f"chunk data of {n} values > limit_chunk_length*{MAX_ACTION_DIM} = "
                f"{limits.limit_chunk_length * MAX_ACTION_DIM}")
    return None


def candidate_set_problem(msg, limits: InputLimits) -> str | None:
    """A CandidateSet (``candidates``, ``temperatures``, ``seeds``) over the limits, or None:
    O(1) when K is over the limit, O(K) chunk-size checks otherwise."""
    k = len(msg.candidates)
    if k > limits.limit_k:
        return f"{k} candidates > limit_k {limits.limit_k}"
    if len(msg.temperatures) > limits.limit_k or len(msg.seeds) > limits.limit_k:
        return (f"{len(msg.temperatures)} temperatures / {len(msg.seeds)} seeds > limit_k "
                f"{limits.limit_k}")
    for i, c in enumerate(msg.candidates):
        problem = chunk_problem(c, limits)
        if problem:
            return f"candidate #{i}: {problem}"
    return None


def k_problem(k: int, limits: InputLimits) -> str | None:
    """A request for ``k`` candidates over ``limit_k``, or None."""
    return f"k={k} > limit_k {limits.limit_k}" if k > limits.limit_k else None


def image_problem(msg, limits: InputLimits) -> str | None:
    """An Image (``height``, ``width``, ``data``) over the limits, or None."""
    h, w, side = int(msg.height), int(msg.width), limits.limit_image_side
    if h > side or w > side:
        return f"image {h}x{w} > limit_image_side {side}"
    if len(msg.data) > h * w * MAX_BYTES_PER_PIXEL:
        return f"image data of {len(msg.data)} bytes for {h}x{w} pixels"
    return None


def _chars_problem(what: str, n: int, limits: InputLimits) -> str | None:
    """``what`` of ``n`` characters over ``limit_instruction_chars``, or None."""
    if n > limits.limit_instruction_chars:
        return f"{what} of {n} characters > limit_instruction_chars {limits.limit_instruction_chars}"
    return None


def text_problem(text: str, limits: InputLimits) -> str | None:
    """An instruction over ``limit_instruction_chars``, or None."""
    return _chars_problem("instruction", len(text), limits)


def status_problem(msg, limits: InputLimits) -> str | None:
    """An EpisodeStatus whose texts are over ``limit_instruction_chars``, or None."""
    n = max(len(msg.suite), len(msg.state), len(msg.instruction), len(msg.detail))
    return _chars_problem("episode_status text", n, limits)


def joint_state_problem(msg, limits: InputLimits) -> str | None:
    """A JointState with more than ``MAX_JOINTS`` names or values, or None."""
    n = max(len(msg.name), len(msg.position), len(msg.velocity), len(msg.effort))
    return f"joint_states with {n} entries > {MAX_JOINTS}" if n > MAX_JOINTS else None


def sim_state_problem(msg, limits: InputLimits) -> str | None:
    """A SimState with more than ``MAX_OBJECTS`` objects, or None."""
    n = max(len(msg.object_names), len(msg.object_poses))
    return f"sim_state with {n} objects > {MAX_OBJECTS}" if n > MAX_OBJECTS else None


#: Observation part -> its size check (None: a fixed-size message).
PART_PROBLEMS: dict[str, Callable[[Any, InputLimits], str | None] | None] = {
    "agentview": image_problem, "wrist": image_problem, "joints": joint_state_problem,
    "eef": None, "objects": sim_state_problem}


def future_problem(stamp_ns: int, now_ns: int, max_future_s: float) -> str | None:
    """A stamp more than ``max_future_s`` ahead of ``now_ns``, or None (``now_ns`` 0: a clock
    not started yet, e.g. sim time before /clock, checks nothing but a stamp past
    ``MAX_STAMP_NS``, which no answer could carry)."""
    if stamp_ns > MAX_STAMP_NS:
        return (f"stamp {stamp_ns} is past what builtin_interfaces/Time can carry "
                f"({MAX_STAMP_NS}): its nanosec field is >= 1e9")
    if now_ns > 0 and stamp_ns - now_ns > max_future_s * 1e9:
        return (f"stamp {stamp_ns} is {(stamp_ns - now_ns) / 1e9:.3f} s ahead of the clock "
                f"(> max_future_stamp_s {max_future_s})")
    return None


def summary(problems: dict[int, str], at_most: int = 3) -> str:
    """``#i: why`` for the first ``at_most`` problems, then how many more: one bounded line."""
    items = sorted(problems.items())
    text = "; ".join(f"#{i}: {why}" for i, why in items[:at_most])
    return text + (f"; ... and {len(items) - at_most} more" if len(items) > at_most else "")


# --- rate and logging -----------------------------------------------------------------------
class TokenBucket:
    """At most ``rate_hz`` messages a second on average, bursts of ``max(1, rate_hz)``
    (one second's worth) pass; ``rate_hz`` 0 lets everything through."""

    def __init__(self, rate_hz: float, now: float) -> None:
        self.rate = rate_hz
        self.capacity = max(1.0, rate_hz)
        self._tokens, self._t = self.capacity, now

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        self._tokens = min(self.capacity, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Throttle:
    """Lets one line through per ``every_s``; counts the ones it held back meanwhile."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self.suppressed = 0
        self._last = -math.inf

    def line(self, text: str, now: float) -> str | None:
        """``text`` (with how many were held back since the last line) or None: stay quiet."""
        if now - self._last < self.every_s:
            self.suppressed += 1
            return None
        self._last, held, self.suppressed = now, self.suppressed, 0
        return text + (f" (+{held} more rejected since the last such line)" if held else "")


class InputGuard:
    """Admits a node's incoming messages or rejects them by its :class:`InputLimits`.

    Checks, cheapest first: the topic's rate, the message's sizes (a ``problem`` function
    such as :func:`candidate_set_problem`), its stamp (:func:`future_problem`). A rejection is
    counted (``rejected[reason]``), handed to ``on_reject`` (the node's health: an error for
    its diagnostics' window) and logged through ``log`` at most once per ``log_every_s``.

    Args:
        limits: the node's limits.
        log: one line (the node's error logger).
        on_reject: every rejection's line (e.g. :meth:`Health.error`); None: nothing.
        now_ns: the node's clock in ns (stamps are checked against it).
        clock: monotonic seconds (rates and log throttling).
    """

    def __init__(self, limits: InputLimits, log: Callable[[str], None],
                 on_reject: Callable[[str], None] | None = None,
                 now_ns: Callable[[], int] = time.time_ns,
                 clock: Callable[[], float] = time.monotonic,
                 log_every_s: float = LOG_EVERY_S) -> None:
        self.limits = limits
        self.log, self.on_reject, self.now_ns, self.clock = log, on_reject, now_ns, clock
        self.throttle = Throttle(log_every_s)
        self.rejected = {OVERSIZE: 0, RATE: 0, STAMP: 0}
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, topic: str, msg: Any = None,
              problem: Callable[[Any, InputLimits], str | None] | None = None,
              stamp_ns: int | None = None) -> bool:
        """True: handle ``msg``; False: it was rejected (counted, maybe logged)."""
        now = self.clock()
        bucket = self._buckets.get(topic)
        if bucket is None:
            bucket = self._buckets[topic] = TokenBucket(self.limits.limit_rate_hz, now)
        if not bucket.take(now):
            return self.reject(topic, RATE, f"above limit_rate_hz {self.limits.limit_rate_hz:g}")
        why = problem(msg, self.limits) if problem is not None else None
        if why:
            return self.reject(topic, OVERSIZE, why)
        if stamp_ns is not None:
            why = future_problem(stamp_ns, self.now_ns(), self.limits.max_future_stamp_s)
            if why:
                return self.reject(topic, STAMP, why)
        return True

    def reject(self, topic: str, reason: str, why: str) -> bool:
        """Count and report one rejected message on ``topic``; returns False."""
        self.rejected[reason] += 1
        text = f"rejected a message on {topic}: {why}"
        if self.on_reject is not None:
            self.on_reject(text)
        line = self.throttle.line(text, self.clock())
        if line is not None:
            self.log(line)
        return False

    def values(self) -> dict[str, int]:
        """Diagnostics values: rejected messages in all and per reason."""
        return {"rejected_inputs": sum(self.rejected.values()),
                **{f"rejected_{k}": v for k, v in self.rejected.items()}}
