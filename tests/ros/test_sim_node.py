"""sim_node over real rclpy with the real LIBERO simulator: observations, latched topics,
invalid and stale chunks, run-time task changes, episode end."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk, EpisodeStatus, SimState
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import LATCHED_QOS, STATUS_QOS, STREAM_QOS
from prevla_ros.nodes.sim_node import SimNode
from prevla_ros.runtime.types import ActionChunk as Chunk

pytestmark = [pytest.mark.ros, pytest.mark.libero]


def _chunk_msg(actions, stamp_ns, source="test"):
    actions = np.asarray(actions, np.float32)
    return conv.chunk_to_msg(Chunk(actions, source, stamp_ns))


@pytest.fixture(scope="module")
def sim():
    """One SimNode for the module (building a LIBERO env costs ~10 s on CPU)."""
    from tests.conftest import RosHarness

    ros = RosHarness()
    node = ros.add(SimNode(context=ros.context, parameter_overrides=[
        Parameter("control_rate_hz", value=0.0), Parameter("max_steps", value=40),
        Parameter("episodes", value=0), Parameter("start_delay_s", value=1.0),
        Parameter("chunk_timeout_s", value=60.0)]))
    probe = ros.node("probe")
    got = {k: [] for k in ("agentview", "wrist", "joints", "eef", "state", "status", "diag")}
    probe.create_subscription(Image, "agentview/image_raw", got["agentview"].append, STREAM_QOS)
    probe.create_subscription(Image, "wrist/image_raw", got["wrist"].append, STREAM_QOS)
    probe.create_subscription(JointState, "joint_states", got["joints"].append, STREAM_QOS)
    probe.create_subscription(PoseStamped, "eef_pose", got["eef"].append, STREAM_QOS)
    probe.create_subscription(SimState, "sim_state", got["state"].append, STREAM_QOS)
    probe.create_subscription(EpisodeStatus, "episode_status", got["status"].append,
                              STATUS_QOS)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
    pub = probe.create_publisher(ActionChunk, "action_chunk", STREAM_QOS)
    assert ros.wait_for(lambda: len(got["state"]) >= 1, timeout_s=60)
    yield ros, node, pub, got
    ros.close()


def _latest_stamp(got):
    return conv.from_time(got["joints"][-1].header.stamp)


def test_first_observation_is_complete_and_consistent(sim):
    ros, node, pub, got = sim
    assert ros.wait_for(lambda: got["agentview"] and got["wrist"] and got["eef"])
    stamp = _latest_stamp(got)
    for key in ("agentview", "wrist", "eef", "state"):
        assert conv.from_time(got[key][-1].header.stamp) == stamp
    image = conv.msg_to_image(got["agentview"][-1], expected_hw=(128, 128))
    assert image.dtype == np.uint8 and image.std() > 5  # a real render, not a blank frame
    joints, fingers = conv.msg_to_joint_state(got["joints"][-1])
    assert joints.shape == (7,) and fingers.shape == (2,)
    objects = conv.msg_to_sim_state(got["state"][-1])
    assert any("bowl" in name for name in objects)
    assert ros.wait_for(lambda: got["status"])
    assert got["status"][-1].state == "running" and got["status"][-1].suite == "libero_spatial"


def test_instruction_is_latched_for_late_subscribers(sim):
    ros, node, _, _ = sim
    late = ros.node("late_joiner")
    seen = []
    late.create_subscription(String, "instruction", seen.append, LATCHED_QOS)
    assert ros.wait_for(lambda: seen, timeout_s=10)
    assert "bowl" in seen[0].data


def test_valid_chunk_advances_and_yields_a_new_observation(sim):
    ros, node, pub, got = sim
    n_obs, stamp = len(got["joints"]), _latest_stamp(got)
    steps_before = node.env.step_count
    pub.publish(_chunk_msg(np.zeros((5, 7)), stamp))
    assert ros.wait_for(lambda: len(got["joints"]) > n_obs)
    assert node.env.step_count == steps_before + 5
    assert _latest_stamp(got) > stamp


@pytest.mark.parametrize("actions", [np.full((4, 7), np.nan), np.zeros((4, 6)),
                                     np.full((4, 7), 1e6)])
def test_invalid_chunk_holds_and_reobserves(sim, actions):
    ros, node, pub, got = sim
    n_obs, stamp = len(got["joints"]), _latest_stamp(got)
    invalid_before = node._stats["invalid_chunks"]
    steps_before = node.env.step_count
    eef_before = conv.msg_to_pose(got["eef"][-1].pose)[0]
    pub.publish(_chunk_msg(actions, stamp, source="broken_policy"))
    assert ros.wait_for(lambda: len(got["joints"]) > n_obs)
    assert node._stats["invalid_chunks"] == invalid_before + 1
    assert node.env.step_count == steps_before + node.config.hold_steps
    eef_after = conv.msg_to_pose(got["eef"][-1].pose)[0]
    assert np.linalg.norm(eef_after - eef_before) < 0.01  # held still


def test_stale_chunk_is_ignored(sim):
    ros, node, pub, got = sim
    n_obs, stamp = len(got["joints"]), _latest_stamp(got)
    stale_before = node._stats["stale_chunks"]
    pub.publish(_chunk_msg(np.zeros((4, 7)), stamp - 1))
    assert ros.wait_for(lambda: node._stats["stale_chunks"] == stale_before + 1)
    ros.spin_for(0.3)
    assert len(got["joints"]) == n_obs  # nothing executed, still awaiting the same stamp
    assert node._awaiting == stamp


def test_unknown_task_id_is_rejected_at_run_time_and_node_keeps_running(sim):
    ros, node, pub, got = sim
    result = node.set_parameters([Parameter("task_id", value=99)])[0]
    assert not result.successful and "task_id" in result.reason
    result = node.set_parameters([Parameter("control_rate_hz", value=5.0)])[0]
    assert not result.successful and "control_rate_hz" in result.reason
    assert node.config.task_id == 0
    n_obs = len(got["joints"])
    pub.publish(_chunk_msg(np.zeros((2, 7)), _latest_stamp(got)))
    assert ros.wait_for(lambda: len(got["joints"]) > n_obs)


def test_episode_times_out_and_next_one_starts(sim):
    ros, node, pub, got = sim
    episode = node.episode
    for _ in range(10):  # 40 steps at most, 8 per chunk
        if any(s.done for s in got["status"]):
            break
        n_obs, n_status = len(got["joints"]), len(got["status"])
        pub.publish(_chunk_msg(np.zeros((8, 7)), _latest_stamp(got)))
        # Each observation is followed by its status (done + the next episode's running).
        assert ros.wait_for(lambda: len(got["joints"]) > n_obs and len(got["status"]) > n_status)
        ros.spin_for(0.2)
    done = [s for s in got["status"] if s.done][0]
    assert done.state == "timeout" and not done.success and done.step == 40
    assert node.episode == episode + 1 and node.env.step_count == 0
    assert got["status"][-1].init_state == 1  # next official init state


def test_diagnostics_report_counters(sim):
    ros, node, pub, got = sim
    assert ros.wait_for(lambda: any(s.name == "prevla: sim_node" and any(
        kv.key == "invalid_chunks" and kv.value != "0" for kv in s.values)
        for d in got["diag"] for s in d.status), timeout_s=5)


def test_an_overlong_chunk_is_dropped_unread_and_the_observation_still_awaits_one(sim):
    ros, node, pub, got = sim
    n_obs, stamp = len(got["joints"]), _latest_stamp(got)
    before = node.guard.rejected["oversize"]
    pub.publish(_chunk_msg(np.zeros((10_000, 7)), stamp))  # > limit_chunk_length
    assert ros.wait_for(lambda: node.guard.rejected["oversize"] == before + 1)
    ros.spin_for(0.3)
    assert len(got["joints"]) == n_obs and node._awaiting == stamp  # nothing executed
    pub.publish(_chunk_msg(np.zeros((2, 7)), stamp))
    assert ros.wait_for(lambda: len(got["joints"]) > n_obs)
    assert node.diagnostics.status()[2]["rejected_oversize"] == before + 1


def test_use_sim_time_set_at_run_time_is_accepted(sim):
    ros, node, pub, got = sim
    # Before: "SimNodeConfig.__init__() got an unexpected keyword argument 'use_sim_time'".
    for value in (True, False):
        result = node.set_parameters([Parameter("use_sim_time", value=value)])[0]
        assert result.successful, result.reason
        assert node.get_parameter("use_sim_time").value is value
    assert node.config.task_id == 0  # the config is untouched
