"""The world model behind one call, for ``world_model_node`` (ROS-free).

:class:`Imaginer` takes one observation and the chunks answering it and returns the frames
the world model imagines for each chunk; :func:`tile` lays them out as one image (a row per
chunk, a column per imagined frame, in time order) that rviz shows beside the real camera.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from prevla_ros.runtime.chunks import chunk_problem
from prevla_ros.runtime.types import Observation

if TYPE_CHECKING:
    from prevla_models.artifacts import Verified

#: Chunks with any |action| above this are not imagined (same limit as the verifier's).
MAX_ABS_ACTION = 10.0


class Imaginer:
    """A loaded :class:`prevla_models.world_model.WorldModel` and the device it runs on.

    Args:
        model: the world model (eval mode is set here).
        device: a torch device string ("cpu", "cuda", "cuda:N").
    """

    def __init__(self, model, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        cfg = model.cfg
        self.frame_size, self.horizon, self.action_dim = (cfg.frame_size, cfg.horizon,
                                                          cfg.action_dim)

    @classmethod
    def from_checkpoint(cls, spec: str, device: str = "auto",
                        allow_unverified: bool = False) -> tuple["Imaginer", "Verified"]:
        """Load ``spec`` ("" = the zoo's default world model, zoo:NAME or a file), sha256-checked
        against its record (refused if it has none that matches, unless ``allow_unverified``:
        :mod:`prevla_models.artifacts`); returns the imaginer and the checked file (path,
        sha256, record or why it is unverified). Raises FileNotFoundError / ValueError saying why."""
        from prevla_models.world_model import load_checkpoint
        from prevla_models.zoo import resolve_file
        from prevla_ros.runtime.engines import resolve_device

        checked = resolve_file(spec, "world_model", allow_unverified=allow_unverified)
        model, _ = load_checkpoint(checked.path, map_location="cpu")
        return cls(model, resolve_device(device)), checked

    def every(self, frames_per_chunk: int) -> int:
        """Actions between two imagined frames; ``frames_per_chunk`` must divide the horizon."""
        if frames_per_chunk < 1 or self.horizon % frames_per_chunk:
            raise ValueError(f"frames_per_chunk {frames_per_chunk} does not divide the world "
                             f"model's horizon {self.horizon}")
        return self.horizon // frames_per_chunk

    def image_problem(self, image: np.ndarray) -> str | None:
        """Why the world model cannot start from ``image``, or None."""
        side = image.shape[0] if image.ndim == 3 else 0
        if (image.dtype != np.uint8 or image.shape != (side, side, 3) or side < self.frame_size
                or side % self.frame_size):
            return (f"agentview image must be (S, S, 3) uint8 with S a multiple of "
                    f"{self.frame_size}, got {image.shape} {image.dtype}")
        return None

    def chunk_problem(self, actions: np.ndarray) -> str | None:
        """Why ``actions`` cannot be imagined (shape, horizon, NaN, magnitude), or None."""
        problem = chunk_problem(actions, self.action_dim, MAX_ABS_ACTION)
        if problem is None and actions.shape[0] != self.horizon:
            problem = f"horizon {actions.shape[0]} != the world model's {self.horizon}"
        return problem

    def imagine(self, obs: Observation, chunks: np.ndarray,
                frames_per_chunk: int) -> tuple[np.ndarray, float]:
        """(K, frames_per_chunk, F, F, 3) uint8 frames for ``chunks`` (K, H, A), each rolled
        out from ``obs`` (its agentview image and 8-D proprio); and the time taken in ms.

        Raises ValueError for an observation or chunks the model cannot take.
        """
        import torch
        from prevla_models.geometry import proprio_from_state

        every = self.every(frames_per_chunk)
        image = obs.images.get("agentview")
        if image is None:
            raise ValueError("observation has no agentview image")
        problem = self.image_problem(np.asarray(image))
        if problem:
            raise ValueError(problem)
        chunks = np.asarray(chunks, dtype=np.float32)
        k = len(chunks)
        proprio = proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos)
        t0 = time.perf_counter()
        frames = torch.from_numpy(np.ascontiguousarray(image))[None].expand(k, -1, -1, -1)
        out = self.model.imagine(frames.to(self.device),
                                 torch.from_numpy(proprio)[None].expand(k, -1).to(self.device),
                                 torch.from_numpy(chunks)[:, None].to(self.device), every=every)
        out = out.cpu().numpy()
        return out, (time.perf_counter() - t0) * 1e3


class RateGate:
    """Lets work through at most ``max_rate_hz`` times a second (0: always); what it turns
    away is counted in ``skipped``."""

    def __init__(self, max_rate_hz: float) -> None:
        self.period = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self.skipped = 0
        self._last = -float("inf")

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._last < self.period:
            self.skipped += 1
            return False
        self._last = now
        return True


def tile(frames: np.ndarray) -> np.ndarray:
    """(K, T, F, F, 3) frames -> one (K*F, T*F, 3) image: row k = chunk k, left to right in time."""
    k, t, f, _, c = frames.shape
    return np.ascontiguousarray(frames.transpose(0, 2, 1, 3, 4).reshape(k * f, t * f, c))
