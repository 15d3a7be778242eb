"""The soak's probe over real rclpy: each decision's stages by stamp, verdicts, one episode end
per latched status however often it arrives, every node's /diagnostics, and its sample timer."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk, CandidateSet, EpisodeStatus, Verdict
from sensor_msgs.msg import JointState

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import ERROR
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS
from prevla_ros.nodes.soak_probe import SoakProbe
from prevla_ros.runtime.types import ActionChunk as Chunk
from tests.ros.fake_robot import candidate_set

pytestmark = pytest.mark.ros


class Sink:
    def __init__(self) -> None:
        self.stages, self.verdicts, self.episodes, self.diag, self.samples = [], [], [], {}, 0

    def stage(self, stage, stamp_ns):
        self.stages.append((stage, stamp_ns))

    def verdict(self, outcome, total_ms):
        self.verdicts.append((outcome, total_ms))

    def episode_done(self, success):
        self.episodes.append(success)

    def diagnostics(self, node, level, values):
        self.diag[node] = (level, values)

    def sample(self):
        self.samples += 1


def test_the_probe_reports_what_passes_by(ros):
    sink = Sink()
    ros.add(SoakProbe(sink, sample_s=0.2, context=ros.context))
    node = ros.node("graph")
    pubs = {name: node.create_publisher(kind, topic, qos) for name, kind, topic, qos in (
        ("joints", JointState, "joint_states", STREAM_QOS),
        ("eef", PoseStamped, "eef_pose", STREAM_QOS),
        ("candidates", CandidateSet, "candidates", STREAM_QOS),
        ("chunk", ActionChunk, "action_chunk", STREAM_QOS),
        ("verdict", Verdict, "verdict", STREAM_QOS),
        ("status", EpisodeStatus, "episode_status", STATUS_QOS),
        ("diag", DiagnosticArray, "/diagnostics", 10))}
    assert ros.wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()))
    stamp = 1_700_000_000_123_456_789
    pubs["joints"].publish(conv.joint_state_to_msg(np.zeros(7), np.zeros(2), stamp))
    pubs["eef"].publish(conv.eef_to_msg(np.zeros(3), np.array([0, 0, 0, 1.0]), stamp))
    pubs["candidates"].publish(candidate_set([np.zeros((8, 7))], stamp))
    pubs["chunk"].publish(conv.chunk_to_msg(Chunk(np.zeros((8, 7), np.float32), "p", stamp)))
    pubs["verdict"].publish(Verdict(outcome="accepted", total_ms=4.5))
    done = EpisodeStatus(episode=3, done=True, success=True)
    done.header = conv.header(stamp)
    pubs["status"].publish(done)
    pubs["status"].publish(done)  # latched history seen again: one episode
    pubs["diag"].publish(DiagnosticArray(status=[conv.diagnostic_status(
        "prevla: sim_node", "/sim_node", ERROR, "bad", {"stale_chunks": 2})]))
    assert ros.wait_for(lambda: len(sink.stages) == 4 and sink.diag and sink.verdicts
                        and sink.episodes and sink.samples >= 2, timeout_s=10)
    ros.spin_for(0.3)
    assert sorted(sink.stages) == sorted([("observation", stamp), ("observation", stamp),
                                          ("candidates", stamp), ("chunk", stamp)])
    assert sink.verdicts == [("accepted", 4.5)] and sink.episodes == [True]
    assert sink.diag == {"sim_node": (2, {"stale_chunks": "2"})}
