"""A small vision-language-action model that *samples* diverse action chunks.

Read top to bottom:
  1. ``VLAConfig``      every knob, with help text and validation.
  2. ``VLA``            the shared observation encoder (:mod:`prevla_models.encoder`: cameras,
                        words, proprio) -> transformer trunk -> context tokens; a flow-matching
                        action head that turns Gaussian noise into an (H, 7) chunk.
  3. checkpoints        ``save_checkpoint`` / ``load_checkpoint`` / ``sha256_file``.

Why a word-level tokenizer and no pretrained text encoder: LIBERO's instructions use a small,
fixed vocabulary (a few dozen words per suite), and no pretrained text encoder can be installed
offline here without large extra dependencies and weight downloads. Words seen in training get
an embedding; any other word maps to ``<unk>``.

Why flow matching (rectified flow): the verifier needs K *different* candidate chunks per
observation. A flow model samples by integrating a learned velocity field from noise
``a0 ~ temperature * N(0, I)``; temperature 0 starts from ``a0 = 0`` and is exactly
deterministic. The observation is encoded once and shared by all K samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from prevla_models.checkpoints import (PAD, UNK, ModelBase, ObsActionConfig, build_vocab, load_model,  # noqa: F401
                                       save_model, sha256_file, split_words)
from prevla_models.encoder import ObservationEncoder, adopt_legacy_keys

CHECKPOINT_KIND = "vla"


@dataclass
class VLAConfig(ObsActionConfig):
    """Configuration of :class:`VLA` (all sizes are small on purpose: it must train on CPU)."""

    d_model: int = field(default=128, metadata={"help": "Token width of trunk and action head."})
    n_layers: int = field(default=3, metadata={"help": "Transformer encoder layers in the trunk."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads (must divide d_model)."})
    head_layers: int = field(default=2, metadata={"help": "Transformer decoder layers in the action head."})
    flow_steps: int = field(default=10, metadata={"help": "Euler steps when sampling the flow ODE."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout in the transformer layers."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "n_layers", "n_heads", "head_layers", "flow_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"VLAConfig.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"VLAConfig.n_heads={self.n_heads} must divide d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VLAConfig.dropout must be in [0, 1), got {self.dropout}")


class VLA(ModelBase):
    """Cameras + instruction + proprio -> K sampled action chunks (conditional rectified flow)."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        # Camera patch, word and proprio tokens (+ proprio statistics), shared with the verifier.
        self.observation = ObservationEncoder(cfg, d)
        self.register_load_state_dict_pre_hook(adopt_legacy_keys)  # checkpoints from before it
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.trunk_norm = nn.LayerNorm(d)
        # Action head: H noisy-action tokens (+ time) cross-attend to the context tokens.
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(1, cfg.horizon, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        dec = nn.TransformerDecoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, activation="gelu",
                                         batch_first=True, norm_first=True)
        self.head = nn.TransformerDecoder(dec, cfg.head_layers)
        self.action_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.action_dim))
        # Dataset statistics (set by training; identity until then). Gripper stays +-1 (mean 0, std 1).
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))

    # ---------------------------------------------------------------- helpers
    def set_normalization(self, action_mean, action_std, proprio_mean, proprio_std) -> None:
        """Store dataset statistics; stds are floored so constant dimensions do not blow up."""
        self._store_stats(action_mean=action_mean, action_std=action_std)
        self.observation.set_normalization(proprio_mean, proprio_std)

    def tokenize(self, instructions) -> torch.Tensor:
        """Instructions -> (B, max_words) word ids (:meth:`ObservationEncoder.tokenize`)."""
        return self.observation.tokenize(instructions)

    # ---------------------------------------------------------------- model
    def encode(self, images: torch.Tensor, proprio: torch.Tensor, instructions) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode an observation batch into context tokens.

        ``images`` (B, cameras, S, S, 3) uint8, ``proprio`` (B, proprio_dim) and ``instructions``
        (B strings or word ids) as :meth:`prevla_models.encoder.ObservationEncoder.forward`.

        Returns:
            context (B, N, d_model) and its key-padding mask (B, N), True = padding.
        """
        ctx, pad = self.observation(images, proprio, instructions)
        return self.trunk_norm(self.trunk(ctx, src_key_padding_mask=pad)), pad

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Predicted flow velocity for noisy normalised chunks ``x_t`` (B, H, A) at times ``t`` (B,)."""
        half = self.cfg.d_model // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        ang = t.float()[:, None] * 1000.0 * freqs[None]
        temb = self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1)).unsqueeze(1)
        h = self.action_in(x_t) + self.action_pos + temb
        h = self.head(h, ctx, memory_key_padding_mask=pad)
        return self.action_out(h)

    def forward(self, batch: dict) -> torch.Tensor:
        """Alias of :meth:`loss` (so ``model(batch)`` trains)."""
        return self.loss(batch)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss: MSE(v(x_t, t), a1 - a0), x_t = (1 - t) a0 + t a1, a0 ~ N(0, I).

        ``batch`` holds images, proprio, instructions (strings or ids), actions (B, H, A) and
        optionally action_mask (B, H) bool (False = padding after the episode end, not trained).
        """
        actions = batch["actions"].float()
        b = actions.shape[0]
        if actions.shape[1:] != (self.cfg.horizon, self.cfg.action_dim):
            raise ValueError(f"actions must be (B, {self.cfg.horizon}, {self.cfg.action_dim}), got {tuple(actions.shape)}")
        ctx, pad = self.encode(batch["images"], batch["proprio"], batch["instructions"])
        a1 = (actions - self.action_mean) / self.action_std
        a0 = torch.randn(a1.shape, generator=generator, device=a1.device)
        t = torch.rand(b, generator=generator, device=a1.device)
        x_t = (1 - t[:, None, None]) * a0 + t[:, None, None] * a1
        err = (self.velocity(x_t, t, ctx, pad) - (a1 - a0)).pow(2).mean(-1)  # (B, H)
        mask = batch.get("action_mask")
        if mask is None:
            return err.mean()
        mask = mask.to(err.device, torch.float32)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def integrate(self, ctx: torch.Tensor, pad: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Chunks (B, K, H, A) in [-1, 1] from K normalised start points ``noise`` (B, K, H, A)
        per encoded observation: ``flow_steps`` Euler steps of the flow ODE, then de-normalised.

        Written with shape-following ops only, so the ONNX export keeps K (and B) dynamic.
        """
        b, k, h, a = noise.shape
        ctx = ctx.unsqueeze(1).expand(b, k, *ctx.shape[1:]).reshape(b * k, *ctx.shape[1:])
        pad = pad.unsqueeze(1).expand(b, k, *pad.shape[1:]).reshape(b * k, *pad.shape[1:])
        x = noise.reshape(b * k, h, a)
        dt = 1.0 / self.cfg.flow_steps
        for i in range(self.cfg.flow_steps):
            x = x + dt * self.velocity(x, torch.full_like(x[:, 0, 0], i * dt), ctx, pad)
        out = x * self.action_std + self.action_mean
        return out.clamp(-1.0, 1.0).reshape(b, k, h, a)

    @torch.no_grad()
    def sample(self, images, proprio, instructions, k: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample k action chunks per observation: (B, k, H, A), clipped to [-1, 1].

        The observation is encoded once; all B*k chunks are integrated together
        (:meth:`integrate`) from :func:`start_noise`.
        """
        c = self.cfg
        noise = start_noise(images.shape[0], k, c.horizon, c.action_dim, temperature, generator,
                            self.action_mean.device)
        ctx, pad = self.encode(images, proprio, instructions)
        return self.integrate(ctx, pad, noise)


def start_noise(batch: int, k: int, horizon: int, action_dim: int, temperature: float = 1.0,
                generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Start points ``temperature * N(0, I)`` of :meth:`VLA.integrate`, (batch, k, H, A) (zeros
    at temperature 0: deterministic). Every backend draws its noise here, from the same seeded
    generator, so torch, ONNX Runtime and TensorRT sample the same chunks."""
    check_sampling(k, temperature)
    shape = (batch * k, horizon, action_dim)
    x = torch.zeros(shape, device=device)
    if temperature > 0:
        x = temperature * torch.randn(shape, generator=generator, device=device)
    return x.reshape(batch, k, horizon, action_dim)


def check_sampling(k: int, temperature: float) -> None:
    """ValueError unless k is an int >= 1 and temperature finite and >= 0."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (samples per observation) must be an int >= 1, got {k!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")


# -------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str, model: VLA, extra: dict | None = None) -> None:
    """Write {"kind": "vla", "config", "state_dict", "extra"} (atomically, via a temp file)."""
    save_model(path, model, CHECKPOINT_KIND, extra)


def load_checkpoint(path: str, map_location="cpu") -> tuple[VLA, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    Files written before checkpoints carried a ``kind`` are accepted too.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted or not a prevla VLA checkpoint.
    """
    return load_model(path, CHECKPOINT_KIND, VLAConfig, VLA, map_location)
