"""A node's one DiagnosticStatus on /diagnostics, its health and its input guard."""
from __future__ import annotations

from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node

from prevla_ros.conversions import diagnostic_status
from prevla_ros.runtime.health import Health
from prevla_ros.runtime.limits import InputGuard

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def guarded(node: Node, config) -> tuple[Health, InputGuard]:
    """The node's :class:`Health` (``config.health``; ``health.error(line)`` records and logs
    an error) and its :class:`InputGuard` (``config.limits``): a rejected input is an error
    event too, logged at most every few seconds; stamps are checked against the node's clock."""
    log = node.get_logger().error
    health = Health(config.health.diagnostics_recovery_s, log)  # health.error logs its line
    guard = InputGuard(config.limits, log, lambda line: health.error(line, log=False),
                       now_ns=lambda: node.get_clock().now().nanoseconds)
    return health, guard


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics once a second.

    ``values()`` gives the node's own state (level, message, values); within ``health``'s
    recovery window after an error the level is ERROR and the message that error. The values
    carry ``last_error`` / ``last_error_age_s`` and the guard's rejection counters.
    """

    def __init__(self, node: Node, values: Callable[[], tuple[bytes, str, dict[str, object]]],
                 health: Health | None = None, guard: InputGuard | None = None):
        self._node = node
        self._values = values
        self._health, self._guard = health, guard
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish)

    def status(self) -> tuple[bytes, str, dict[str, object]]:
        """(level, message, values) as published now."""
        level, message, values = self._values()
        values = dict(values)
        if self._guard is not None:
            values.update(self._guard.values())
        if self._health is not None:
            values.update(self._health.values())
            error = self._health.active()
            if error is not None and level != ERROR:
                level, message = ERROR, error
        return level, message, values

    def publish(self) -> None:
        level, message, values = self.status()
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"prevla: {self._node.get_name()}",
                                        self._node.get_fully_qualified_name(), level, message,
                                        values)]
        self._pub.publish(msg)
