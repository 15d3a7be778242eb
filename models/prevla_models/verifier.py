"""The Pre-VLA verifier: score K candidate action chunks of one observation before any runs.

Read top to bottom:
  1. ``VerifierConfig``  every knob, with help text and validation.
  2. loss functions      ``focal_loss``, ``advantage_loss``, ``soft_threshold_loss`` (standalone).
  3. ``Verifier``        observation encoder (the shared tokens of :mod:`prevla_models.encoder`
                         + a transformer; run ONCE per observation) + action-chunk encoder (run per candidate) -> modality-aware attention
                         pooling -> fusion transformer -> dual head (safety logit, advantage).
  4. checkpoints         ``save_checkpoint`` / ``load_checkpoint`` (``sha256_file`` re-exported).

Modality-aware pooling: image-patch, word, proprio and action-step tokens are each pooled by
their OWN learned query (``Verifier.pools[modality]``, word padding masked) into one vector per
modality; the four vectors (+ modality embeddings) go through ``fusion_layers`` transformer
layers and are concatenated into one fused vector per candidate. The three observation vectors
do not depend on the candidate, so :meth:`Verifier.encode_observation` runs once per
observation and :meth:`Verifier.score` broadcasts its (B, 3, d_model) output over K.

Objective (:meth:`Verifier.loss`). Per candidate i (candidates with ``mask`` False drop out of
every mean): z_i safety logit, p_i = sigmoid(z_i) = P(chunk i is SAFE), y_i in {0, 1} with
1 = SAFE, a_i / t_i predicted / target advantage, theta the learnable threshold logit,
tau = sigmoid(theta), sg = stop-gradient, m = calib_margin, s = calib_temperature::

    focal = mean_i  w_i * (1 - q_i)**gamma * -log(q_i),
            q_i = p_i if y_i = 1 else 1 - p_i,   w_i = 1 - alpha if y_i = 1 else alpha
    adv   = mean_{i: t_i finite} SmoothL1_beta(a_i - t_i),
            SmoothL1_beta(x) = 0.5 * x**2 / beta if |x| < beta else |x| - 0.5 * beta
    calib = 1/2 * [ mean_{i: y_i = 1} softplus((theta + m - sg(z_i)) / s)
                  + mean_{i: y_i = 0} softplus((sg(z_i) - theta + m) / s) ]
            (calib = 0 for a batch that lacks either class: the boundary is undetermined)
    total = focal + adv_weight * adv + calib_weight * calib

alpha = focal_alpha is the weight of the UNSAFE class (y = 0, the "positive" class a verifier
must catch; RetinaNet convention, i.e. ``torchvision.ops.sigmoid_focal_loss(-z, 1 - y)``),
gamma = focal_gamma, beta = adv_beta. SmoothL1 (not MSE) because critic advantages are
heavy-tailed; targets should be roughly unit scale (normalise them in the data pipeline).

Soft-threshold calibration: a candidate is accepted iff p_i >= tau, i.e. z_i >= theta; the soft
decision is sigmoid((z_i - theta) / s). ``calib`` is the class-balanced logistic loss of that
soft decision shifted by the margin m (safe samples should clear theta by m logits, unsafe ones
stay m below it). Its theta-gradient vanishes where the class-balanced pressures match; for
separated classes that is the middle of the gap in logit space, whatever the class ratio, so
tau is stable on imbalanced data. Logits are detached (sg): calibration only moves tau, the
focal term alone shapes p (calibration does not distort p). Working in logit space keeps
the theta-gradient from vanishing when tau starts near 0 or 1. Keep ``threshold_logit`` out of
weight decay (decay would pull tau towards 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from prevla_models.checkpoints import (PAD, UNK, ModelBase, ObsActionConfig, build_vocab, load_model,  # noqa: F401
                                       save_model, sha256_file, split_words)
from prevla_models.encoder import ObservationEncoder, adopt_legacy_keys

MODALITIES = ("image", "language", "proprio", "action")
POOLINGS = ("attention", "mean")
CHECKPOINT_KIND = "verifier"


@dataclass
class VerifierConfig(ObsActionConfig):
    """Configuration of :class:`Verifier` (small on purpose: it must train on CPU)."""

    d_model: int = field(default=96, metadata={"help": "Token width everywhere."})
    n_layers: int = field(default=2, metadata={"help": "Transformer layers of the observation encoder (image, word, proprio tokens)."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads (must divide d_model)."})
    fusion_layers: int = field(default=1, metadata={"help": "Transformer layers fusing the 4 pooled modality vectors."})
    action_layers: int = field(default=1, metadata={"help": "Transformer layers over a chunk's H action tokens before pooling (0 = none)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout in attention and transformer layers."})
    pooling: str = field(default="attention", metadata={"help": "Per-modality pooling: 'attention' (a learned query per modality) or 'mean' (ablation)."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss focusing exponent (0 = class-weighted BCE)."})
    focal_alpha: float = field(default=0.75, metadata={"help": "Focal weight of the UNSAFE class (label 0); safe samples get 1 - alpha."})
    adv_weight: float = field(default=1.0, metadata={"help": "Weight of the SmoothL1 advantage loss."})
    adv_beta: float = field(default=1.0, metadata={"help": "SmoothL1 transition point (advantage units)."})
    calib_weight: float = field(default=0.1, metadata={"help": "Weight of the soft-threshold calibration loss."})
    calib_margin: float = field(default=0.5, metadata={"help": "Calibration margin m in logits around the threshold."})
    calib_temperature: float = field(default=1.0, metadata={"help": "Calibration softness s in logits."})
    init_threshold: float = field(default=0.5, metadata={"help": "Initial accept threshold tau on P(safe), in (0, 1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "n_layers", "n_heads", "fusion_layers", "action_layers"):
            v, low = getattr(self, name), 0 if name == "action_layers" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"VerifierConfig.{name} must be an int >= {low}, got {v!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"VerifierConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"VerifierConfig.n_heads={self.n_heads} must divide d_model={self.d_model}")
        checks = {"dropout": (lambda v: 0 <= v < 1, "in [0, 1)"), "focal_alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
                  "init_threshold": (lambda v: 0 < v < 1, "in (0, 1)"), "focal_gamma": (lambda v: v >= 0, ">= 0"),
                  "adv_weight": (lambda v: v >= 0, ">= 0"), "calib_weight": (lambda v: v >= 0, ">= 0"),
                  "calib_margin": (lambda v: v >= 0, ">= 0"), "adv_beta": (lambda v: v > 0, "> 0"),
                  "calib_temperature": (lambda v: v > 0, "> 0")}
        for name, (ok, text) in checks.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"VerifierConfig.{name} must be finite and {text}, got {v!r}")


# -------------------------------------------------------------------- losses
def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (all if None); 0 (still in the graph) when nothing is valid."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.device, torch.bool)
    if mask.shape != x.shape:
        raise ValueError(f"mask must have shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp_min(1)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary focal loss of safety logits; ``targets`` 1 = SAFE, 0 = UNSAFE (soft labels ok).

    ``alpha`` weights UNSAFE samples and ``1 - alpha`` SAFE ones (see the module docstring);
    positions where ``mask`` is False are ignored (their targets may be garbage).
    """
    t = targets.to(logits.dtype)
    if mask is not None:
        t = torch.where(mask.to(t.device, torch.bool), t, torch.zeros_like(t))
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")  # -log(q)
    p = torch.sigmoid(logits)
    q = p * t + (1 - p) * (1 - t)
    w = (1 - alpha) * t + alpha * (1 - t)
    return _masked_mean(w * (1 - q).pow(gamma) * ce, mask)


def advantage_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                   beta: float = 1.0) -> torch.Tensor:
    """Mean SmoothL1(beta) between predicted and target advantages over valid targets.

    A target is valid where ``mask`` is True (all if None) AND it is finite, so NaN marks
    "no critic value for this candidate" without producing NaN gradients.
    """
    if target.shape != pred.shape:
        raise ValueError(f"advantage targets must have shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & mask.to(valid.device, torch.bool)
    target = torch.where(valid, target.to(pred.dtype), pred.detach())
    return _masked_mean(F.smooth_l1_loss(pred, target, reduction="none", beta=beta), valid)


def soft_threshold_loss(probs: torch.Tensor, targets: torch.Tensor, threshold_logit: torch.Tensor,
                        margin: float = 0.5, temperature: float = 1.0, mask: torch.Tensor | None = None,
                        detach_probs: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Class-balanced soft-margin loss that moves the accept threshold between SAFE and UNSAFE.

    ``probs`` are P(safe), ``targets`` 1 = SAFE (> 0.5 counts as safe), ``threshold_logit`` is
    theta = logit(tau). With z = logit(probs) (detached unless ``detach_probs`` is False)::

        1/2 * [mean_safe softplus((theta + margin - z) / T) + mean_unsafe softplus((z - theta + margin) / T)]

    It is 0 (zero gradient) when the valid samples lack either class (boundary undetermined).
    """
    z = torch.logit((probs.detach() if detach_probs else probs).clamp(eps, 1 - eps))
    valid = torch.ones_like(z, dtype=torch.bool) if mask is None else mask.to(z.device, torch.bool)
    safe, unsafe = valid & (targets > 0.5), valid & ~(targets > 0.5)
    l_safe = _masked_mean(F.softplus((threshold_logit + margin - z) / temperature), safe)
    l_unsafe = _masked_mean(F.softplus((z - threshold_logit + margin) / temperature), unsafe)
    both = (safe.any() & unsafe.any()).to(z.dtype)  # tensor op: no host sync on GPU
    return 0.5 * (l_safe + l_unsafe) * both


# -------------------------------------------------------------------- model
class AttentionPool(nn.Module):
    """One learned query attends over one modality's tokens: (N, T, d) -> (N, d)."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if pad is not None:  # a fully padded row (empty instruction) attends to its first slot
            pad = torch.cat([pad[:, :1] & ~pad.all(dim=1, keepdim=True), pad[:, 1:]], dim=1)
        kv = self.norm(tokens)
        out, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1), kv, kv,
                           key_padding_mask=pad, need_weights=False)
        return self.out_norm(out.squeeze(1))


class MeanPool(nn.Module):
    """Ablation of :class:`AttentionPool`: the masked mean of a modality's tokens, normalised."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.out_norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if pad is None:
            return self.out_norm(tokens.mean(dim=1))
        keep = (~pad).to(tokens.dtype).unsqueeze(-1)
        return self.out_norm((tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def _encoder(d: int, cfg: VerifierConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Verifier(ModelBase):
    """Observation + K candidate chunks -> per-candidate safety logit and advantage."""

    def __init__(self, cfg: VerifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        # Camera patch, word and proprio tokens (+ proprio statistics), shared with the VLA.
        self.observation = ObservationEncoder(cfg, d)
        self.register_load_state_dict_pre_hook(adopt_legacy_keys)  # checkpoints from before it
        self.obs_encoder = _encoder(d, cfg, cfg.n_layers)
        # Action tokens: one per step of the chunk.
        self.action_in = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.GELU(), nn.Linear(d, d))
        self.action_pos = nn.Parameter(torch.randn(1, cfg.horizon, d) * 0.02)
        self.action_encoder = _encoder(d, cfg, cfg.action_layers) if cfg.action_layers else nn.Identity()
        # Modality-aware pooling (one module each), fusion and the dual head.
        self.pools = nn.ModuleDict({m: AttentionPool(d, cfg.n_heads, cfg.dropout) if cfg.pooling == "attention"
                                    else MeanPool(d) for m in MODALITIES})
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), d) * 0.02)
        self.fusion = _encoder(d, cfg, cfg.fusion_layers)
        self.fused_norm = nn.LayerNorm(len(MODALITIES) * d)
        self.safety_head = nn.Sequential(nn.Linear(len(MODALITIES) * d, d), nn.GELU(), nn.Linear(d, 1))
        self.advantage_head = nn.Sequential(nn.Linear(len(MODALITIES) * d, d), nn.GELU(), nn.Linear(d, 1))
        p = cfg.init_threshold
        self.threshold_logit = nn.Parameter(torch.tensor(math.log(p / (1 - p)), dtype=torch.float32))

    # ---------------------------------------------------------------- helpers
    def set_normalization(self, proprio_mean, proprio_std) -> None:
        """Store proprio statistics (actions are already in [-1, 1]); stds floored at 1e-3."""
        self.observation.set_normalization(proprio_mean, proprio_std)

    @property
    def threshold(self) -> float:
        """Current accept threshold tau = sigmoid(threshold_logit) on P(safe)."""
        return float(torch.sigmoid(self.threshold_logit.detach()))

    @torch.no_grad()
    def set_threshold(self, tau: float) -> None:
        """Overwrite tau (e.g. after picking it on validation data)."""
        if not (isinstance(tau, (int, float)) and 0.0 < tau < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {tau!r}")
        self.threshold_logit.fill_(math.log(tau / (1 - tau)))

    def accept(self, safety_prob: torch.Tensor) -> torch.Tensor:
        """Bool tensor: P(safe) >= tau (ties accept)."""
        return torch.as_tensor(safety_prob) >= torch.sigmoid(self.threshold_logit.detach())

    def tokenize(self, instructions) -> torch.Tensor:
        """Instructions -> (B, max_words) word ids (:meth:`ObservationEncoder.tokenize`)."""
        return self.observation.tokenize(instructions)

    def _check_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        c, n = self.cfg, len(MODALITIES) - 1
        want = f"(B, K, H={c.horizon}, action_dim={c.action_dim}) with K >= 1"
        if not torch.is_tensor(actions) or not actions.is_floating_point():
            raise ValueError(f"actions must be a float tensor {want}, got {getattr(actions, 'dtype', type(actions))}")
        if actions.dim() != 4:
            hint = " (one candidate per observation: pass actions[:, None])" if actions.dim() == 3 else ""
            raise ValueError(f"actions must be 4-D {want}, got shape {tuple(actions.shape)}{hint}")
        if actions.shape[1] < 1:
            raise ValueError(f"actions must hold K >= 1 candidates per observation, got K={actions.shape[1]}")
        if actions.shape[2] != c.horizon:
            raise ValueError(f"actions horizon must be H={c.horizon}, got {actions.shape[2]} "
                             f"(shape {tuple(actions.shape)})")
        if actions.shape[3] != c.action_dim:
            raise ValueError(f"actions last dim must be action_dim={c.action_dim}, got {actions.shape[3]}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contains NaN or inf")
        if not torch.is_tensor(obs) or obs.dim() != 3 or obs.shape[1:] != (n, c.d_model):
            raise ValueError(f"obs features must be (B, {n}, {c.d_model}) from encode_observation, "
                             f"got {tuple(getattr(obs, 'shape', ()))}")
        if obs.shape[0] != actions.shape[0]:
            raise ValueError(f"batch size mismatch: obs features have B={obs.shape[0]}, "
                             f"actions have B={actions.shape[0]}")

    # ---------------------------------------------------------------- model
    def encode_observation(self, images: torch.Tensor, proprio: torch.Tensor, instructions) -> torch.Tensor:
        """Pooled observation features (B, 3, d_model): [image, language, proprio] vectors.

        ``images`` (B, cameras, S, S, 3) uint8, ``proprio`` (B, proprio_dim) and ``instructions``
        (B strings or word ids) as :meth:`prevla_models.encoder.ObservationEncoder.forward`.
        """
        tokens, pad = self.observation(images, proprio, instructions)
        ctx = self.obs_encoder(tokens, src_key_padding_mask=pad)
        n_img = ctx.shape[1] - self.cfg.max_words - 1  # [camera patches..., words..., proprio]
        words = slice(n_img, n_img + self.cfg.max_words)
        return torch.stack([self.pools["image"](ctx[:, :n_img]),
                            self.pools["language"](ctx[:, words], pad[:, words]),
                            self.pools["proprio"](ctx[:, -1:])], dim=1)

    def score(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score candidates: obs (B, 3, d) from :meth:`encode_observation`, actions (B, K, H, A).

        Returns {"safety_logit": (B, K), "advantage": (B, K)}; P(safe) = sigmoid(safety_logit).
        Each candidate is scored independently of the others in its set.
        """
        self._check_actions(obs, actions)
        b, k, h, a = actions.shape
        act = self.action_encoder(self.action_in(actions.to(obs.dtype).reshape(b * k, h, a)) + self.action_pos)
        act = self.pools["action"](act)  # (B*K, d)
        obs_k = obs.unsqueeze(1).expand(b, k, *obs.shape[1:]).reshape(b * k, *obs.shape[1:])
        fused = self.fusion(torch.cat([obs_k, act.unsqueeze(1)], dim=1) + self.modality_emb)
        fused = self.fused_norm(fused.flatten(1))
        return {"safety_logit": self.safety_head(fused).reshape(b, k),
                "advantage": self.advantage_head(fused).reshape(b, k)}

    def forward(self, images, proprio, instructions, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode the observation once and score its K candidates (see :meth:`score`)."""
        return self.score(self.encode_observation(images, proprio, instructions), actions)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Total objective of the module docstring and its parts (floats, for logging).

        ``batch``: images, proprio, instructions, actions (B, K, H, A), safe (B, K) labels
        (1 = SAFE, 0 = UNSAFE), optionally advantage (B, K) critic targets (NaN = none) and
        mask (B, K) bool (False = padding candidate, ignored everywhere).
        """
        out = self(batch["images"], batch["proprio"], batch["instructions"], batch["actions"])
        logit, c = out["safety_logit"], self.cfg
        safe = torch.as_tensor(batch["safe"], device=logit.device).to(logit.dtype)
        mask = batch.get("mask")
        mask = (torch.ones_like(safe, dtype=torch.bool) if mask is None
                else torch.as_tensor(mask, device=logit.device).bool())
        if safe.shape != logit.shape or mask.shape != logit.shape:
            raise ValueError(f"safe and mask must be (B, K) = {tuple(logit.shape)}, "
                             f"got {tuple(safe.shape)} and {tuple(mask.shape)}")
        labels = safe[mask]
        if not (torch.isfinite(labels).all() and ((labels >= 0) & (labels <= 1)).all()):
            raise ValueError("safe labels must be in [0, 1] (1 = SAFE) wherever mask is True")
        focal = focal_loss(logit, safe, c.focal_alpha, c.focal_gamma, mask)
        adv_t = batch.get("advantage")
        adv = logit.sum() * 0.0 if adv_t is None else advantage_loss(
            out["advantage"], torch.as_tensor(adv_t, device=logit.device, dtype=logit.dtype), mask, c.adv_beta)
        calib = soft_threshold_loss(torch.sigmoid(logit), safe, self.threshold_logit, c.calib_margin,
                                    c.calib_temperature, mask)
        total = focal + c.adv_weight * adv + c.calib_weight * calib
        parts = {"total": total, "focal": focal, "advantage": adv, "calib": calib}
        return total, {**{k: float(v.detach()) for k, v in parts.items()}, "threshold": self.threshold}


# -------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str, model: Verifier, extra: dict | None = None) -> None:
    """Write {"kind": "verifier", "config", "state_dict", "extra"} (atomically, via a temp file)."""
    save_model(path, model, CHECKPOINT_KIND, extra)


def load_checkpoint(path: str, map_location="cpu") -> tuple[Verifier, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted or not a prevla verifier checkpoint
            (a VLA checkpoint included).
    """
    return load_model(path, CHECKPOINT_KIND, VerifierConfig, Verifier, map_location)
