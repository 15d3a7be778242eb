"""verifier_node over real rclpy: approved chunk, verdict, markers, bad candidates, params;
the learned verifier scoring candidates against the observation they answer; its backend and
hot-swapping its model while candidate sets stream in."""
from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk, CandidateSet, Verdict
from prevla_interfaces.srv import SwapModel
from rclpy.parameter import Parameter
from visualization_msgs.msg import Marker, MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.nodes.verifier_node import VerifierNode
from prevla_ros.runtime.types import Observation
from tests.ros.fake_robot import FakeRobot, candidate_set

pytestmark = pytest.mark.ros


@pytest.fixture
def graph(ros):
    node = ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough")]))
    probe = ros.node("probe")
    got = {"chunks": [], "verdicts": [], "markers": [], "diag": [], "text": []}
    probe.create_subscription(ActionChunk, "action_chunk", got["chunks"].append, STREAM_QOS)
    probe.create_subscription(Verdict, "verdict", got["verdicts"].append, STREAM_QOS)
    probe.create_subscription(MarkerArray, "approved_path", got["markers"].append, 5)
    probe.create_subscription(Marker, "verdict_text", got["text"].append, 5)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
    pub = probe.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    eef = probe.create_publisher(PoseStamped, "eef_pose", STREAM_QOS)
    assert ros.wait_for(lambda: pub.get_subscription_count() > 0 and
                        eef.get_subscription_count() > 0)
    return ros, node, pub, eef, got


def test_approves_first_valid_candidate_and_publishes_markers(graph):
    ros, node, pub, eef, got = graph
    eef.publish(conv.eef_to_msg(np.array([0.1, 0.0, 1.0]), np.array([0, 0, 0, 1.0]), 5))
    ros.spin_for(0.3)
    good = np.full((8, 7), 0.5, np.float32)
    pub.publish(candidate_set([good, -good], stamp_ns=42))
    assert ros.wait_for(lambda: got["chunks"] and got["verdicts"] and got["markers"])
    chunk = conv.msg_to_chunk(got["chunks"][0], expected_dim=7)
    np.testing.assert_allclose(chunk.actions, good)
    assert chunk.stamp_ns == 42 and chunk.source == "test_policy"
    verdict = got["verdicts"][0]
    assert verdict.accepted_index == 0 and verdict.outcome == "accepted"
    assert verdict.mode == Verdict.MODE_EXECUTE and verdict.samples_drawn == 2
    assert verdict.verifier_id == "passthrough"
    line = got["markers"][0].markers[0]
    assert len(line.points) == 9
    assert line.points[-1].x == pytest.approx(0.1 + 8 * 0.5 * conv.OSC_POS_SCALE, abs=1e-5)
    assert ros.wait_for(lambda: got["text"])  # the verdict as text, above the end effector
    text = got["text"][0]
    assert text.type == Marker.TEXT_VIEW_FACING and text.header.stamp == verdict.header.stamp
    assert text.text and text.pose.position.z > 1.0


def test_invalid_candidates_are_skipped_and_all_invalid_gives_hold(graph):
    ros, node, pub, _, got = graph
    nan = np.full((8, 7), np.nan, np.float32)
    wrong_dim = np.zeros((8, 6), np.float32)
    good = np.zeros((8, 7), np.float32)
    good[:, 6] = 1.0  # gripper closed
    pub.publish(candidate_set([nan, wrong_dim, good], stamp_ns=7))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 1)
    v = got["verdicts"][0]
    assert v.accepted_index == 2 and v.outcome == "accepted"
    assert v.safety_probs[0] == 0.0 and v.safety_probs[1] == 0.0
    # Everything invalid: a hold chunk that keeps the gripper closed, and the node lives on.
    pub.publish(candidate_set([nan, wrong_dim], stamp_ns=8))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 2)
    v = got["verdicts"][1]
    assert v.accepted_index == -1 and v.outcome == "hold"
    assert "non-finite" in v.reason and "dimension 6" in v.reason
    hold = conv.msg_to_chunk(got["chunks"][1])
    assert hold.source == "hold" and np.all(hold.actions[:, :6] == 0)
    assert np.all(hold.actions[:, 6] == 1.0)
    # A malformed message (data length does not fit the declared shape) is survived too.
    bad = candidate_set([good], stamp_ns=9)
    bad.candidates[0].data = bad.candidates[0].data[:-3]
    pub.publish(bad)
    assert ros.wait_for(lambda: len(got["verdicts"]) == 3)
    assert got["verdicts"][2].outcome == "hold"
    pub.publish(candidate_set([good], stamp_ns=10))
    assert ros.wait_for(lambda: len(got["verdicts"]) == 4)
    assert got["verdicts"][3].outcome == "accepted"


def test_parameters_are_declared_with_descriptions(ros):
    node = ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough")]))
    for name in ("verifier", "checkpoint", "threshold", "mode", "action_dim", "max_abs_action",
                 "hold_horizon", "marker_frame", "imagine_threshold", "imagine_max_candidates"):
        assert node.has_parameter(name)
        assert node.describe_parameter(name).description


@pytest.mark.parametrize("name, value", [("mode", "fly"), ("threshold", 1.5)])
def test_bad_parameter_fails_at_startup_naming_the_field(ros, name, value):
    with pytest.raises(ValueError, match=name):
        VerifierNode(context=ros.context, parameter_overrides=[
            Parameter("verifier", value="passthrough"), Parameter(name, value=value)])


def test_imagine_mode_forwards_a_gated_set_and_executes_nothing(ros):
    ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough"), Parameter("mode", value="imagine"),
        Parameter("imagine_max_candidates", value=2)]))
    probe = ros.node("probe")
    got = {"gated": [], "verdicts": [], "chunks": []}
    probe.create_subscription(CandidateSet, "imagine_candidates", got["gated"].append, STREAM_QOS)
    probe.create_subscription(Verdict, "verdict", got["verdicts"].append, STREAM_QOS)
    probe.create_subscription(ActionChunk, "action_chunk", got["chunks"].append, STREAM_QOS)
    pub = probe.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    assert ros.wait_for(lambda: pub.get_subscription_count() > 0)
    good = np.full((8, 7), 0.1, np.float32)
    pub.publish(candidate_set([np.full((8, 7), np.nan, np.float32), good, 2 * good, 3 * good],
                               stamp_ns=77))
    assert ros.wait_for(lambda: got["gated"] and got["verdicts"])
    gated, verdict = got["gated"][0], got["verdicts"][0]
    assert conv.from_time(gated.header.stamp) == 77 and gated.policy_id == "test_policy"
    assert [c.data[0] for c in gated.candidates] == pytest.approx([0.1, 0.2])
    assert list(gated.seeds) == [1, 2]
    assert verdict.mode == Verdict.MODE_IMAGINE and verdict.accepted_index == 1
    ros.spin_for(0.3)
    assert got["chunks"] == []


def test_diagnostics_published(graph):
    ros, node, pub, _, got = graph
    assert ros.wait_for(lambda: any(s.name == "prevla: verifier_node"
                                    for d in got["diag"] for s in d.status), timeout_s=5)


# --- the learned verifier (verifier: model) -----------------------------------------------
S, H = 32, 8
INSTRUCTION = "put the bowl on the plate"


@pytest.fixture(scope="module")
def verifier_file(tmp_path_factory):
    """A small randomly initialised verifier: what matters here is the plumbing, not skill."""
    import torch

    from prevla_models.verifier import Verifier, VerifierConfig, save_checkpoint

    torch.manual_seed(0)
    model = Verifier(VerifierConfig(image_size=S, horizon=H, d_model=32, n_layers=1, n_heads=2,
                                    vocab=["put", "the", "bowl", "on", "plate"], max_words=8))
    path = tmp_path_factory.mktemp("verifier") / "random_verifier.pt"
    save_checkpoint(str(path), model)
    return path


def _observation(stamp_ns: int, side: int = 2 * S) -> Observation:
    rng = np.random.default_rng(stamp_ns)
    return Observation(
        images={c: rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                for c in ("agentview", "wrist")},
        joint_positions=rng.normal(size=7), gripper_qpos=np.array([0.03, -0.03]),
        eef_pos=rng.normal(size=3), eef_quat_xyzw=np.array([1.0, 0.0, 0.0, 0.0]),
        instruction=INSTRUCTION, stamp_ns=stamp_ns)


class Robot(FakeRobot):
    """The fake robot, plus the policy's candidate sets and what the verifier answers."""

    def __init__(self, ros, node):
        super().__init__(ros, instruction=INSTRUCTION)
        self.candidates = self.node.create_publisher(CandidateSet, "candidates", STREAM_QOS)
        self.verdicts, self.chunks = [], []
        self.node.create_subscription(Verdict, "verdict", self.verdicts.append, STREAM_QOS)
        self.node.create_subscription(ActionChunk, "action_chunk", self.chunks.append,
                                      STREAM_QOS)
        assert ros.wait_for(lambda: self.joints.get_subscription_count() > 0
                            and self.candidates.get_subscription_count() > 0
                            and node.intake.assembler.instruction == INSTRUCTION)

    def propose(self, arrays, stamp_ns: int, n_verdicts: int) -> Verdict:
        self.candidates.publish(candidate_set(arrays, stamp_ns=stamp_ns))
        assert self.ros.wait_for(lambda: len(self.verdicts) >= n_verdicts
                                 and len(self.chunks) >= n_verdicts, timeout_s=15)
        return self.verdicts[n_verdicts - 1]


def _model_node(ros, *params):
    return ros.add(VerifierNode(context=ros.context, parameter_overrides=list(params)))


def test_model_verifier_scores_candidates_against_their_observation(ros, verifier_file):
    from prevla_models.verifier_scorer import VerifierScorer

    node = _model_node(ros, Parameter("checkpoint", value=str(verifier_file)),
                       Parameter("threshold", value=0.01), Parameter("ranking", value="advantage"))
    robot = Robot(ros, node)
    obs = _observation(2_000)
    robot.observe(obs)
    assert ros.wait_for(lambda: node.intake.get(2_000) is not None)
    rng = np.random.default_rng(1)
    chunks = [rng.uniform(-1, 1, (H, 7)).astype(np.float32) for _ in range(3)]
    v = robot.propose(chunks + [np.full((H, 7), np.nan, np.float32)], 2_000, 1)
    assert v.verifier_id == "random_verifier" and v.samples_drawn == 4
    assert v.safety_probs[3] == 0.0 and np.isnan(v.advantages[3])  # invalid: never scored
    p_safe, adv = np.array(v.safety_probs[:3]), np.array(v.advantages[:3])
    assert np.all(np.isfinite(p_safe)) and np.all(np.isfinite(adv))
    assert np.all((p_safe > 0) & (p_safe < 1)) and v.verify_ms > 0
    # Same numbers as the scorer offline on the same observation; the best advantage wins.
    scorer = VerifierScorer.from_checkpoint(str(verifier_file))
    want_p, want_adv = scorer.score(obs, np.stack(chunks))
    np.testing.assert_allclose(p_safe, want_p, atol=1e-5)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)
    assert v.outcome == "accepted" and v.accepted_index == int(np.argmax(want_adv))
    assert "tau=0.010" in v.reason
    np.testing.assert_allclose(conv.msg_to_chunk(robot.chunks[0]).actions, chunks[v.accepted_index])
    assert node._stats["last_p_safe_max"] == pytest.approx(float(want_p.max()), abs=1e-4)
    assert node._stats["threshold"] == pytest.approx(0.01)
    # A set for a stamp the verifier never observed: hold, and say so.
    v = robot.propose(chunks, 999, 2)
    assert v.outcome == "hold" and "no observation for stamp 999" in v.reason
    # A set that arrives before its observation waits for it: before any part of it ...
    early = _observation(2_500)
    robot.candidates.publish(candidate_set(chunks, stamp_ns=2_500))
    ros.spin_for(0.2)
    assert len(robot.verdicts) == 2
    robot.observe(early)
    assert ros.wait_for(lambda: len(robot.verdicts) == 3 and len(robot.chunks) == 3)
    assert robot.verdicts[2].outcome == "accepted"
    # ... or between its parts.
    later = _observation(3_000)
    robot.images["wrist"].publish(conv.image_to_msg(later.images["wrist"], 3_000, "wrist"))
    assert ros.wait_for(lambda: node.intake.assembler.is_pending(3_000))
    robot.candidates.publish(candidate_set(chunks, stamp_ns=3_000))
    ros.spin_for(0.2)
    assert len(robot.verdicts) == 3  # still waiting
    robot.observe(later)
    assert ros.wait_for(lambda: len(robot.verdicts) == 4 and len(robot.chunks) == 4)
    assert robot.verdicts[3].outcome == "accepted"
    assert np.all(np.isfinite(robot.verdicts[3].advantages))
    # A set whose observation never completes is answered with a hold after a while.
    robot.images["wrist"].publish(conv.image_to_msg(later.images["wrist"], 3_500, "wrist"))
    robot.candidates.publish(candidate_set(chunks, stamp_ns=3_500))
    assert ros.wait_for(lambda: len(robot.verdicts) == 5, timeout_s=5)
    assert robot.verdicts[4].outcome == "hold" and "stamp 3500" in robot.verdicts[4].reason


def test_malformed_observation_is_not_stored_and_its_candidates_hold(ros, verifier_file):
    node = _model_node(ros, Parameter("checkpoint", value=str(verifier_file)),
                       Parameter("threshold", value=0.01))
    robot = Robot(ros, node)
    obs = _observation(4_000)
    bad = conv.image_to_msg(obs.images["agentview"], 4_000, "agentview")
    bad.encoding = "mono8"
    robot.observe(obs, agentview=bad)
    assert ros.wait_for(lambda: 4_000 in node.intake.malformed)  # the policy answers after it too
    v = robot.propose([np.zeros((H, 7), np.float32)], 4_000, 1)
    assert v.outcome == "hold" and "no observation for stamp 4000" in v.reason
    assert "malformed agentview" in v.reason and node.intake.get(4_000) is None
    # The next good observation is scored as usual.
    robot.observe(_observation(5_000))
    assert ros.wait_for(lambda: node.intake.get(5_000) is not None)
    v = robot.propose([np.zeros((H, 7), np.float32)], 5_000, 2)
    assert v.outcome == "accepted" and np.isfinite(v.advantages[0])


def test_missing_checkpoint_fails_configure_and_the_node_stays_up_approving_nothing(ros,
                                                                                   tmp_path):
    missing = tmp_path / "no_such_verifier.pt"
    diag = []
    ros.node("diag_probe").create_subscription(DiagnosticArray, "/diagnostics", diag.append, 10)
    node = _model_node(ros, Parameter("checkpoint", value=str(missing)))
    assert node.lifecycle_state == "unconfigured"  # the standard outcome of a failed configure
    assert str(missing) in node.transition_error and node.scheduler.scorer is None
    robot = FakeRobot(ros, "proposer")
    candidates = robot.node.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    chunks = []
    robot.node.create_subscription(ActionChunk, "action_chunk", chunks.append, STREAM_QOS)
    robot.observe(_observation(6_000))
    candidates.publish(candidate_set([np.zeros((H, 7), np.float32)], stamp_ns=6_000))
    ros.spin_for(0.5)
    assert chunks == []  # nothing is approved: the robot gets no chunk to move by

    def errors():
        return [s for d in diag for s in d.status if s.name == "prevla: verifier_node"
                and s.level == DiagnosticStatus.ERROR and str(missing) in s.message]
    assert ros.wait_for(errors, timeout_s=5)
    assert {kv.key: kv.value for kv in errors()[-1].values}["lifecycle_state"] == "unconfigured"


def test_default_parameters_load_the_zoo_default_verifier_on_onnxruntime(ros):
    # Needs a default "verifier" entry in models/zoo/manifest.yaml (sha256-checked) and its
    # ONNX export: backend auto on a machine without TensorRT runs ONNX Runtime.
    from prevla_models.verifier_scorer import VerifierScorer

    diag = []
    ros.node("diag_probe").create_subscription(DiagnosticArray, "/diagnostics", diag.append, 10)
    node = ros.add(VerifierNode(context=ros.context))
    assert node.config.scheduler.verifier == "model" and node.config.checkpoint == ""
    assert (node.config.backend, node.config.device) == ("auto", "auto")
    assert isinstance(node.scheduler.scorer, VerifierScorer), getattr(
        node.scheduler.scorer, "reason", node.scheduler.scorer)
    assert 0.0 < node.scheduler.threshold < 1.0
    loaded = node.models.slot.loaded
    assert loaded.backend == "onnxruntime" and loaded.path.endswith(".onnx")
    assert node.scheduler.scorer.runner.backend == "onnxruntime"

    def values():
        return [{kv.key: kv.value for kv in s.values} for d in diag for s in d.status
                if s.name == "prevla: verifier_node"]
    assert ros.wait_for(lambda: values(), timeout_s=5)
    assert values()[-1]["backend"] == "onnxruntime" and values()[-1]["swaps"] == "0"
    assert values()[-1]["sha256"] == loaded.sha256[:12]


# --- hot swap -----------------------------------------------------------------------------
ZOO_ID = "verifier_libero_spatial"
SIDE = 128  # the zoo ONNX verifier is exported for 128 x 128 cameras


def _swap(ros, client, timeout_s: float = 30.0, **request) -> SwapModel.Response:
    future = client.call_async(SwapModel.Request(**request))
    assert ros.wait_for(future.done, timeout_s=timeout_s)
    return future.result()


def _slow_loads(node, seconds: float) -> None:
    """Make every load take ``seconds`` longer, like a big model (runs in the loading thread)."""
    build = node.models.slot.build
    node.models.slot.build = lambda loaded: (time.sleep(seconds), build(loaded))[1]


@pytest.fixture
def zoo_graph(ros):
    """verifier_node with its defaults (the zoo verifier on ONNX Runtime), a robot and a
    client of its ``~/swap_model``."""
    node = _model_node(ros)
    assert node.models.slot.loaded.backend == "onnxruntime"
    robot = Robot(ros, node)
    client = robot.node.create_client(SwapModel, "/verifier_node/swap_model")
    assert client.wait_for_service(timeout_sec=5)
    return ros, node, robot, client


def _decide(robot, stamp: int) -> Verdict:
    robot.observe(_observation(stamp, SIDE))
    chunks = [np.zeros((H, 7), np.float32)]
    return robot.propose(chunks, stamp, len(robot.verdicts) + 1)


def test_no_candidate_set_is_dropped_while_the_model_swaps(zoo_graph, verifier_file):
    from prevla_models.checkpoints import sha256_file

    ros, node, robot, client = zoo_graph
    _slow_loads(node, 0.5)
    # Candidate sets at 20 Hz; the swap is asked for at the 10th, the stream goes on until 10
    # sets after its answer (a first torch load can take seconds on a busy 2-core machine).
    period, stamps, after = 0.05, [], None
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1, 1, (H, 7)).astype(np.float32) for _ in range(4)]
    future, during_load = None, []
    start = time.monotonic()
    while len(stamps) < 400 and (after is None or len(stamps) < after + 10):
        i, stamp = len(stamps), 1_000_000_000 + len(stamps) * 50_000_000
        stamps.append(stamp)
        robot.observe(_observation(stamp, SIDE))
        robot.candidates.publish(candidate_set(chunks, stamp_ns=stamp))
        if i == 10:
            future = client.call_async(SwapModel.Request(checkpoint=str(verifier_file)))
        # Paced at 20 Hz; never more than a few sets ahead of the verdicts, so a slow CI
        # machine cannot overflow the topics' depth-5 queues (that is not the swap's doing).
        ros.wait_for(lambda: time.monotonic() > start + (i + 1) * period
                     and len(robot.verdicts) >= i - 2, timeout_s=10.0)
        if future is not None and not future.done():
            during_load.append(len(robot.verdicts))
        elif future is not None and after is None:
            after = len(stamps)
    n = len(stamps)
    assert ros.wait_for(lambda: len(robot.verdicts) >= n and len(robot.chunks) >= n,
                        timeout_s=30)
    ros.spin_for(0.3)  # nothing extra arrives either
    response = future.result()
    assert response.success, response.message
    assert response.backend == "torch" and response.model == str(verifier_file)
    assert response.sha256 == sha256_file(str(verifier_file)) and response.load_ms >= 500
    # Exactly one verdict and one chunk per candidate set, in order: none dropped.
    assert [conv.from_time(v.header.stamp) for v in robot.verdicts] == stamps
    assert [conv.msg_to_chunk(c).stamp_ns for c in robot.chunks] == stamps
    assert not [v.reason for v in robot.verdicts if "no observation" in v.reason]
    # The old model served until the switch, the new one after it; decisions went on
    # while the new one loaded.
    ids = [v.verifier_id for v in robot.verdicts]
    k = ids.index("random_verifier")
    assert k > 10 and ids == [ZOO_ID] * k + ["random_verifier"] * (n - k)
    assert during_load and during_load[-1] - during_load[0] >= 3, during_load
    assert node.models.slot.loaded.backend == "torch" and node.models.values()["swaps"] == 1
    assert node.get_parameter("checkpoint").value == str(verifier_file)  # says what runs


def test_failed_swaps_keep_the_old_model_serving(zoo_graph, verifier_file, tmp_path):
    import torch

    from prevla_models.verifier import Verifier, VerifierConfig, save_checkpoint

    ros, node, robot, client = zoo_graph
    corrupt = tmp_path / "verifier.onnx"
    onnx = node.models.slot.loaded.path
    corrupt.write_bytes(open(onnx, "rb").read()[: 100_000])
    torch.manual_seed(0)
    other = tmp_path / "horizon4.pt"
    save_checkpoint(str(other), Verifier(VerifierConfig(image_size=S, horizon=4, d_model=32,
                                                        n_layers=1, n_heads=2)))
    failures = [
        ({"checkpoint": str(tmp_path / "missing.pt")}, "missing.pt"),
        ({"checkpoint": str(verifier_file), "sha256": "0" * 64}, "sha256"),
        ({"checkpoint": str(corrupt)}, "verifier.onnx"),
        ({"checkpoint": str(other)}, "horizon 8 -> 4"),
        ({"checkpoint": "zoo:vla_libero_spatial"}, "not a 'verifier'"),
        ({"backend": "tensorflow"}, "refused: backend"),
    ]
    for n, (request, why) in enumerate(failures, start=1):
        response = _swap(ros, client, **request)
        assert not response.success and why in response.message, (request, response.message)
        assert node.models.slot.loaded.backend == "onnxruntime"
        v = _decide(robot, 20_000 * n)  # the old model still decides
        assert v.verifier_id == ZOO_ID and "unavailable" not in v.reason
        assert np.isfinite(v.advantages[0])
    # One swap at a time: a second request while the first loads is refused.
    _slow_loads(node, 0.5)
    first = client.call_async(SwapModel.Request(backend="torch"))
    second = client.call_async(SwapModel.Request(checkpoint=str(verifier_file)))
    assert ros.wait_for(lambda: first.done() and second.done(), timeout_s=30)
    assert first.result().success and first.result().backend == "torch"
    assert not second.result().success and "in progress" in second.result().message
    assert node.models.values()["swaps"] == 1 and node.models.slot.loaded.backend == "torch"
    assert _decide(robot, 999_000).verifier_id == ZOO_ID


def test_parameter_change_swaps_the_model_and_a_failed_one_is_reverted(zoo_graph, tmp_path):
    ros, node, robot, client = zoo_graph
    result = node.set_parameters([Parameter("backend", value="torch")])[0]
    assert result.successful, result.reason
    assert node.models.busy  # loading in the background; the old model serves meanwhile
    assert ros.wait_for(lambda: not node.models.busy, timeout_s=30)
    assert node.models.slot.loaded.backend == "torch" and node.config.backend == "torch"
    assert node.scheduler.scorer.runner.backend == "torch"
    assert _decide(robot, 30_000).verifier_id == ZOO_ID
    # A model that cannot load: the parameter is set back, the torch model keeps serving.
    missing = str(tmp_path / "missing.pt")
    assert node.set_parameters([Parameter("checkpoint", value=missing)])[0].successful
    assert ros.wait_for(lambda: not node.models.busy, timeout_s=30)
    assert node.get_parameter("checkpoint").value == "" and node.config.checkpoint == ""
    assert node.get_parameter("backend").value == "torch"
    assert node.models.slot.loaded.backend == "torch" and node.models.values()["swaps"] == 1
    assert _decide(robot, 31_000).verifier_id == ZOO_ID
    # Invalid values and startup-only parameters are rejected outright.
    result = node.set_parameters([Parameter("device", value="gpu")])[0]
    assert not result.successful and "device" in result.reason
    result = node.set_parameters([Parameter("mode", value="imagine")])[0]
    assert not result.successful and "read-only" in result.reason  # startup-only: read_only
    assert not node.models.busy


# --- verified artifacts -------------------------------------------------------------------
def _unrecorded_copies(verifier_file, tmp_path):
    """A copy of ``verifier_file`` without a record, and one whose byte was flipped after its
    sidecar was written."""
    import shutil

    from prevla_models.artifacts import write_sidecar

    unrecorded = tmp_path / "unrecorded.pt"
    shutil.copy(verifier_file, unrecorded)
    flipped = tmp_path / "flipped.pt"
    shutil.copy(verifier_file, flipped)
    write_sidecar(flipped)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    return unrecorded, flipped


def test_a_swap_to_an_unverified_file_is_refused_and_the_old_model_keeps_serving(
        zoo_graph, verifier_file, tmp_path):
    ros, node, robot, client = zoo_graph
    unrecorded, flipped = _unrecorded_copies(verifier_file, tmp_path)
    for n, (path, why) in enumerate(((unrecorded, "no recorded sha256"),
                                     (flipped, "corrupt or replaced")), start=1):
        response = _swap(ros, client, checkpoint=str(path))
        assert not response.success, response.message
        assert "refusing unverified model file" in response.message and why in response.message
        assert str(path) in response.message
        assert node.models.slot.loaded.backend == "onnxruntime"
        v = _decide(robot, 40_000 * n)  # the old model still decides
        assert v.verifier_id == ZOO_ID and "unavailable" not in v.reason
    # The same through the parameter: refused, set back.
    assert node.set_parameters([Parameter("checkpoint", value=str(unrecorded))])[0].successful
    assert ros.wait_for(lambda: not node.models.busy, timeout_s=30)
    assert node.get_parameter("checkpoint").value == ""
    assert node.models.values()["swaps"] == 0 and node.models.values()["verified"] == "yes"
    assert _decide(robot, 130_000).verifier_id == ZOO_ID


def test_an_unverified_checkpoint_fails_configure_unless_the_node_opts_in(ros, verifier_file,
                                                                          tmp_path):
    from prevla_models.verifier_scorer import VerifierScorer

    unrecorded, _ = _unrecorded_copies(verifier_file, tmp_path)
    node = _model_node(ros, Parameter("checkpoint", value=str(unrecorded)))
    assert node.lifecycle_state == "unconfigured"  # refused, and says why
    assert "refusing unverified model file" in node.transition_error
    assert str(unrecorded) in node.transition_error
    ros.executor.remove_node(node)
    ros.nodes.remove(node)
    node.destroy_node()
    node = _model_node(ros, Parameter("checkpoint", value=str(unrecorded)),
                       Parameter("allow_unverified_models", value=True))
    assert isinstance(node.scheduler.scorer, VerifierScorer)
    assert "no recorded sha256" in node.models.slot.loaded.unverified
    assert node.models.values()["verified"] == "UNVERIFIED"
