"""Message <-> numpy conversions: round trips and a clear ValueError for malformed input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import Verdict
from sensor_msgs.msg import Image, JointState
from visualization_msgs.msg import Marker

from prevla_ros import conversions as cv
from prevla_ros.runtime.chunks import chunk_problem
from prevla_ros.runtime.scheduler import Scheduler, SchedulerConfig
from prevla_ros.runtime.types import ActionChunk, CandidateSet, ObjectPose


def _image(h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _padded_msg(rgb: np.ndarray, encoding: str, pad: int = 3) -> Image:
    """An image message whose rows carry ``pad`` junk bytes after the pixels."""
    h, w, _ = rgb.shape
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    rows = np.concatenate([pixels.reshape(h, w * 3), np.full((h, pad), 77, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=w * 3 + pad, data=rows.tobytes())


# --- time ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stamp", [0, 1, 999_999_999, 1_000_000_000, 1_732_000_000_123_456_789])
def test_time_round_trip(stamp):
    t = cv.to_time(stamp)
    assert 0 <= t.nanosec < 1_000_000_000
    assert cv.from_time(t) == stamp


def test_time_split_and_header():
    t = cv.to_time(3_000_000_005)
    assert (t.sec, t.nanosec) == (3, 5)
    assert cv.from_time(Time(sec=2, nanosec=7)) == 2_000_000_007
    h = cv.header(3_000_000_005, "base")
    assert h.frame_id == "base" and h.stamp == t


# --- images -------------------------------------------------------------------------------
def test_image_round_trip_rgb8():
    rgb = _image()
    msg = cv.image_to_msg(rgb, 123, "agentview")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (4, 5, 15, "rgb8")
    assert msg.header.frame_id == "agentview" and cv.from_time(msg.header.stamp) == 123
    back = cv.msg_to_image(msg, expected_hw=(4, 5))
    np.testing.assert_array_equal(back, rgb)
    assert back.flags.writeable  # a copy, not a view of the message buffer


def test_image_to_msg_accepts_non_contiguous_views():
    rgb = _image()
    flipped = rgb[::-1, ::-1]
    np.testing.assert_array_equal(cv.msg_to_image(cv.image_to_msg(flipped, 0, "x")), flipped)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_with_padded_step(encoding):
    rgb = _image(3, 4)
    back = cv.msg_to_image(_padded_msg(rgb, encoding))
    np.testing.assert_array_equal(back, rgb)  # bgr8 is converted to RGB, padding dropped


def test_image_step_zero_means_packed_rows():
    rgb = _image(2, 2)
    msg = Image(height=2, width=2, encoding="rgb8", step=0, data=rgb.tobytes())
    np.testing.assert_array_equal(cv.msg_to_image(msg), rgb)


@pytest.mark.parametrize("array", [
    np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4), dtype=np.uint8),
    np.zeros((4, 4, 4), dtype=np.uint8)])
def test_image_to_msg_rejects_non_rgb_arrays(array):
    with pytest.raises(ValueError, match="expected HxWx3 uint8 RGB image"):
        cv.image_to_msg(array, 0, "x")


def test_malformed_images_raise_clear_errors():
    good = cv.image_to_msg(_image(4, 5), 0, "x")
    mono = Image(height=4, width=5, encoding="mono8", step=5, data=bytes(20))
    with pytest.raises(ValueError, match="rgb8 or bgr8, got 'mono8'"):
        cv.msg_to_image(mono)
    short = Image(height=4, width=5, encoding="rgb8", step=15, data=bytes(59))
    with pytest.raises(ValueError, match="59 bytes, expected step\\*height = 60"):
        cv.msg_to_image(short)
    with pytest.raises(ValueError, match="image size 4x5 != expected 128x128"):
        cv.msg_to_image(good, expected_hw=(128, 128))
    narrow = Image(height=4, width=5, encoding="rgb8", step=10, data=bytes(40))
    with pytest.raises(ValueError, match="step 10 < width\\*3 = 15"):
        cv.msg_to_image(narrow)
    with pytest.raises(ValueError, match="zero size"):
        cv.msg_to_image(Image(height=0, width=5, encoding="rgb8", step=15, data=b""))


# --- robot state --------------------------------------------------------------------------
def test_joint_state_round_trip():
    joints, fingers = np.linspace(-1, 1, 7), np.array([0.02, -0.02])
    msg = cv.joint_state_to_msg(joints, fingers, 55)
    assert list(msg.name) == list(cv.ARM_JOINTS + cv.FINGER_JOINTS)
    j, f = cv.msg_to_joint_state(msg)
    np.testing.assert_allclose(j, joints)
    np.testing.assert_allclose(f, fingers)


def test_joint_state_by_name_in_shuffled_order_with_extras():
    names = list(cv.ARM_JOINTS + cv.FINGER_JOINTS) + ["head_pan"]
    values = {n: float(i) for i, n in enumerate(names)}
    order = np.random.default_rng(1).permutation(len(names))
    msg = JointState(name=[names[i] for i in order], position=[values[names[i]] for i in order])
    j, f = cv.msg_to_joint_state(msg)
    np.testing.assert_array_equal(j, np.arange(7.0))
    np.testing.assert_array_equal(f, [7.0, 8.0])


def test_joint_state_errors():
    names = list(cv.ARM_JOINTS + cv.FINGER_JOINTS)
    with pytest.raises(ValueError, match="missing \\['robot0_joint4'\\]"):
        cv.msg_to_joint_state(JointState(name=[n for n in names if n != "robot0_joint4"],
                                         position=[0.0] * 8))
    with pytest.raises(ValueError, match="9 names / 8 positions"):
        cv.msg_to_joint_state(JointState(name=names, position=[0.0] * 8))
    with pytest.raises(ValueError, match="non-finite"):
        cv.msg_to_joint_state(JointState(name=names, position=[0.0] * 8 + [math.nan]))


def test_eef_and_pose_round_trip():
    pos, quat = np.array([0.1, -0.2, 0.9]), np.array([0.0, 0.7071, 0.0, 0.7071])
    msg = cv.eef_to_msg(pos, quat, 9)
    assert cv.from_time(msg.header.stamp) == 9 and msg.header.frame_id == "world"
    p, q = cv.msg_to_pose(msg.pose)
    np.testing.assert_allclose(p, pos)
    np.testing.assert_allclose(q, quat)
    msg.pose.position.y = math.inf
    with pytest.raises(ValueError, match="non-finite"):
        cv.msg_to_pose(msg.pose)


def test_sim_state_round_trip():
    objects = {"bowl_1": ObjectPose(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.0, 0.0, 1.0])),
               "plate_1": ObjectPose(np.array([-0.1, 0.0, 0.9]), np.array([0.5, 0.5, 0.5, 0.5]))}
    msg = cv.sim_state_to_msg(objects, 77)
    assert cv.from_time(msg.header.stamp) == 77
    back = cv.msg_to_sim_state(msg)
    assert list(back) == ["bowl_1", "plate_1"]
    for name, pose in objects.items():
        np.testing.assert_allclose(back[name].pos, pose.pos)
        np.testing.assert_allclose(back[name].quat_xyzw, pose.quat_xyzw)
    msg.object_names = ["bowl_1"]
    with pytest.raises(ValueError, match="1 names but 2 poses"):
        cv.msg_to_sim_state(msg)


# --- chunks -------------------------------------------------------------------------------
def test_chunk_round_trip():
    actions = np.arange(24, dtype=np.float32).reshape(3, 8) / 7
    msg = cv.chunk_to_msg(ActionChunk(actions, "expert", 1_500_000_000))
    assert (msg.horizon, msg.action_dim, msg.source) == (3, 8, "expert")
    back = cv.msg_to_chunk(msg, expected_dim=8)
    np.testing.assert_array_equal(back.actions, actions)  # row-major, float32 exact
    assert back.actions.dtype == np.float32
    assert back.source == "expert" and back.stamp_ns == 1_500_000_000


@pytest.mark.parametrize("horizon, dim, n, expected_dim, match", [
    (0, 7, 0, None, "horizon >= 1 and action_dim >= 1, got 0x7"),
    (2, 0, 0, None, "horizon >= 1 and action_dim >= 1, got 2x0"),
    (2, 7, 13, None, "13 values, expected horizon\\*action_dim = 2\\*7 = 14"),
    (2, 6, 12, 7, "action_dim 6 != expected 7"),
])
def test_msg_to_chunk_errors(horizon, dim, n, expected_dim, match):
    msg = ActionChunkMsg(horizon=horizon, action_dim=dim, data=[0.0] * n)
    with pytest.raises(ValueError, match=match):
        cv.msg_to_chunk(msg, expected_dim=expected_dim)


def test_candidates_round_trip_and_malformed_candidate_stays_flat():
    good = [np.full((4, 7), i / 10, dtype=np.float32) for i in range(3)]
    cs = CandidateSet([ActionChunk(a, "p", 5) for a in good], temperatures=[1.0, 1.0, 0.5],
                      seeds=[1, 2, 3], policy_id="p", stamp_ns=5, round=2)
    msg = cv.candidates_to_msg(cs)
    assert msg.policy_id == "p" and msg.round == 2 and list(msg.seeds) == [1, 2, 3]
    assert list(msg.temperatures) == [1.0, 1.0, 0.5]
    msg.candidates[1].data = msg.candidates[1].data[:-1]  # 27 values for a 4x7 chunk
    msg.candidates[2].horizon = 0
    arrays = cv.msg_to_candidate_arrays(msg)
    assert [a.shape for a in arrays] == [(4, 7), (27,), (28,)]
    np.testing.assert_array_equal(arrays[0], good[0])
    assert chunk_problem(arrays[1]) is not None and chunk_problem(arrays[2]) is not None
    decision = Scheduler(SchedulerConfig()).decide(arrays)
    assert decision.accepted_index == 0 and sorted(decision.rejected) == [1, 2]


# --- verdicts, markers, diagnostics -------------------------------------------------------
@pytest.mark.parametrize("mode, expected", [("execute", Verdict.MODE_EXECUTE),
                                            ("imagine", Verdict.MODE_IMAGINE)])
def test_decision_to_verdict_fields(mode, expected):
    bad = np.full((4, 7), np.nan, dtype=np.float32)
    decision = Scheduler(SchedulerConfig()).decide([bad, np.zeros((4, 7), np.float32)])
    v = cv.decision_to_verdict(decision, 1_000_000_123, mode, "passthrough")
    assert v.mode == expected
    assert cv.from_time(v.header.stamp) == 1_000_000_123
    assert v.safety_probs[0] == 0.0 and math.isnan(v.safety_probs[1])
    assert len(v.advantages) == 2 and all(math.isnan(a) for a in v.advantages)
    assert v.accepted_index == 1 and v.outcome == "accepted" and v.reason == decision.reason
    assert v.verifier_id == "passthrough" and v.samples_drawn == 2 and v.rounds == 1
    assert v.total_ms == pytest.approx(decision.total_ms, rel=1e-6)


def test_verdict_of_a_hold_has_index_minus_one():
    decision = Scheduler(SchedulerConfig()).decide([])
    v = cv.decision_to_verdict(decision, 0, "execute", "passthrough")
    assert v.accepted_index == -1 and v.outcome == "hold" and v.samples_drawn == 0


def test_chunk_path_math():
    eef = np.array([1.0, 2.0, 3.0])
    actions = np.zeros((3, 7))
    actions[0, 0] = 1.0  # +x one full step
    actions[1, 1] = -0.5  # -y half a step
    actions[2, 2] = 4.0  # clipped to one full step
    actions[:, 3:] = 9.0  # rotation and gripper do not move the point
    path = cv.chunk_path(eef, actions, scale=0.1)
    expected = [[1.0, 2.0, 3.0], [1.1, 2.0, 3.0], [1.1, 1.95, 3.0], [1.1, 1.95, 3.1]]
    np.testing.assert_allclose(path, expected)
    assert cv.chunk_path(eef, actions).shape == (4, 3)
    np.testing.assert_allclose(cv.chunk_path(eef, actions)[1], [1.0 + cv.OSC_POS_SCALE, 2, 3])


def test_path_markers():
    path = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.2, 0.3]])
    markers = cv.path_markers(path, 42, "approved", (0.0, 1.0, 0.0, 0.8), frame_id="base")
    line, end = markers.markers
    assert line.type == Marker.LINE_STRIP and end.type == Marker.SPHERE
    assert (line.ns, line.id, end.ns, end.id) == ("approved", 0, "approved", 1)
    assert line.header.frame_id == "base" and cv.from_time(end.header.stamp) == 42
    assert [(p.x, p.y, p.z) for p in line.points] == [tuple(p) for p in path.tolist()]
    assert (end.pose.position.x, end.pose.position.y, end.pose.position.z) == (0.1, 0.2, 0.3)
    assert end.pose.orientation.w == 1.0 and line.pose.orientation.w == 1.0
    assert (line.color.g, line.color.a) == (1.0, pytest.approx(0.8))
    assert end.color == line.color and line.scale.x > 0 and end.scale.z > 0


def test_diagnostic_status():
    s = cv.diagnostic_status("prevla: sim", "/sim_node", DiagnosticStatus.WARN, "slow",
                             {"fps": 12.5, "episode": 3})
    assert s.level == DiagnosticStatus.WARN and s.message == "slow"
    assert s.name == "prevla: sim" and s.hardware_id == "/sim_node"
    assert [(kv.key, kv.value) for kv in s.values] == [("fps", "12.5"), ("episode", "3")]


# --- the verdict as rviz text -------------------------------------------------------------
def test_verdict_text_marker_of_an_accepted_candidate():
    decision = Scheduler(SchedulerConfig()).decide(
        [np.full((4, 7), np.nan, np.float32), np.zeros((4, 7), np.float32)])
    v = cv.decision_to_verdict(decision, 7_000_000_042, "execute", "passthrough")
    v.safety_probs, v.advantages = [0.0, 0.875], [float("nan"), -0.25]  # as a model scores
    m = cv.verdict_text_marker(v, "scripted_expert", frame_id="world",
                               anchor=np.array([0.1, -0.2, 1.0]))
    assert m.type == Marker.TEXT_VIEW_FACING and m.action == Marker.ADD
    assert (m.ns, m.id, m.header.frame_id) == ("verdict", 0, "world")
    assert cv.from_time(m.header.stamp) == 7_000_000_042
    assert (m.pose.position.x, m.pose.position.y) == (0.1, -0.2)
    assert m.pose.position.z == pytest.approx(1.0 + cv.VERDICT_LIFT_M)
    assert m.pose.orientation.w == 1.0 and m.scale.z > 0
    assert (m.color.r, m.color.g, m.color.a) == pytest.approx((0.1, 0.9, 1.0))
    first, second, third = m.text.split("\n")
    assert first == "ACCEPTED #1 of 2 from scripted_expert"
    assert second == "P(safe) 0.88  advantage -0.25"
    assert third.startswith("rounds 1, samples 2, passthrough ")


def test_verdict_text_marker_of_a_hold_says_why_and_stays_short():
    decision = Scheduler(SchedulerConfig()).decide([])
    decision.reason = "no candidate passes tau " + "x" * 200
    v = cv.decision_to_verdict(decision, 5, "imagine", "verifier_v1")
    m = cv.verdict_text_marker(v, "vla_libero_spatial", frame_id="base")
    first, second, _ = m.text.split("\n")
    assert first == "imagine: HOLD (0 candidates from vla_libero_spatial)"
    assert second.startswith("no candidate passes tau") and second.endswith("...")
    assert len(second) == cv.VERDICT_REASON_CHARS
    assert m.header.frame_id == "base" and (m.color.r, m.color.g) == pytest.approx((0.9, 0.2))
    home = (m.pose.position.x, m.pose.position.y, m.pose.position.z)
    assert home == pytest.approx(cv.VERDICT_HOME)  # no end-effector pose yet


def test_verdict_text_marker_of_an_unscored_fallback():
    v = Verdict(outcome="fallback_best", accepted_index=0, safety_probs=[float("nan")],
                advantages=[], verifier_id="m", rounds=3, samples_drawn=12)
    m = cv.verdict_text_marker(v, "p")
    assert m.text.split("\n") == ["FALLBACK #0 of 1 from p", "P(safe) n/a  advantage n/a",
                                  "rounds 3, samples 12, m 0 ms"]
    assert (m.color.r, m.color.g) == pytest.approx((1.0, 0.6))


def test_verdict_text_marker_of_an_odd_verdict_still_draws():
    """An index past the scores, an unknown outcome, infinite scores: text, never an error."""
    v = Verdict(outcome="weird", accepted_index=5, safety_probs=[float("inf"), 0.5],
                advantages=[0.1], reason="", verify_ms=float("nan"))
    m = cv.verdict_text_marker(v, "", anchor=np.array([0.0, 0.0, 0.0]))
    assert m.text.split("\n")[0] == "WEIRD (2 candidates from )"
    assert (m.color.r, m.color.g, m.color.b, m.color.a) == (1.0, 1.0, 1.0, 1.0)
    v.accepted_index = 0
    assert cv.verdict_text_marker(v, "p").text.split("\n")[1] == "P(safe) n/a  advantage +0.10"
