"""Labelled-candidate data, the critic V(s), and the verifier's training labels.

The files of ``prevla label-candidates`` (schema in ``prevla_training.candidates``) load into
one :class:`CandidateData`. Labels per candidate i of a decision at state s, control step n:

* safety: ``SafetySpec.unsafe_reasons(outcomes)``, kept where some candidate of the decision
  avoids them (``outcomes.avoidable``; the state's own events are no label), 1 = SAFE;
* advantage, from a **critic** V trained on the on-policy rollouts' Monte-Carlo returns
  G(s_n) = gamma**(T - 1 - n) for an episode that succeeds at step T, else 0::

      A_i = r_i + gamma**h_i * V(s'_i) * (1 - terminal_i) - V(s)

  with r_i the discounted success reward inside the chunk, h_i its executed steps, s'_i the
  state it led to, terminal_i when it succeeded or used up the episode budget.

The critic is privileged (training-time only, never on the robot): an MLP on the simulator
state (robot + object poses, ``outcomes.STATE_DIM``), the episode time n / budget and the task
(one-hot), with a sigmoid output (returns lie in [0, 1]) trained by cross-entropy on the
returns. It is **cross-fitted**: episodes are split into folds and each episode's advantages
come from a critic that never saw that episode, so V(s) is not its own memorised return.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUTCOME_KEYS = ("max_force_env", "max_force_obj", "collateral_m", "tilt_deg", "fall_m",
                "joint_margin_rad", "success", "steps", "reward")


@dataclass
class CandidateData:
    """Every decision of a set of labelled episodes, in memory (N decisions, K candidates)."""

    images: np.ndarray  # (N, 2, S, S, 3) uint8
    proprio: np.ndarray  # (N, 8) float32
    instructions: list[str]  # (N,)
    task_id: np.ndarray  # (N,) int
    episode: np.ndarray  # (N,) index into ``episodes``
    step: np.ndarray  # (N,) int
    state: np.ndarray  # (N, D) float32
    next_state: np.ndarray  # (N, K, D) float32
    actions: np.ndarray  # (N, K, H, 7) float32
    outcome: dict[str, np.ndarray]  # field -> (N, K) float32
    source: np.ndarray  # (K,) int8
    episodes: list[dict] = field(default_factory=list)  # file, task_id, init_state, success, length
    max_steps: int = 220
    gamma: float = 0.99
    mc_success: np.ndarray | None = None  # (N, K, M) uint8, ``prevla branch`` data only
    phase: np.ndarray | None = None  # (N,) int8 index into prevla_sim.expert.PHASES (branch data)
    value_q: np.ndarray | None = None  # (N, K) float32 bootstrapped Q, ``prevla branch --value-model`` data only

    def __len__(self) -> int:
        return len(self.step)


def load_candidates(root: str | Path) -> CandidateData:
    """Load ``<root>/task*/init*.hdf5``; ValueError naming the file for a bad one."""
    import h5py

    from prevla_sim.libero_env import SUITE_MAX_STEPS

    paths = sorted(glob.glob(os.path.join(str(root), "task*", "init*.hdf5")))
    if not paths:
        raise FileNotFoundError(f"no labelled episodes under {root} (expected task*/init*.hdf5; "
                                "run `prevla label-candidates` first)")
    parts: dict[str, list] = {k: [] for k in ("images", "proprio", "state", "step", "actions", "next_state")}
    outcome: dict[str, list] = {k: [] for k in OUTCOME_KEYS}
    instructions, task_ids, episode_ids, episodes = [], [], [], []
    source, suite, gamma = None, None, None
    mc: dict[str, list] = {"mc_success": [], "phase": [], "value_q": []}
    for e, p in enumerate(paths):
        try:
            with h5py.File(p, "r") as f:
                n = len(f["step"]) if "step" in f else 0
                if n == 0:  # a branched episode that ended before its first branch point
                    continue
                for k in parts:
                    parts[k].append(f[k][:])
                for k in OUTCOME_KEYS:
                    outcome[k].append(f["outcome"][k][:])
                if "mc" in f:
                    mc["mc_success"].append(f["mc/success"][:])
                if "phase" in f:
                    mc["phase"].append(f["phase"][:])
                if "value" in f:
                    mc["value_q"].append(f["value/q"][:])
                src = f["source"][:]
                a = dict(f.attrs)
        except (OSError, KeyError) as exc:
            raise ValueError(f"{p}: not a complete labelled-candidate file ({exc})") from exc
        e = len(episodes)
        if source is None:
            source, suite, gamma = src, str(a["suite"]), float(a["gamma"])
        elif not np.array_equal(src, source) or str(a["suite"]) != suite:
            raise ValueError(f"{p}: candidate sources/suite differ from the first file's")
        instructions += [str(a["instruction"])] * n
        task_ids.append(np.full(n, int(a["task_id"])))
        episode_ids.append(np.full(n, e))
        episodes.append(dict(file=p, task_id=int(a["task_id"]), init_state=int(a["init_state"]),
                             success=bool(a["success"]), length=int(a["length"])))
    if not episodes:
        raise ValueError(f"{root}: no decisions in any episode file")
    if mc["mc_success"] and len(mc["mc_success"]) != len(episodes):
        raise ValueError(f"{root}: mixes prevla branch files (with mc/) and files without continuations")
    if mc["phase"] and len(mc["phase"]) != len(episodes):
        raise ValueError(f"{root}: mixes prevla branch files (with phase) and label-candidates files")
    if mc["value_q"] and len(mc["value_q"]) != len(episodes):
        raise ValueError(f"{root}: mixes prevla branch files with value labels (value/q) and files without")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    extra = {k: np.concatenate(v) for k, v in mc.items() if v}
    return CandidateData(**extra, images=cat["images"], proprio=cat["proprio"], instructions=instructions,
                         task_id=np.concatenate(task_ids), episode=np.concatenate(episode_ids),
                         step=cat["step"], state=cat["state"], next_state=cat["next_state"],
                         actions=cat["actions"], outcome={k: np.concatenate(v) for k, v in outcome.items()},
                         source=source, episodes=episodes, max_steps=SUITE_MAX_STEPS[suite], gamma=gamma)


def mc_q(data: CandidateData) -> np.ndarray:
    """(N, K) Monte-Carlo Q of every branched candidate: the share of its policy continuations
    that succeeded (``prevla branch``); ValueError for data without continuations."""
    if data.mc_success is None:
        raise ValueError("Monte-Carlo labels need `prevla branch` data (mc/success), "
                         "not `prevla label-candidates` data")
    return data.mc_success.astype(np.float32).mean(-1)


def value_q(data: CandidateData) -> np.ndarray:
    """(N, K) bootstrapped Q of every branched candidate (``value/q`` of ``prevla branch
    --value-model``: success ? 1 : gamma_chunk * V(s'), see ``prevla_training.branching``);
    ValueError for data without it."""
    if data.value_q is None:
        raise ValueError("value labels need `prevla branch --value-model` data (the value/q dataset); "
                         "this data has none")
    return np.asarray(data.value_q, np.float32)


def with_gamma(data: CandidateData, gamma: float) -> CandidateData:
    """``data`` with its success rewards and returns discounted by ``gamma`` per step instead of
    the labelling run's (a chunk that succeeds after s steps earns gamma**(s - 1)); gamma 1 makes
    V(s) the probability of success, blind to how fast."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    o = dict(data.outcome)
    o["reward"] = np.where(o["success"] > 0, gamma ** np.maximum(o["steps"] - 1, 0), 0.0).astype(np.float32)
    return dataclasses.replace(data, outcome=o, gamma=float(gamma))


def split_episodes(data: CandidateData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices: per task, a seeded ``val_fraction`` of its episodes (>= 1);
    with one episode per task, a seeded ``val_fraction`` of all episodes (whole tasks)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for t in sorted({e["task_id"] for e in data.episodes}):
        eps = [i for i, e in enumerate(data.episodes) if e["task_id"] == t]
        eps = list(rng.permutation(eps))
        n_val = max(1, int(round(val_fraction * len(eps)))) if len(eps) > 1 else 0
        val += eps[:n_val]
        train += eps[n_val:]
    if not val and len(train) > 1:  # one episode per task: hold out whole tasks' episodes instead
        n_val = max(1, int(round(val_fraction * len(train))))
        val, train = train[-n_val:], train[:-n_val]
    return np.array(sorted(train), int), np.array(sorted(val), int)


def mc_returns(data: CandidateData) -> np.ndarray:
    """(N,) Monte-Carlo return of every decision state under the on-policy rollout."""
    length = np.array([e["length"] for e in data.episodes])[data.episode]
    ok = np.array([e["success"] for e in data.episodes])[data.episode]
    return np.where(ok, data.gamma ** (length - 1 - data.step), 0.0).astype(np.float32)


# ------------------------------------------------------------------ critic
def progress_features(state: torch.Tensor) -> torch.Tensor:
    """Relative geometry the return depends on: eef - object 0, object 0 - object 1 (the task's
    objects of interest come first in the state) and their lengths: (N, 8)."""
    from prevla_sim.outcomes import ROBOT_FEATURES

    eef, o0, o1 = state[:, :3], state[:, ROBOT_FEATURES:ROBOT_FEATURES + 3], state[:, ROBOT_FEATURES + 7:ROBOT_FEATURES + 10]
    d0, d1 = eef - o0, o0 - o1
    return torch.cat([d0, d1, d0.norm(dim=1, keepdim=True), d1.norm(dim=1, keepdim=True)], dim=1)


#: Critic input sets: "progress" = relative geometry only, "progress_grip" = + the gripper's finger
#: positions (without them a grasp looks like no progress), "progress_state" = + robot state and
#: the objects of interest, "full" = + every object and fixture pose + the task one-hot.
CRITIC_FEATURES = ("progress", "progress_grip", "progress_state", "full")
#: Candidates of the cross-validated critic selection (few independent outcomes: small wins).
CRITIC_GRID = ({"features": "progress", "hidden": 0, "steps": 500},
               {"features": "progress", "hidden": 32, "steps": 300},
               {"features": "progress", "hidden": 32, "steps": 1000},
               {"features": "progress", "hidden": 64, "steps": 300},
               {"features": "progress_grip", "hidden": 32, "steps": 300},
               {"features": "progress_grip", "hidden": 64, "steps": 300},
               {"features": "progress_state", "hidden": 32, "steps": 300},
               {"features": "progress_state", "hidden": 64, "steps": 1000},
               {"features": "full", "hidden": 64, "steps": 1000})


class Critic(nn.Module):
    """V(s) in (0, 1) from the privileged state (``features`` picks what), always with the
    episode time n / budget; ``hidden`` = 0 is logistic regression."""

    def __init__(self, state_dim: int, n_tasks: int, features: str = "progress", hidden: int = 32) -> None:
        super().__init__()
        if features not in CRITIC_FEATURES:
            raise ValueError(f"critic features must be one of {CRITIC_FEATURES}, got {features!r}")
        self.n_tasks, self.kind = n_tasks, features
        from prevla_sim.outcomes import ROBOT_FEATURES

        width = {"progress": 8, "progress_grip": 10, "progress_state": ROBOT_FEATURES + 14 + 8, "full": state_dim + 8}[features]
        n_in = width + 1 + (n_tasks if features == "full" else 0)
        self.net = (nn.Linear(n_in, 1) if hidden == 0 else
                    nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, 1)))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """The selected raw inputs (before normalisation)."""
        from prevla_sim.outcomes import GRIPPER, ROBOT_FEATURES

        prog = progress_features(state)
        if self.kind == "progress":
            return prog
        if self.kind == "progress_grip":
            return torch.cat([prog, state[:, GRIPPER]], dim=1)
        if self.kind == "progress_state":
            return torch.cat([state[:, :ROBOT_FEATURES + 14], prog], dim=1)
        return torch.cat([state, prog], dim=1)

    def forward(self, state: torch.Tensor, time_frac: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Logit of V; V = sigmoid(logit). state (N, D), time_frac (N,), task (N,) int."""
        parts = [(self.features(state) - self.mean) / self.std, time_frac[:, None]]
        if self.kind == "full":
            parts.append(F.one_hot(task, self.n_tasks).float())
        return self.net(torch.cat(parts, dim=1)).squeeze(1)

    @torch.no_grad()
    def value(self, state, time_frac, task) -> np.ndarray:
        t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
        return torch.sigmoid(self(t(state), t(time_frac), t(task, torch.long))).numpy()


def train_critic(data: CandidateData, episodes: np.ndarray, n_tasks: int, features: str = "progress",
                 hidden: int = 32, steps: int = 300, seed: int = 0, lr: float = 1e-3,
                 weight_decay: float = 0.1) -> Critic:
    """Fit a critic on the on-policy decisions of ``episodes`` (full-batch AdamW, BCE on returns)."""
    torch.manual_seed(seed)
    rows = np.isin(data.episode, episodes)
    state = torch.as_tensor(data.state[rows])
    time_frac = torch.as_tensor(data.step[rows] / data.max_steps, dtype=torch.float32)
    task = torch.as_tensor(data.task_id[rows], dtype=torch.long)
    target = torch.as_tensor(mc_returns(data)[rows])
    critic = Critic(state.shape[1], n_tasks, features, hidden)
    feats = critic.features(state)
    critic.mean.copy_(feats.mean(0))
    critic.std.copy_(feats.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(critic(state, time_frac, task), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return critic.eval()


def chunk_advantages(critic: Critic, data: CandidateData, rows: np.ndarray) -> np.ndarray:
    """(len(rows), K) advantages A_i of the module docstring for the decisions ``rows``."""
    o = {k: v[rows] for k, v in data.outcome.items()}
    n, k = o["steps"].shape
    step = data.step[rows]
    task = data.task_id[rows]
    v_s = critic.value(data.state[rows], step / data.max_steps, task)
    after = (step[:, None] + o["steps"])
    v_next = critic.value(data.next_state[rows].reshape(n * k, -1), (after / data.max_steps).reshape(-1),
                          np.repeat(task, k)).reshape(n, k)
    terminal = (o["success"] > 0) | (after >= data.max_steps)
    return (o["reward"] + np.where(terminal, 0.0, data.gamma ** o["steps"] * v_next) - v_s[:, None]).astype(np.float32)


def cross_fitted_advantages(data: CandidateData, folds: int, n_tasks: int, seed: int,
                            grid: tuple[dict, ...] = CRITIC_GRID) -> tuple[np.ndarray, dict]:
    """Advantages of every decision, each from a critic trained without its episode.

    Every ``grid`` configuration is cross-fitted on the same episode folds; the one with the
    lowest out-of-fold MSE of V(s) against the Monte-Carlo returns labels the data.
    Returns (advantages (N, K), report): per configuration its out-of-fold MSE, the constant
    (mean-return) baseline, the chosen one, and how well the chosen V at an episode's first
    decision ranks its success (AUROC).
    """
    from prevla_training.verifier_metrics import auroc

    n_ep = len(data.episodes)
    folds = max(2, min(folds, n_ep))
    order = np.random.default_rng(seed).permutation(n_ep)
    g = mc_returns(data)
    best = None
    tried = []
    for conf in grid:
        adv = np.zeros(data.outcome["steps"].shape, np.float32)
        v_oof = np.zeros(len(data), np.float32)
        for f in range(folds):
            held = order[f::folds]
            critic = train_critic(data, np.setdiff1d(np.arange(n_ep), held), n_tasks, seed=seed + f, **conf)
            rows = np.where(np.isin(data.episode, held))[0]
            adv[rows] = chunk_advantages(critic, data, rows)
            v_oof[rows] = critic.value(data.state[rows], data.step[rows] / data.max_steps, data.task_id[rows])
        mse = float(np.mean((v_oof - g) ** 2))
        tried.append({**conf, "oof_mse": round(mse, 5)})
        if best is None or mse < best[0]:
            best = (mse, conf, adv, v_oof)
    mse, conf, adv, v_oof = best
    first = np.array([np.where(data.episode == e)[0][0] for e in range(n_ep)])
    ok = np.array([e["success"] for e in data.episodes], float)
    report = dict(folds=folds, chosen=conf, oof_mse=mse, mse_constant=float(np.mean((g.mean() - g) ** 2)),
                  grid=tried, success_auroc_first_state=auroc(v_oof[first], ok) if 0 < ok.sum() < n_ep else None,
                  mean_return=float(g.mean()))
    return adv, report
