"""policy_node over real rclpy, fed a real LIBERO observation: candidates, hold on malformed
input, the resampling service."""
from __future__ import annotations

import numpy as np
import pytest
from prevla_interfaces.msg import CandidateSet, EpisodeStatus
from prevla_interfaces.srv import SampleCandidates, SwapModel
from rclpy.parameter import Parameter

from prevla_ros import conversions as conv
from prevla_ros.nodes.lifecycle import bring_up
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS
from prevla_ros.nodes.policy_node import PolicyNode
from tests.ros.fake_robot import FakeRobot

pytestmark = [pytest.mark.ros, pytest.mark.libero]


@pytest.fixture(scope="module")
def real_obs():
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig

    with LiberoEnv(LiberoEnvConfig(suite="libero_spatial", task_id=0)) as env:
        return env.observe(stamp_ns=0), env.instruction


class Robot(FakeRobot):
    """The fake robot of one real LIBERO observation (under any stamp), with the task."""

    def __init__(self, ros, obs, instruction):
        super().__init__(ros, "fake_robot_publisher", instruction, sim_state=True)
        self.obs = obs
        status = self.node.create_publisher(EpisodeStatus, "episode_status", STATUS_QOS)
        status.publish(EpisodeStatus(suite="libero_spatial", task_id=0, episode=1,
                                     state="running", instruction=instruction))
        self.candidates = []
        self.node.create_subscription(CandidateSet, "candidates", self.candidates.append,
                                      STREAM_QOS)
        self.client = self.node.create_client(SampleCandidates, "sample_candidates")
        self.swap_client = self.node.create_client(SwapModel, "/policy_node/swap_model")
        assert ros.wait_for(lambda: self.joints.get_subscription_count() > 0
                            and self.state.get_subscription_count() > 0)
        ros.spin_for(0.3)

    def publish(self, stamp, agentview=None, joints=None):
        self.observe(self.obs, stamp, agentview, joints)


@pytest.fixture
def setup(ros, real_obs):
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="scripted_expert"),
        Parameter("num_candidates", value=5), Parameter("noise_std", value=0.1)]))
    robot = Robot(ros, *real_obs)
    return ros, node, robot


def test_complete_observation_gives_k_diverse_candidates(setup):
    ros, node, robot = setup
    robot.publish(1_000)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    msg = robot.candidates[0]
    assert conv.from_time(msg.header.stamp) == 1_000
    assert msg.policy_id == "scripted_expert" and len(msg.candidates) == 5
    assert len(msg.seeds) == 5 and list(msg.temperatures) == [1.0] * 5
    chunks = np.stack([conv.msg_to_chunk(c, expected_dim=7).actions for c in msg.candidates])
    assert chunks.shape == (5, 8, 7) and np.all(np.isfinite(chunks))
    assert np.std(chunks[:, :, :6], axis=0).mean() > 0.02  # candidates really differ
    assert np.all(chunks[:, :, 6] == chunks[0, :, 6])  # same gripper plan


@pytest.mark.parametrize("bad", ["encoding", "size", "truncated"])
def test_malformed_image_gets_a_hold_and_node_recovers(setup, bad):
    ros, node, robot = setup
    image = conv.image_to_msg(robot.obs.images["agentview"], 2_000, "agentview_camera")
    if bad == "encoding":
        image.encoding = "mono16"
    elif bad == "size":
        small = robot.obs.images["agentview"][:64, :64].copy()
        image = conv.image_to_msg(small, 2_000, "agentview_camera")
    else:
        image.data = image.data[:-10]
    robot.publish(2_000, agentview=image)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    hold = robot.candidates[0]
    assert hold.policy_id == "hold" and len(hold.candidates) == 1
    assert conv.from_time(hold.header.stamp) == 2_000
    actions = conv.msg_to_chunk(hold.candidates[0]).actions
    assert np.all(actions[:, :6] == 0)
    assert "agentview" in node.health.last_error
    robot.publish(3_000)  # the next good observation is served normally
    assert ros.wait_for(lambda: len(robot.candidates) == 2, timeout_s=15)
    assert robot.candidates[1].policy_id == "scripted_expert"


def test_bad_joint_state_gets_a_hold(setup):
    ros, node, robot = setup
    joints = conv.joint_state_to_msg(robot.obs.joint_positions, robot.obs.gripper_qpos, 4_000)
    joints.name = joints.name[:-1]
    robot.publish(4_000, joints=joints)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    assert robot.candidates[0].policy_id == "hold"


def test_resampling_service(setup):
    ros, node, robot = setup
    robot.publish(5_000)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    assert robot.client.wait_for_service(timeout_sec=5)
    future = robot.client.call_async(SampleCandidates.Request(
        observation_stamp=conv.to_time(5_000), k=6, temperature=0.0, round=1))
    assert ros.wait_for(future.done, timeout_s=10)
    response = future.result()
    assert response.ok and response.candidates.round == 1
    chunks = np.stack([conv.msg_to_chunk(c).actions for c in response.candidates.candidates])
    assert chunks.shape == (6, 8, 7)
    assert np.all(chunks == chunks[0])  # temperature 0 is deterministic
    # a resampling round for the same observation does not act the (stateful) expert again:
    # the same plan (the published set's noise-free gripper, its mean motion), new noise only
    first = np.stack([conv.msg_to_chunk(c).actions for c in robot.candidates[-1].candidates])
    np.testing.assert_array_equal(chunks[0][:, 6], first[0][:, 6])
    assert np.abs(first[:, :, :6].mean(0) - chunks[0][:, :6]).max() < 0.15
    for round_ in (2, 3):
        future = robot.client.call_async(SampleCandidates.Request(
            observation_stamp=conv.to_time(5_000), k=2, temperature=0.0, round=round_))
        assert ros.wait_for(future.done, timeout_s=10) and future.result().ok
        again = conv.msg_to_chunk(future.result().candidates.candidates[0]).actions
        np.testing.assert_array_equal(again, chunks[0])
    future = robot.client.call_async(SampleCandidates.Request(
        observation_stamp=conv.to_time(4_999), k=2, temperature=1.0))
    assert ros.wait_for(future.done, timeout_s=10)
    assert not future.result().ok and "stale" in future.result().reason


@pytest.fixture
def vla_checkpoint(tmp_path, real_obs):
    """A real (untrained) VLA checkpoint: the loading and sampling path, not its skill."""
    import torch
    from prevla_models.vla import VLA, VLAConfig, save_checkpoint

    torch.manual_seed(0)
    words = sorted(set(real_obs[1].split()))
    path = tmp_path / "vla.pt"
    save_checkpoint(str(path), VLA(VLAConfig(vocab=words, d_model=32, n_layers=1, n_heads=2,
                                             flow_steps=2)), {"policy_id": "vla_test"})
    return path


def _vla_node(ros, checkpoint):
    return ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="vla"), Parameter("checkpoint", value=str(checkpoint)),
        Parameter("num_candidates", value=3)]))


def test_vla_policy_from_checkpoint_samples_candidates(ros, real_obs, vla_checkpoint):
    node = _vla_node(ros, vla_checkpoint)
    robot = Robot(ros, *real_obs)
    robot.publish(6_000)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    msg = robot.candidates[0]
    assert msg.policy_id == "vla_test" and len(msg.candidates) == 3
    chunks = np.stack([conv.msg_to_chunk(c, expected_dim=7).actions for c in msg.candidates])
    assert chunks.shape == (3, 8, 7) and np.all(np.abs(chunks) <= 1.0)
    assert not np.allclose(chunks[0], chunks[1])  # sampled, not copied
    assert node._stats["holds"] == 0


def test_default_policy_is_the_trained_zoo_vla(ros, real_obs):
    from prevla_models import zoo

    [(name, entry)] = [(n, e) for n, e in zoo.load_manifest().items() if e.get("default") and e.get("kind") == "vla"]
    node = ros.add(PolicyNode(context=ros.context))  # no parameters: the defaults users get
    robot = Robot(ros, *real_obs)
    robot.publish(6_500)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=30)
    msg = robot.candidates[0]
    assert msg.policy_id == name and len(msg.candidates) == 4, node.health.last_error
    chunks = np.stack([conv.msg_to_chunk(c, expected_dim=7).actions for c in msg.candidates])
    assert chunks.shape == (4, 8, 7) and np.all(np.abs(chunks) <= 1.0)
    assert np.std(chunks[:, :, :6], axis=0).mean() > 1e-3  # K different samples
    # the start of task 0 is a reach towards the bowl, not a hold: the arm must move
    assert np.abs(chunks[:, :, :3]).mean() > 0.05


def test_vla_runs_on_onnxruntime_and_swaps_between_observations(ros, real_obs, vla_checkpoint):
    from prevla_models.checkpoints import sha256_file

    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("num_candidates", value=2)]))  # the zoo VLA, backend auto
    assert node.models.slot.loaded.backend == "onnxruntime"
    robot = Robot(ros, *real_obs)
    robot.publish(12_000)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=30)
    assert robot.candidates[0].policy_id == "vla_libero_spatial"
    assert robot.swap_client.wait_for_service(timeout_sec=5)
    future = robot.swap_client.call_async(SwapModel.Request(checkpoint=str(vla_checkpoint)))
    assert ros.wait_for(future.done, timeout_s=30)
    response = future.result()
    assert response.success, response.message
    assert response.backend == "torch" and response.sha256 == sha256_file(str(vla_checkpoint))
    assert node.get_parameter("checkpoint").value == str(vla_checkpoint)
    robot.publish(13_000)
    assert ros.wait_for(lambda: len(robot.candidates) == 2, timeout_s=30)
    msg = robot.candidates[1]
    assert msg.policy_id == "vla_test" and len(msg.candidates) == 2
    assert node.models.values()["swaps"] == 1 and node._stats["holds"] == 0


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_unusable_checkpoint_fails_configure_and_a_fixed_parameter_configures(
        ros, real_obs, tmp_path, vla_checkpoint, problem):
    path = tmp_path / "unusable_vla.pt"
    if problem == "corrupt":
        path.write_bytes(b"not a checkpoint" * 10)
    node = _vla_node(ros, path)
    assert node.lifecycle_state == "unconfigured"  # the standard outcome: the node stays up
    assert str(path) in node.transition_error and node.policy is None
    assert node.count_subscribers("joint_states") == 0  # it takes no input
    # The operator's fix: the parameter, then configure + activate again.
    assert node.set_parameters([Parameter("checkpoint", value=str(vla_checkpoint))])[0].successful
    assert bring_up(node) and node.transition_error == ""
    robot = Robot(ros, *real_obs)
    robot.publish(7_000)
    assert ros.wait_for(lambda: robot.candidates, timeout_s=15)
    assert robot.candidates[0].policy_id == "vla_test"


def test_a_flipped_byte_in_the_vla_file_is_refused_at_configure(ros, real_obs, vla_checkpoint):
    data = bytearray(vla_checkpoint.read_bytes())  # its sidecar was written by save_checkpoint
    data[len(data) // 2] ^= 0x01
    vla_checkpoint.write_bytes(bytes(data))
    node = _vla_node(ros, vla_checkpoint)
    reason = node.transition_error
    assert "refusing unverified model file" in reason and "corrupt or replaced" in reason
    assert node.lifecycle_state == "unconfigured" and node.models.slot.loaded is None


def test_remote_policy_served_out_of_process_and_dead_server_holds(ros, real_obs,
                                                                    vla_checkpoint):
    from prevla_models.vla_policy import VLAPolicy

    from prevla_ros.runtime.policy_server import serve_policy

    served = VLAPolicy.from_checkpoint(str(vla_checkpoint))
    server = serve_policy(served, host="127.0.0.1", port=0)
    try:
        node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
            Parameter("policy", value="remote"), Parameter("remote_url", value=server.url),
            Parameter("num_candidates", value=2), Parameter("remote_timeout_s", value=2.0)]))
        robot = Robot(ros, *real_obs)
        robot.publish(8_000)
        assert ros.wait_for(lambda: robot.candidates, timeout_s=20)
        msg = robot.candidates[0]
        assert msg.policy_id != "hold" and len(msg.candidates) == 2
        chunks = np.stack([conv.msg_to_chunk(c, expected_dim=7).actions for c in msg.candidates])
        assert chunks.shape == (2, 8, 7) and np.all(np.isfinite(chunks))
    finally:
        server.shutdown()
    robot.publish(9_000)  # the server is gone: a logged hold, the node stays up
    assert ros.wait_for(lambda: len(robot.candidates) == 2, timeout_s=20)
    assert robot.candidates[1].policy_id == "hold"
    assert server.url.split("//")[1] in node.health.last_error
