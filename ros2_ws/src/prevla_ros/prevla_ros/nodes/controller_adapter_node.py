"""controller_adapter_node: approved action chunks in; a real robot's Cartesian commands out.

Subscribes: ``action_chunk`` (prevla_interfaces/ActionChunk, what verifier_node approved).
Publishes, every control period (``control_rate_hz``): ``twist_command``
(geometry_msgs/TwistStamped, m/s and rad/s in ``frame_id``: remap it to MoveIt Servo's
``~/delta_twist_cmds`` or another Cartesian velocity controller's input) and, once a chunk has
set one, ``gripper_command`` (std_msgs/Float64MultiArray: a forward_command_controller's
``~/commands``); ``/diagnostics``. Service: ``~/reset_estop`` (prevla_interfaces/ResetEStop,
the fields of std_srvs/Trigger) clears a latched emergency stop.

The rules — one action per period, velocity and acceleration limits by norm, the blend to
hold when the next chunk is late or stale, the latched e-stop on an out-of-range chunk — are
:class:`~prevla_ros.runtime.controller.ChunkController`'s; this node wires it up. A chunk over
the input limits (length, rate, a stamp from the future) is dropped before it is read, counted
and logged at most every few seconds; one out of range latches the e-stop (ERROR in
/diagnostics until reset). A plain node (not a lifecycle one): it commands nothing before a
chunk arrives but a zero twist. See docs/controller.md.
"""
from __future__ import annotations

from geometry_msgs.msg import TwistStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.srv import ResetEStop
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import ERROR, OK, WARN, Diagnostics, guarded
from prevla_ros.nodes.params import STREAM_QOS, declare_config
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime import limits
from prevla_ros.runtime.configs import ControllerAdapterConfig
from prevla_ros.runtime.controller import (ESTOP, ESTOPPED, EXECUTING, IGNORED, STALE,
                                           ChunkController, Command)


class ControllerAdapterNode(Node):
    """Steps approved chunks into twist and gripper commands at the control rate."""

    def __init__(self, **kwargs) -> None:
        super().__init__("controller_adapter_node", **kwargs)
        self.config = declare_config(self, ControllerAdapterConfig)
        self.health, self.guard = guarded(self, self.config)
        self.controller = ChunkController(self.config.controller,
                                          self.config.limits.stamp_jump_back_s)
        self._twist_pub = self.create_publisher(TwistStamped, "twist_command", STREAM_QOS)
        self._gripper_pub = self.create_publisher(Float64MultiArray, "gripper_command",
                                                  STREAM_QOS)
        self.create_subscription(ActionChunkMsg, "action_chunk", self._on_chunk, STREAM_QOS)
        self.create_service(ResetEStop, "~/reset_estop", self._on_reset)
        self.create_timer(self.config.controller.dt, self._tick)
        self.diagnostics = Diagnostics(self, self._diagnostics, self.health, self.guard)
        self.diagnostics.watch("action_chunk")  # a second publisher could move the robot

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_chunk(self, msg: ActionChunkMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        if not self.guard.admit("action_chunk", msg, limits.chunk_problem, stamp_ns=stamp):
            return  # over a limit: dropped before it is read (counted, logged)
        result = self.controller.submit(msg.data, msg.horizon,
                                        msg.action_dim, stamp, self._now(), msg.source)
        if result.outcome == ESTOPPED:
            self.health.error(f"EMERGENCY STOP latched: {self.controller.estop_reason}; zero "
                              "twist until ~/reset_estop")
        elif result.outcome == IGNORED:
            self.get_logger().warning(f"ignoring chunk for stamp {stamp}: {result.reason}",
                                      throttle_duration_sec=limits.LOG_EVERY_S)
        elif result.outcome == STALE:
            self.get_logger().warning(f"stale chunk for stamp {stamp} from '{msg.source}': "
                                      f"{result.reason}; not executed",
                                      throttle_duration_sec=limits.LOG_EVERY_S)

    def _tick(self) -> None:
        self.publish(self.controller.step())

    def publish(self, command: Command) -> None:
        """One period's twist, and its gripper command once one is known."""
        msg = TwistStamped()
        msg.header = conv.header(self._now(), self.config.frame_id)
        (msg.twist.linear.x, msg.twist.linear.y,
         msg.twist.linear.z) = (float(v) for v in command.linear)
        (msg.twist.angular.x, msg.twist.angular.y,
         msg.twist.angular.z) = (float(v) for v in command.angular)
        self._twist_pub.publish(msg)
        if command.gripper is not None:
            self._gripper_pub.publish(Float64MultiArray(
                data=[float(command.gripper)] * self.config.gripper_command_size))

    def _on_reset(self, request, response):
        response.success, response.message = self.controller.reset(self._now())
        self.get_logger().warning(f"~/reset_estop: {response.message}")
        return response

    def _diagnostics(self):
        c = self.controller
        values = c.values()
        if c.state == ESTOP:
            return ERROR, f"EMERGENCY STOP latched: {c.estop_reason}", values
        if c.state == EXECUTING:
            return OK, "executing", values
        return WARN, f"holding: {c.hold_reason}", values


def main(args: list[str] | None = None) -> int:
    return run_node(ControllerAdapterNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
