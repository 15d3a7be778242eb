"""rclpy glue for settings: the QoS profiles of prevla's topics, and ROS parameters declared
from a node's config dataclass (:mod:`prevla_ros.runtime.settings`)."""
from __future__ import annotations

from typing import Callable, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from prevla_ros.runtime.settings import build, settings, update

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


def declare_config(node: Node, cls: type[C]) -> C:
    """Declare one ROS parameter per setting of config ``cls`` (sections flattened: name,
    default, description; read-only unless the setting is marked ``runtime``) and build the
    config from their values; the dataclass validates (ValueError names the field)."""
    values = {}
    for s in settings(cls).values():
        descriptor = ParameterDescriptor(description=s.help, read_only=not s.runtime)
        values[s.name] = node.declare_parameter(s.name, s.default, descriptor).value
    return build(cls, values)


def on_config_change(node: Node, current: Callable[[], C],
                     apply: Callable[[C, C], str | None]) -> None:
    """Validate run-time parameter changes through the config dataclass.

    ``apply(old, new)`` returns ``None`` to accept or a reason to reject; a rejected change
    leaves the node running with its current config and logs why. Parameters that are not the
    config's (rclpy's own ``use_sim_time``, another callback's) are left to their owners.
    """
    def callback(params) -> SetParametersResult:
        old = current()
        known = settings(type(old))
        changes = {p.name: p.value for p in params if p.name in known}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = update(old, changes)
        except (TypeError, ValueError) as exc:
            node.get_logger().error(f"rejected parameter change: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        reason = apply(old, new)
        if reason is not None:
            node.get_logger().error(f"rejected parameter change: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)
