"""verifier_node over real rclpy: approved chunk, verdict, markers, bad candidates, params."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk, CandidateSet, Verdict
from rclpy.parameter import Parameter
from visualization_msgs.msg import MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.common import STREAM_QOS
from prevla_ros.nodes.verifier_node import VerifierNode
from prevla_ros.runtime.types import ActionChunk as Chunk
from prevla_ros.runtime.types import CandidateSet as Candidates

pytestmark = pytest.mark.ros


def _candidate_set(arrays, stamp_ns=1_000, gripper_first=None):
    return conv.candidates_to_msg(Candidates(
        chunks=[Chunk(np.asarray(a, np.float32), "test_policy", stamp_ns) for a in arrays],
        temperatures=[1.0] * len(arrays), seeds=list(range(len(arrays))),
        policy_id="test_policy", stamp_ns=stamp_ns))


@pytest.fixture
def graph(ros):
    node = ros.add(VerifierNode(context=ros.context))
    probe = ros.node("probe")
    got = {"chunks": [], "verdicts": [], "markers": [], "diag": []}
    probe.create_subscription(ActionChunk, "action_chunk", got["chunks"].append, STREAM_QOS)
    probe.create_subscription(Verdict, "verdict", got["verdicts"].append, STREAM_QOS)
    probe.create_subscription(MarkerArray, "approved_path", got["markers"].append, 5)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
    pub = probe.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    eef = probe.create_publisher(PoseStamped, "eef_pose", STREAM_QOS)
    assert ros.wait_for(lambda: pub.get_subscription_count() > 0 and
                        eef.get_subscription_count() > 0)
    return ros, node, pub, eef, got


def test_approves_first_valid_candidate_and_publishes_markers(graph):
    ros, node, pub, eef, got = graph
    eef.publish(conv.eef_to_msg(np.array([0.1, 0.0, 1.0]), np.array([0, 0, 0, 1.0]), 5))
    ros.spin_for(0.3)
    good = np.full((8, 7), 0.5, np.float32)
    pub.publish(_candidate_set([good, -good], stamp_ns=42))
    assert ros.wait_for(lambda: got["chunks"] and got["verdicts"] and got["markers"])
    chunk = conv.msg_to_chunk(got["chunks"][0], expected_dim=7)
    np.testing.assert_allclose(chunk.actions, good)
    assert chunk.stamp_ns == 42 and chunk.source == "test_policy"
    verdict = got["verdicts"][0]
    assert verdict.accepted_index == 0 and verdict.outcome == "accepted"
    assert verdict.mode == Verdict.MODE_EXECUTE and verdict.samples_drawn == 2
    assert verdict.verifier_id == "passthrough"
    line = got["markers"][0].markers[0]
    assert len(line.points) == 9
    assert line.points[-1].x == pytest.approx(0.1 + 8 * 0.5 * conv.OSC_POS_SCALE, abs=1e-5)


def test_invalid_candidates_are_skipped_and_all_invalid_gives_hold(graph):
    ros, node, pub, _, got = graph
    nan = np.full((8, 7), np.nan, np.float32)
    wrong_dim = np.zeros((8, 6), np.float32)
    good = np.zeros((8, 7), np.float32)
    good[:, 6] = 1.0  # gripper closed
    pub.publish(_candidate_set([nan, wrong_dim, good], stamp_ns=7))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 1)
    v = got["verdicts"][0]
    assert v.accepted_index == 2 and v.outcome == "accepted"
    assert v.safety_probs[0] == 0.0 and v.safety_probs[1] == 0.0
    # Everything invalid: a hold chunk that keeps the gripper closed, and the node lives on.
    pub.publish(_candidate_set([nan, wrong_dim], stamp_ns=8))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 2)
    v = got["verdicts"][1]
    assert v.accepted_index == -1 and v.outcome == "hold"
    assert "non-finite" in v.reason and "dimension 6" in v.reason
    hold = conv.msg_to_chunk(got["chunks"][1])
    assert hold.source == "hold" and np.all(hold.actions[:, :6] == 0)
    assert np.all(hold.actions[:, 6] == 1.0)
    # A malformed message (data length does not fit the declared shape) is survived too.
    bad = _candidate_set([good], stamp_ns=9)
    bad.candidates[0].data = bad.candidates[0].data[:-3]
    pub.publish(bad)
    assert ros.wait_for(lambda: len(got["verdicts"]) == 3)
    assert got["verdicts"][2].outcome == "hold"
    pub.publish(_candidate_set([good], stamp_ns=10))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 4)
    assert got["verdicts"][3].outcome == "accepted"


def test_parameters_are_declared_with_descriptions(ros):
    node = ros.add(VerifierNode(context=ros.context))
    for name in ("verifier", "mode", "action_dim", "max_abs_action", "hold_horizon"):
        assert node.has_parameter(name)
        assert node.describe_parameter(name).description


def test_bad_parameter_fails_at_startup_naming_the_field(ros):
    with pytest.raises(ValueError, match="mode"):
        VerifierNode(context=ros.context, parameter_overrides=[Parameter("mode", value="fly")])


def test_diagnostics_published(graph):
    ros, node, pub, _, got = graph
    assert ros.wait_for(lambda: any(s.name == "prevla: verifier_node"
                                    for d in got["diag"] for s in d.status), timeout_s=5)
