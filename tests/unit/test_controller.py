"""The controller adapter's core (ROS-free): scaling, limits, holds, staleness, the e-stop.

Property tests (hypothesis) drive :class:`ChunkController` with random configs and random
streams of chunks and periods, and check what must hold whatever arrives: no command beyond
the velocity limits, no change between two commands beyond the acceleration limits, a hold
that reaches exactly zero within v_max / (a_max dt) periods, an e-stop that stays latched.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prevla_ros.runtime.configs import ControllerAdapterConfig
from prevla_ros.runtime.controller import (ACCEPTED, ESTOP, ESTOPPED, EXECUTING, HOLDING, IDLE,
                                           IGNORED, STALE, ChunkController, ControllerConfig,
                                           clip_norm, ramp)
from prevla_ros.runtime.settings import build

S = 1_000_000_000  # ns per second
EPS = 1e-9


def chunk(h: int = 4, pos=(0.0, 0.0, 0.0), rot=(0.0, 0.0, 0.0), gripper: float = -1.0):
    a = np.zeros((h, 7))
    a[:, :3], a[:, 3:6], a[:, 6] = pos, rot, gripper
    return a


def submit(c: ChunkController, actions, stamp_ns: int, now_ns: int | None = None, **kw):
    actions = np.asarray(actions, np.float64)
    return c.submit(actions.ravel(), actions.shape[0], actions.shape[1], stamp_ns,
                    stamp_ns if now_ns is None else now_ns, **kw)


def fast(**kw) -> ControllerConfig:
    """Limits far above a unit action: the output is the plain scaling."""
    return ControllerConfig(**{"max_linear_velocity": 100.0, "max_angular_velocity": 100.0,
                               "max_linear_acceleration": 1e6,
                               "max_angular_acceleration": 1e6, **kw})


# --- configs --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [
    ("control_rate_hz", 0.0), ("control_rate_hz", math.nan), ("control_rate_hz", 5000.0),
    ("pos_scale_m", 0.0), ("rot_scale_rad", -0.5), ("max_linear_velocity", 0.0),
    ("max_angular_velocity", math.inf), ("max_linear_acceleration", -1.0),
    ("max_angular_acceleration", 0.0), ("hard_max_abs_action", 0.5),
    ("hard_max_abs_action", math.nan), ("max_chunk_age_s", -0.1), ("max_chunk_age_s", math.nan),
    ("skip_elapsed_actions", "yes"), ("gripper_open_position", math.nan),
    ("frame_id", ""), ("gripper_command_size", 0), ("gripper_command_size", 17),
    ("limit_chunk_length", 0), ("diagnostics_recovery_s", 0.0),
])
def test_a_bad_setting_fails_naming_the_node_config_and_field(name, value):
    with pytest.raises(ValueError, match=rf"ControllerAdapterConfig\.{name}: "):
        build(ControllerAdapterConfig, {name: value})


def test_defaults_are_libero_and_valid():
    c = build(ControllerAdapterConfig).controller
    assert (c.control_rate_hz, c.pos_scale_m, c.rot_scale_rad) == (20.0, 0.05, 0.5)
    assert c.dt == 0.05 and c.hold_periods() == math.ceil(0.25 / (2.0 * 0.05))


# --- scaling --------------------------------------------------------------------------------
def test_an_action_is_a_displacement_per_control_step():
    c = ChunkController(fast())
    assert submit(c, chunk(2, pos=(0.5, -0.2, 0.1), rot=(0.0, 0.4, -1.0)), S).outcome == ACCEPTED
    cmd = c.step()
    # 0.5 * 0.05 m per 1/20 s = 0.5 m/s; 0.4 * 0.5 rad per 1/20 s = 4 rad/s
    np.testing.assert_allclose(cmd.linear, [0.5, -0.2, 0.1])
    np.testing.assert_allclose(cmd.angular, [0.0, 4.0, -10.0])
    assert cmd.state == EXECUTING and cmd.action_index == 0


def test_motion_is_clipped_to_the_controllers_input_range_like_robosuite():
    c = ChunkController(fast())
    submit(c, chunk(1, pos=(2.5, -1.7, 0.2)), S)  # within the hard bound: clipped, not an e-stop
    np.testing.assert_allclose(c.step().linear, [1.0, -1.0, 0.2])


def test_the_velocity_limit_is_on_the_norm_and_keeps_the_direction():
    c = ChunkController(fast(max_linear_velocity=0.3, max_angular_velocity=2.0))
    submit(c, chunk(1, pos=(0.6, 0.8, 0.0), rot=(0.0, 0.0, 1.0)), S)
    cmd = c.step()
    np.testing.assert_allclose(cmd.linear, [0.18, 0.24, 0.0])  # (0.6, 0.8) m/s scaled to 0.3
    np.testing.assert_allclose(cmd.angular, [0.0, 0.0, 2.0])


def test_the_acceleration_ramp_runs_on_across_a_newer_chunk():
    cfg = ControllerConfig(max_linear_velocity=1.0, max_linear_acceleration=4.0)  # 0.2 / period
    c = ChunkController(cfg)
    submit(c, chunk(8, pos=(1.0, 0.0, 0.0)), S)
    assert [round(c.step().linear[0], 6) for _ in range(3)] == [0.2, 0.4, 0.6]
    submit(c, chunk(8, pos=(-1.0, 0.0, 0.0)), 2 * S)  # newer: replaces the rest
    assert [round(c.step().linear[0], 6) for _ in range(3)] == [0.4, 0.2, 0.0]
    assert c.step().action_index == 3


def test_a_chunk_replaced_before_its_first_action_was_accepted_but_not_executed():
    c = ChunkController(ControllerConfig())
    submit(c, chunk(4), S, source="x" * 10_000)
    submit(c, chunk(4), 2 * S)
    c.step()
    assert (c.counters["chunks_accepted"], c.counters["chunks_executed"]) == (2, 1)
    bad = chunk(4)
    bad[0, 0] = np.nan
    submit(c, bad, 3 * S, source="y" * 10_000)
    assert len(c.estop_reason) < 200  # a peer's long source name is cut in logs and diagnostics


def test_gripper_follows_the_sign_and_is_unknown_before_any_chunk():
    c = ChunkController(ControllerConfig(gripper_open_position=0.04, gripper_closed_position=0.0))
    assert c.step().gripper is None and c.state == IDLE
    a = chunk(4)
    a[:, 6] = [0.0, 0.3, 0.0, -0.01]  # 0 keeps the last command; its sign decides the rest
    submit(c, a, S)
    assert [c.step().gripper for _ in range(5)] == [None, 0.0, 0.0, 0.04, 0.04]


def test_helpers():
    np.testing.assert_allclose(clip_norm(np.array([3.0, 4.0, 0.0]), 1.0), [0.6, 0.8, 0.0])
    np.testing.assert_allclose(ramp(np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.25), [0, 0, 0.25])
    assert np.array_equal(ramp(np.array([0.1, 0.0, 0.0]), np.zeros(3), 0.25), np.zeros(3))


# --- late and stale chunks --------------------------------------------------------------------
def test_a_late_chunk_blends_to_hold_and_keeps_the_gripper():
    cfg = ControllerConfig()
    c = ChunkController(cfg)
    submit(c, chunk(3, pos=(1.0, 0.0, 0.0), rot=(0.0, 0.0, 1.0), gripper=1.0), S)
    for _ in range(3):
        assert c.step().state == EXECUTING
    speeds = []
    for _ in range(cfg.hold_periods() + 3):
        cmd = c.step()
        assert cmd.state == HOLDING and cmd.gripper == cfg.gripper_closed_position
        speeds.append(float(np.linalg.norm(cmd.linear)))
    assert speeds == sorted(speeds, reverse=True) and speeds[cfg.hold_periods() - 1] == 0.0
    assert c.counters["late"] == 1 and c.counters["holds"] == 1
    assert c.hold_reason.startswith("next chunk late")
    submit(c, chunk(2, pos=(1.0, 0.0, 0.0)), 2 * S)  # the stream resumes from rest
    assert c.step().state == EXECUTING and c.counters["late"] == 1


def test_a_stale_chunk_is_not_executed_nor_cuts_the_running_one_short():
    cfg = ControllerConfig(max_chunk_age_s=0.5)
    c = ChunkController(cfg)
    assert submit(c, chunk(4, pos=(0.2, 0, 0)), 10 * S, 10 * S + S // 10).outcome == ACCEPTED
    c.step()
    old = submit(c, chunk(4, pos=(-1, 0, 0)), 9 * S, 10 * S + S // 5)  # 1.2 s old
    assert old.outcome == STALE and "max_chunk_age_s" in old.reason
    same = submit(c, chunk(4, pos=(-1, 0, 0)), 10 * S, 10 * S + S // 5)  # not newer
    assert same.outcome == STALE and "not newer" in same.reason
    assert [c.step().action_index for _ in range(3)] == [1, 2, 3]  # the running chunk goes on
    assert c.step().state == HOLDING
    assert c.counters["stale"] == 2 and c.counters["late"] == 0 and c.counters["holds"] == 1
    assert c.hold_reason.startswith("stale chunk")


def test_before_any_chunk_a_stale_one_leaves_the_robot_idle():
    c = ChunkController(ControllerConfig(max_chunk_age_s=0.5))
    assert submit(c, chunk(4, pos=(1, 0, 0)), S, 3 * S).outcome == STALE
    cmd = c.step()
    assert cmd.state == IDLE and not cmd.linear.any() and cmd.gripper is None


def test_a_clock_that_jumps_back_does_not_stall_the_stream():
    c = ChunkController(ControllerConfig(), stamp_jump_back_s=5.0)
    submit(c, chunk(1), 100 * S)
    assert submit(c, chunk(1), 97 * S, 97 * S).outcome == STALE  # 3 s back: a late message
    assert submit(c, chunk(1), 2 * S, 2 * S).outcome == ACCEPTED  # 98 s back: a new timeline
    assert c.counters["clock_jumps"] == 1
    assert submit(c, chunk(1), 3 * S, 3 * S).outcome == ACCEPTED


def test_a_clock_that_has_not_started_checks_no_age():
    c = ChunkController(ControllerConfig(max_chunk_age_s=0.1))
    assert submit(c, chunk(1), 5 * S, now_ns=0).outcome == ACCEPTED


def test_skip_elapsed_actions_starts_at_the_action_due_now():
    c = ChunkController(ControllerConfig(skip_elapsed_actions=True, max_chunk_age_s=0.0))
    submit(c, chunk(8), 10 * S, 10 * S + 160_000_000)  # 0.16 s at 20 Hz: actions 0-2 are past
    assert c.step().action_index == 3
    late = submit(c, chunk(8), 11 * S, 11 * S + 400_000_000)  # all 8 past
    assert late.outcome == STALE and "past due" in late.reason


# --- e-stop -------------------------------------------------------------------------------------
def _bad_chunks():
    nan = chunk(4, pos=(0.1, 0, 0))
    nan[2, 4] = np.nan
    inf = chunk(4)
    inf[0, 6] = -np.inf
    beyond = chunk(4, pos=(0.1, 0, 0))
    beyond[3, 1] = 3.5
    return {"nan": (nan.ravel(), 4, 7), "inf": (inf.ravel(), 4, 7),
            "beyond": (beyond.ravel(), 4, 7), "short": (np.zeros(27), 4, 7),
            "dim6": (np.zeros(24), 4, 6), "empty": (np.zeros(0), 0, 7),
            "2d": (np.zeros((4, 7)), 4, 7)}


@pytest.mark.parametrize("kind", sorted(_bad_chunks()))
def test_an_out_of_range_chunk_latches_the_estop_until_reset(kind):
    c = ChunkController(ControllerConfig())
    submit(c, chunk(8, pos=(1, 0, 0), gripper=1.0), S)
    moving = [c.step() for _ in range(3)][-1]
    assert np.linalg.norm(moving.linear) > 0
    data, h, d = _bad_chunks()[kind]
    result = c.submit(data, h, d, 2 * S, 2 * S, source="vla")
    assert result.outcome == ESTOPPED and c.state == ESTOP and c.counters["estops"] == 1
    cmd = c.step()  # zero at once (no ramp), gripper kept
    assert cmd.state == ESTOP and not cmd.linear.any() and not cmd.angular.any()
    assert cmd.gripper == c.config.gripper_closed_position
    assert submit(c, chunk(4, pos=(1, 0, 0)), 3 * S).outcome == IGNORED
    assert all(not c.step().linear.any() for _ in range(10))
    assert "vla" in c.estop_reason and c.values()["estop_reason"] == c.estop_reason
    ok, message = c.reset(4 * S)
    assert ok and "cleared" in message and c.state == HOLDING
    assert submit(c, chunk(4, pos=(1, 0, 0)), 3 * S + S // 2, 4 * S).outcome == STALE
    assert submit(c, chunk(4, pos=(1, 0, 0)), 4 * S + 1, 4 * S + 2).outcome == ACCEPTED
    assert c.step().state == EXECUTING
    assert c.reset(5 * S) == (True, "no e-stop latched") and c.counters["estops"] == 1


# --- properties -----------------------------------------------------------------------------------
configs = st.builds(
    ControllerConfig,
    control_rate_hz=st.sampled_from([10.0, 20.0, 50.0, 125.0]),
    max_linear_velocity=st.floats(0.01, 2.0), max_angular_velocity=st.floats(0.05, 6.0),
    max_linear_acceleration=st.floats(0.05, 20.0), max_angular_acceleration=st.floats(0.1, 60.0),
    max_chunk_age_s=st.sampled_from([0.0, 0.2, 1.0]),
    skip_elapsed_actions=st.booleans())
actions = st.integers(1, 12).flatmap(lambda h: st.lists(
    st.lists(st.floats(-3.0, 3.0), min_size=7, max_size=7), min_size=h, max_size=h))
# A stream: a chunk (its actions, how old it is in ms, how many periods until the next event).
events = st.lists(st.tuples(actions, st.integers(-200, 1500), st.integers(0, 15)), max_size=12)


@settings(max_examples=150)
@given(configs, events)
def test_no_command_exceeds_the_velocity_or_acceleration_limits(cfg, stream):
    c = ChunkController(cfg)
    now = 50 * S
    prev_v, prev_w = np.zeros(3), np.zeros(3)
    dt_ns = int(cfg.dt * S)
    for acts, age_ms, periods in stream:
        submit(c, np.array(acts), now - age_ms * 1_000_000, now)
        for _ in range(periods):
            cmd = c.step()
            now += dt_ns
            assert np.linalg.norm(cmd.linear) <= cfg.max_linear_velocity + EPS
            assert np.linalg.norm(cmd.angular) <= cfg.max_angular_velocity + EPS
            assert np.linalg.norm(cmd.linear - prev_v) <= \
                cfg.max_linear_acceleration * cfg.dt + EPS
            assert np.linalg.norm(cmd.angular - prev_w) <= \
                cfg.max_angular_acceleration * cfg.dt + EPS
            prev_v, prev_w = cmd.linear, cmd.angular
    assert c.counters["estops"] == 0  # every value was within the hard bound


@settings(max_examples=150)
@given(configs, actions, st.integers(0, 12))
def test_a_hold_decelerates_at_the_limit_and_reaches_zero_within_v_over_a(cfg, acts, executed):
    c = ChunkController(cfg)
    submit(c, np.array(acts), S, S)
    for _ in range(min(executed, len(acts))):
        c.step()
    c._chunk = None  # the chunk is cut off here: the next chunk is late
    speeds = [(np.linalg.norm(c.linear), np.linalg.norm(c.angular))]
    for _ in range(cfg.hold_periods() + 1):  # +1: a speed of exactly n steps, rounded up
        cmd = c.step()
        assert cmd.state in (HOLDING, IDLE)
        speeds.append((np.linalg.norm(cmd.linear), np.linalg.norm(cmd.angular)))
    for (v0, w0), (v1, w1) in zip(speeds, speeds[1:]):  # as fast as the limit allows
        assert v1 == pytest.approx(max(0.0, v0 - cfg.max_linear_acceleration * cfg.dt), abs=1e-9)
        assert w1 == pytest.approx(max(0.0, w0 - cfg.max_angular_acceleration * cfg.dt),
                                   abs=1e-9)
    assert not c.linear.any() and not c.angular.any()  # exactly zero


@settings(max_examples=100)
@given(configs, st.sampled_from(sorted(_bad_chunks())), st.lists(actions, max_size=6),
       st.integers(1, 20))
def test_an_estop_stays_latched_whatever_arrives(cfg, kind, later, periods):
    c = ChunkController(cfg)
    data, h, d = _bad_chunks()[kind]
    assert c.submit(data, h, d, S, S).outcome == ESTOPPED
    for i, acts in enumerate(later):
        assert submit(c, np.array(acts), (2 + i) * S, (2 + i) * S).outcome == IGNORED
        for _ in range(periods):
            cmd = c.step()
            assert cmd.state == ESTOP and not cmd.linear.any() and not cmd.angular.any()
    assert c.counters["estops"] == 1 and c.counters["ignored_while_estopped"] == len(later)
