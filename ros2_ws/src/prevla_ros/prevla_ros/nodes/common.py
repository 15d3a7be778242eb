"""rclpy glue shared by the nodes: parameters from config dataclasses, QoS, diagnostics."""
from __future__ import annotations

import os
import sys
from dataclasses import fields, replace
from typing import Callable, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from prevla_ros.conversions import diagnostic_status

C = TypeVar("C")

#: Observation and chunk topics: reliable (a lost observation stalls a decision), shallow.
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
#: Latched topics (instruction): late joiners get the last message.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Episode status: latched too, but deep enough that an episode's final status survives the
#: next episode's first one published right after it (depth 1 would overwrite it).
STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def declare_config(node: Node, cls: type[C]) -> C:
    """Declare one ROS parameter per dataclass field (name, default, description) and
    build the config from their values; the dataclass validates (ValueError names the field)."""
    values = {}
    for f in fields(cls):
        descriptor = ParameterDescriptor(description=f.metadata.get("help", ""))
        values[f.name] = node.declare_parameter(f.name, f.default, descriptor).value
    return cls(**values)


def on_config_change(node: Node, current: Callable[[], C],
                     apply: Callable[[C, C], str | None]) -> None:
    """Validate run-time parameter changes through the config dataclass.

    ``apply(old, new)`` returns ``None`` to accept or a reason to reject; a rejected change
    leaves the node running with its current config and logs why.
    """
    def callback(params) -> SetParametersResult:
        old = current()
        try:
            new = replace(old, **{p.name: p.value for p in params})
        except (TypeError, ValueError) as exc:
            node.get_logger().error(f"rejected parameter change: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        reason = apply(old, new)
        if reason is not None:
            node.get_logger().error(f"rejected parameter change: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics once a second."""

    def __init__(self, node: Node, values: Callable[[], tuple[bytes, str, dict[str, object]]]):
        self._node = node
        self._values = values
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish)

    def publish(self) -> None:
        level, message, values = self._values()
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"prevla: {self._node.get_name()}",
                                        self._node.get_fully_qualified_name(), level, message,
                                        values)]
        self._pub.publish(msg)


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """``main()`` body shared by every node: init, spin, clean shutdown; config errors exit 2."""
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.path.expanduser("~"), ".ros", "log"))
    try:
        with rclpy.init(args=args):
            try:
                node = factory()
            except ValueError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                return 2
            try:
                rclpy.spin(node)
            except RuntimeError:
                # A signal can shut the context down while spin() builds its wait set;
                # rclpy then raises RCLError (a RuntimeError) instead of the usual exception.
                if rclpy.ok():
                    raise
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0
