"""Pure-numpy helpers shared by the runtime and training: rotations, proprio, frame downsampling.

Both sides must build the proprioception vector (and downsample camera frames) the same way, so
the conversions live here once.
"""
from __future__ import annotations

import numpy as np


def quat_xyzw_to_axis_angle(quat_xyzw: np.ndarray, hemisphere: bool = False) -> np.ndarray:
    """Convert a quaternion (x, y, z, w) to an axis-angle vector ``axis * angle``.

    By default this is exactly robosuite's ``quat2axisangle`` (``2 * acos(w)`` times the
    normalised vector part, no sign canonicalisation, so the angle lies in ``[0, 2 pi]``). That
    is what LIBERO stores as ``obs/ee_ori``, so live proprio built here equals the training data
    bit for bit -- which matters because LIBERO's gripper-down pose has ``w`` near 0 and flips
    sign often. ``hemisphere=True`` first picks ``w >= 0`` so the angle lies in ``[0, pi]`` and
    ``q`` / ``-q`` give the same vector (identical to robosuite whenever ``w >= 0``).

    Args:
        quat_xyzw: (..., 4) array; it need not be exactly unit length.
        hemisphere: canonicalise to ``w >= 0`` first.

    Returns:
        (..., 3) float64 array; zeros for the identity rotation.
    """
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"expected a (..., 4) xyzw quaternion, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("quaternion contains NaN or inf")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quaternion has zero length")
    q = q / norm
    if hemisphere:
        q = np.where(q[..., 3:4] < 0.0, -q, q)
    w = np.clip(q[..., 3], -1.0, 1.0)
    sin_half = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * np.arccos(w)
    # robosuite returns zeros when sin(angle/2) ~ 0 (identity, or a full turn when w = -1).
    scale = np.where(sin_half > 1e-8, angle / np.maximum(sin_half, 1e-12), 0.0)
    return q[..., :3] * scale[..., None]


def proprio_from_state(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The 8-d proprio of prevla: eef_pos (3) + robosuite axis-angle (3) + gripper_qpos (2).

    Same definition as ``prevla_training.demos_read.DemoDataset`` (LIBERO's ee_pos, ee_ori,
    gripper_states) and as openpi / OpenVLA-OFT's LIBERO state.
    """
    pos = np.asarray(eef_pos, dtype=np.float64).reshape(-1)
    grip = np.asarray(gripper_qpos, dtype=np.float64).reshape(-1)
    if pos.shape != (3,) or grip.shape != (2,):
        raise ValueError(f"expected eef_pos (3,) and gripper_qpos (2,), got {pos.shape} and {grip.shape}")
    aa = quat_xyzw_to_axis_angle(np.asarray(eef_quat_xyzw).reshape(-1))
    return np.concatenate([pos, aa, grip]).astype(np.float32)


def with_joints(proprio: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """The verifier's 15-D proprio: ``proprio_from_state``'s 8 values (rows of them) + the 7 arm
    joint positions (joint-limit danger is not visible in the end-effector pose)."""
    joints = np.asarray(joints, dtype=np.float32)
    if joints.shape[-1:] != (7,) or not np.all(np.isfinite(joints)):
        raise ValueError(f"joint_positions: expected 7 finite values, got shape {joints.shape}")
    return np.concatenate([np.asarray(proprio, dtype=np.float32), joints], axis=-1)


def area_downsample(frames: np.ndarray, size: int) -> np.ndarray:
    """(..., S, S, 3) uint8 frames -> (..., size, size, 3) uint8 by averaging S/size blocks
    (rounded); unchanged when S == size. S must be a multiple of ``size``."""
    s = frames.shape[-2]
    if s % size:
        raise ValueError(f"frames are {s} px, not a multiple of {size}")
    f = s // size
    if f == 1:
        return frames
    lead = frames.shape[:-3]
    return frames.reshape(*lead, size, f, size, f, 3).mean((-4, -2)).round().astype(np.uint8)
