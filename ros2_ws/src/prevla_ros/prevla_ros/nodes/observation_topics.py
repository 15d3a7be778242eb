"""The topics an observation's parts arrive on, and subscribing a node to them.

sim_node (or a robot driver) publishes every part of one observation under one stamp; the
nodes that assemble observations (policy, verifier, world model) subscribe to the parts they
need through :func:`subscribe_parts`, so each part's topic, message type and conversion is
written once.
"""
from __future__ import annotations

from typing import Any, Callable

from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import SimState
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import LATCHED_QOS, STREAM_QOS
from prevla_ros.runtime.limits import PART_PROBLEMS, InputGuard, text_problem
from prevla_ros.runtime.observation import ObservationAssembler

#: part -> (message type, topic, message -> the part's value, raising ValueError)
PART_TOPICS: dict[str, tuple[type, str, Callable[[Any], Any]]] = {
    "agentview": (Image, "agentview/image_raw", conv.msg_to_image),
    "wrist": (Image, "wrist/image_raw", conv.msg_to_image),
    "joints": (JointState, "joint_states", conv.msg_to_joint_state),
    "eef": (PoseStamped, "eef_pose", lambda msg: conv.msg_to_pose(msg.pose)),
    "objects": (SimState, "sim_state", conv.msg_to_sim_state),
}


def subscribe_parts(node: Node, parts: tuple[str, ...],
                    add: Callable[[int, str, Callable[[], Any]], None],
                    convert: dict[str, Callable[[Any], Any]] | None = None,
                    instruction: ObservationAssembler | None = None,
                    guard: InputGuard | None = None) -> None:
    """Subscribe ``node`` to each part's topic; a message calls ``add(stamp_ns, part,
    lambda: value)``, the conversion deferred so ``add`` decides how to handle its failure.

    ``convert`` replaces a part's conversion (e.g. an image size check of the node's own).
    With ``instruction`` the latched ``instruction`` topic sets that assembler's instruction.
    With ``guard`` every message is first checked against the node's input limits (rate,
    sizes, a stamp from the future; :class:`~prevla_ros.runtime.limits.InputGuard`): a
    rejected one is dropped before it is converted (a rejected instruction leaves the last
    accepted one in use).
    """
    if instruction is not None:
        def on_instruction(msg: String) -> None:
            if guard is None or guard.admit("instruction", msg.data, text_problem):
                instruction.instruction = msg.data

        node.create_subscription(String, "instruction", on_instruction, LATCHED_QOS)
    for part in parts:
        kind, topic, default = PART_TOPICS[part]
        to_value = (convert or {}).get(part, default)

        def on_part(msg, part=part, topic=topic, f=to_value) -> None:
            stamp = conv.from_time(msg.header.stamp)
            if guard is None or guard.admit(topic, msg, PART_PROBLEMS[part], stamp):
                add(stamp, part, lambda: f(msg))

        node.create_subscription(kind, topic, on_part, STREAM_QOS)
