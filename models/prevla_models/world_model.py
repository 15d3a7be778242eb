"""An action-conditioned world model: imagine the agent-view frames an action chunk produces.

Read top to bottom:
  1. ``WorldModelConfig``  every knob, with help text and validation.
  2. ``WorldModel``        frame + proprio -> latent grid (conv encoder, proprio FiLM);
                           latent dynamics, one residual step per action (action FiLM);
                           latent -> frame (transposed-conv decoder).
  3. checkpoints           ``save_checkpoint`` / ``load_checkpoint``.

Shape of the model: a compact latent model. The current frame (any side that is a multiple
of ``frame_size``, area-downsampled to it) is encoded once into a ``latent_channels`` x
(frame_size / 8)^2 grid; every action of a chunk advances the latent by one residual block
stack modulated by that action; any latent can be decoded into a frame: the current frame
warped by a predicted flow field and blended, through a predicted mask, with predicted new
pixels (an untrained model imagines "nothing moves", the copy baseline; moving the arm's
pixels is a flow, not a redraw, which is what makes this learnable on a CPU). Chunks are imagined
autoregressively: chunk k+1 starts from chunk k's last latent, so longer horizons cost one
dynamics step per action and one decode per frame asked for (``imagine(..., every=H)``
decodes only each chunk's last frame).

Objective (:meth:`WorldModel.loss`): for a sequence of T actions from a real frame, the L1 +
MSE between decoded latents and the real frames at the supervised steps (``target_mask``;
policy rollouts only have a frame every chunk, demonstrations have every step), each pixel
weighted by 1 + ``motion_weight`` x how much it changed since the start frame (without it the
model learns that nothing moves: most of the scene is static).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from prevla_models.checkpoints import ModelBase, load_model, save_model, sha256_file  # noqa: F401

CHECKPOINT_KIND = "world_model"


@dataclass
class WorldModelConfig:
    """Configuration of :class:`WorldModel` (small on purpose: it trains on CPU)."""

    frame_size: int = field(default=64, metadata={"help": "Side of the imagined frames (multiple of 8); larger inputs are area-downsampled."})
    action_dim: int = field(default=7, metadata={"help": "Action size (LIBERO OSC_POSE + gripper)."})
    horizon: int = field(default=8, metadata={"help": "Actions per chunk H (frames per imagined chunk)."})
    proprio_dim: int = field(default=8, metadata={"help": "Proprio size (eef pos, axis-angle, fingers)."})
    width: int = field(default=32, metadata={"help": "Channels of the first conv; doubled at each of the 3 downsamplings."})
    latent_channels: int = field(default=64, metadata={"help": "Channels of the latent grid (frame_size/8 square)."})
    dyn_blocks: int = field(default=2, metadata={"help": "Residual conv blocks per dynamics step."})
    hidden: int = field(default=128, metadata={"help": "Width of the action / proprio embeddings."})
    motion_weight: float = field(default=20.0, metadata={"help": "Loss weight of a pixel that changes fully over a chunk, on top of 1 (0 = unweighted)."})

    def __post_init__(self) -> None:
        if isinstance(self.motion_weight, bool) or not (isinstance(self.motion_weight, (int, float))
                                                         and 0 <= self.motion_weight < float("inf")):
            raise ValueError(f"WorldModelConfig.motion_weight must be finite and >= 0, got {self.motion_weight!r}")
        for name in ("frame_size", "action_dim", "horizon", "proprio_dim", "width", "latent_channels",
                     "dyn_blocks", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WorldModelConfig.{name} must be a positive int, got {v!r}")
        if self.frame_size % 8:
            raise ValueError(f"WorldModelConfig.frame_size must be a multiple of 8, got {self.frame_size}")


class FiLMBlock(nn.Module):
    """Residual conv block whose features are scaled and shifted by a conditioning vector."""

    def __init__(self, c: int, cond: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(8, c)
        self.film = nn.Linear(cond, 2 * c)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.zeros_(self.conv2.weight)  # starts as identity: the latent stays put
        nn.init.zeros_(self.conv2.bias)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = F.gelu(self.norm(self.conv1(z)) * (1 + scale) + shift)
        return z + self.conv2(h)


class WorldModel(ModelBase):
    """Frame + proprio + actions -> imagined frames (see the module docstring)."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.GroupNorm(8, w), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.Conv2d(4 * w, c, 3, 1, 1))
        self.proprio_film = FiLMBlock(c, cfg.hidden)
        self.proprio_mlp = nn.Sequential(nn.Linear(cfg.proprio_dim, cfg.hidden), nn.GELU(),
                                         nn.Linear(cfg.hidden, cfg.hidden))
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, cfg.hidden), nn.GELU(),
                                        nn.Linear(cfg.hidden, cfg.hidden))
        self.dynamics = nn.ModuleList(FiLMBlock(c, cfg.hidden) for _ in range(cfg.dyn_blocks))
        self.decoder = nn.Sequential(
            nn.Conv2d(c, 4 * w, 3, 1, 1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.GroupNorm(8, w), nn.GELU(),
            nn.ConvTranspose2d(w, 6, 4, 2, 1))  # flow (2), keep-mask logit (1), new pixels (3)
        nn.init.zeros_(self.decoder[-1].weight)  # starts as "nothing moves": the copy baseline
        nn.init.zeros_(self.decoder[-1].bias)
        with torch.no_grad():
            self.decoder[-1].bias[2] = 4.0  # keep the warped frame (sigmoid(4) = 0.98)
        f = cfg.frame_size
        ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / f, 1 - 1 / f, f), torch.linspace(-1 + 1 / f, 1 - 1 / f, f),
                                indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], -1)[None], persistent=False)
        self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))

    def set_normalization(self, proprio_mean, proprio_std) -> None:
        """Store proprio statistics (stds floored at 1e-3)."""
        self._store_stats(proprio_mean=proprio_mean, proprio_std=proprio_std)

    def to_input(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 upright frames -> (B, 3, F, F) floats in [-1, 1] (area-downsampled)."""
        s, f = frames.shape[1] if frames.dim() == 4 else 0, self.cfg.frame_size
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[2:] != (s, 3) or s < f or s % f:
            raise ValueError(f"frames must be (B, S, S, 3) uint8 with S a multiple of {f}, got "
                             f"{tuple(frames.shape)} {frames.dtype}")
        x = frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return F.avg_pool2d(x, s // f) if s != f else x

    def encode(self, frames: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Latent grid (B, C, F/8, F/8) of the current frame and proprio."""
        if proprio.shape != (frames.shape[0], self.cfg.proprio_dim) or not torch.isfinite(proprio).all():
            raise ValueError(f"proprio must be finite (B={frames.shape[0]}, {self.cfg.proprio_dim}), "
                             f"got {tuple(proprio.shape)}")
        z = self.encoder(self.to_input(frames))
        return self.proprio_film(z, self.proprio_mlp((proprio.float() - self.proprio_mean) / self.proprio_std))

    def step(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Advance the latent by one action (B, A)."""
        cond = self.action_mlp(action.float())
        for block in self.dynamics:
            z = block(z, cond)
        return z

    def decode(self, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Latent -> frame (B, 3, F, F) in [-1, 1]: the current frame (``to_input``) warped by
        a predicted flow, blended by a predicted mask with predicted new pixels (what moves is
        moved, what appears is drawn; the static scene is copied)."""
        out = self.decoder(z)
        flow, keep, new = out[:, :2], torch.sigmoid(out[:, 2:3]), torch.tanh(out[:, 3:])
        warped = F.grid_sample(current, self.grid + flow.permute(0, 2, 3, 1), mode="bilinear",
                               padding_mode="border", align_corners=False)
        return keep * warped + (1 - keep) * new

    def rollout(self, z: torch.Tensor, actions: torch.Tensor) -> list[torch.Tensor]:
        """Latents after each of the T actions (B, T, A): a list of T (B, C, h, w) grids."""
        out = []
        for t in range(actions.shape[1]):
            z = self.step(z, actions[:, t])
            out.append(z)
        return out

    # ---------------------------------------------------------------- use
    @torch.no_grad()
    def imagine(self, frames: torch.Tensor, proprio: torch.Tensor, chunks: torch.Tensor,
                every: int = 1) -> torch.Tensor:
        """Imagined frames of ``chunks`` (B, N, H, A) executed one after the other.

        Returns (B, T // every, F, F, 3) uint8 frames after actions every, 2*every, ... of the
        T = N*H actions (``every = H``: one frame per chunk, at its end).
        """
        c = self.cfg
        if chunks.dim() != 4 or chunks.shape[2:] != (c.horizon, c.action_dim) or chunks.shape[0] != frames.shape[0]:
            raise ValueError(f"chunks must be (B={frames.shape[0]}, N, {c.horizon}, {c.action_dim}), "
                             f"got {tuple(chunks.shape)}")
        if not torch.isfinite(chunks).all():
            raise ValueError("chunks contain NaN or inf")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        b, n = chunks.shape[:2]
        z, out, current = self.encode(frames, proprio), [], self.to_input(frames)
        for t, a in enumerate(chunks.reshape(b, n * c.horizon, c.action_dim).unbind(1)):
            z = self.step(z, a)
            if (t + 1) % every == 0:
                out.append(self.decode(z, current))
        x = torch.stack(out, 1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        return x.permute(0, 1, 3, 4, 2).contiguous()

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 + MSE of decoded frames at the supervised steps of ``batch``.

        ``batch``: frames (B, S, S, 3) uint8, proprio (B, P), actions (B, T, A), targets
        (B, T, F, F, 3) uint8 (frame after each action; anything where unsupervised),
        target_mask (B, T) bool, optionally decode (B, T) bool: which supervised steps to
        decode this step (a random subset keeps CPU training affordable; default: all).
        """
        z = self.encode(batch["frames"], batch["proprio"])
        latents = torch.stack(self.rollout(z, batch["actions"]), 1)  # (B, T, C, h, w)
        mask = batch["target_mask"].bool() & batch.get("decode", torch.ones_like(batch["target_mask"])).bool()
        if not mask.any():
            raise ValueError("no supervised frame in the batch")
        current = self.to_input(batch["frames"])[:, None].expand(-1, mask.shape[1], -1, -1, -1)
        pred = self.decode(latents[mask], current[mask])  # (M, 3, F, F)
        target = batch["targets"][mask].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        # Motion weighting: most pixels do not change over a chunk, and an unweighted loss is
        # minimised by imagining that nothing moves; pixels that change weigh up to 1 + motion_weight.
        w = 1.0 + self.cfg.motion_weight * (target - current[mask]).abs().mean(1, keepdim=True) / 2
        err = pred - target
        l1, mse = (w * err.abs()).mean() / w.mean(), (w * err.pow(2)).mean() / w.mean()
        total = l1 + mse
        mse_f = float(mse.detach())
        return total, {"total": float(total.detach()), "l1": float(l1.detach()), "mse": mse_f,
                       "psnr": 10 * math.log10(4.0 / max(mse_f, 1e-10))}


def save_checkpoint(path: str, model: WorldModel, extra: dict | None = None) -> None:
    """Write {"kind": "world_model", "config", "state_dict", "extra"} (atomically)."""
    save_model(path, model, CHECKPOINT_KIND, extra)


def load_checkpoint(path: str, map_location="cpu") -> tuple[WorldModel, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: truncated, corrupted, or not a prevla world-model checkpoint.
    """
    return load_model(path, CHECKPOINT_KIND, WorldModelConfig, WorldModel, map_location)
