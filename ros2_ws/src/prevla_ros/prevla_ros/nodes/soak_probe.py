"""soak probe: watches a running graph for ``prevla_training.bench_soak`` (changes nothing).

Subscribes the parts of each observation that say it is complete (``joint_states``,
``eef_pose``, ``sim_state``), ``candidates``, ``action_chunk``, ``verdict``, ``episode_status``
and ``/diagnostics``, and hands what it sees to a ``sink`` (ROS-free):

* ``sink.stage(stage, stamp_ns)`` for ``observation`` / ``candidates`` / ``chunk`` of a stamp,
* ``sink.verdict(outcome, total_ms)``, ``sink.episode_done(success)``,
* ``sink.diagnostics(node_name, level, values)`` (each node's last DiagnosticStatus),
* ``sink.sample()`` every ``sample_s`` seconds (the soak reads RSS then).
"""
from __future__ import annotations

from typing import Protocol

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet, EpisodeStatus, SimState, Verdict
from rclpy.node import Node
from sensor_msgs.msg import JointState

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS

#: Observation parts the probe waits for (the small ones: images come first and are not read).
OBSERVATION_PARTS = ((JointState, "joint_states"), (PoseStamped, "eef_pose"),
                     (SimState, "sim_state"))


class SoakSink(Protocol):
    """What the probe reports to."""

    def stage(self, stage: str, stamp_ns: int) -> None: ...
    def verdict(self, outcome: str, total_ms: float) -> None: ...
    def episode_done(self, success: bool) -> None: ...
    def diagnostics(self, node: str, level: int, values: dict[str, str]) -> None: ...
    def sample(self) -> None: ...


class SoakProbe(Node):
    """Reports each decision's stages, verdicts, episode ends and /diagnostics to a sink."""

    def __init__(self, sink: SoakSink, sample_s: float, **kwargs) -> None:
        super().__init__("soak_probe", **kwargs)
        self.sink = sink
        for kind, topic in OBSERVATION_PARTS:
            self.create_subscription(kind, topic, self._on_part, STREAM_QOS)
        self.create_subscription(CandidateSet, "candidates", self._on_candidates, STREAM_QOS)
        self.create_subscription(ActionChunkMsg, "action_chunk", self._on_chunk, STREAM_QOS)
        self.create_subscription(Verdict, "verdict", self._on_verdict, STREAM_QOS)
        self.create_subscription(EpisodeStatus, "episode_status", self._on_status, STATUS_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._done_episodes: set[tuple[int, int]] = set()  # latched: a status may come twice
        self.create_timer(sample_s, sink.sample)

    def _on_part(self, msg) -> None:
        self.sink.stage("observation", conv.from_time(msg.header.stamp))

    def _on_candidates(self, msg: CandidateSet) -> None:
        self.sink.stage("candidates", conv.from_time(msg.header.stamp))

    def _on_chunk(self, msg: ActionChunkMsg) -> None:
        self.sink.stage("chunk", conv.from_time(msg.header.stamp))

    def _on_verdict(self, msg: Verdict) -> None:
        self.sink.verdict(msg.outcome, float(msg.total_ms))

    def _on_status(self, msg: EpisodeStatus) -> None:
        key = (conv.from_time(msg.header.stamp), int(msg.episode))
        if msg.done and key not in self._done_episodes:
            self._done_episodes.add(key)
            if len(self._done_episodes) > 64:  # bounded: only the latched history matters
                self._done_episodes = set(sorted(self._done_episodes)[-32:])
            self.sink.episode_done(bool(msg.success))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            name = status.name.removeprefix("prevla: ")
            level = status.level if isinstance(status.level, int) else ord(status.level)
            self.sink.diagnostics(name, level, {kv.key: kv.value for kv in status.values})
