"""The VLA as an RL policy: a stochastic flow chain with an exact log-probability, and a critic.

The VLA's head (:class:`prevla_models.vla.VLA`) is a rectified flow: a chunk is the end point of
``N = flow_steps`` Euler steps from start noise. As it stands the map noise -> chunk has no
tractable likelihood. Following the flow-noise approach of πRL / ReinFlow, every integration
step gets a learnable, bounded Gaussian noise, which turns the chain into a Markov chain of
Gaussians whose density is exact:

    x_0      ~ N(0, T^2 I)                                 (T: temperature; no parameters)
    mu_i     = x_i + dt * v_theta(x_i, t_i | s),           t_i = i * dt, dt = 1 / N
    x_{i+1}  = mu_i + sigma_i * eps_i,                     eps_i ~ N(0, I),  i = 0 .. N-1
    sigma_i  = sigma_min + (sigma_max - sigma_min) * sigmoid(rho_i)     (rho: (N, A) learnable)
    chunk    = clip(x_N * action_std + action_mean, -1, 1)

    log pi_theta(x_1..N | x_0, s) = sum_i sum_{h,a} log N(x_{i+1}[h,a]; mu_i[h,a], sigma_i[a]^2)

The RL "action" is the whole chain ``x_0..x_N`` (B, N+1, H, A); the executed chunk is a fixed
function of it (the clip included), so PPO's ratio ``pi_theta / pi_behaviour`` on the chain is
exact. ``x_0``'s density has no parameters and cancels in every ratio, so it is left out. The
entropy reported is that of the step noises, ``sum_i H A_dims (1/2) log(2 pi e sigma_i^2)``
(H per step, summed over the chunk's H rows), the term PPO's entropy bonus can act on.

The critic ``V(s)`` is a small MLP on the masked mean of the trunk's context tokens (the
observation encoding the flow head attends to). By default the value
loss from moving the encoder the policy uses (``value_trains_encoder`` off); the critic is then a probe of what the pretrained
encoder already sees, which keeps the policy intact early in RL.

With all ``sigma`` at 0 and ``T`` as in :meth:`VLA.sample` this samples exactly what the VLA
samples: RL starts from the behaviour-cloned policy plus small exploration noise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from prevla_models.vla import VLA, check_sampling

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_density(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, sigma^2) given the standardised z = (x - mu) / sigma."""
    return -0.5 * z.pow(2) - torch.log(sigma) - LOG_SQRT_2PI


@dataclass
class FlowNoiseConfig:
    """The RL additions to a VLA: step-noise bounds and the critic."""

    sigma_min: float = field(default=0.01, metadata={"help": "Lower bound of every step noise sigma_i (normalised action units)."})
    sigma_max: float = field(default=0.2, metadata={"help": "Upper bound of every step noise sigma_i."})
    sigma_init: float = field(default=0.1, metadata={"help": "Initial sigma_i, in (sigma_min, sigma_max)."})
    value_hidden: int = field(default=128, metadata={"help": "Hidden width of the critic MLP."})
    value_trains_encoder: bool = field(default=False, metadata={"help": "Let the critic's gradients reach the encoder the policy uses (module docstring)."})

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_init < self.sigma_max:
            raise ValueError("FlowNoiseConfig: need 0 < sigma_min < sigma_init < sigma_max, got "
                             f"{self.sigma_min} / {self.sigma_init} / {self.sigma_max}")
        if not isinstance(self.value_hidden, int) or self.value_hidden < 1:
            raise ValueError(f"FlowNoiseConfig.value_hidden must be a positive int, got {self.value_hidden!r}")


class FlowActorCritic(nn.Module):
    """A :class:`VLA` plus learnable bounded step noise (the actor) and a value head (the critic).

    Args:
        vla: the policy to fine-tune (its parameters are shared, not copied).
        cfg: :class:`FlowNoiseConfig`.
    """

    def __init__(self, vla: VLA, cfg: FlowNoiseConfig | None = None) -> None:
        super().__init__()
        self.vla, self.cfg = vla, cfg or FlowNoiseConfig()
        n, a, d = vla.cfg.flow_steps, vla.cfg.action_dim, vla.cfg.d_model
        u = (self.cfg.sigma_init - self.cfg.sigma_min) / (self.cfg.sigma_max - self.cfg.sigma_min)
        self.noise_rho = nn.Parameter(torch.full((n, a), math.log(u / (1 - u))))
        self.value_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.cfg.value_hidden), nn.GELU(),
                                        nn.Linear(self.cfg.value_hidden, 1))

    # ---------------------------------------------------------------- pieces
    def sigmas(self) -> torch.Tensor:
        """Step noise scales (N, A), each in [sigma_min, sigma_max]."""
        lo, hi = self.cfg.sigma_min, self.cfg.sigma_max
        return lo + (hi - lo) * torch.sigmoid(self.noise_rho)

    def encode(self, images, proprio, instructions) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens and padding mask (:meth:`VLA.encode`)."""
        return self.vla.encode(images, proprio, instructions)

    def value(self, ctx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """V(s) (B,) from the masked mean of the context tokens."""
        keep = (~pad).unsqueeze(-1).to(ctx.dtype)
        pooled = (ctx * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        if not self.cfg.value_trains_encoder:
            pooled = pooled.detach()
        return self.value_head(pooled).squeeze(-1)

    def step_means(self, ctx: torch.Tensor, pad: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """mu_i for every step of chains (B, K, N+1, H, A) -> (B, K, N, H, A), in one batched pass."""
        b, k, n1, h, a = chain.shape
        n = n1 - 1
        if n != self.vla.cfg.flow_steps:
            raise ValueError(f"chain has {n} steps, the VLA integrates {self.vla.cfg.flow_steps}")
        dt = 1.0 / n
        x = chain[:, :, :-1].reshape(b * k * n, h, a)
        t = (torch.arange(n, device=chain.device, dtype=chain.dtype) * dt).repeat(b * k)
        rep = k * n
        ctx_r = ctx.unsqueeze(1).expand(b, rep, *ctx.shape[1:]).reshape(b * rep, *ctx.shape[1:])
        pad_r = pad.unsqueeze(1).expand(b, rep, *pad.shape[1:]).reshape(b * rep, *pad.shape[1:])
        mu = x + dt * self.vla.velocity(x, t, ctx_r, pad_r)
        return mu.reshape(b, k, n, h, a)

    def chain_log_prob(self, mu: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """log pi(x_1..N | x_0, s) (B, K) given the step means (module docstring)."""
        sig = self.sigmas()[:, None, :]  # (N, 1, A): one sigma per step and action dimension
        return normal_log_density((chain[:, :, 1:] - mu) / sig, sig).flatten(2).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy of the step noises of one chain (a scalar; module docstring)."""
        h = self.vla.cfg.horizon
        return h * (torch.log(self.sigmas()) + 0.5 + LOG_SQRT_2PI).sum()

    def to_chunks(self, chain: torch.Tensor) -> torch.Tensor:
        """Executed chunks (..., H, A) in [-1, 1] from chains (..., N+1, H, A)."""
        return (chain[..., -1, :, :] * self.vla.action_std + self.vla.action_mean).clamp(-1.0, 1.0)

    # ---------------------------------------------------------------- API
    @torch.no_grad()
    def sample(self, images, proprio, instructions, k: int = 1, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Sample K chains per observation with their behaviour log-probabilities and V(s).

        Returns:
            chain (B, K, N+1, H, A), chunks (B, K, H, A), logp (B, K), value (B,).
        """
        check_sampling(k, temperature)
        v = self.vla
        b, n, h, a = images.shape[0], v.cfg.flow_steps, v.cfg.horizon, v.cfg.action_dim
        ctx, pad = self.encode(images, proprio, instructions)
        dev = ctx.device
        x = temperature * torch.randn((b * k, h, a), generator=generator, device="cpu").to(dev)
        ctx_k = ctx.unsqueeze(1).expand(b, k, *ctx.shape[1:]).reshape(b * k, *ctx.shape[1:])
        pad_k = pad.unsqueeze(1).expand(b, k, *pad.shape[1:]).reshape(b * k, *pad.shape[1:])
        sig, dt = self.sigmas(), 1.0 / n
        xs, lp = [x], torch.zeros(b * k, device=dev)
        for i in range(n):
            mu = x + dt * v.velocity(x, torch.full_like(x[:, 0, 0], i * dt), ctx_k, pad_k)
            eps = torch.randn((b * k, h, a), generator=generator, device="cpu").to(dev)
            x = mu + sig[i] * eps
            lp = lp + normal_log_density(eps, sig[i]).flatten(1).sum(-1)
            xs.append(x)
        chain = torch.stack(xs, 1).reshape(b, k, n + 1, h, a)
        return {"chain": chain, "chunks": self.to_chunks(chain), "logp": lp.reshape(b, k),
                "value": self.value(ctx, pad)}

    def evaluate(self, images, proprio, instructions, chain: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable log pi of given chains (B, K, N+1, H, A), V(s) (B,) and the entropy."""
        ctx, pad = self.encode(images, proprio, instructions)
        mu = self.step_means(ctx, pad, chain)
        return {"logp": self.chain_log_prob(mu, chain), "value": self.value(ctx, pad),
                "entropy": self.entropy()}

    def rl_state(self) -> dict:
        """What the RL side adds to a VLA checkpoint (config, noise and critic parameters)."""
        return {"flow_noise": asdict(self.cfg), "noise_rho": self.noise_rho.detach().cpu(),
                "value_head": {k: t.detach().cpu() for k, t in self.value_head.state_dict().items()}}

    def load_rl_state(self, state: dict) -> None:
        """Inverse of :meth:`rl_state` (the config must match)."""
        if FlowNoiseConfig(**state["flow_noise"]) != self.cfg:
            raise ValueError("load_rl_state: the checkpoint's flow_noise config differs from this model's")
        with torch.no_grad():
            self.noise_rho.copy_(state["noise_rho"])
        self.value_head.load_state_dict(state["value_head"])
