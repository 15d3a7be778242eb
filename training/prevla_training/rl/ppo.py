"""PPO with GAE on chunk-level actions (one decision = one chain / chunk).

Per trajectory of T decisions with rewards r_t, values V_t = V(s_t), done flags d_t and the value
``V_T`` of the state after the last decision (0 when the episode ended there):

    delta_t = r_t + gamma * (1 - d_t) * V_{t+1} - V_t
    A_t     = delta_t + gamma * lambda * (1 - d_t) * A_{t+1}          (A_T = 0)
    R_t     = A_t + V_t                                             (the critic's target)

The clipped surrogate, against the *behaviour* log-probabilities ``logp_b`` the runners recorded
(so data up to the allowed policy lag is corrected by the ratio, never assumed on-policy):

    rho_t   = exp(log pi_theta(a_t | s_t) - logp_b_t)
    L_pi    = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
    L_V     = 1/2 mean_t (V_theta(s_t) - R_t)^2
    L       = L_pi + c_V L_V - c_H H[pi_theta]

with A normalised to zero mean and unit std over the batch. Reported: the approximate KL
``mean((rho - 1) - log rho)`` (non-negative, unbiased; updates stop early above ``target_kl``)
and the clipped fraction.

``advantage: rloo`` replaces GAE by a group baseline that needs no critic (RLOO, as in RIPT-VLA):
runners play each sampled init state G = ``group_size`` times in a row, and every decision of
episode i of a group gets its episode's leave-one-out advantage

    A_i = R_i - 1/(G-1) sum_{j != i} R_j          (R = 1 on success, else 0)

A group whose episodes all succeed or all fail carries no signal (every A_i = 0) and is skipped
(counted). With one init state per group the baseline is exact for that state, where a critic
fitted to a few hundred outcomes is mostly noise. The critic is still trained, on the discounted
return R_t = gamma^(T-1-t) R, so the run still yields a value function for the verifier.

Reward: sparse task success, 1 on the decision whose chunk completes the task, else 0; an episode
that runs out of steps ends with 0 and is treated as terminal (LIBERO's step budget is part of
the task). No shaping: any dense term (distance to the object, grasp events) is a second
objective the policy can satisfy without succeeding, and the critic trained here is meant to
label *task* outcomes for the verifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


ADVANTAGES = ("gae", "rloo")


@dataclass
class PPOConfig:
    """PPO's knobs (module docstring for the formulas)."""

    gamma: float = field(default=0.99, metadata={"help": "Discount per decision (chunk)."})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda."})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon."})
    value_coef: float = field(default=0.5, metadata={"help": "Weight of the value loss."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of the step-noise entropy bonus."})
    epochs: int = field(default=2, metadata={"help": "Passes over each batch."})
    minibatch: int = field(default=32, metadata={"help": "Decisions per gradient step."})
    target_kl: float = field(default=0.05, metadata={"help": "Stop the batch's epochs once the approx. KL exceeds this (0 = never)."})
    advantage: str = field(default="gae", metadata={"help": "gae (the critic's GAE) or rloo (leave-one-out success of G episodes from the same init state)."})
    group_size: int = field(default=4, metadata={"help": "Episodes per init state in a row, the group of advantage=rloo (>= 2)."})

    def __post_init__(self) -> None:
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.clip < 1.0:
            raise ValueError(f"PPOConfig.clip must be in (0, 1), got {self.clip}")
        for name in ("value_coef", "entropy_coef", "target_kl"):
            if getattr(self, name) < 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "minibatch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"PPOConfig.advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if int(self.group_size) < 2:
            raise ValueError(f"PPOConfig.group_size must be >= 2, got {self.group_size}")


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (T,) of one trajectory (module docstring); float64."""
    r, v, d = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (rewards, values, dones))
    if not len(r) == len(v) == len(d):
        raise ValueError(f"gae: rewards/values/dones lengths differ: {len(r)}/{len(v)}/{len(d)}")
    adv = np.zeros_like(r)
    nxt_v, nxt_a = float(last_value), 0.0
    for t in range(len(r) - 1, -1, -1):
        live = 1.0 - d[t]
        delta = r[t] + gamma * live * nxt_v - v[t]
        nxt_a = delta + gamma * lam * live * nxt_a
        adv[t], nxt_v = nxt_a, v[t]
    return adv, adv + v


def rloo(outcomes) -> np.ndarray:
    """Leave-one-out advantages of one group's episode returns: A_i = R_i - mean_{j != i} R_j."""
    r = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if len(r) < 2:
        raise ValueError(f"rloo: a group needs at least 2 episodes, got {len(r)}")
    return r - (r.sum() - r) / (len(r) - 1)


class Groups:
    """Trajectories of ``advantage: rloo`` waiting for the rest of their group (key ``group``).
    Memory is bounded by :meth:`drop_older_than`, which the learner calls with its lag bound."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.pending: dict[str, list[dict]] = {}

    def add(self, traj: dict) -> list[dict] | None:
        """Add one trajectory; its whole group when this completed it, else None."""
        members = self.pending.setdefault(str(traj["group"]), [])
        members.append(traj)
        return self.pending.pop(str(traj["group"])) if len(members) >= self.size else None

    def drop_older_than(self, version: int) -> int:
        """Forget groups holding a decision sampled before ``version``; returns decisions dropped."""
        stale = [k for k, m in self.pending.items() if min(int(t["version"].min()) for t in m) < version]
        return sum(int(t["n"]) for k in stale for t in self.pending.pop(k))


def ppo_loss(logp: torch.Tensor, logp_behaviour: torch.Tensor, advantages: torch.Tensor,
             value: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
             cfg: PPOConfig, normalize: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO loss of a minibatch (all 1-D tensors of the same length) and its statistics."""
    adv = advantages
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_ratio = logp - logp_behaviour
    ratio = torch.exp(log_ratio)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
    vf = 0.5 * (value - returns).pow(2).mean()
    loss = pg + cfg.value_coef * vf - cfg.entropy_coef * entropy
    with torch.no_grad():
        kl = ((ratio - 1) - log_ratio).mean()
        clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
    return loss, {"policy_loss": pg.item(), "value_loss": vf.item(), "entropy": entropy.item(),
                  "approx_kl": kl.item(), "clip_frac": clipped.item()}
