"""A node's one DiagnosticStatus on /diagnostics."""
from __future__ import annotations

from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node

from prevla_ros.conversions import diagnostic_status

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


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
