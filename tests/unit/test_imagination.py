"""The world model behind world_model_node (ROS-free): frames, tiling, checks, rate gate."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.imagination import Imaginer, RateGate, tile
from prevla_ros.runtime.types import Observation


@pytest.fixture(scope="module")
def imaginer():
    import torch
    from prevla_models.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    return Imaginer(WorldModel(WorldModelConfig(width=8, latent_channels=8, hidden=16)))


def _obs(side: int = 128) -> Observation:
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return Observation(images={"agentview": image}, joint_positions=np.zeros(7),
                       gripper_qpos=np.array([0.02, -0.02]), eef_pos=np.array([0.1, 0.0, 1.0]),
                       eef_quat_xyzw=np.array([0.0, 0.0, 0.0, 1.0]))


def test_imagines_frames_per_chunk_and_tiles_rows_by_chunk(imaginer):
    chunks = np.zeros((3, 8, 7), np.float32)
    frames, ms = imaginer.imagine(_obs(), chunks, 4)
    assert frames.shape == (3, 4, 64, 64, 3) and frames.dtype == np.uint8 and ms > 0
    grid = tile(frames)
    assert grid.shape == (3 * 64, 4 * 64, 3)
    np.testing.assert_array_equal(grid[64:128, 128:192], frames[1, 2])


def test_bad_inputs_say_what_is_wrong(imaginer):
    with pytest.raises(ValueError, match="does not divide"):
        imaginer.every(3)
    with pytest.raises(ValueError, match="multiple of 64"):
        imaginer.imagine(_obs(100), np.zeros((1, 8, 7), np.float32), 4)
    assert "horizon 5" in imaginer.chunk_problem(np.zeros((5, 7), np.float32))
    assert "non-finite" in imaginer.chunk_problem(np.full((8, 7), np.nan, np.float32))
    assert imaginer.chunk_problem(np.zeros((8, 7), np.float32)) is None


def test_rate_gate_counts_what_it_turns_away():
    gate = RateGate(2.0)
    assert [gate.allow(t) for t in (0.0, 0.2, 0.5, 0.6, 1.1)] == [True, False, True, False, True]
    assert gate.skipped == 2
    free = RateGate(0.0)
    assert all(free.allow(0.0) for _ in range(3)) and free.skipped == 0
