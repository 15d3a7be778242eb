"""The fake robot of the node tests: publishes an observation's parts under one stamp, the way
sim_node does, so a test can feed the policy, verifier and world-model nodes by hand."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import CandidateSet, SimState
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import LATCHED_QOS, STREAM_QOS
from prevla_ros.runtime.types import ActionChunk as Chunk
from prevla_ros.runtime.types import CAMERAS, Observation
from prevla_ros.runtime.types import CandidateSet as Candidates


def candidate_set(arrays, stamp_ns: int, policy_id: str = "test_policy") -> CandidateSet:
    """A policy's CandidateSet message of ``arrays`` (one chunk each) for ``stamp_ns``."""
    return conv.candidates_to_msg(Candidates(
        chunks=[Chunk(np.asarray(a, np.float32), policy_id, stamp_ns) for a in arrays],
        temperatures=[1.0] * len(arrays), seeds=list(range(len(arrays))),
        policy_id=policy_id, stamp_ns=stamp_ns))


class FakeRobot:
    """Publishers of every observation part on its own test node (``self.node``).

    Args:
        ros: the test's :class:`~tests.conftest.RosHarness`.
        name: the node's name.
        instruction: published once on the latched ``instruction`` topic, if given.
        sim_state: also publish the privileged object poses (``sim_state``).
    """

    def __init__(self, ros, name: str = "robot", instruction: str | None = None,
                 sim_state: bool = False) -> None:
        self.ros = ros
        self.node = node = ros.node(name)
        self.images = {c: node.create_publisher(Image, f"{c}/image_raw", STREAM_QOS)
                       for c in CAMERAS}
        self.joints = node.create_publisher(JointState, "joint_states", STREAM_QOS)
        self.eef = node.create_publisher(PoseStamped, "eef_pose", STREAM_QOS)
        self.state = (node.create_publisher(SimState, "sim_state", STREAM_QOS) if sim_state
                      else None)
        if instruction is not None:
            node.create_publisher(String, "instruction", LATCHED_QOS).publish(
                String(data=instruction))

    def observe(self, obs: Observation, stamp_ns: int | None = None,
                agentview: Image | None = None, joints: JointState | None = None) -> None:
        """Publish every part of ``obs`` under ``stamp_ns`` (default: its own stamp);
        ``agentview`` / ``joints`` replace those parts' messages (to send a bad one)."""
        t = obs.stamp_ns if stamp_ns is None else stamp_ns
        self.images["agentview"].publish(agentview if agentview is not None else
                                         conv.image_to_msg(obs.images["agentview"], t,
                                                           "agentview_camera"))
        self.images["wrist"].publish(conv.image_to_msg(obs.images["wrist"], t, "wrist_camera"))
        self.joints.publish(joints if joints is not None else
                            conv.joint_state_to_msg(obs.joint_positions, obs.gripper_qpos, t))
        self.eef.publish(conv.eef_to_msg(obs.eef_pos, obs.eef_quat_xyzw, t))
        if self.state is not None:
            self.state.publish(conv.sim_state_to_msg(obs.objects, t))

    def connected(self, *publishers) -> None:
        """Wait until every publisher has a subscriber (the node under test is up)."""
        assert self.ros.wait_for(lambda: all(p.get_subscription_count() > 0
                                             for p in publishers))
