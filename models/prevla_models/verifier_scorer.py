"""``VerifierScorer``: the learned Pre-VLA verifier behind the runtime's scorer contract.

Duck-typed like :mod:`prevla_models.vla_policy` (``prevla_models`` must not import
``prevla_ros``): ``obs`` is any object with ``images["agentview"]``, ``images["wrist"]``
(upright SxSx3 uint8, S a multiple of the model's ``image_size``), ``eef_pos``,
``eef_quat_xyzw``, ``gripper_qpos`` and ``instruction``.

One call scores every candidate of one observation: the observation is encoded once
(:meth:`Verifier.encode_observation`) and broadcast over the K chunks (:meth:`Verifier.score`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prevla_models.verifier import Verifier, load_checkpoint
from prevla_models.vla_policy import observation_tensors


class VerifierScorer:
    """P(safe) and advantage of K candidate chunks of one observation, from a :class:`Verifier`.

    Args:
        model: the network (put in eval mode here).
        verifier_id: name reported in verdicts.
        device: torch device to run on.
    """

    def __init__(self, model: Verifier, verifier_id: str = "verifier", device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.verifier_id = verifier_id

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", verifier_id: str | None = None) -> "VerifierScorer":
        """Load a verifier checkpoint (FileNotFoundError / ValueError as ``load_checkpoint``)."""
        model, extra = load_checkpoint(path, map_location=device)
        return cls(model, verifier_id or str(extra.get("verifier_id") or Path(path).stem), device=device)

    @property
    def threshold(self) -> float:
        """The model's calibrated accept threshold tau on P(safe)."""
        return self.model.threshold

    def check_candidates(self, candidates) -> np.ndarray:
        """``candidates`` as a (K, H, A) float32 array; ValueError saying what was expected."""
        c = self.model.cfg
        want = f"(K, H={c.horizon}, action_dim={c.action_dim}) with K >= 1"
        try:
            arr = np.asarray(candidates, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged list, strings, ...
            raise ValueError(f"candidates must be a numeric array {want}: {exc}") from exc
        if arr.ndim != 3 or arr.shape[1:] != (c.horizon, c.action_dim):
            raise ValueError(f"candidates must be shaped {want}, got {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"candidates must hold K >= 1 chunks {want}, got K=0")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"candidates contain {int(np.sum(~np.isfinite(arr)))} non-finite values")
        return arr

    @torch.no_grad()
    def score(self, obs, candidates) -> tuple[np.ndarray, np.ndarray]:
        """Score K candidate chunks of ``obs``.

        Args:
            obs: duck-typed observation (see the module docstring).
            candidates: (K, H, A) array-like, H and A as the model's config.

        Returns:
            (p_safe, advantage), two (K,) float32 arrays; p_safe = sigmoid(safety logit).

        Raises:
            ValueError: malformed candidates or observation.
        """
        arr = self.check_candidates(candidates)
        c = self.model.cfg
        images, proprio = observation_tensors(obs, c.image_size, c.cameras, self.device, c.proprio_dim)
        features = self.model.encode_observation(images, proprio, [str(obs.instruction)])  # once
        out = self.model.score(features, torch.from_numpy(arr)[None].to(self.device))
        p_safe = torch.sigmoid(out["safety_logit"][0].float()).cpu().numpy().astype(np.float32)
        return p_safe, out["advantage"][0].float().cpu().numpy().astype(np.float32)
