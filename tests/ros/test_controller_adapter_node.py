"""controller_adapter_node over real rclpy: a test node publishes ActionChunk messages the way
verifier_node does and plays the robot's controllers, recording the twist and gripper streams:
the control rate, the limits and the ramp, the blend to hold when the next chunk is late,
stale chunks, the latched e-stop and its reset service, malformed input, bad parameters."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from prevla_interfaces.msg import ActionChunk
from prevla_interfaces.srv import ResetEStop
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.controller_adapter_node import ControllerAdapterNode
from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.runtime.types import ActionChunk as Chunk

pytestmark = pytest.mark.ros

NAME = "controller_adapter_node"
S = 1_000_000_000


def actions(h: int, pos=(0.0, 0.0, 0.0), rot=(0.0, 0.0, 0.0), gripper=1.0) -> np.ndarray:
    a = np.zeros((h, 7), np.float32)
    a[:, :3], a[:, 3:6], a[:, 6] = pos, rot, gripper
    return a


class Controllers:
    """The robot's side: publishes approved chunks, records what a servo and a gripper
    controller would receive, calls the reset service."""

    def __init__(self, ros):
        self.ros = ros
        n = self.node = ros.node("robot_controllers")
        self.chunks = n.create_publisher(ActionChunk, "action_chunk", STREAM_QOS)
        self.twists: list[TwistStamped] = []
        self.grippers: list[Float64MultiArray] = []
        self.diags: list[DiagnosticArray] = []
        n.create_subscription(TwistStamped, "twist_command", self.twists.append, STREAM_QOS)
        n.create_subscription(Float64MultiArray, "gripper_command", self.grippers.append,
                              STREAM_QOS)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.reset_client = n.create_client(ResetEStop, f"/{NAME}/reset_estop")
        assert ros.wait_for(lambda: self.chunks.get_subscription_count() > 0 and self.twists)

    def now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def send(self, a: np.ndarray, stamp_ns: int | None = None, source: str = "vla") -> int:
        stamp = self.now() if stamp_ns is None else stamp_ns
        self.chunks.publish(conv.chunk_to_msg(Chunk(a, source, stamp)))
        return stamp

    def send_raw(self, horizon: int, action_dim: int, data, stamp_ns: int | None = None):
        self.chunks.publish(ActionChunk(header=conv.header(stamp_ns or self.now()),
                                        horizon=horizon, action_dim=action_dim,
                                        data=[float(v) for v in data], source="fuzz"))

    def linear(self, since: int = 0) -> np.ndarray:
        return np.array([[t.twist.linear.x, t.twist.linear.y, t.twist.linear.z]
                         for t in self.twists[since:]]).reshape(-1, 3)

    def angular(self, since: int = 0) -> np.ndarray:
        return np.array([[t.twist.angular.x, t.twist.angular.y, t.twist.angular.z]
                         for t in self.twists[since:]]).reshape(-1, 3)

    def reset(self) -> ResetEStop.Response:
        assert self.ros.wait_for(self.reset_client.service_is_ready)
        future = self.reset_client.call_async(ResetEStop.Request())
        assert self.ros.wait_for(future.done)
        return future.result()

    def diag(self) -> dict[str, object]:
        for msg in reversed(self.diags):
            for status in msg.status:
                if status.name == f"prevla: {NAME}":
                    return {"message": status.message, "level": status.level,
                            **{kv.key: kv.value for kv in status.values}}
        return {}

    def fresh_diag(self) -> dict[str, object]:
        """The next /diagnostics status published from now on."""
        n = len(self.diags)
        assert self.ros.wait_for(lambda: len(self.diags) > n and self.diag(), timeout_s=3.0)
        return self.diag()


def _adapter(ros, **params) -> ControllerAdapterNode:
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(ControllerAdapterNode(context=ros.context, parameter_overrides=overrides))


def _motion(values: np.ndarray) -> list[float]:
    """The x values from the first non-zero one on, rounded (idle zeros before it dropped)."""
    xs = [round(float(v), 6) for v in values]
    first = next((i for i, v in enumerate(xs) if v != 0.0), len(xs))
    return xs[first:]


def test_a_chunk_runs_at_the_control_rate_within_the_limits_then_blends_to_hold(ros):
    _adapter(ros, gripper_command_size=2)  # 20 Hz, 0.25 m/s, 2 m/s^2, 1 rad/s, 8 rad/s^2
    robot = Controllers(ros)
    ros.spin_for(0.3)
    assert not robot.linear().any() and robot.grippers == []  # idle: zero twist, no gripper
    assert robot.fresh_diag()["level"] == DiagnosticStatus.WARN
    start = len(robot.twists)
    robot.send(actions(8, pos=(1.0, 0.0, 0.0), rot=(0.0, 0.0, 1.0), gripper=1.0))
    assert ros.wait_for(lambda: len(robot.twists) > start + 20)
    # 1 m/s and 10 rad/s asked for, ramped at 0.1 m/s and 0.4 rad/s per period, clipped at
    # 0.25 m/s and 1 rad/s; 8 actions, then the next chunk is late: down at the same rates.
    assert _motion(robot.linear(start)[:, 0])[:14] == \
        [0.1, 0.2] + [0.25] * 6 + [0.15, 0.05] + [0.0] * 4
    assert _motion(robot.angular(start)[:, 2])[:14] == \
        [0.4, 0.8] + [1.0] * 6 + [0.6, 0.2] + [0.0] * 4
    lin, ang = robot.linear(), robot.angular()
    assert np.all(np.linalg.norm(lin, axis=1) <= 0.25 + 1e-9)
    assert np.all(np.linalg.norm(np.diff(lin, axis=0), axis=1) <= 0.1 + 1e-9)
    assert np.all(np.linalg.norm(np.diff(ang, axis=0), axis=1) <= 0.4 + 1e-9)
    assert {t.header.frame_id for t in robot.twists} == {"base_link"}
    # The control rate, from the twists' own stamps.
    stamps = np.array([conv.from_time(t.header.stamp) for t in robot.twists]) / S
    assert 0.045 <= float(np.mean(np.diff(stamps))) <= 0.075, np.diff(stamps)
    # Closed (0.0) for each of the gripper's two joints, every period since the first action,
    # also while holding.
    assert robot.grippers and all(list(g.data) == [0.0, 0.0] for g in robot.grippers)
    d = robot.fresh_diag()
    assert d["level"] == DiagnosticStatus.WARN and d["message"].startswith("holding: next chunk")
    assert (d["chunks_executed"], d["actions_executed"], d["late"], d["holds"]) == \
        ("1", "8", "1", "1")
    assert d["state"] == "holding" and d["estops"] == "0"


def test_stale_chunks_are_not_executed_and_the_running_chunk_goes_on(ros):
    _adapter(ros, max_chunk_age_s=0.5)
    robot = Controllers(ros)
    robot.send(actions(8, pos=(1.0, 0.0, 0.0)), robot.now() - 2 * S)  # 2 s old
    ros.spin_for(0.4)
    assert not robot.linear().any() and robot.grippers == []
    assert robot.fresh_diag()["stale"] == "1"
    start = len(robot.twists)
    stamp = robot.send(actions(10, pos=(0.1, 0.0, 0.0)))  # 0.1 m/s: within every limit
    ros.spin_for(0.12)
    robot.send(actions(10, pos=(-1.0, 0.0, 0.0)), stamp - S // 10)  # older than the running one
    assert ros.wait_for(lambda: len(robot.twists) > start + 16)
    assert _motion(robot.linear(start)[:, 0])[:12] == [0.1] * 10 + [0.0] * 2
    d = robot.fresh_diag()
    assert (d["stale"], d["chunks_executed"], d["late"], d["holds"]) == ("2", "1", "0", "1")
    assert "not newer than the last accepted" in d["hold_reason"]


def test_an_out_of_range_chunk_latches_the_estop_until_the_reset_service(ros):
    node = _adapter(ros, diagnostics_recovery_s=0.5)
    robot = Controllers(ros)
    start = len(robot.twists)
    robot.send(actions(40, pos=(1.0, 0.0, 0.0), gripper=1.0))
    assert ros.wait_for(lambda: any(robot.linear(start)[:, 0] >= 0.25))
    bad = actions(8, pos=(0.1, 0.0, 0.0))
    bad[3, 2] = np.nan
    robot.send(bad)
    ros.spin_for(0.5)
    # Zero at once, no ramp down (0.15, 0.05 never appear), and it stays zero.
    xs = _motion(robot.linear(start)[:, 0])
    stop = xs.index(0.0)
    assert set(xs[:stop]) <= {0.1, 0.2, 0.25} and set(xs[stop:]) == {0.0} and len(xs) - stop > 5
    assert robot.grippers[-1].data[0] == 0.0  # the gripper keeps its last command (closed)
    d = robot.fresh_diag()
    assert d["level"] == DiagnosticStatus.ERROR and "EMERGENCY STOP latched" in d["message"]
    assert "non-finite" in d["estop_reason"] and d["estops"] == "1" and d["state"] == "estop"
    # Ignored while latched, however good.
    before_reset = robot.send(actions(8, pos=(1.0, 0.0, 0.0)))
    ros.spin_for(0.3)
    assert set(_motion(robot.linear(start)[:, 0])[stop:]) == {0.0}
    assert node.controller.counters["ignored_while_estopped"] == 1
    reply = robot.reset()
    assert reply.success and "cleared" in reply.message and "non-finite" in reply.message
    # A chunk planned before the reset (0.3 s old: young enough) stays stale; a new one moves
    # the robot again.
    robot.send(actions(8, pos=(1.0, 0.0, 0.0)), before_reset)
    ros.spin_for(0.3)
    assert set(_motion(robot.linear(start)[:, 0])[stop:]) == {0.0}
    assert "not newer" in node.controller.hold_reason
    after = len(robot.twists)
    robot.send(actions(60, pos=(1.0, 0.0, 0.0)))
    assert ros.wait_for(lambda: robot.linear(after)[:, 0].max(initial=0.0) >= 0.25)
    d = robot.fresh_diag()
    assert d["estops"] == "1" and d["stale"] == "1" and d["chunks_executed"] == "2"
    assert d["level"] == DiagnosticStatus.OK and d["state"] == "executing"  # recovered
    assert robot.reset().message == "no e-stop latched"


def test_malformed_chunks_latch_the_estop_oversize_ones_are_dropped_the_node_stays_up(ros):
    node = _adapter(ros, limit_chunk_length=16)
    robot = Controllers(ros)
    # Over the input limits: dropped before they are read, no e-stop.
    robot.send(actions(32, pos=(1.0, 0.0, 0.0)))
    robot.send(actions(8, pos=(1.0, 0.0, 0.0)), robot.now() + 10 * S)  # 10 s in the future
    ros.spin_for(0.3)
    d = robot.fresh_diag()
    assert (d["rejected_oversize"], d["rejected_stamp"], d["estops"]) == ("1", "1", "0")
    assert d["state"] == "idle" and not robot.linear().any()
    # Out of range: each one latches the e-stop, and the reset clears it.
    cases = [(4, 7, [0.0] * 27, "wrong shape"), (4, 6, [0.0] * 24, "wrong shape"),
             (2, 7, [0.0] * 6 + [5.0] + [0.0] * 7, "hard_max_abs_action"),
             (2, 7, [0.0] * 13 + [float("inf")], "non-finite"),
             (0, 7, [], "wrong shape")]
    for i, (h, dim, data, why) in enumerate(cases, 1):
        robot.send_raw(h, dim, data)
        assert ros.wait_for(lambda: node.controller.state == "estop"), why
        assert why in node.controller.estop_reason
        assert robot.reset().success and node.controller.counters["estops"] == i
    start = len(robot.twists)
    robot.send(actions(4, pos=(0.1, 0.0, 0.0)))
    assert ros.wait_for(lambda: robot.linear(start)[:, 0].max(initial=0.0) > 0.0)
    assert robot.fresh_diag()["estops"] == str(len(cases))


@pytest.mark.parametrize("name, value", [("control_rate_hz", 0.0),
                                         ("hard_max_abs_action", 0.5),
                                         ("gripper_command_size", 0)])
def test_a_bad_parameter_stops_the_node_at_startup_naming_it(ros, name, value):
    with pytest.raises(ValueError, match=f"ControllerAdapterConfig.{name}"):
        ControllerAdapterNode(context=ros.context, parameter_overrides=[Parameter(name,
                                                                                  value=value)])
