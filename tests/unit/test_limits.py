"""Bounded inputs (runtime/limits.py) and recovering health (runtime/health.py), without ROS:
sizes checked before anything is read, one log line for many rejections, rates, future stamps,
and an ERROR that clears after the healthy window while the last error stays."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from prevla_ros.runtime.health import Health, HealthConfig
from tests.strategies import Unreadable
from prevla_ros.runtime.limits import (MAX_ACTION_DIM, InputGuard, InputLimits, Throttle,
                                       TokenBucket, candidate_set_problem, chunk_problem,
                                       future_problem, image_problem, joint_state_problem,
                                       k_problem, status_problem, summary, text_problem)

LIMITS = InputLimits()
NOW_NS = 1_700_000_000 * 10**9


def _chunk(h: int = 8, d: int = 7, n: int | None = None) -> NS:
    return NS(horizon=h, action_dim=d, data=[0.0] * (h * d if n is None else n))


def _set(k: int) -> NS:
    return NS(candidates=[_chunk() for _ in range(k)], temperatures=[1.0] * k, seeds=[0] * k)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _guard(**limits):
    lines, errors, clock = [], [], Clock()
    guard = InputGuard(InputLimits(**limits), lines.append, errors.append,
                       now_ns=lambda: NOW_NS, clock=clock)
    return guard, lines, errors, clock


# --- size checks ----------------------------------------------------------------------------
def test_an_oversized_candidate_set_is_refused_without_reading_a_candidate():
    huge = NS(candidates=Unreadable(10_000), temperatures=[], seeds=[])
    assert candidate_set_problem(huge, LIMITS) == "10000 candidates > limit_k 64"
    assert candidate_set_problem(_set(64), LIMITS) is None
    long_one = _set(3)
    long_one.candidates[2] = _chunk(h=65)
    assert "candidate #2" in candidate_set_problem(long_one, LIMITS)
    padded = _set(1)
    padded.candidates[0] = _chunk(h=8, n=10**6)  # declares 8x7, carries a million values
    assert "data of 1000000 values" in candidate_set_problem(padded, LIMITS)
    assert "temperatures" in candidate_set_problem(
        NS(candidates=[], temperatures=Unreadable(65), seeds=[]), LIMITS)


def test_chunk_and_request_limits():
    assert chunk_problem(_chunk(), LIMITS) is None
    assert "limit_chunk_length 64" in chunk_problem(_chunk(h=65), LIMITS)
    assert f"> {MAX_ACTION_DIM}" in chunk_problem(_chunk(d=MAX_ACTION_DIM + 1), LIMITS)
    assert k_problem(64, LIMITS) is None and "limit_k 64" in k_problem(10_000, LIMITS)


def test_image_text_and_list_limits_read_only_sizes():
    big = NS(height=4000, width=4000, data=Unreadable(48_000_000))
    assert image_problem(big, LIMITS) == "image 4000x4000 > limit_image_side 1024"
    assert image_problem(NS(height=128, width=128, data=Unreadable(128 * 128 * 3)), LIMITS) is None
    lying = NS(height=2, width=2, data=Unreadable(10**7))  # small header, huge payload
    assert "bytes for 2x2" in image_problem(lying, LIMITS)
    assert text_problem("pick up the bowl", LIMITS) is None
    assert "1000000 characters" in text_problem("x" * 1_000_000, LIMITS)
    status = NS(suite="x" * 10**6, state="running", instruction="", detail="")
    assert "1000000 characters" in status_problem(status, LIMITS)
    joints = NS(name=Unreadable(10_000), position=[], velocity=[], effort=[])
    assert "10000 entries" in joint_state_problem(joints, LIMITS)


def test_summary_is_one_bounded_line():
    assert summary({2: "b", 0: "a"}) == "#0: a; #2: b"
    line = summary({i: "non-finite" for i in range(10_000)})
    assert line.endswith("... and 9997 more") and line.count("#") == 3


# --- the guard: one line for many, counted ----------------------------------------------------
def test_ten_thousand_rejections_make_one_log_line_and_are_all_counted():
    guard, lines, errors, clock = _guard()
    huge = NS(candidates=Unreadable(10_000), temperatures=[], seeds=[])
    for _ in range(50):  # within the rate limit's burst: each is an oversize rejection
        assert not guard.admit("candidates", huge, candidate_set_problem)
    assert len(lines) == 1 and "10000 candidates > limit_k 64" in lines[0]
    assert guard.values() == {"rejected_inputs": 50, "rejected_oversize": 50,
                              "rejected_rate": 0, "rejected_stamp": 0}
    assert len(errors) == 50  # every one is an error event for the node's health
    clock.t += 5.0  # the next line says how many were held back
    assert not guard.admit("candidates", huge, candidate_set_problem)
    assert len(lines) == 2 and "+49 more rejected" in lines[1]
    assert guard.admit("candidates", _set(4), candidate_set_problem)


def test_messages_above_the_rate_are_dropped_per_topic():
    guard, lines, _, clock = _guard(limit_rate_hz=10.0)
    results = [guard.admit("candidates") for _ in range(15)]  # a burst of one second's worth
    assert results == [True] * 10 + [False] * 5
    assert guard.admit("agentview/image_raw")  # another topic has its own budget
    clock.t += 0.5  # 5 tokens back
    assert [guard.admit("candidates") for _ in range(6)] == [True] * 5 + [False]
    assert guard.rejected["rate"] == 6 and len(lines) == 1
    unlimited, *_ = _guard(limit_rate_hz=0.0)
    assert all(unlimited.admit("candidates") for _ in range(1000))


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


def test_throttle_lets_one_line_through_per_period():
    throttle = Throttle(every_s=5.0)
    assert throttle.line("a", 0.0) == "a"
    assert throttle.line("b", 1.0) is None and throttle.line("c", 4.9) is None
    assert throttle.line("d", 5.0) == "d (+2 more rejected since the last such line)"


# --- stamps -----------------------------------------------------------------------------------
def test_a_future_stamp_is_rejected_and_the_real_stream_is_not():
    guard, lines, _, _ = _guard()
    assert not guard.admit("joint_states", stamp_ns=NOW_NS + 25 * 10**9)
    assert "25.000 s ahead" in lines[0] and guard.rejected["stamp"] == 1
    assert guard.admit("joint_states", stamp_ns=NOW_NS)  # the real one, older than the fake
    assert guard.admit("joint_states", stamp_ns=NOW_NS + 10**9)  # within max_future_stamp_s
    assert guard.admit("joint_states", stamp_ns=5)  # the past is the assembler's business


def test_future_rule_edges():
    assert future_problem(NOW_NS + 2 * 10**9, NOW_NS, 1.0) is not None
    assert future_problem(NOW_NS + 10**9, NOW_NS, 1.0) is None
    assert future_problem(NOW_NS + 10**12, 0, 1.0) is None  # sim time before /clock: no check


@pytest.mark.parametrize("name, value", [("limit_k", 0), ("limit_image_side", 1.5),
                                         ("limit_rate_hz", -1.0), ("max_future_stamp_s", -0.1),
                                         ("stamp_jump_back_s", 0.0)])
def test_limit_errors_name_the_field(name, value):
    with pytest.raises(ValueError, match=rf"InputLimits\.{name}"):
        InputLimits(**{name: value})


# --- health: ERROR now, OK after the window, the last error kept ----------------------------
def test_health_is_error_within_the_window_then_recovers_keeping_the_last_error():
    clock, logged = Clock(), []
    health = Health(recovery_s=10.0, log=logged.append, clock=clock)
    assert health.active() is None and health.values() == {"last_error": "",
                                                           "last_error_age_s": ""}
    health.error("malformed agentview: image size 64x64 != expected 128x128")
    assert health.active() == logged[0] == "malformed agentview: image size 64x64 != " \
                                           "expected 128x128"
    clock.t += 9.9
    assert health.active() is not None
    health.error("second", log=False)  # a new error restarts the window (logged elsewhere)
    assert logged == [logged[0]]
    clock.t += 9.9
    assert health.active() == "second"
    clock.t += 0.2
    assert health.active() is None  # healthy again: the level is the node's own (OK)
    assert health.values() == {"last_error": "second", "last_error_age_s": 10.1}
    with pytest.raises(ValueError, match=r"HealthConfig\.diagnostics_recovery_s"):
        HealthConfig(diagnostics_recovery_s=0.0)
