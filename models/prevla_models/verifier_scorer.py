"""``VerifierScorer``: the learned Pre-VLA verifier behind the runtime's scorer contract.

Duck-typed like :mod:`prevla_models.vla_policy` (``prevla_models`` must not import
``prevla_ros``): ``obs`` is any object with ``images["agentview"]``, ``images["wrist"]``
(upright SxSx3 uint8, S a multiple of the model's ``image_size``), ``eef_pos``,
``eef_quat_xyzw``, ``gripper_qpos``, ``joint_positions`` and ``instruction``.

One call scores every candidate of one observation through a *runner*
(:mod:`prevla_models.graphs`: torch here, ONNX Runtime or TensorRT from
``prevla_ros.runtime.engines``): the graph encodes the observation once and scores the K chunks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prevla_models.graphs import TorchRunner, observation_feeds


class VerifierScorer:
    """P(safe) and advantage of K candidate chunks of one observation.

    Args:
        runner: a verifier runner (``runner.meta["kind"] == "verifier"``).
        verifier_id: name reported in verdicts (default: the runner's model id).
    """

    def __init__(self, runner, verifier_id: str | None = None) -> None:
        if runner.meta.get("kind") != "verifier":
            raise ValueError(f"VerifierScorer needs a verifier model, got a {runner.meta.get('kind')!r} one")
        self.runner = runner
        self.verifier_id = verifier_id or runner.meta["model_id"]

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", verifier_id: str | None = None) -> "VerifierScorer":
        """Torch backend from a checkpoint (FileNotFoundError / ValueError as ``load_checkpoint``)."""
        from prevla_models.verifier import load_checkpoint

        model, extra = load_checkpoint(path, map_location=device)
        runner = TorchRunner(model, "verifier", extra, device)
        return cls(runner, verifier_id or str(extra.get("verifier_id") or Path(path).stem))

    @property
    def threshold(self) -> float:
        """The model's calibrated accept threshold tau on P(safe)."""
        return float(self.runner.meta["threshold"])

    def check_candidates(self, candidates) -> np.ndarray:
        """``candidates`` as a (K, H, A) float32 array; ValueError saying what was expected."""
        c = self.runner.meta["config"]
        want = f"(K, H={c['horizon']}, action_dim={c['action_dim']}) with K >= 1"
        try:
            arr = np.asarray(candidates, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged list, strings, ...
            raise ValueError(f"candidates must be a numeric array {want}: {exc}") from exc
        if arr.ndim != 3 or arr.shape[1:] != (c["horizon"], c["action_dim"]):
            raise ValueError(f"candidates must be shaped {want}, got {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"candidates must hold K >= 1 chunks {want}, got K=0")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"candidates contain {int(np.sum(~np.isfinite(arr)))} non-finite values")
        return arr

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
        out = self.runner({**observation_feeds(obs, self.runner.meta), "actions": arr[None]})
        logit = out["safety_logit"][0].astype(np.float64)
        p_safe = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return p_safe, out["advantage"][0].astype(np.float32)
