"""A node's one DiagnosticStatus on /diagnostics, its health, its input guard and its watch
on who publishes the command topics it consumes (:class:`PublisherWatch`)."""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node

from prevla_ros.conversions import diagnostic_status
from prevla_ros.runtime.health import Health
from prevla_ros.runtime.limits import LOG_EVERY_S, InputGuard

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _rank(level: bytes | int) -> int:
    return level if isinstance(level, int) else ord(level)


def guarded(node: Node, config) -> tuple[Health, InputGuard]:
    """The node's :class:`Health` (``config.health``; ``health.error(line)`` records and logs
    an error) and its :class:`InputGuard` (``config.limits``): a rejected input is an error
    event too, logged at most every few seconds; stamps are checked against the node's clock."""
    log = node.get_logger().error
    health = Health(config.health.diagnostics_recovery_s, log)  # health.error logs its line
    guard = InputGuard(config.limits, log, lambda line: health.error(line, log=False),
                       now_ns=lambda: node.get_clock().now().nanoseconds)
    return health, guard


class PublisherWatch:
    """Who publishes on a topic the node takes commands from (``candidates``,
    ``action_chunk``): anyone on the DDS domain can, so more than one publisher is reported.

    :meth:`check` (on the 1 Hz diagnostics timer) reads the ROS graph
    (``get_publishers_info_by_topic``); with more than ``expected`` publishers it returns a
    warning naming every publishing node, else None. Each change of the set of publishers is
    logged in one line while there are too many (a warning), and one more (info) when back to
    normal, at most one line per ``log_every_s``: a flapping intruder cannot flood the log.

    Args:
        node: the watching node (the topic name is resolved in its namespace).
        topic: the watched topic.
        expected: how many publishers are normal (1: the graph's own).
    """

    def __init__(self, node: Node, topic: str, expected: int = 1,
                 log_every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node, self.topic, self.expected = node, topic, expected
        self.log_every_s, self.clock = log_every_s, clock
        self.publishers: list[str] = []  # fully qualified node names, one per publisher
        self._logged: list[str] = []  # the publishers last warned about ([]: none)
        self._last_log = -float("inf")

    @property
    def key(self) -> str:
        """The diagnostics value's name: ``publishers_<topic>``."""
        return "publishers_" + self.topic.strip("/").replace("/", "_")

    def check(self) -> str | None:
        """Read the graph now; the warning to report, or None."""
        try:
            infos = self.node.get_publishers_info_by_topic(self.topic)
        except Exception:  # noqa: BLE001 -- a context shutting down: keep the last reading
            infos = None
        if infos is not None:
            self.publishers = sorted(_fq(i.node_namespace, i.node_name) for i in infos)
        warning = self.warning()
        # One line per change worth telling: too many publishers (again, or others), or back
        # to normal after a warning; at most one per log_every_s (the next check catches up).
        if ((warning and self.publishers != self._logged) or (not warning and self._logged)) \
                and self.clock() - self._last_log >= self.log_every_s:
            self._last_log = self.clock()
            self._logged = list(self.publishers) if warning else []
            log = self.node.get_logger()
            if warning:
                log.warning(warning)
            else:
                log.info(f"back to {len(self.publishers)} publisher(s) on {self.topic}: "
                         f"{_names(self.publishers) or 'none'}")
        return warning

    def warning(self) -> str | None:
        """The warning for the last reading, or None."""
        n = len(self.publishers)
        if n <= self.expected:
            return None
        return (f"{n} publishers on {self.topic} (expected {self.expected}): "
                f"{_names(self.publishers)}; a second publisher can command this node")


def _fq(namespace: str, name: str) -> str:
    return f"{namespace.rstrip('/')}/{name}"


def _names(nodes: list[str]) -> str:
    counts = Counter(nodes)
    return ", ".join(n if c == 1 else f"{n} (x{c})" for n, c in sorted(counts.items()))


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics once a second.

    ``values()`` gives the node's own state (level, message, values); within ``health``'s
    recovery window after an error the level is ERROR and the message that error. The values
    carry ``last_error`` / ``last_error_age_s``, the guard's rejection counters and, for each
    :class:`PublisherWatch`, ``publishers_<topic>``; a watch that sees too many publishers
    raises the level to at least WARN and adds its warning to the message.
    """

    def __init__(self, node: Node, values: Callable[[], tuple[bytes, str, dict[str, object]]],
                 health: Health | None = None, guard: InputGuard | None = None):
        self._node = node
        self._values = values
        self._health, self._guard = health, guard
        self.watches: list[PublisherWatch] = []
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish)

    def watch(self, topic: str) -> PublisherWatch:
        """Also watch ``topic``'s publishers (see :class:`PublisherWatch`)."""
        w = PublisherWatch(self._node, topic)
        self.watches.append(w)
        return w

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
        for w in self.watches:
            warning = w.check()
            values[w.key] = len(w.publishers)
            if warning:
                message = warning if level == OK else f"{message}; {warning}"
                level = max(level, WARN, key=_rank)
        return level, message, values

    def publish(self) -> None:
        level, message, values = self.status()
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"prevla: {self._node.get_name()}",
                                        self._node.get_fully_qualified_name(), level, message,
                                        values)]
        self._pub.publish(msg)
