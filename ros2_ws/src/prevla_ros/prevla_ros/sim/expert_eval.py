"""Parallel success-rate evaluation of the scripted LIBERO expert (ROS-free).

Closed loop, exactly as the runtime drives it: reset -> loop { obs = env.observe();
chunk = expert.act_chunk(obs, H); for a in chunk: env.step(a) } until success or max_steps.
Physics only (``render=False``), one process per task at a time.

    python -m prevla_ros.sim.expert_eval --suite libero_spatial --episodes-per-task 10 \
        --workers 2 --out outputs/expert_spatial.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import time
from pathlib import Path

import numpy as np


def _run_task(job: dict) -> list[dict]:
    """Worker: run the episodes of one task; reports each finished episode on job['progress']."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from prevla_ros.sim.expert import expert_for_env
    from prevla_ros.sim.libero_env import LiberoEnv, LiberoEnvConfig

    env = LiberoEnv(LiberoEnvConfig(suite=job["suite"], task_id=job["task_id"],
                                    init_state=job["init_states"][0], render=False))
    results = []
    try:
        expert = expert_for_env(env)
        for init in job["init_states"]:
            rng = np.random.default_rng(job["seed"] * 1000003 + job["task_id"] * 1009 + init)
            env.reset(init)
            expert.reset()
            t0 = time.perf_counter()
            done = success = False
            while not done:
                chunk = expert.act_chunk(env.observe(), job["horizon"])
                if job["noise_std"] > 0:  # perturb motion only, like ScriptedExpertPolicy
                    chunk[:, :6] = np.clip(
                        chunk[:, :6] + rng.normal(0.0, job["noise_std"], (len(chunk), 6)), -1, 1)
                for a in chunk:
                    done, success = env.step(a)
                    if done:
                        break
            results.append(dict(task_id=job["task_id"], init_state=init, success=bool(success),
                                steps=env.step_count, seconds=round(time.perf_counter() - t0, 3)))
            job["progress"].put(1)
    finally:
        env.close()
    return results


def evaluate_expert(suite: str, task_ids: list[int] | None, episodes_per_task: int, workers: int,
                    out_json: str | Path | None, noise_std: float = 0.0, horizon: int = 8,
                    init_start: int = 0, seed: int = 0) -> dict:
    """Success rate of the scripted expert on ``suite``'s official init states.

    Args:
        suite: LIBERO suite name.
        task_ids: tasks to evaluate (None: all tasks of the suite).
        episodes_per_task: init states per task (``init_start`` .. ``init_start + n - 1``).
        workers: parallel processes.
        out_json: where to write the JSON summary (None: don't write).
        noise_std: std of Gaussian noise added to the 6 motion dims of every action.
        horizon: actions per chunk (one observation per chunk).
        init_start: first init state.
        seed: noise seed.

    Returns:
        The summary dict (also written to ``out_json``).
    """
    from tqdm import tqdm

    from prevla_ros.sim.libero_env import num_init_states, suite_instructions, suite_num_tasks

    n_tasks = suite_num_tasks(suite)
    task_ids = list(range(n_tasks)) if task_ids is None else list(task_ids)
    instructions = suite_instructions(suite)
    t_start = time.perf_counter()
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited GL/MuJoCo state
    with ctx.Manager() as manager:
        progress = manager.Queue()
        jobs = []
        for tid in task_ids:
            n_init = num_init_states(suite, tid)
            inits = [(init_start + k) % n_init for k in range(episodes_per_task)]
            jobs.append(dict(suite=suite, task_id=tid, init_states=inits, noise_std=noise_std,
                             horizon=horizon, seed=seed, progress=progress))
        episodes: list[dict] = []
        with ctx.Pool(processes=max(1, workers)) as pool:
            pending = pool.map_async(_run_task, jobs, chunksize=1)
            with tqdm(total=len(jobs) * episodes_per_task, desc=f"expert {suite}",
                      unit="ep") as bar:
                while not pending.ready():
                    try:
                        bar.update(progress.get(timeout=0.5))
                    except queue.Empty:
                        pass
                while not progress.empty():
                    bar.update(progress.get())
            for res in pending.get():
                episodes.extend(res)
    wall = time.perf_counter() - t_start
    tasks = []
    for tid in task_ids:
        eps = [e for e in episodes if e["task_id"] == tid]
        ok = sum(e["success"] for e in eps)
        tasks.append(dict(task_id=tid, instruction=instructions[tid], episodes=len(eps),
                          successes=ok, success_rate=ok / max(1, len(eps)),
                          mean_steps=float(np.mean([e["steps"] for e in eps])) if eps else 0.0))
    total = sum(t["episodes"] for t in tasks)
    summary = dict(suite=suite, episodes_per_task=episodes_per_task, init_start=init_start,
                   noise_std=noise_std, horizon=horizon, seed=seed, workers=workers,
                   success_rate=sum(t["successes"] for t in tasks) / max(1, total),
                   wall_time_s=round(wall, 1), tasks=tasks, episodes=episodes)
    print(format_table(summary))
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(summary, indent=1))
    return summary


def format_table(summary: dict) -> str:
    """Per-task markdown table of an ``evaluate_expert`` summary."""
    lines = [f"### scripted expert on {summary['suite']} (noise std {summary['noise_std']}, "
             f"H={summary['horizon']}, {summary['episodes_per_task']} init states/task from "
             f"{summary['init_start']})", "",
             "| task | instruction | success | mean steps |", "|---:|---|---:|---:|"]
    for t in summary["tasks"]:
        lines.append(f"| {t['task_id']} | {t['instruction']} | {t['successes']}/{t['episodes']} "
                     f"({100 * t['success_rate']:.0f}%) | {t['mean_steps']:.0f} |")
    lines.append(f"| **all** | | **{100 * summary['success_rate']:.1f}%** | |")
    lines.append(f"\nwall time {summary['wall_time_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Success rate of the scripted LIBERO expert.")
    p.add_argument("--suite", default="libero_spatial", help="LIBERO suite")
    p.add_argument("--task-ids", type=int, nargs="*", default=None, help="tasks (default: all)")
    p.add_argument("--episodes-per-task", type=int, default=10, help="init states per task")
    p.add_argument("--init-start", type=int, default=0, help="first official init state")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--horizon", type=int, default=8, help="actions per chunk")
    p.add_argument("--noise-std", type=float, default=0.0,
                   help="Gaussian noise std on the 6 motion dims of every action")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    evaluate_expert(a.suite, a.task_ids, a.episodes_per_task, a.workers, a.out,
                    noise_std=a.noise_std, horizon=a.horizon, init_start=a.init_start, seed=a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
