"""Recording over real rclpy: the recorder node writes the graph's topics (the fake robot's
observation parts, a real verifier node's verdicts and chunks, latched instruction and
episode status) into a rosbag2 MCAP bag; an independent reader (mcap + mcap_ros2, not the
rosbags that wrote it) decodes every message type and finds what was published; the size cap,
topic selection, ``prevla inspect`` and frame export, ``prevla record`` as a process
(duration, SIGINT), and bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from prevla_interfaces.msg import CandidateSet, EpisodeStatus
from rclpy.parameter import Parameter

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS
from prevla_ros.nodes.recorder import Recorder
from prevla_ros.nodes.verifier_node import VerifierNode
from prevla_ros.runtime import bag_reader
from prevla_ros.runtime.bag_writer import MESSAGE_OVERHEAD_BYTES, RecordConfig
from prevla_ros.runtime.types import Observation
from tests.ros.fake_robot import FakeRobot, candidate_set

pytestmark = pytest.mark.ros

INSTRUCTION = "put the black bowl on the plate"
GRAPH_TOPICS = {"/agentview/image_raw", "/wrist/image_raw", "/joint_states", "/eef_pose",
                "/instruction", "/episode_status", "/candidates", "/action_chunk", "/verdict",
                "/approved_path"}


def _observation(rng: np.random.Generator, stamp_ns: int) -> Observation:
    return Observation(
        images={c: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
                for c in ("agentview", "wrist")},
        joint_positions=rng.normal(size=7), gripper_qpos=np.array([0.02, -0.02]),
        eef_pos=rng.normal(size=3), eef_quat_xyzw=np.array([0.0, 0.0, 0.0, 1.0]),
        instruction=INSTRUCTION, stamp_ns=stamp_ns)


class Scene:
    """The fake robot, a real passthrough verifier node and an episode-status publisher."""

    def __init__(self, ros) -> None:
        self.ros = ros
        self.robot = FakeRobot(ros, instruction=INSTRUCTION)  # latched before any recorder
        ros.add(VerifierNode(context=ros.context, parameter_overrides=[
            Parameter("verifier", value="passthrough")]))
        self.status = self.robot.node.create_publisher(EpisodeStatus, "episode_status",
                                                       STATUS_QOS)
        self.candidates = self.robot.node.create_publisher(CandidateSet, "candidates",
                                                           STREAM_QOS)
        self.rng = np.random.default_rng(0)
        self.published: dict[str, list] = {"obs": [], "chunks": [], "status": []}
        self.stamp = 1_000_000_000

    def record(self, path: Path, **config) -> Recorder:
        recorder = self.ros.add(Recorder(RecordConfig(out=str(path), **config),
                                         context=self.ros.context))
        wanted = {t for t in GRAPH_TOPICS if recorder.config.wants(t)}
        assert self.ros.wait_for(lambda: wanted <= set(recorder.subscribed) and all(
            s.get_publisher_count() > 0 for s in recorder.subscribed.values())), \
            sorted(wanted - set(recorder.subscribed))
        self.ros.spin_for(0.3)  # matched both ways
        return recorder

    def episode(self, n: int, decisions: int, recorder: Recorder) -> None:
        """``decisions`` observations, each with a "running" status stamped just after it (as
        sim_node stamps them), then a "done" status."""
        for _ in range(decisions):
            self.stamp += 50_000_000
            obs = _observation(self.rng, self.stamp)
            self.robot.observe(obs)
            self._status(n, done=False, stamp_ns=self.stamp + 1000)
            chunk = self.rng.normal(0, 0.3, (8, 7)).astype(np.float32)
            self.candidates.publish(candidate_set([chunk, -chunk], self.stamp))
            self.published["obs"].append(obs)
            self.published["chunks"].append(chunk)
            k = len(self.published["obs"])
            self.ros.wait_for(lambda: recorder.stopped is not None
                              or recorder.bag.counts.get("/verdict", 0) >= k)
        self.stamp += 10_000_000
        self._status(n, done=True, stamp_ns=self.stamp)
        self.ros.spin_for(0.2)

    def _status(self, n: int, done: bool, stamp_ns: int) -> None:
        msg = EpisodeStatus(suite="libero_spatial", task_id=0, episode=n, instruction=INSTRUCTION,
                            state="success" if done else "running", done=done, success=done,
                            step=8 * len(self.published["obs"]), max_steps=220)
        msg.header = conv.header(stamp_ns)
        self.status.publish(msg)
        self.published["status"].append(msg)


@pytest.fixture
def scene(ros):
    return Scene(ros)


def _read_mcap(bag: Path) -> dict[str, list]:
    """Every message of the bag decoded by mcap_ros2 from the bag's own schemas, by topic."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    [file] = bag.glob("*.mcap")
    out: dict[str, list] = {}
    with file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
            out.setdefault(channel.topic, []).append((message.log_time, decoded))
    return out


def test_records_the_graph_and_an_independent_reader_decodes_it(scene, tmp_path):
    bag = tmp_path / "bag"
    recorder = scene.record(bag)
    for n in (1, 2):
        scene.episode(n, decisions=3, recorder=recorder)
    recorder.stop("test done")
    assert recorder.stopped == "test done"

    got = _read_mcap(bag)
    assert GRAPH_TOPICS <= set(got)
    counts = {t: len(v) for t, v in got.items()}
    for topic in ("/agentview/image_raw", "/wrist/image_raw", "/joint_states", "/eef_pose",
                  "/candidates", "/verdict", "/action_chunk"):
        assert counts[topic] == 6, (topic, counts)
    assert counts["/episode_status"] == 8 and counts["/instruction"] == 1  # latched, early
    assert got["/instruction"][0][1].data == INSTRUCTION
    # content: exactly what was published, message by message
    for (_, image), obs in zip(got["/agentview/image_raw"], scene.published["obs"]):
        assert (image.encoding, image.height, image.width) == ("rgb8", 128, 128)
        assert conv.from_time(image.header.stamp) == obs.stamp_ns
        assert bytes(image.data) == obs.images["agentview"].tobytes()
    for (_, joints), obs in zip(got["/joint_states"], scene.published["obs"]):
        np.testing.assert_allclose(joints.position[:7], obs.joint_positions)
    for (_, pose), obs in zip(got["/eef_pose"], scene.published["obs"]):
        np.testing.assert_allclose([pose.pose.position.x, pose.pose.position.y,
                                    pose.pose.position.z], obs.eef_pos)
    for (_, cands), chunk in zip(got["/candidates"], scene.published["chunks"]):
        assert len(cands.candidates) == 2 and cands.policy_id == "test_policy"
        np.testing.assert_array_equal(np.asarray(cands.candidates[1].data, np.float32),
                                      -chunk.ravel())
    for (_, verdict), (_, approved), chunk in zip(got["/verdict"], got["/action_chunk"],
                                                 scene.published["chunks"]):
        assert verdict.outcome == "accepted" and verdict.accepted_index == 0
        assert verdict.verifier_id == "passthrough"
        np.testing.assert_array_equal(np.asarray(approved.data, np.float32), chunk.ravel())
    statuses = [(m.episode, m.done, m.state) for _, m in got["/episode_status"]]
    assert statuses == ([(1, False, "running")] * 3 + [(1, True, "success")]
                        + [(2, False, "running")] * 3 + [(2, True, "success")])
    assert len(got["/approved_path"][0][1].markers) >= 1
    times = [t for msgs in got.values() for t, _ in msgs]
    assert all(t > 0 for t in times)


def test_metadata_is_what_ros2_bag_info_reads(scene, tmp_path):
    bag = tmp_path / "bag"
    recorder = scene.record(bag)
    scene.episode(1, decisions=2, recorder=recorder)
    hashes = {t: str(scene.robot.node.get_publishers_info_by_topic(t)[0].topic_type_hash)
              for t in ("/candidates", "/agentview/image_raw", "/episode_status")}
    recorder.stop("test done")

    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap" and info["version"] >= 8
    assert info["relative_file_paths"] == ["bag.mcap"] and (bag / "bag.mcap").is_file()
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert info["message_count"] == sum(t["message_count"] for t in topics.values())
    assert info["message_count"] == recorder.bag.message_count > 0
    assert info["duration"]["nanoseconds"] > 0
    assert info["starting_time"]["nanoseconds_since_epoch"] > 1_600_000_000 * 10**9
    expected_types = {"/candidates": "prevla_interfaces/msg/CandidateSet",
                      "/verdict": "prevla_interfaces/msg/Verdict",
                      "/episode_status": "prevla_interfaces/msg/EpisodeStatus",
                      "/agentview/image_raw": "sensor_msgs/msg/Image",
                      "/instruction": "std_msgs/msg/String",
                      "/approved_path": "visualization_msgs/msg/MarkerArray"}
    for name, msgtype in expected_types.items():
        meta = topics[name]["topic_metadata"]
        assert meta["type"] == msgtype and meta["serialization_format"] == "cdr"
    for name, rihs01 in hashes.items():  # the definition in the bag is the publishers' type
        assert topics[name]["topic_metadata"]["type_description_hash"] == rihs01
    # offered QoS kept: ros2 bag play republishes latched topics transient-local
    [latched] = topics["/episode_status"]["topic_metadata"]["offered_qos_profiles"]
    assert latched["durability"] == "transient_local" and latched["reliability"] == "reliable"
    [stream] = topics["/agentview/image_raw"]["topic_metadata"]["offered_qos_profiles"]
    assert stream["durability"] == "volatile"
    assert topics["/episode_status"]["message_count"] == 3
    assert info["custom_data"]["prevla.stopped"] == "test done"


def test_size_cap_stops_with_a_valid_bag(scene, tmp_path):
    bag = tmp_path / "bag"
    cap = 0.2  # MB: about four 128x128 images
    recorder = scene.record(bag, max_mb=cap)
    scene.episode(1, decisions=6, recorder=recorder)
    assert recorder.stopped is not None and "size cap 0.2 MB reached" in recorder.stopped
    assert recorder.bag.closed and recorder.bag.bytes <= cap * 1e6
    got = _read_mcap(bag)  # readable: summary and metadata written
    n = sum(len(v) for v in got.values())
    assert n == recorder.bag.message_count and 0 < len(got["/agentview/image_raw"]) < 6
    payload = (bag / "bag.mcap").stat().st_size
    assert payload <= cap * 1e6 + 32_000, payload  # + schemas and summary
    assert recorder.bag.bytes + 128 * 128 * 3 + MESSAGE_OVERHEAD_BYTES > cap * 1e6
    info = bag_reader.inspect_bag(bag)
    assert info.message_count == n and "size cap" in info.stopped


def test_stop_keeps_messages_not_yet_handed_over(scene, tmp_path):
    """Messages received but not yet spun out (the demo stops the executor as soon as the
    monitor sees the last status) are written when the recording stops."""
    bag = tmp_path / "bag"
    recorder = scene.record(bag, topics="agentview/image_raw")
    for _ in range(3):
        scene.stamp += 50_000_000
        scene.robot.observe(_observation(scene.rng, scene.stamp))
    time.sleep(0.5)  # delivered to the subscription's queue, no executor spin
    assert recorder.bag.message_count == 0
    recorder.stop("test done")
    assert len(_read_mcap(bag)["/agentview/image_raw"]) == 3


def test_inspect_a_bag_without_episode_status(scene, tmp_path):
    """A robot's bag (no sim, so no episode_status): topics are listed, no episodes."""
    bag = tmp_path / "bag"
    recorder = scene.record(bag, topics="agentview/image_raw")
    scene.episode(1, decisions=2, recorder=recorder)
    scene.ros.spin_for(0.5)
    recorder.stop("test done")
    info = bag_reader.inspect_bag(bag)
    assert [t.topic for t in info.topics] == ["/agentview/image_raw"] and info.episodes == []


def test_topic_selection(scene, tmp_path):
    bag = tmp_path / "bag"
    recorder = scene.record(bag, topics="agentview/image_raw,/episode_status,verdict",
                            exclude="verdict")
    scene.episode(1, decisions=2, recorder=recorder)
    scene.ros.spin_for(0.5)
    recorder.stop("test done")
    got = _read_mcap(bag)
    assert set(got) == {"/agentview/image_raw", "/episode_status"}
    assert len(got["/agentview/image_raw"]) == 2


def test_inspect_and_frame_export(scene, tmp_path, capsys):
    bag = tmp_path / "bag"
    recorder = scene.record(bag)
    for n in (1, 2, 3):
        scene.episode(n, decisions=n + 1, recorder=recorder)  # 2, 3 and 4 frames
    recorder.stop("test done")

    info = bag_reader.inspect_bag(bag)
    by_topic = {t.topic: t for t in info.topics}
    assert by_topic["/agentview/image_raw"].count == 9
    assert by_topic["/candidates"].msgtype == "prevla_interfaces/msg/CandidateSet"
    assert by_topic["/agentview/image_raw"].bytes > 9 * 128 * 128 * 3
    assert by_topic["/agentview/image_raw"].rate_hz > 0
    assert [(e["episode"], e["state"]) for e in info.episodes] == [
        (1, "success"), (2, "success"), (3, "success")]
    assert bag_reader.main([str(bag)]) == 0
    table = capsys.readouterr().out
    assert "/agentview/image_raw" in table and "sensor_msgs/msg/Image" in table
    assert "episode 2: success" in table

    out = tmp_path / "frames"
    assert bag_reader.main([str(bag), "--export-frames", str(out), "--episode", "2"]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["ep002_0000.png", "ep002_0001.png", "ep002_0002.png"]
    for f, obs in zip(files, scene.published["obs"][2:5]):  # episode 2 = frames 2..4
        np.testing.assert_array_equal(cv2.imread(str(f))[..., ::-1], obs.images["agentview"])
    every = bag_reader.export_frames(bag, tmp_path / "all", topic="wrist/image_raw")
    assert len(every) == 9 and every[-1].name == "ep003_0003.png"
    with pytest.raises(ValueError, match="episode 7 is not in the bag.*1, 2, 3"):
        bag_reader.export_frames(bag, tmp_path / "x", episode=7)
    with pytest.raises(ValueError, match="no topic /nope"):
        bag_reader.export_frames(bag, tmp_path / "x", topic="nope")


def _record_process(bag: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prevla_ros.cli", "record", "--out", str(bag),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stop", ["duration", "sigint"])
def test_prevla_record_command(scene, tmp_path, stop):
    bag = tmp_path / "bag"
    extra = ("--duration", "6") if stop == "duration" else ()
    proc = _record_process(bag, "--topics", "agentview/image_raw,instruction", *extra)
    try:
        # its subscription shows up on the robot's publisher once it has discovered the graph
        assert scene.ros.wait_for(lambda: scene.robot.images["agentview"].get_subscription_count()
                                  > 0, timeout_s=30), proc.stderr.read() if proc.poll() else ""
        scene.ros.spin_for(0.5)
        for _ in range(3):
            scene.stamp += 50_000_000
            scene.robot.observe(_observation(scene.rng, scene.stamp))
            scene.ros.spin_for(0.2)
        if stop == "sigint":
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert ("SIGINT received" if stop == "sigint" else "duration 6 s reached") in out
    got = _read_mcap(bag)
    assert len(got["/agentview/image_raw"]) == 3 and got["/instruction"][0][1].data == INSTRUCTION


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a ROS topic name: 'a b'"):
        RecordConfig(out=str(tmp_path / "b"), topics="a b")
    with pytest.raises(ValueError, match="max_mb: must be a number >= 0"):
        RecordConfig(out=str(tmp_path / "b"), max_mb=-1)
    with pytest.raises(ValueError, match="exists already"):
        RecordConfig(out=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "prevla_ros.cli", "record", "--out",
                             str(tmp_path), "--duration", "1"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "exists already" in result.stderr
    result = subprocess.run([sys.executable, "-m", "prevla_ros.cli", "inspect", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not a rosbag2 directory" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_episode_of_assigns_frames_around_done_statuses():
    class S:
        def __init__(self, episode, done):
            self.episode, self.done = episode, done

    statuses = [(10, S(1, False)), (20, S(1, False)), (30, S(1, True)), (41, S(2, False))]
    assert bag_reader.episode_of(5, statuses) == 1  # before any status: the first episode
    assert bag_reader.episode_of(25, statuses) == 1
    assert bag_reader.episode_of(40, statuses) == 2  # after a done: the next episode
    assert bag_reader.episode_of(50, statuses) == 2
    assert bag_reader.episode_of(35, statuses[:3]) is None  # after the last episode ended
    assert bag_reader.episode_of(35, []) is None


def test_decode_image_rejects_what_it_cannot_export():
    class Img:
        encoding, height, width, step = "16UC1", 2, 2, 4
        data = np.zeros(8, np.uint8)

    with pytest.raises(ValueError, match="cannot export '16UC1'"):
        bag_reader.decode_image(Img)
    Img.encoding, Img.step = "bgr8", 6
    with pytest.raises(ValueError, match="cannot hold 8 bytes"):
        bag_reader.decode_image(Img)
    Img.data = np.arange(12, dtype=np.uint8)
    assert bag_reader.decode_image(Img)[0, 0].tolist() == [2, 1, 0]


@pytest.mark.libero
def test_records_a_real_libero_episode(ros, tmp_path):
    """sim_node (LIBERO), the scripted expert and a passthrough verifier: the bag holds the
    episode, ``prevla inspect`` reports it and its exported frames are the ones the episode
    monitor saved (first and last agent-view frame, by another path)."""
    from prevla_ros.nodes.monitor import EpisodeMonitor
    from prevla_ros.nodes.policy_node import PolicyNode
    from prevla_ros.nodes.sim_node import SimNode

    monitor = ros.add(EpisodeMonitor(tmp_path / "monitor", expected_episodes=1,
                                     context=ros.context))
    recorder = ros.add(Recorder(RecordConfig(out=str(tmp_path / "bag")), context=ros.context))
    ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough")]))
    ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="scripted_expert")]))
    ros.add(SimNode(context=ros.context, parameter_overrides=[
        Parameter("control_rate_hz", value=0.0), Parameter("episodes", value=1),
        Parameter("max_steps", value=40), Parameter("start_delay_s", value=2.0)]))
    assert ros.wait_for(lambda: monitor.finished, timeout_s=240)
    ros.spin_for(0.5)
    recorder.stop("episode over")

    info = bag_reader.inspect_bag(tmp_path / "bag")
    by_topic = {t.topic: t for t in info.topics}
    decisions = monitor.episodes[0]["decisions"]
    assert decisions >= 3
    assert by_topic["/verdict"].count == decisions
    assert by_topic["/agentview/image_raw"].count >= decisions
    assert by_topic["/sim_state"].msgtype == "prevla_interfaces/msg/SimState"
    assert [e["episode"] for e in info.episodes] == [1] and info.episodes[0]["done"]
    files = bag_reader.export_frames(tmp_path / "bag", tmp_path / "frames", episode=1)
    assert len(files) == by_topic["/agentview/image_raw"].count
    frames = tmp_path / "monitor" / "frames"
    for exported, saved in ((files[0], "ep001_first.png"), (files[-1], "ep001_last.png")):
        np.testing.assert_array_equal(cv2.imread(str(exported)), cv2.imread(str(frames / saved)))
    assert cv2.imread(str(files[0])).std() > 5  # a real render
