"""The observation encoder every model that reads LIBERO observations shares (VLA, verifier).

Read top to bottom:
  1. ``observation_tensors``  a duck-typed observation -> (images, proprio) tensors.
  2. ``ObservationEncoder``   (images, proprio, instruction) -> one token sequence and its
                              padding mask: camera patches, words, one proprio token.

Why one module: the VLA and the verifier must see an observation the same way (the same
cameras in the same order, the same proprio, the same words); written twice, the two copies
drift. What a model does with the tokens (the VLA's trunk, the verifier's encoder and
per-modality pools) stays in its own file.

Checkpoints written before this module existed keep the encoder's weights at the top level
of the model (``image_encoder.0.weight``, ``proprio_mean``, ...); a model keeps its encoder
as ``self.observation`` and registers :func:`adopt_legacy_keys`, which moves such keys under
``observation.`` when a file is loaded, so the committed zoo files load into the same numbers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prevla_models.checkpoints import ObsActionConfig, store_stats, token_ids, word_ids
from prevla_models.geometry import proprio_from_state, with_joints

CAMERA_ORDER = ("agentview", "wrist")
#: Names the encoder's parameters and buffers had at the top level of a pre-encoder checkpoint.
LEGACY_NAMES = ("image_encoder", "patch_pos", "camera_emb", "word_emb", "word_pos", "proprio_mlp",
                "proprio_mean", "proprio_std")


def observation_tensors(obs, image_size: int, cameras: int = len(CAMERA_ORDER),
                        device: str | torch.device = "cpu",
                        proprio_dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Duck-typed observation -> (images (1, cameras, S, S, 3) uint8, proprio (1, P) float32).

    Any object with ``images["agentview"]``, ``images["wrist"]`` (upright SxSx3 uint8),
    ``eef_pos``, ``eef_quat_xyzw``, ``gripper_qpos``, ``instruction`` (and ``joint_positions``
    for P = 15) works, e.g. a ``prevla_ros`` Observation: ``prevla_models`` must not import
    ``prevla_ros``.

    P = 8: eef position, eef axis-angle, finger positions (``geometry.proprio_from_state``);
    P = 15 appends the 7 arm joint positions (the verifier uses them: joint-limit danger is
    not visible in the end-effector pose).

    Raises:
        ValueError: a camera is missing, or an image is not (S, S, 3) uint8 with S a multiple
            of ``image_size``.
    """
    imgs = []
    for name in CAMERA_ORDER[:cameras]:
        if name not in obs.images:
            raise ValueError(f"observation lacks camera {name!r} (has {sorted(obs.images)})")
        img = np.asarray(obs.images[name])
        side = img.shape[0] if img.ndim == 3 else 0
        if img.dtype != np.uint8 or img.shape != (side, side, 3) or side < image_size or side % image_size:
            raise ValueError(f"camera {name!r}: expected (S, S, 3) uint8 with S a multiple of "
                             f"{image_size}, got {img.shape} {img.dtype}")
        imgs.append(img)
    proprio = proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos)
    if proprio_dim == 15:
        proprio = with_joints(proprio, np.asarray(obs.joint_positions).reshape(-1))
    elif proprio_dim != 8:
        raise ValueError(f"proprio_dim: expected 8 or 15, got {proprio_dim}")
    images = torch.from_numpy(np.stack(imgs)[None]).to(device)
    return images, torch.from_numpy(proprio[None]).to(device)


class ObservationEncoder(nn.Module):
    """Cameras + instruction + proprio -> (B, N, d) tokens, N = cameras * (S/16)^2 + max_words + 1.

    Images: 4x4 patchify then two stride-2 convs -> (S/16)^2 patch tokens per camera (weights
    shared by the cameras, told apart by a camera embedding). Words: a learned embedding per
    vocabulary word (0 = <pad>, 1 = <unk>) plus a position. Proprio: normalised by the dataset
    statistics, then one MLP token.

    Args:
        cfg: the model's observation fields.
        d: token width.
    """

    def __init__(self, cfg: ObsActionConfig, d: int) -> None:
        super().__init__()
        self.cfg, self.d = cfg, d
        self.word_to_id = word_ids(cfg.vocab)
        # Built in this order on purpose: a seeded model draws the same initial weights as the
        # models did when each wrote this encoder itself.
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=4), nn.GroupNorm(8, 32), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.GELU(),
            nn.Conv2d(64, d, 3, stride=2, padding=1),
        )
        self.patch_pos = nn.Parameter(torch.randn(1, (cfg.image_size // 16) ** 2, d) * 0.02)
        self.camera_emb = nn.Parameter(torch.randn(cfg.cameras, 1, d) * 0.02)
        self.word_emb = nn.Embedding(len(cfg.vocab) + 2, d, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(1, cfg.max_words, d) * 0.02)
        self.proprio_mlp = nn.Sequential(nn.Linear(cfg.proprio_dim, d), nn.GELU(), nn.Linear(d, d))
        self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))

    def set_normalization(self, proprio_mean, proprio_std) -> None:
        """Store proprio statistics; stds floored at 1e-3 (ValueError naming a bad one)."""
        store_stats(self, proprio_mean=proprio_mean, proprio_std=proprio_std)

    def tokenize(self, instructions) -> torch.Tensor:
        """Instructions -> (B, max_words) word ids; unknown words -> <unk>, padding -> <pad>."""
        ids = token_ids(self.word_to_id, self.cfg.max_words, instructions)
        return torch.from_numpy(ids).to(self.proprio_mean.device)

    def check(self, images: torch.Tensor, proprio: torch.Tensor) -> None:
        """ValueError unless images are (B, cameras, S, S, 3) uint8 (S a multiple of
        ``image_size``) and proprio (B, proprio_dim) finite."""
        c, s = self.cfg, self.cfg.image_size
        if not torch.is_tensor(images) or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
        side = images.shape[2] if images.dim() == 5 else 0
        if (images.dim() != 5 or tuple(images.shape[1:]) != (c.cameras, side, side, 3)
                or side < s or side % s):
            raise ValueError(f"images must be (B, {c.cameras}, S, S, 3) with S a multiple of "
                             f"image_size={s}, got {tuple(images.shape)}")
        if not torch.is_tensor(proprio) or proprio.shape != (images.shape[0], c.proprio_dim):
            raise ValueError(f"proprio must be (B={images.shape[0]}, {c.proprio_dim}), "
                             f"got {tuple(getattr(proprio, 'shape', ()))}")
        if not torch.isfinite(proprio).all():
            raise ValueError("proprio contains NaN or inf")

    def forward(self, images: torch.Tensor, proprio: torch.Tensor, instructions
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequence [camera patches..., words..., proprio] and its key-padding mask.

        Args:
            images: (B, cameras, S, S, 3) uint8, upright RGB, channel-last; S a multiple of
                ``cfg.image_size`` (area-downsampled to it).
            proprio: (B, proprio_dim) float.
            instructions: list of B strings, or a (B, max_words) tensor of word ids.

        Returns:
            tokens (B, N, d) and pad (B, N) bool, True = a padding word slot.
        """
        self.check(images, proprio)
        c, d = self.cfg, self.d
        b, side = images.shape[0], images.shape[2]
        x = images.reshape(b * c.cameras, side, side, 3).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        if side != c.image_size:  # area downsampling, e.g. 128x128 camera -> 64x64
            x = F.avg_pool2d(x, side // c.image_size)
        img = self.image_encoder(x).flatten(2).transpose(1, 2) + self.patch_pos  # (B*cams, P, d)
        img = (img.reshape(b, c.cameras, -1, d) + self.camera_emb).reshape(b, -1, d)
        tokens = instructions if torch.is_tensor(instructions) else self.tokenize(instructions)
        if tokens.shape != (b, c.max_words):
            raise ValueError(f"expected {b} instructions / ({b}, {c.max_words}) ids, got {tuple(tokens.shape)}")
        words = self.word_emb(tokens) + self.word_pos
        prop = self.proprio_mlp((proprio.float() - self.proprio_mean) / self.proprio_std).unsqueeze(1)
        ctx = torch.cat([img, words, prop], dim=1)
        pad = torch.zeros(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
        pad[:, img.shape[1]: img.shape[1] + c.max_words] = tokens == 0
        return ctx, pad


def adopt_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook of the VLA and the verifier (they register it): move a
    pre-encoder checkpoint's top-level encoder weights under ``observation.`` (in place).

    Keys such as ``image_encoder.0.weight`` become ``observation.image_encoder.0.weight``; the
    values are untouched, so an old file loads into the same numbers. Files written since
    already use the new keys and pass through unchanged.
    """
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if key[len(prefix):].split(".", 1)[0] in LEGACY_NAMES:
            state_dict[f"{prefix}observation.{key[len(prefix):]}"] = state_dict.pop(key)
