"""Scripted LIBERO expert: goal parsing from real BDDL files, geometry helpers, and the
closed-loop decisions on observations (synthetic ones built from real LIBERO numbers, and one
real observation from the simulator, marked ``libero``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("libero.libero")

from prevla_ros.runtime.types import ACTION_DIM, ObjectPose, Observation  # noqa: E402
from prevla_sim import expert as ex  # noqa: E402
from prevla_sim.libero_env import task_bddl_path  # noqa: E402

# Poses seen in LIBERO-Spatial task 0, init state 0, after settling (world frame, xyzw).
_UPRIGHT = np.array([0.0, 0.0, 0.7071, 0.7071])
_DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down, yaw 0


def _spatial_obs(eef=(-0.211, -0.011, 1.174), gap=0.0775, bowl=(-0.063, 0.202, 0.898)) -> Observation:
    objects = {
        "akita_black_bowl_1": ObjectPose(np.array(bowl, float), _UPRIGHT),
        "akita_black_bowl_2": ObjectPose(np.array([-0.185, 0.33, 0.898]), _UPRIGHT),
        "glazed_rim_porcelain_ramekin_1": ObjectPose(np.array([-0.201, 0.187, 0.899]), _UPRIGHT),
        "plate_1": ObjectPose(np.array([0.061, 0.195, 0.903]), _UPRIGHT),
        "cookies_1": ObjectPose(np.array([0.062, 0.037, 0.909]), _UPRIGHT),
    }
    return Observation(images={}, joint_positions=np.zeros(7), gripper_qpos=np.array([gap / 2, -gap / 2]),
                       eef_pos=np.array(eef, float), eef_quat_xyzw=_DOWN, objects=objects)


def test_parse_goal_spatial_and_object_from_real_bddl():
    g = ex.parse_goal(task_bddl_path("libero_spatial", 0))
    assert g == [ex.Goal("on", "akita_black_bowl_1", "plate_1")]
    g = ex.parse_goal(task_bddl_path("libero_object", 0))
    assert g == [ex.Goal("in", "alphabet_soup_1", "basket_1_contain_region")]
    for tid in range(10):  # every Spatial/Object task is a single pick-and-place
        assert len(ex.parse_goal(task_bddl_path("libero_spatial", tid))) == 1
        assert ex.parse_goal(task_bddl_path("libero_object", tid))[0].predicate == "in"


def test_expert_for_task_builds_without_simulator():
    e = ex.expert_for_task("libero_object", 3)
    assert e.goals[0].obj == "bbq_sauce_1"


def test_category_and_rotation_helpers():
    assert ex.category("akita_black_bowl_12") == "akita_black_bowl"
    assert ex.category("plate") == "plate"
    r = ex.quat_xyzw_to_mat(_DOWN)
    np.testing.assert_allclose(r, ex.R_DOWN, atol=1e-9)
    assert abs(ex.gripper_yaw(r)) < 1e-9
    for yaw in (0.3, -1.2, 1.5):
        rv = ex.rotvec_from_mat(ex.rot_z(yaw))
        np.testing.assert_allclose(rv, [0, 0, yaw], atol=1e-9)
        assert math.isclose(ex.gripper_yaw(ex.rot_z(yaw) @ ex.R_DOWN), yaw, abs_tol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(ex.rotvec_from_mat(ex.R_DOWN)), math.pi, atol=1e-6)


@pytest.mark.parametrize("horizon", [1, 8, 16])
def test_chunk_shape_dtype_range(horizon):
    e = ex.expert_for_task("libero_spatial", 0)
    chunk = e.act_chunk(_spatial_obs(), horizon)
    assert chunk.shape == (horizon, ACTION_DIM) and chunk.dtype == np.float32
    assert np.all(np.isfinite(chunk)) and np.all(np.abs(chunk) <= 1.0)
    assert set(np.unique(chunk[:, 6])) <= {-1.0, 1.0}


def test_approach_moves_toward_bowl_rim_with_open_gripper():
    e = ex.expert_for_task("libero_spatial", 0)
    obs = _spatial_obs()
    chunk = e.act_chunk(obs, 8)
    assert np.all(chunk[:, 6] == -1.0)  # open while approaching
    bowl = obs.objects["akita_black_bowl_1"].pos
    # moves toward the bowl in the horizontal plane, and not towards its centre but a rim point
    direction = chunk[0, :2] / np.linalg.norm(chunk[0, :2])
    to_bowl = (bowl[:2] - obs.eef_pos[:2]) / np.linalg.norm(bowl[:2] - obs.eef_pos[:2])
    assert float(direction @ to_bowl) > 0.8
    grasp, _ = e._grasp(obs, "akita_black_bowl_1", e._body(obs, "akita_black_bowl_1"))
    assert 0.03 < np.linalg.norm(grasp[:2] - bowl[:2]) < 0.054  # on the rim


def test_phase_recovered_from_state_not_counter():
    """A fresh expert (no memory) seeing the bowl in a closed hand carries it, not re-grasps."""
    e = ex.expert_for_task("libero_spatial", 0)
    # gripper closed on the rim (gap ~ wall thickness), bowl lifted with the hand
    held = _spatial_obs(eef=(-0.063, 0.155, 1.05), gap=0.008, bowl=(-0.063, 0.202, 0.99))
    e.act_chunk(held, 8)  # first call only learns the finger gap is steady
    chunk = e.act_chunk(held, 8)
    assert np.all(chunk[:, 6] == 1.0)  # keeps holding
    assert chunk[0, 2] > 0.3 or chunk[0, 0] > 0.3  # lifts / heads for the plate (+x)
    # a closed hand far from the bowl (missed grasp): opens again
    e.reset()
    missed = _spatial_obs(eef=(-0.2, 0.0, 1.0), gap=0.0)
    assert e.act_chunk(missed, 8)[0, 6] == -1.0


def test_bowl_on_plate_is_done_and_retreats_up():
    e = ex.expert_for_task("libero_spatial", 0)
    placed = _spatial_obs(eef=(0.06, 0.15, 1.0), bowl=(0.061, 0.195, 0.92))
    chunk = e.act_chunk(placed, 8)
    assert np.all(chunk[:, 6] == -1.0) and chunk[0, 2] > 0.5


def test_missing_privileged_state_is_rejected():
    e = ex.expert_for_task("libero_spatial", 0)
    obs = _spatial_obs()
    obs.objects = None
    with pytest.raises(ValueError):
        e.act_chunk(obs, 8)
    with pytest.raises(ValueError):
        e.act_chunk(_spatial_obs(), 0)


@pytest.mark.libero
def test_expert_on_real_observation_of_every_object_task_zero():
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig

    env = LiberoEnv(LiberoEnvConfig(suite="libero_object", task_id=0, render=False))
    try:
        e = ex.expert_for_env(env)
        obs = env.observe()
        assert e.goals[0].obj in obs.objects
        extents = env.object_extents()
        lo, hi = extents["alphabet_soup_1"]
        np.testing.assert_allclose(hi - lo, np.subtract(*ex.DEFAULT_EXTENTS["alphabet_soup"][::-1]),
                                   atol=2e-3)
        for _ in range(3):
            chunk = e.act_chunk(obs, 8)
            assert chunk.shape == (8, ACTION_DIM) and chunk.dtype == np.float32
            assert np.all(np.abs(chunk) <= 1.0)
            for a in chunk:
                env.step(a)
            obs = env.observe()
    finally:
        env.close()
