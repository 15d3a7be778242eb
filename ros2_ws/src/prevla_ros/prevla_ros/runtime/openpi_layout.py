"""openpi's LIBERO request layout -> a prevla ``Observation`` (the policy server's input side).

An openpi client (``openpi_client.websocket_client_policy.WebsocketClientPolicy``, e.g.
openpi's ``examples/libero/main.py``) sends one msgpack map per request::

    observation/image        agentview, upright (rotated 180 degrees by the client)
    observation/wrist_image  wrist camera, same format
    observation/state        (8,) eef position (3) + robosuite axis-angle (3) + gripper qpos (2)
    prompt                   the instruction

Its images are usually 224x224 uint8 (``image_tools.resize_with_pad`` then
``convert_to_uint8``), but openpi's own input transform (``libero_policy._parse_image``) also
takes float images in [0, 1] (uint8 = ``(255 * x).astype(uint8)``) and channel-first (3, H, W)
ones, and a client may send any size. Read top to bottom:

  1. :class:`ImageSpec` / :func:`image_spec`  which camera sides a policy takes as they are.
  2. :func:`to_hwc_uint8`  any accepted layout/dtype -> (H, W, 3) uint8; sizes checked first,
     so an oversized image costs O(1).
  3. :func:`resize_with_pad`  aspect-preserving bilinear resize, then centred zero padding: the
     same arithmetic as openpi's ``image_tools.resize_with_pad`` (tf.image.resize_with_pad).
  4. :func:`decode_observation`  the whole request map -> ``Observation``; prevla's raw
     ``prevla/*`` fields (sent by :mod:`prevla_ros.runtime.remote_policy`) win over the state.

Bad input is a ``ValueError`` that names the key, what was expected and what came.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from PIL import Image

from prevla_ros.runtime.limits import MAX_OBJECTS, InputLimits
from prevla_ros.runtime.remote_policy import DEFAULT_IMAGE_KEYS, PROMPT_KEY, STATE_KEY
from prevla_ros.runtime.types import ObjectPose, Observation

#: The runtime's camera side (``sim_node``'s ``image_size``; the zoo VLA was trained on it):
#: images a policy does not take as they are get resized to it unless told otherwise.
DEFAULT_IMAGE_SIDE = 128


@dataclass(frozen=True)
class ImageSpec:
    """The square camera sides a policy takes as they are.

    Attributes:
        multiple: a side must be a positive multiple of this (the VLA's encoder area-downsamples
            a multiple of its ``image_size``); 1 = any side.
        fixed: the one side it takes (an exported graph is built for one), or None.
    """

    multiple: int = 1
    fixed: int | None = None

    def takes(self, side: int) -> bool:
        """True if a (side, side, 3) uint8 image goes to the policy unchanged."""
        if self.fixed is not None:
            return side == self.fixed
        return side >= self.multiple and side % self.multiple == 0

    def default_side(self) -> int:
        """The side other images are resized to: the fixed one, else the smallest side it takes
        that is >= :data:`DEFAULT_IMAGE_SIDE`."""
        if self.fixed is not None:
            return self.fixed
        return self.multiple * max(1, math.ceil(DEFAULT_IMAGE_SIDE / self.multiple))


def image_spec(policy: Any) -> ImageSpec:
    """What ``policy`` takes, read from its runner's metadata (``VLAPolicy.runner.meta``:
    ``config.image_size`` and ``image_side``); a policy without one takes any square side."""
    meta = getattr(getattr(policy, "runner", None), "meta", None)
    if not isinstance(meta, dict) or "image_size" not in meta.get("config", {}):
        return ImageSpec()
    fixed = meta.get("image_side")
    return ImageSpec(int(meta["config"]["image_size"]), int(fixed) if fixed else None)


def to_hwc_uint8(image: Any, key: str, limit_side: int) -> np.ndarray:
    """An image in any layout openpi accepts -> (H, W, 3) uint8.

    Accepted: (H, W, 3) or (3, H, W) (channel-last wins when both fit, e.g. (3, W, 3)); uint8,
    or float in [0, 1] converted as openpi's ``convert_to_uint8`` does (``(255 * x)`` truncated).
    Sizes are checked before any pixel is read.

    Raises:
        ValueError: not an array, wrong rank or channel count, a side of 0 or above
            ``limit_side``, another dtype, or a float image with NaN/inf or values outside [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{key}: expected an image array (msgpack-numpy ndarray), got "
                         f"{type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] == 3:
        hwc = image
    elif image.ndim == 3 and image.shape[0] == 3:
        hwc = image.transpose(1, 2, 0)
    else:
        raise ValueError(f"{key}: expected an (H, W, 3) or (3, H, W) image, got shape {image.shape}")
    h, w = hwc.shape[:2]
    if not (1 <= h <= limit_side and 1 <= w <= limit_side):
        raise ValueError(f"{key}: image {h}x{w} outside 1..limit_image_side {limit_side} pixels a side")
    if hwc.dtype == np.uint8:
        return np.ascontiguousarray(hwc)
    if hwc.dtype.kind != "f":
        raise ValueError(f"{key}: expected uint8 or float in [0, 1] pixels, got dtype {hwc.dtype}")
    lo, hi = float(np.min(hwc)), float(np.max(hwc))  # NaN propagates into lo/hi
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"{key}: float pixels must be finite and in [0, 1] (openpi's convention: "
                         f"uint8 = 255 * x), got min {lo} max {hi}")
    return np.ascontiguousarray((255 * hwc).astype(np.uint8))


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3) uint8 without distortion: scale by the larger of
    the two side ratios (PIL bilinear), then paste centred on zeros.

    The sizes and offsets follow openpi's ``image_tools.resize_with_pad`` (int truncation of
    ``side / ratio`` and of half the margin), so both give the same pixels; an image already
    (height, width) is returned as is. Unlike openpi, a scaled side is at least one pixel, so an
    extreme aspect ratio (1 x 1000) gives a thin strip rather than a PIL error.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    ratio = max(w / width, h / height)
    new_h, new_w = max(1, int(h / ratio)), max(1, int(w / ratio))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))
    out[top:top + new_h, left:left + new_w] = resized
    return out


def prepare_image(image: Any, key: str, spec: ImageSpec, side: int, limit_side: int) -> np.ndarray:
    """A request image -> what the policy takes: a square uint8 image of a side ``spec`` takes
    passes unchanged; any other is converted (:func:`to_hwc_uint8`) and resized to ``side``."""
    hwc = to_hwc_uint8(image, key, limit_side)
    h, w = hwc.shape[:2]
    if h == w and spec.takes(h):
        return hwc
    return resize_with_pad(hwc, side, side)


def axis_angle_to_quat_xyzw(aa: np.ndarray) -> np.ndarray:
    """Inverse of robosuite's ``quat2axisangle`` (exact for its [0, 2 pi] angle convention)."""
    aa = np.asarray(aa, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.concatenate([aa / angle * np.sin(angle / 2.0), [np.cos(angle / 2.0)]])


def _vec(req: dict, key: str, n: int) -> np.ndarray:
    """``req[key]`` as n finite float64 values (sizes checked before the values are read)."""
    if key not in req:
        raise ValueError(f"{key}: missing (expected {n} numbers)")
    raw = req[key]
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"{key}: expected {n} numbers, got dtype {raw.dtype}")
        if raw.size != n:
            raise ValueError(f"{key}: expected {n} values, got shape {raw.shape}")
    elif not (isinstance(raw, (list, tuple)) and len(raw) == n
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw)):
        raise ValueError(f"{key}: expected {n} numbers, got {type(raw).__name__}")
    try:
        v = np.asarray(raw, dtype=np.float64).reshape(n)
    except OverflowError as exc:  # a msgpack int beyond float range
        raise ValueError(f"{key}: expected {n} finite numbers: {exc}") from None
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{key}: expected finite numbers, got {v.tolist()}")
    return v


def _objects(raw: Any) -> dict[str, ObjectPose] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) > MAX_OBJECTS:
        size = len(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"prevla/objects: expected a map of at most {MAX_OBJECTS} name -> "
                         f"{{pos, quat_xyzw}}, got {size}")
    out = {}
    for name, pose in raw.items():
        if not isinstance(pose, dict):
            raise ValueError(f"prevla/objects[{name!r}]: expected a map, got {type(pose).__name__}")
        out[str(name)] = ObjectPose(_vec(pose, "pos", 3), _vec(pose, "quat_xyzw", 4))
    return out


def decode_observation(req: Any, image_keys: dict[str, str] | None = None,
                       spec: ImageSpec | None = None, side: int | None = None,
                       limits: InputLimits | None = None) -> Observation:
    """Request map -> ``Observation``; raw ``prevla/*`` fields win over ``observation/state``.

    Without the prevla extras (an openpi client) the quaternion is rebuilt from the axis-angle
    in the state and joint positions are unknown (zeros). Images present are prepared for a
    policy taking ``spec`` (:func:`prepare_image`, resized to ``side``, default
    ``spec.default_side()``); a missing camera is the policy's to refuse.

    Raises:
        ValueError: not a map, a missing state, a bad image, a state with the wrong size or
            NaN/inf, an instruction not a string or longer than ``limit_instruction_chars``.
    """
    if not isinstance(req, dict):
        raise ValueError(f"request: expected a msgpack map, got {type(req).__name__}")
    limits = limits or InputLimits()
    spec = spec or ImageSpec()
    side = side or spec.default_side()
    prompt = req.get(PROMPT_KEY, "")
    if not isinstance(prompt, str):
        raise ValueError(f"{PROMPT_KEY}: expected a string, got {type(prompt).__name__}")
    if len(prompt) > limits.limit_instruction_chars:
        raise ValueError(f"{PROMPT_KEY}: {len(prompt)} characters > limit_instruction_chars "
                         f"{limits.limit_instruction_chars}")
    if "prevla/eef_pos" in req:
        pos, quat = _vec(req, "prevla/eef_pos", 3), _vec(req, "prevla/eef_quat_xyzw", 4)
        grip = _vec(req, "prevla/gripper_qpos", 2)
    elif STATE_KEY in req:
        state = _vec(req, STATE_KEY, 8)
        pos, quat, grip = state[:3], axis_angle_to_quat_xyzw(state[3:6]), state[6:8]
    else:
        raise ValueError(f"request: expected {STATE_KEY!r} or 'prevla/eef_pos'; got keys "
                         f"{sorted(map(str, req))[:20]}")
    joints = _vec(req, "prevla/joint_positions", 7) if "prevla/joint_positions" in req else np.zeros(7)
    stamp = req.get("prevla/stamp_ns", 0)
    if not isinstance(stamp, Integral) or isinstance(stamp, bool):
        raise ValueError(f"prevla/stamp_ns: expected an int, got {type(stamp).__name__}")
    images = {cam: prepare_image(req[key], key, spec, side, limits.limit_image_side)
              for cam, key in (image_keys or DEFAULT_IMAGE_KEYS).items() if key in req}
    return Observation(images=images, joint_positions=joints, gripper_qpos=grip, eef_pos=pos,
                       eef_quat_xyzw=quat, instruction=prompt, stamp_ns=int(stamp),
                       objects=_objects(req.get("prevla/objects")))
