"""verifier_node: candidate sets in; the approved action chunk, a verdict and rviz markers out.

Subscribes: ``candidates`` (prevla_interfaces/CandidateSet), ``eef_pose`` (PoseStamped).
Publishes: ``action_chunk`` (ActionChunk), ``verdict`` (Verdict), ``approved_path``
(visualization_msgs/MarkerArray), ``/diagnostics``.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from prevla_interfaces.msg import Verdict
from rclpy.node import Node
from visualization_msgs.msg import MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.common import (ERROR, OK, WARN, STREAM_QOS, Diagnostics, declare_config,
                                     run_node)
from prevla_ros.runtime.configs import VerifierNodeConfig
from prevla_ros.runtime.scheduler import OUTCOME_HOLD, Scheduler, SchedulerConfig
from prevla_ros.runtime.types import GRIPPER_OPEN

APPROVED_RGBA = (0.1, 0.9, 0.2, 1.0)
HOLD_RGBA = (0.9, 0.2, 0.1, 1.0)


class VerifierNode(Node):
    """Runs the scheduler on every candidate set and publishes what it approved."""

    def __init__(self, **kwargs) -> None:
        super().__init__("verifier_node", **kwargs)
        self.config = declare_config(self, VerifierNodeConfig)
        self.scheduler = Scheduler(SchedulerConfig(
            mode=self.config.mode, verifier=self.config.verifier,
            action_dim=self.config.action_dim, max_abs_action=self.config.max_abs_action,
            hold_horizon=self.config.hold_horizon))
        self._eef: np.ndarray | None = None
        self._last_gripper = GRIPPER_OPEN
        self._stats = {"decisions": 0, "holds": 0, "rejected_candidates": 0,
                       "last_verify_ms": 0.0, "last_outcome": ""}
        self._chunk_pub = self.create_publisher(ActionChunkMsg, "action_chunk", STREAM_QOS)
        self._verdict_pub = self.create_publisher(Verdict, "verdict", STREAM_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, "approved_path", 5)
        self.create_subscription(CandidateSetMsg, "candidates", self._on_candidates, STREAM_QOS)
        self.create_subscription(PoseStamped, "eef_pose", self._on_eef, STREAM_QOS)
        Diagnostics(self, self._diagnostics)
        self.get_logger().info(f"verifier '{self.config.verifier}' in {self.config.mode} mode")

    def _on_eef(self, msg: PoseStamped) -> None:
        try:
            self._eef, _ = conv.msg_to_pose(msg.pose)
        except ValueError as exc:
            self.get_logger().error(f"ignoring eef_pose: {exc}")

    def _on_candidates(self, msg: CandidateSetMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        decision = self.scheduler.decide(conv.msg_to_candidate_arrays(msg), stamp_ns=stamp,
                                         last_gripper=self._last_gripper,
                                         source=msg.policy_id)
        for index, why in decision.rejected.items():
            self.get_logger().error(f"candidate #{index} from '{msg.policy_id}' rejected: {why}")
        if decision.outcome == OUTCOME_HOLD:
            self.get_logger().warning(f"publishing hold chunk: {decision.reason}")
            self._stats["holds"] += 1
        self._last_gripper = float(decision.chunk.actions[-1, -1])
        self._chunk_pub.publish(conv.chunk_to_msg(decision.chunk))
        self._verdict_pub.publish(conv.decision_to_verdict(
            decision, stamp, self.config.mode, self.scheduler.verifier_id))
        if self._eef is not None:
            rgba = HOLD_RGBA if decision.outcome == OUTCOME_HOLD else APPROVED_RGBA
            self._marker_pub.publish(conv.path_markers(
                conv.chunk_path(self._eef, decision.chunk.actions), stamp, "approved_path",
                rgba, self.config.marker_frame))
        self._stats["decisions"] += 1
        self._stats["rejected_candidates"] += len(decision.rejected)
        self._stats["last_verify_ms"] = round(decision.verify_ms, 3)
        self._stats["last_outcome"] = decision.outcome

    def _diagnostics(self):
        if self._stats["decisions"] == 0:
            return WARN, "waiting for candidates", self._stats
        level = ERROR if self._stats["last_outcome"] == OUTCOME_HOLD else OK
        return level, f"last decision: {self._stats['last_outcome']}", self._stats


def main(args: list[str] | None = None) -> int:
    return run_node(VerifierNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
