"""Inputs a node cannot be fooled or flooded by, over real rclpy (issue 17): an oversized
candidate set is one rejection (one log line, counted), an oversized image or instruction is
dropped before it is stored, a stamp from the future does not block the real stream,
/diagnostics goes ERROR and recovers after its window, and rclpy's own ``use_sim_time`` can be
set at run time."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from prevla_interfaces.msg import CandidateSet, Verdict
from rclpy.parameter import Parameter
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import LATCHED_QOS, STREAM_QOS
from prevla_ros.nodes.policy_node import PolicyNode
from prevla_ros.nodes.verifier_node import VerifierNode
from tests.ros.fake_robot import candidate_set
from tests.ros.test_policy_node import Robot as PolicyRobot
from tests.ros.test_policy_node import real_obs  # noqa: F401 (a fixture)
from tests.ros.test_verifier_node import (H, INSTRUCTION, Robot, _model_node, _observation,
                                          verifier_file)  # noqa: F401 (a fixture)

pytestmark = pytest.mark.ros


class Probe:
    """Candidate sets in; verdicts and the verifier's /diagnostics out."""

    def __init__(self, ros):
        self.ros, node = ros, ros.node("probe")
        self.verdicts, self.diag = [], []
        node.create_subscription(Verdict, "verdict", self.verdicts.append, STREAM_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.pub = node.create_publisher(CandidateSet, "candidates", STREAM_QOS)
        assert ros.wait_for(lambda: self.pub.get_subscription_count() > 0)

    def status(self, since: int = 0) -> list[DiagnosticStatus]:
        return [s for d in self.diag[since:] for s in d.status if s.name == "prevla: verifier_node"]


def _passthrough(ros, *params) -> VerifierNode:
    return ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough"), *params]))


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def test_an_oversized_candidate_set_is_one_counted_rejection_and_the_next_set_is_served(
        ros, capfd):
    node = _passthrough(ros)
    probe = Probe(ros)
    nan = np.full((1, 7), np.nan, np.float32)
    capfd.readouterr()
    # Before: 10,000 error lines (one per candidate), a 399 KB hold reason, seconds per set.
    probe.pub.publish(candidate_set([nan] * 10_000, stamp_ns=50))
    good = np.full((H, 7), 0.1, np.float32)
    probe.pub.publish(candidate_set([good], stamp_ns=51))
    assert ros.wait_for(lambda: probe.verdicts, timeout_s=15)
    ros.spin_for(0.3)
    # The oversized set was dropped before any candidate was read: no verdict for it.
    assert [conv.from_time(v.header.stamp) for v in probe.verdicts] == [51]
    assert probe.verdicts[0].outcome == "accepted"
    assert node.guard.rejected == {"oversize": 1, "rate": 0, "stamp": 0}
    assert ros.wait_for(lambda: any(_values(s).get("rejected_oversize") == "1"
                                    for s in probe.status()), timeout_s=5)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "rejected" in line]
    assert len(lines) <= 1 and "10000 candidates > limit_k 64" in "".join(lines), err[-2000:]


def test_diagnostics_go_error_then_back_to_ok_after_the_recovery_window(ros):
    _passthrough(ros, Parameter("diagnostics_recovery_s", value=1.5))
    probe = Probe(ros)
    nan, good = np.full((H, 7), np.nan, np.float32), np.full((H, 7), 0.1, np.float32)
    probe.pub.publish(candidate_set([nan, good], stamp_ns=60))  # one bad candidate: an error
    assert ros.wait_for(lambda: probe.verdicts)
    assert probe.verdicts[0].accepted_index == 1
    assert ros.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR for s in probe.status()),
                        timeout_s=5)
    error = [s for s in probe.status() if s.level == DiagnosticStatus.ERROR][0]
    assert "rejected" in error.message and "non-finite" in error.message
    # The node keeps working; with no new error it is OK again after the window ...
    probe.pub.publish(candidate_set([good], stamp_ns=61))
    seen = len(probe.diag)
    assert ros.wait_for(lambda: any(s.level == DiagnosticStatus.OK
                                    for s in probe.status(seen)), timeout_s=6)
    ok = [s for s in probe.status(seen) if s.level == DiagnosticStatus.OK][-1]
    # ... and the last error is kept as a value of its own.
    assert "non-finite" in _values(ok)["last_error"]
    assert float(_values(ok)["last_error_age_s"]) >= 1.5


def test_use_sim_time_can_be_set_at_run_time(ros):
    node = _passthrough(ros)
    # Before: rejected with "unknown setting(s) use_sim_time" by the config's callback.
    result = node.set_parameters([Parameter("use_sim_time", value=True)])[0]
    assert result.successful, result.reason
    assert node.get_parameter("use_sim_time").value is True
    result = node.set_parameters([Parameter("use_sim_time", value=False)])[0]
    assert result.successful, result.reason


def test_oversized_image_and_instruction_are_dropped_and_a_future_stamp_blocks_nothing(
        ros, verifier_file):  # noqa: F811 (the fixture)
    node = _model_node(ros, Parameter("checkpoint", value=str(verifier_file)),
                       Parameter("threshold", value=0.01), Parameter("limit_image_side", value=64),
                       Parameter("limit_instruction_chars", value=100))
    robot = Robot(ros, node)
    now = node.get_clock().now().nanoseconds
    # Images over limit_image_side are not stored (before: kept, whatever their size).
    robot.observe(_observation(now, side=256))  # both cameras
    # An instruction over limit_instruction_chars: the last accepted one stays in use.
    shout = robot.node.create_publisher(String, "instruction", LATCHED_QOS)
    shout.publish(String(data="x" * 1_000_000))
    assert ros.wait_for(lambda: node.guard.rejected["oversize"] == 3)
    assert node.intake.get(now) is None and node.intake.assembler.instruction == INSTRUCTION
    # One observation stamped 25 s in the future: rejected, every part of it ...
    robot.observe(_observation(now + 25 * 10**9))
    assert ros.wait_for(lambda: node.guard.rejected["stamp"] == 4)
    # ... and the real stream after it is served (before: dropped as older, for 25 s).
    for n, stamp in enumerate((now + 1_000, now + 2_000), start=1):
        robot.observe(_observation(stamp))
        assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
        v = robot.propose([np.zeros((H, 7), np.float32)], stamp, n)
        assert v.outcome == "accepted" and conv.from_time(v.header.stamp) == stamp
    values = node.diagnostics.status()[2]
    assert (values["rejected_oversize"], values["rejected_stamp"]) == (3, 4)


@pytest.mark.libero
def test_policy_node_serves_the_real_stream_around_future_and_backward_stamps(
        ros, real_obs):  # noqa: F811 (the fixture)
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="scripted_expert"), Parameter("num_candidates", value=2),
        Parameter("diagnostics_recovery_s", value=1.0)]))
    robot = PolicyRobot(ros, *real_obs)
    now = node.get_clock().now().nanoseconds

    def answered(stamp: int) -> bool:
        robot.publish(stamp)
        return ros.wait_for(lambda: any(conv.from_time(c.header.stamp) == stamp
                                        for c in robot.candidates), timeout_s=15)

    # One observation stamped 25 s in the future: rejected (all 5 parts), not answered ...
    robot.publish(now + 25 * 10**9)
    assert ros.wait_for(lambda: node.guard.rejected["stamp"] == 5)
    # ... and the real observations after it are served (before: dropped for 25 s, then the
    # graph stalled until the simulator's timeout).
    assert answered(now) and answered(now + 1_000_000)
    assert node.diagnostics.status()[0] == DiagnosticStatus.ERROR  # within its window
    # Stamps going backwards: a late part (older by less than stamp_jump_back_s) is ignored;
    # a clock that jumped back (older by more) is followed, not dropped.
    robot.publish(now + 500_000)
    ros.spin_for(0.5)
    assert all(conv.from_time(c.header.stamp) != now + 500_000 for c in robot.candidates)
    assert answered(now - 60 * 10**9) and answered(now - 60 * 10**9 + 1_000_000)
    assert node.assembler.time_jumps == 1
    assert [c.policy_id for c in robot.candidates] == ["scripted_expert"] * 4
    # Healthy again after diagnostics_recovery_s without an error; the last error is kept.
    ros.spin_for(1.2)
    level, message, values = node.diagnostics.status()
    assert (level, message) == (DiagnosticStatus.OK, "sampling")
    assert "s ahead of the clock" in values["last_error"] and values["rejected_stamp"] == 5
