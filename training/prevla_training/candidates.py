"""Label verifier candidates by branching in the real LIBERO simulator.

Along closed-loop rollouts of the learned VLA, at every decision point (one per chunk):

1. observe (both cameras) and record the privileged state s (robot + object poses);
2. draw K candidate chunks: ``k_policy`` samples of the VLA at ``temperature``, then
   perturbed ones: sample 1 with Gaussian noise (std ``noise_std``) on the 6 motion dims, and
   sample 2 with its gripper command flipped (let go / grab at the wrong time);
3. for every candidate but the first: ``snapshot()`` -> execute it while measuring
   (``prevla_sim.outcomes``: contact forces, collateral displacement, tilt, fall, joint
   margin, success, sparse reward) and record the privileged state s' it leads to ->
   ``restore()`` (bit-exact, proven by the e2e branching test);
4. execute candidate 0 (the policy's own first sample) for real, measured the same way: the
   rollout stays on-policy, so its returns train the critic V(s) that turns the branches into
   advantages (``prevla_training.critic``).

Output: one HDF5 file per episode, ``<out>/task<TT>/init<II>.hdf5``, written to a temp name
and renamed when complete, so a rerun (resume) skips finished episodes and never reads a
half-written one. Schema (N decisions, K candidates, H steps, D = outcomes.STATE_DIM)::

    images      (N, 2, S, S, 3) uint8   agentview, wrist (upright, as the policy saw them)
    proprio     (N, 8) float32          the policy's proprio vector
    state       (N, D) float32          privileged state at the decision (critic input)
    step        (N,) int32              control step of the decision
    actions     (N, K, H, 7) float32    candidates (executed length may be shorter at the end)
    source      (K,) int8               0 = policy sample, 1 = motion noise, 2 = gripper flip
    next_state  (N, K, D) float32       privileged state after executing the candidate
    outcome/<f> (N, K) float32          every ``outcomes.OUTCOME_FIELDS`` value
    attrs: suite, task_id, init_state, instruction, success, length, policy_id, policy_sha256,
           temperature, k_policy, noise_std, gamma, horizon, seed

Episodes start from official init states ``first_init_state, ...`` (default 10): states 0-9
are the evaluation's, never labelled.

    prevla label-candidates --suite libero_spatial --episodes-per-task 12 --workers 2 \
        --out outputs/candidates/libero_spatial
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prevla_training.cli_args import add_config_args, parse_config
from prevla_training.demos import parse_tasks
from prevla_training.jobs import map_jobs, progress_sink

@dataclass
class LabelConfig:
    """Configuration of :func:`label_candidates`."""

    suite: str = field(default="libero_spatial", metadata={"help": "LIBERO suite"})
    tasks: str = field(default="", metadata={"help": "'0-9', '0,3' or '' (all)"})
    episodes_per_task: int = field(default=12, metadata={"help": "rollouts per task"})
    first_init_state: int = field(default=10, metadata={"help": "first official init state (0-9 are for evaluation)"})
    out: str = field(default="outputs/candidates/libero_spatial", metadata={"help": "output directory"})
    policy: str = field(default="", metadata={"help": "VLA checkpoint: '' = zoo default, zoo:NAME or a file"})
    k_policy: int = field(default=6, metadata={"help": "policy samples per decision"})
    perturbed: int = field(default=2, metadata={"help": "perturbed candidates per decision (0, 1 or 2)"})
    temperature: float = field(default=1.0, metadata={"help": "policy sampling temperature"})
    noise_std: float = field(default=0.3, metadata={"help": "std of the motion-noise perturbation"})
    horizon: int = field(default=8, metadata={"help": "actions per chunk (the VLA's horizon)"})
    gamma: float = field(default=0.99, metadata={"help": "per-step discount of the sparse success reward"})
    seed: int = field(default=0, metadata={"help": "seed of sampling and perturbations"})
    workers: int = field(default=2, metadata={"help": "processes (one task each); 0 = in-process"})
    ray_address: str = field(default="", metadata={
        "help": "'' = local processes; 'local' = a local Ray cluster of --workers CPUs; "
                "'auto' or host:port = a running Ray cluster (one CPU per task)"})

    def __post_init__(self) -> None:
        for name, lo in (("episodes_per_task", 1), ("first_init_state", 0), ("k_policy", 1),
                         ("perturbed", 0), ("horizon", 1), ("workers", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"LabelConfig.{name} must be an int >= {lo}, got {v!r}")
        if self.perturbed > 2 or self.perturbed > self.k_policy:
            raise ValueError(f"LabelConfig.perturbed must be <= 2 and <= k_policy, got {self.perturbed}")
        if not (self.temperature >= 0 and self.noise_std >= 0 and 0 < self.gamma <= 1):
            raise ValueError("LabelConfig: need temperature >= 0, noise_std >= 0, 0 < gamma <= 1")


def make_candidates(samples: np.ndarray, perturbed: int, noise_std: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Policy samples (k, H, 7) -> (candidates (k + perturbed, H, 7), source ids (k + perturbed,))."""
    out, src = [np.asarray(samples, np.float32)], [np.zeros(len(samples), np.int8)]
    if perturbed >= 1:
        noisy = samples[1 % len(samples)].copy()
        noisy[:, :6] = np.clip(noisy[:, :6] + rng.normal(0, noise_std, noisy[:, :6].shape), -1, 1)
        out.append(noisy[None].astype(np.float32))
        src.append(np.array([1], np.int8))
    if perturbed >= 2:
        flipped = samples[2 % len(samples)].copy()
        flipped[:, 6] = -flipped[:, 6]
        out.append(flipped[None].astype(np.float32))
        src.append(np.array([2], np.int8))
    return np.concatenate(out), np.concatenate(src)


def label_episode(env, probe, policy, init_state: int, cfg: LabelConfig, rng: np.random.Generator) -> dict:
    """One labelled rollout from ``init_state`` (module docstring); returns arrays + attrs."""
    from prevla_models.geometry import proprio_from_state
    from prevla_sim.outcomes import OUTCOME_FIELDS, STATE_DIM, execute_and_measure

    env.reset(init_state)
    policy.reset()
    probe.remember_rest()
    rows: dict[str, list] = {k: [] for k in ("images", "proprio", "state", "step", "actions", "next_state")}
    outcomes: dict[str, list] = {f: [] for f in OUTCOME_FIELDS}
    done = success = False
    source = None
    while not done:
        obs = env.observe()
        rows["images"].append(np.stack([obs.images["agentview"], obs.images["wrist"]]))
        rows["proprio"].append(proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos))
        rows["state"].append(probe.state_features())
        rows["step"].append(env.step_count)
        samples = policy.sample(obs, cfg.k_policy, cfg.temperature)
        cands, source = make_candidates(samples, cfg.perturbed, cfg.noise_std, rng)
        k = len(cands)
        res: list[dict] = [{}] * k
        nxt = np.zeros((k, STATE_DIM), np.float32)
        snap = env.snapshot()
        for i in list(range(1, k)) + [0]:  # branches first, the on-policy candidate 0 last
            res[i] = execute_and_measure(env, probe, cands[i], cfg.gamma)
            nxt[i] = probe.state_features()
            if i:
                env.restore(snap)
        rows["actions"].append(cands)
        rows["next_state"].append(nxt)
        for f in OUTCOME_FIELDS:
            outcomes[f].append([r[f] for r in res])
        success = bool(res[0]["success"])
        done = success or env.step_count >= env.max_steps
    arrays = {"images": np.asarray(rows["images"], np.uint8),
              "proprio": np.asarray(rows["proprio"], np.float32),
              "state": np.asarray(rows["state"], np.float32),
              "step": np.asarray(rows["step"], np.int32),
              "actions": np.asarray(rows["actions"], np.float32),
              "next_state": np.asarray(rows["next_state"], np.float32),
              "source": np.asarray(source, np.int8)}
    arrays.update({f"outcome/{f}": np.asarray(v, np.float32) for f, v in outcomes.items()})
    attrs = dict(success=success, length=int(env.step_count), init_state=int(init_state),
                 instruction=env.instruction)
    return {"arrays": arrays, "attrs": attrs}


def missing_episodes(task_dir: Path, inits: list[int]) -> list[int]:
    """Init states of ``inits`` without a finished episode file in ``task_dir`` (resume).

    Only complete files count: an interrupted write leaves ``init<II>.hdf5.tmp``, which is
    ignored and overwritten when that episode is labelled again.
    """
    return [i for i in inits if not (Path(task_dir) / f"init{i:02d}.hdf5").exists()]


def write_episode(path: Path, episode: dict, attrs: dict) -> None:
    """Write one episode atomically (temp file + rename)."""
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for key, arr in episode["arrays"].items():
            kw = dict(compression="lzf") if key == "images" else {}
            f.create_dataset(key, data=arr, **kw)
        for key, v in {**attrs, **episode["attrs"]}.items():
            f.attrs[key] = v
    os.replace(tmp, path)


def label_task(job: dict) -> dict:
    """Worker: the missing episodes of one task (one env, one policy)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from prevla_models import zoo
    from prevla_models.checkpoints import sha256_file
    from prevla_models.vla_policy import VLAPolicy
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig, num_init_states
    from prevla_sim.outcomes import WorldProbe

    cfg = LabelConfig(**job["cfg"])
    t_id = job["task_id"]
    torch.set_num_threads(job["threads"])
    out = Path(cfg.out) / f"task{t_id:02d}"
    out.mkdir(parents=True, exist_ok=True)
    n_init = num_init_states(cfg.suite, t_id)
    inits = [cfg.first_init_state + e for e in range(cfg.episodes_per_task)]
    if inits and inits[-1] >= n_init:
        raise ValueError(f"task {t_id}: init states up to {inits[-1]} asked, the task has {n_init}")
    todo = missing_episodes(out, inits)
    stats = dict(task_id=t_id, episodes=len(inits), new=len(todo), successes=0, decisions=0, wall_s=0.0)
    job["progress"].put(len(inits) - len(todo))
    if not todo:
        return stats
    t0 = time.perf_counter()
    ckpt = zoo.resolve(cfg.policy, "vla")
    policy = VLAPolicy.from_checkpoint(ckpt)
    attrs = dict(suite=cfg.suite, task_id=t_id, policy_id=policy.policy_id, policy_sha256=sha256_file(ckpt),
                 temperature=cfg.temperature, k_policy=cfg.k_policy, noise_std=cfg.noise_std,
                 gamma=cfg.gamma, horizon=cfg.horizon, seed=cfg.seed)
    env = LiberoEnv(LiberoEnvConfig(suite=cfg.suite, task_id=t_id, init_state=todo[0]))
    try:
        probe = WorldProbe(env)
        for init in todo:
            policy.seed = cfg.seed * 100003 + t_id * 1000 + init
            rng = np.random.default_rng([cfg.seed, t_id, init])
            ep = label_episode(env, probe, policy, init, cfg, rng)
            write_episode(out / f"init{init:02d}.hdf5", ep, attrs)
            stats["successes"] += int(ep["attrs"]["success"])
            stats["decisions"] += len(ep["arrays"]["step"])
            job["progress"].put(1)
    finally:
        env.close()
    stats["wall_s"] = round(time.perf_counter() - t0, 1)
    return stats


def label_candidates(cfg: LabelConfig) -> dict:
    """Label every task of ``cfg`` (parallel over tasks); writes ``<out>/summary.json``."""
    from tqdm import tqdm

    from prevla_sim.libero_env import suite_num_tasks

    task_ids = parse_tasks(cfg.tasks or None, suite_num_tasks(cfg.suite))
    threads = max(1, (os.cpu_count() or 1) // max(1, cfg.workers))
    jobs = [dict(cfg=asdict(cfg), task_id=t, threads=threads) for t in task_ids]
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs) * cfg.episodes_per_task, desc=f"label {cfg.suite}", unit="ep")
    rows = []
    try:
        with progress_sink(bar.update, cfg.workers, cfg.ray_address) as progress:
            for row in map_jobs(label_task, [dict(j, progress=progress) for j in jobs], cfg.workers,
                                cfg.ray_address):
                rows.append(row)
                if cfg.ray_address:  # no live progress from a cluster: the task's episodes now
                    bar.update(row["episodes"])
    finally:
        bar.close()
    rows.sort(key=lambda r: task_ids.index(r["task_id"]))  # task order, not completion order
    summary = dict(config=asdict(cfg), wall_time_s=round(time.perf_counter() - t0, 1), tasks=rows)
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["tasks"]))
    return summary


def main(argv: list[str] | None = None) -> int:
    """``prevla label-candidates``."""
    p = argparse.ArgumentParser(prog="prevla label-candidates", description=__doc__.split("\n\n")[0])
    add_config_args(p, LabelConfig)
    cfg = parse_config(p, LabelConfig, argv)
    label_candidates(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
