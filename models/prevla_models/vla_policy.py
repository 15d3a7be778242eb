"""``VLAPolicy``: the learned VLA behind the runtime's ``Policy`` contract.

Duck-typed on purpose: ``prevla_models`` must not import ``prevla_ros``. Any object
:func:`prevla_models.encoder.observation_tensors` reads works (e.g. ``prevla_ros`` Observation).
"""
from __future__ import annotations

import numpy as np
import torch

from prevla_models.graphs import TorchRunner, observation_feeds
from prevla_models.vla import load_checkpoint, start_noise


class VLAPolicy:
    """Samples (k, H, 7) float32 action chunks in [-1, 1] from a VLA.

    Args:
        runner: a VLA runner (:mod:`prevla_models.graphs`; torch, ONNX Runtime or TensorRT).
        policy_id: name reported in candidate sets (default: the runner's model id).
        seed: seed of the sampling noise generator (reset() restores it, so episodes replay).
            The noise is drawn on the CPU by :func:`prevla_models.vla.start_noise` whatever the
            backend, so every backend samples the same chunks for the same seed.
    """

    def __init__(self, runner, policy_id: str | None = None, seed: int = 0) -> None:
        if runner.meta.get("kind") != "vla":
            raise ValueError(f"VLAPolicy needs a VLA model, got a {runner.meta.get('kind')!r} one")
        self.runner = runner
        self.policy_id = policy_id or runner.meta["model_id"]
        self.seed = int(seed)
        self._gen = torch.Generator()
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", policy_id: str | None = None, seed: int = 0) -> "VLAPolicy":
        """Torch backend from a checkpoint (FileNotFoundError / ValueError as ``load_checkpoint``)."""
        model, extra = load_checkpoint(path, map_location=device)
        return cls(TorchRunner(model, "vla", extra, device), policy_id or str(extra.get("policy_id", "vla")), seed)

    def reset(self) -> None:
        """The VLA is memoryless; re-seeding the noise makes episodes reproducible."""
        self._gen.manual_seed(self.seed)

    def sample(self, obs, k: int, temperature: float = 1.0) -> np.ndarray:
        """Return a (k, H, 7) float32 array of candidate chunks; temperature 0 is deterministic."""
        c = self.runner.meta["config"]
        noise = start_noise(1, k, c["horizon"], c["action_dim"], temperature, self._gen)
        out = self.runner({**observation_feeds(obs, self.runner.meta), "noise": noise.numpy()})
        return out["chunks"][0].astype(np.float32)
