"""world_model_node over real rclpy: imagined frames and paths for approved chunks and
candidate sets, bad input and a missing model reported without dying; and verifier_node in
mode imagine gating which candidates the world model rolls out."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from prevla_interfaces.msg import ActionChunk, CandidateSet, Verdict
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker, MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.lifecycle import bring_up
from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.nodes.world_model_node import WorldModelNode
from prevla_ros.runtime.imagination import Imaginer, RateGate, tile
from prevla_ros.runtime.types import ActionChunk as Chunk
from prevla_ros.runtime.types import Observation
from tests.ros.fake_robot import FakeRobot, candidate_set

pytestmark = pytest.mark.ros

S, H, F = 128, 8, 64  # camera side, chunk horizon, imagined frame side


@pytest.fixture(scope="module")
def wm_file(tmp_path_factory):
    """A tiny (untrained) world model of the real architecture: fast on CPU."""
    import torch
    from prevla_models.world_model import WorldModel, WorldModelConfig, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wm") / "wm.pt"
    save_checkpoint(str(path), WorldModel(WorldModelConfig(width=8, latent_channels=8, hidden=16)))
    return path


def _observation(stamp_ns: int, side: int = S) -> Observation:
    rng = np.random.default_rng(stamp_ns)
    return Observation(
        images={cam: rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
                for cam in ("agentview", "wrist")},
        joint_positions=np.zeros(7), gripper_qpos=np.array([0.02, -0.02]),
        eef_pos=np.array([0.1, 0.0, 1.0]), eef_quat_xyzw=np.array([0.0, 0.0, 0.0, 1.0]),
        stamp_ns=stamp_ns)


def _chunk(value: float) -> np.ndarray:
    actions = np.full((H, 7), value, np.float32)
    actions[:, 6] = -1.0
    return actions


class Robot(FakeRobot):
    """The fake robot, plus chunks; records what the world model (and verifier) say."""

    def __init__(self, ros):
        super().__init__(ros)
        n = self.node
        self.chunk = n.create_publisher(ActionChunk, "action_chunk", STREAM_QOS)
        self.candidates = n.create_publisher(CandidateSet, "candidates", STREAM_QOS)
        self.got = {"images": [], "markers": [], "diag": [], "gated": [], "verdicts": [],
                    "chunks": []}
        n.create_subscription(Image, "imagined/image_raw", self.got["images"].append, STREAM_QOS)
        n.create_subscription(MarkerArray, "imagined_path", self.got["markers"].append, 5)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.got["diag"].append, 10)
        n.create_subscription(CandidateSet, "imagine_candidates", self.got["gated"].append,
                              STREAM_QOS)
        n.create_subscription(Verdict, "verdict", self.got["verdicts"].append, STREAM_QOS)
        n.create_subscription(ActionChunk, "action_chunk", self.got["chunks"].append, STREAM_QOS)

    def diag(self, name: str = "world_model_node") -> dict[str, str]:
        for msg in reversed(self.got["diag"]):
            for status in msg.status:
                if status.name == f"prevla: {name}":
                    return {"message": status.message, "level": status.level,
                            **{kv.key: kv.value for kv in status.values}}
        return {}


def _wm_node(ros, checkpoint, **params) -> WorldModelNode:
    overrides = [Parameter("checkpoint", value=str(checkpoint)),
                 Parameter("max_rate_hz", value=0.0)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(WorldModelNode(context=ros.context, parameter_overrides=overrides))


def _expected(wm_file, obs, chunks, frames_per_chunk=4) -> np.ndarray:
    imaginer, _ = Imaginer.from_checkpoint(str(wm_file), "cpu")
    return tile(imaginer.imagine(obs, np.stack(chunks), frames_per_chunk)[0])


def test_candidates_are_imagined_as_one_grid_per_observation_with_markers(ros, wm_file):
    node = _wm_node(ros, wm_file, source="candidates", max_candidates=3)
    robot = Robot(ros)
    robot.connected(robot.candidates, robot.eef, robot.images["agentview"])
    obs = _observation(1_000)
    robot.observe(obs)
    assert ros.wait_for(lambda: len(node.intake.observations) == 1)
    chunks = [_chunk(0.1), np.full((H, 7), np.nan, np.float32), _chunk(-0.2), _chunk(0.3),
              _chunk(0.4)]
    robot.candidates.publish(candidate_set(chunks, 1_000))
    assert ros.wait_for(lambda: robot.got["images"] and robot.got["markers"])
    img = robot.got["images"][0]
    # The NaN candidate is skipped (and counted); the first 3 valid ones make 3 rows of
    # 4 frames (every 2nd of the 8 actions), each 64x64.
    assert (img.height, img.width, img.encoding) == (3 * F, 4 * F, "rgb8")
    assert conv.from_time(img.header.stamp) == 1_000 and img.header.frame_id == "agentview_camera"
    np.testing.assert_array_equal(conv.msg_to_image(img),
                                  _expected(wm_file, obs, [chunks[0], chunks[2], chunks[3]]))
    markers = robot.got["markers"][0].markers
    assert markers[0].action == Marker.DELETEALL and len(markers) == 1 + 3 * 2
    assert {m.ns for m in markers[1:]} == {"imagined_path/0", "imagined_path/1", "imagined_path/2"}
    assert len(markers[1].points) == H + 1 and markers[1].color.b > markers[1].color.g
    ros.spin_for(1.1)
    d = robot.diag()
    assert d["imagined_frames"] == "12" and d["errors"] == "1" and d["imagined_chunks"] == "3"
    assert float(d["last_ms_per_frame"]) > 0 and float(d["mean_ms_per_frame"]) > 0


def test_approved_chunks_bad_input_and_rate_limit(ros, wm_file):
    node = _wm_node(ros, wm_file, frames_per_chunk=2)
    robot = Robot(ros)
    robot.connected(robot.chunk, robot.eef, robot.images["agentview"])
    # A chunk that arrives before its observation waits for it.
    robot.chunk.publish(conv.chunk_to_msg(Chunk(_chunk(0.5), "vla", 10)))
    ros.spin_for(0.2)
    obs = _observation(10)
    robot.observe(obs)
    assert ros.wait_for(lambda: robot.got["images"])
    img = robot.got["images"][0]
    assert (img.height, img.width) == (F, 2 * F) and conv.from_time(img.header.stamp) == 10
    np.testing.assert_array_equal(conv.msg_to_image(img),
                                  _expected(wm_file, obs, [_chunk(0.5)], frames_per_chunk=2))
    # NaN chunk, wrong horizon, an image the model cannot take, no observation at all:
    # one error each, no image, the node stays up.
    robot.chunk.publish(conv.chunk_to_msg(Chunk(np.full((H, 7), np.nan, np.float32), "vla", 10)))
    robot.chunk.publish(conv.chunk_to_msg(Chunk(np.zeros((5, 7), np.float32), "vla", 10)))
    bad = _observation(20, side=100)
    robot.observe(bad, agentview=conv.image_to_msg(bad.images["agentview"], 20, "agentview"))
    ros.spin_for(0.2)
    robot.chunk.publish(conv.chunk_to_msg(Chunk(_chunk(0.1), "vla", 20)))
    robot.chunk.publish(conv.chunk_to_msg(Chunk(_chunk(0.1), "vla", 5)))  # older than any
    ros.spin_for(1.2)
    assert len(robot.got["images"]) == 1
    d = robot.diag()
    # Errors: NaN chunk, short chunk, malformed image, its chunk, the orphan chunk.
    assert d["errors"] == "5" and d["imagined_observations"] == "1"
    # Still imagining; above max_rate_hz, work is dropped and counted.
    node.rate = RateGate(0.2)  # one per 5 s: the second observation is always too soon
    for stamp in (30, 40):
        robot.observe(_observation(stamp))
        ros.spin_for(0.1)
        robot.chunk.publish(conv.chunk_to_msg(Chunk(_chunk(0.2), "vla", stamp)))
        ros.spin_for(0.2)
    assert ros.wait_for(lambda: len(robot.got["images"]) == 2)
    ros.spin_for(1.1)
    assert robot.diag()["skipped"] == "1" and len(robot.got["images"]) == 2


def test_missing_checkpoint_fails_configure_and_the_node_stays_up_reporting_it(ros, tmp_path):
    node = _wm_node(ros, tmp_path / "missing.pt", source="candidates")
    robot = Robot(ros)
    assert node.lifecycle_state == "unconfigured" and node.imaginer is None
    assert "missing.pt" in node.transition_error and "unusable" in node.transition_error
    assert robot.candidates.get_subscription_count() == 0  # it takes no input
    robot.candidates.publish(candidate_set([_chunk(0.1)], 7))
    assert ros.wait_for(lambda: robot.diag(), timeout_s=5)
    ros.spin_for(0.2)
    assert robot.got["images"] == [] and robot.got["markers"] == []
    d = robot.diag()
    assert d["level"] == DiagnosticStatus.ERROR and d["lifecycle_state"] == "unconfigured"
    assert "unusable" in d["message"] and "missing.pt" in d["message"]


def test_an_unverified_world_model_is_refused_unless_the_node_opts_in(ros, wm_file, tmp_path):
    import shutil

    unrecorded = tmp_path / "unrecorded_wm.pt"
    shutil.copy(wm_file, unrecorded)  # no FILE.sha256 sidecar, in no manifest
    node = _wm_node(ros, unrecorded, source="candidates")
    assert node.imaginer is None and "refusing unverified model file" in node.transition_error
    assert str(unrecorded) in node.transition_error and node.lifecycle_state == "unconfigured"
    ros.executor.remove_node(node)
    ros.nodes.remove(node)
    node.destroy_node()
    node = _wm_node(ros, unrecorded, source="candidates", allow_unverified_models=True)
    assert node.imaginer is not None and node.lifecycle_state == "active"


class ScriptedScorer:
    """Fixed (P(safe), advantage) per candidate, looked up by the chunk's first value."""

    verifier_id = "scripted"
    threshold = 0.5
    table = {0.1: (0.9, 0.1), 0.2: (0.3, 5.0), 0.3: (0.7, 1.0), 0.4: (0.65, 2.0),
             0.5: (0.95, 0.5)}

    def score(self, obs, candidates):
        rows = [self.table[round(float(c[0, 0]), 3)] for c in candidates]
        return (np.array([r[0] for r in rows], np.float32),
                np.array([r[1] for r in rows], np.float32))


def test_verifier_in_imagine_mode_gates_what_the_world_model_imagines(ros, wm_file, tmp_path):
    from prevla_ros.nodes.verifier_node import VerifierNode

    verifier = ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="model"), Parameter("mode", value="imagine"),
        Parameter("imagine_threshold", value=0.6), Parameter("imagine_max_candidates", value=2)]),
        activate=False)
    verifier.models.load = ScriptedScorer  # what configure loads: scores known in advance
    assert bring_up(verifier)
    node = _wm_node(ros, wm_file, source="imagine_candidates")
    robot = Robot(ros)
    robot.connected(robot.candidates, robot.eef, robot.images["wrist"])
    obs = _observation(500)
    robot.observe(obs)
    assert ros.wait_for(lambda: len(node.intake.observations) == 1 and len(verifier.intake.observations) == 1)
    chunks = [_chunk(v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    robot.candidates.publish(candidate_set(chunks, 500))
    assert ros.wait_for(lambda: robot.got["images"] and robot.got["verdicts"])
    # P(safe) >= 0.6: 0.1 (adv 0.1), 0.3 (1.0), 0.4 (2.0), 0.5 (0.5); the best two by
    # advantage: 0.4 then 0.3. 0.2 (P(safe) 0.3, best advantage) is never imagined.
    [gated] = robot.got["gated"]
    assert conv.from_time(gated.header.stamp) == 500 and gated.policy_id == "test_policy"
    assert [c.data[0] for c in gated.candidates] == pytest.approx([0.4, 0.3])
    assert list(gated.seeds) == [3, 2]
    verdict = robot.got["verdicts"][0]
    assert verdict.mode == Verdict.MODE_IMAGINE and verdict.accepted_index == 3
    assert verdict.rounds == 1 and verdict.samples_drawn == 5
    img = robot.got["images"][0]
    assert (img.height, img.width) == (2 * F, 4 * F)
    np.testing.assert_array_equal(conv.msg_to_image(img),
                                  _expected(wm_file, obs, [chunks[3], chunks[2]]))
    ros.spin_for(0.3)
    assert robot.got["chunks"] == []  # imagine mode executes nothing
