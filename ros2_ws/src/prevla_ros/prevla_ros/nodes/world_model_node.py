"""world_model_node: chunks in; the frames the world model imagines for them out.

A managed (lifecycle) node (:class:`~prevla_ros.nodes.lifecycle.ManagedNode`): *configure*
loads, checks and warms up the world model (an unusable one fails the transition, naming the
file and why), *activate* subscribes the inputs and lets the outputs out, *deactivate*
unsubscribes and stops publishing (the model stays loaded), *cleanup* frees the model.
``/diagnostics`` reports the state in every state, and warns when more than one node publishes
on the chunk topic it reads (``source``; :class:`~prevla_ros.nodes.diagnostics.PublisherWatch`).

Subscribes (while active): ``agentview/image_raw`` (sensor_msgs/Image), ``eef_pose`` (PoseStamped) and
``joint_states`` (the fingers), assembled into observations by stamp; and, by ``source``,
``action_chunk`` (ActionChunk: what the verifier approved), ``candidates`` (every candidate
of the policy's CandidateSet, ungated) or ``imagine_candidates`` (the set verifier_node
forwards in mode imagine).
Publishes: ``imagined/image_raw`` (sensor_msgs/Image, rgb8), ``imagined_path``
(visualization_msgs/MarkerArray), ``/diagnostics``.

Each chunk (at most ``max_candidates`` per observation) is rolled out from the observation
whose stamp it carries. Per observation one image is published, stamped with that
observation's stamp: a grid with one row per chunk (in the order received, so best first for
``imagine_candidates``) and one column per imagined frame (``frames_per_chunk``, left to right
in time), each cell frame_size x frame_size (64 px): rviz shows it as an Image display beside
the real camera. Chunks whose observation is still arriving wait for it up to
``OBSERVATION_WAIT_S`` (:class:`~prevla_ros.runtime.observation.ObservationWait`). Bad input
(malformed or wrongly sized image, NaN or wrongly shaped chunk, no matching observation) is
logged in one line and counted; a message over the input limits (K, chunk length, image side,
rate, a stamp from the future: :class:`~prevla_ros.runtime.limits.InputLimits`) is dropped
before it is read, counted and logged at most every few seconds; the node stays up either way.
"""
from __future__ import annotations

import numpy as np
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker, MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import OK, WARN, Diagnostics, guarded
from prevla_ros.nodes.lifecycle import ManagedNode
from prevla_ros.nodes.observation_topics import subscribe_parts
from prevla_ros.nodes.params import STREAM_QOS, declare_config
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime.configs import WorldModelNodeConfig
from prevla_ros.runtime.imagination import Imaginer, RateGate, tile
from prevla_ros.runtime.limits import candidate_set_problem, chunk_problem, summary
from prevla_ros.runtime.observation import OBSERVATION_WAIT_S, ObservationIntake, ObservationWait
from prevla_ros.runtime.types import Observation

IMAGINED_RGBA = (0.2, 0.5, 1.0, 0.9)  # blue: approved paths are green, holds red
KEEP_OBSERVATIONS = 8


class WorldModelNode(ManagedNode):
    """Imagines the frames of approved chunks or candidates and publishes them for rviz
    (while active)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("world_model_node", **kwargs)
        self.config = c = declare_config(self, WorldModelNodeConfig)  # ValueError names a field
        self.health, self.guard = guarded(self, c)
        self.imaginer: Imaginer | None = None  # loaded by configure
        self.intake: ObservationIntake | None = None
        self.waiting: ObservationWait | None = None
        self.rate = RateGate(c.max_rate_hz)
        self._ms_total = 0.0
        self._stats = {"imagined_frames": 0, "imagined_chunks": 0, "imagined_observations": 0,
                       "last_ms_per_frame": 0.0, "mean_ms_per_frame": 0.0, "errors": 0}
        self._image_pub = self.create_lifecycle_publisher(Image, "imagined/image_raw",
                                                          STREAM_QOS)
        self._marker_pub = self.create_lifecycle_publisher(MarkerArray, "imagined_path", 5)
        self.diagnostics = Diagnostics(self, self.lifecycle_status(self._diagnostics),
                                       self.health, self.guard)
        self.diagnostics.watch(self._source_topic)  # anyone on the domain could send chunks

    @property
    def _source_topic(self) -> str:
        return "action_chunk" if self.config.source == "approved" else self.config.source

    # --- lifecycle ------------------------------------------------------------------------
    def load(self) -> None:
        c = self.config
        try:
            imaginer, checked = Imaginer.from_checkpoint(c.checkpoint, c.device,
                                                         c.artifacts.allow_unverified_models)
        except Exception as exc:  # noqa: BLE001 -- whatever broke: the configure fails, saying why
            raise RuntimeError(f"world model {c.checkpoint or '(zoo default)'} unusable: "
                               f"{exc}") from exc
        imaginer.every(c.frames_per_chunk)
        self.imaginer = imaginer
        self.drop_work()
        log = self.get_logger()
        (log.warning if checked.problem else log.info)(
            f"world model {checked.path} on {imaginer.device}, sha256 {checked.sha256}, "
            f"{c.frames_per_chunk} frames per chunk, source {c.source}"
            + (f"; UNVERIFIED (allow_unverified_models is true): {checked.problem}"
               if checked.problem else ""))

    def subscribe_inputs(self) -> None:
        subscribe_parts(self, self.intake.assembler.required, self.waiting.add,
                        {"agentview": self._image}, guard=self.guard)
        if self.config.source == "approved":
            self.create_subscription(ActionChunkMsg, "action_chunk", self._on_chunk, STREAM_QOS)
        else:
            self.create_subscription(CandidateSetMsg, self.config.source, self._on_set,
                                     STREAM_QOS)
        self.create_timer(OBSERVATION_WAIT_S / 4, self.waiting.expire)

    def drop_work(self) -> None:
        """Held chunks and stored observations are dropped."""
        self.intake = ObservationIntake(("agentview", "joints", "eef"), KEEP_OBSERVATIONS,
                                        self.config.limits.stamp_jump_back_s)
        self.waiting = ObservationWait(self.intake, self._process, self._error)

    def unload(self) -> None:
        self.imaginer = self.intake = self.waiting = None

    # --- observations ---------------------------------------------------------------------
    def _image(self, msg: Image) -> np.ndarray:
        image = conv.msg_to_image(msg)
        problem = self.imaginer.image_problem(image) if self.imaginer else None
        if problem:
            raise ValueError(problem)
        return image

    # --- chunks ---------------------------------------------------------------------------
    def _on_chunk(self, msg: ActionChunkMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        if not self.guard.admit("action_chunk", msg, chunk_problem, stamp):
            return  # over a limit: dropped before it is read (counted, logged)
        try:
            chunks = [conv.msg_to_chunk(msg).actions]
        except ValueError as exc:
            self._error(f"stamp {stamp}: malformed action_chunk: {exc}")
            return
        self.waiting.offer(stamp, chunks)

    def _on_set(self, msg: CandidateSetMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        if not self.guard.admit(self.config.source, msg, candidate_set_problem, stamp):
            return  # over a limit: dropped before any candidate is read (counted, logged)
        chunks = conv.msg_to_candidate_arrays(msg)
        if chunks:  # an empty gated set: the verifier forwarded nothing, nothing to do
            self.waiting.offer(stamp, chunks)

    # --- imagination ----------------------------------------------------------------------
    def _process(self, stamp: int, chunks: list[np.ndarray]) -> None:
        obs = self.intake.get(stamp)
        if obs is None:
            why = self.intake.malformed.get(stamp, "not received or already evicted")
            self._error(f"stamp {stamp}: no matching observation ({why}); "
                        f"{len(chunks)} chunk(s) not imagined")
            return
        c = self.config
        problems = {i: p for i, a in enumerate(chunks) if (p := self.imaginer.chunk_problem(a))}
        if problems:  # one line per message, however many chunks it had
            self._error(f"stamp {stamp}: {len(problems)} chunk(s) not imagined: "
                        f"{summary(problems)}")
        good = [a for i, a in enumerate(chunks) if i not in problems]
        good = good[:c.max_candidates]
        if not good or not self.rate.allow():  # above max_rate_hz: dropped, counted
            return
        try:
            frames, ms = self.imaginer.imagine(obs, np.stack(good), c.frames_per_chunk)
        except (ValueError, RuntimeError) as exc:
            self._error(f"stamp {stamp}: the world model could not imagine: {exc}")
            return
        self._publish(obs, good, frames, ms)

    def _publish(self, obs: Observation, chunks: list[np.ndarray], frames: np.ndarray,
                 ms: float) -> None:
        c, stamp = self.config, obs.stamp_ns
        self._image_pub.publish(conv.image_to_msg(tile(frames), stamp, c.frame_id))
        markers = [Marker(header=conv.header(stamp, c.marker_frame), action=Marker.DELETEALL)]
        for i, actions in enumerate(chunks):  # DELETEALL: fewer chunks than last time
            markers += conv.path_markers(conv.chunk_path(obs.eef_pos, actions), stamp,
                                         f"imagined_path/{i}", IMAGINED_RGBA,
                                         c.marker_frame).markers
        self._marker_pub.publish(MarkerArray(markers=markers))
        n = int(frames.shape[0] * frames.shape[1])
        s = self._stats
        s["imagined_frames"] += n
        s["imagined_chunks"] += len(chunks)
        s["imagined_observations"] += 1
        self._ms_total += ms
        s["last_ms_per_frame"] = round(ms / n, 3)
        s["mean_ms_per_frame"] = round(self._ms_total / s["imagined_frames"], 3)

    def _error(self, line: str) -> None:
        self._stats["errors"] += 1
        self.health.error(line)

    def _diagnostics(self):
        values = {**self._stats, "observations": self.waiting.observations if self.waiting else 0,
                  "skipped": self.rate.skipped, "source": self.config.source,
                  "device": self.imaginer.device if self.imaginer else "none"}
        if self._stats["imagined_frames"] == 0:
            return WARN, f"waiting for chunks on {self.config.source}", values
        return OK, f"imagined {self._stats['imagined_frames']} frames", values


def main(args: list[str] | None = None) -> int:
    return run_node(WorldModelNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
