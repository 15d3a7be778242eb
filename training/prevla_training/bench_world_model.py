"""Imagination quality over rollout length, verifier-gated vs ungated, and the compute gating saves.

    python -m prevla_training.bench_world_model [--tasks 0-9] [--inits 40,41] [--chunks 8] [--k 8] \
        [--workers 2] [--out outputs/bench/world_model.json]          (make bench-world-model)

For every (task, init state) of LIBERO-Spatial (init states 40+ by default: neither the world
model's rollouts, 10-21, nor the evaluation's, 0-9), from the same start state, two chunk
sequences are executed in the real simulator, ``--chunks`` decisions each:

* **ungated**: at each decision the VLA samples K chunks and one is taken uniformly at random
  (what a world model imagines when nothing filters its inputs);
* **gated**: the verifier scores the K chunks and the one it accepts is taken (the highest
  predicted advantage among P(safe) >= tau; the safest one if none passes).

The world model imagines each executed sequence autoregressively from the start frame only,
and its frame at the end of chunk n is compared with the simulator's: MSE and SSIM (64 px,
pixels in [0, 1]) at n = 1, 2, 4, 8, with the *copy the start frame* baseline beside them.
Compute: per decision the world model would imagine all K candidates ungated, and only those
passing tau when gated; the frames not imagined x the measured ms per imagined frame (batch of
one chunk and batch of K) is the compute gating saves. Prints a table, writes JSON + PNG.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

HORIZONS = (1, 2, 4, 8)


def ssim(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM of two (S, S, 3) images in [0, 1] (uniform window, per channel, standard constants)."""
    from numpy.lib.stride_tricks import sliding_window_view

    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def mean(x):
        return sliding_window_view(x, (win, win), axis=(0, 1)).mean((-1, -2))

    mu_a, mu_b = mean(a), mean(b)
    va, vb = mean(a * a) - mu_a ** 2, mean(b * b) - mu_b ** 2
    cov = mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def _down(img: np.ndarray, size: int) -> np.ndarray:
    f = img.shape[0] // size
    return img.reshape(size, f, size, f, 3).mean((1, 3)) / 255.0 if f > 1 else img / 255.0


def run_task(task_id: int, inits: list[int], chunks: int, k: int, seed: int, threads: int) -> list[dict]:
    """Worker: both sequences of every init state of one task, imagined and scored."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from prevla_models import zoo
    from prevla_models.geometry import proprio_from_state
    from prevla_models.verifier_scorer import VerifierScorer
    from prevla_models.vla_policy import VLAPolicy
    from prevla_models.world_model import load_checkpoint
    from prevla_ros.runtime.engines import load_model
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig

    torch.set_num_threads(threads)
    policy = VLAPolicy(load_model("vla", "").runner, seed=seed)
    scorer = VerifierScorer(load_model("verifier", "").runner)
    wm, _ = load_checkpoint(zoo.resolve("", "world_model"))
    wm.eval()
    size, rng = wm.cfg.frame_size, np.random.default_rng([seed, task_id])
    rows = []
    with LiberoEnv(LiberoEnvConfig(suite="libero_spatial", task_id=task_id, init_state=inits[0])) as env:
        for init in inits:
            for arm in ("ungated", "gated"):
                env.reset(init)
                policy.reset()
                obs0 = env.observe()
                frame0 = obs0.images["agentview"]
                proprio0 = proprio_from_state(obs0.eef_pos, obs0.eef_quat_xyzw, obs0.gripper_qpos)
                obs, executed, real, passed, done = obs0, [], [], [], False
                for _ in range(chunks):
                    cands = np.asarray(policy.sample(obs, k, 1.0))
                    p_safe, adv = scorer.score(obs, cands)
                    ok = p_safe >= scorer.threshold
                    passed.append(int(ok.sum()))
                    if arm == "ungated":
                        i = int(rng.integers(k))
                    else:
                        i = int(np.argmax(np.where(ok, adv, -np.inf))) if ok.any() else int(np.argmax(p_safe))
                    executed.append(cands[i])
                    for a in cands[i]:
                        done, _ = env.step(a)
                        if done:
                            break
                    obs = env.observe()
                    real.append(obs.images["agentview"])
                    if done:
                        break
                with torch.no_grad():
                    imagined = wm.imagine(torch.from_numpy(frame0[None]), torch.from_numpy(proprio0[None]),
                                          torch.from_numpy(np.stack(executed)[None]), every=wm.cfg.horizon)[0].numpy()
                start = _down(frame0, size)
                row = {"task_id": task_id, "init_state": init, "arm": arm, "chunks": len(executed),
                       "passed_per_decision": passed}
                for n in HORIZONS:
                    if n <= len(real):
                        r, im = _down(real[n - 1], size), imagined[n - 1] / 255.0
                        row[f"mse_{n}"] = float(((im - r) ** 2).mean())
                        row[f"ssim_{n}"] = ssim(im, r)
                        row[f"copy_mse_{n}"] = float(((start - r) ** 2).mean())
                        row[f"copy_ssim_{n}"] = ssim(start, r)
                rows.append(row)
    return rows


def frame_ms(k: int, iters: int = 20) -> dict:
    """ms per imagined frame: one chunk (8 frames) for one candidate, and K candidates batched."""
    import torch

    from prevla_models import zoo
    from prevla_models.world_model import load_checkpoint

    wm, _ = load_checkpoint(zoo.resolve("", "world_model"))
    wm.eval()
    c = wm.cfg
    out = {}
    for b in (1, k):
        frames = torch.randint(0, 256, (b, 128, 128, 3), dtype=torch.uint8)
        chunk = torch.rand(b, 1, c.horizon, c.action_dim) * 2 - 1
        for _ in range(3):
            wm.imagine(frames, torch.zeros(b, c.proprio_dim), chunk)
        t0 = time.perf_counter()
        for _ in range(iters):
            wm.imagine(frames, torch.zeros(b, c.proprio_dim), chunk)
        out[f"batch{b}"] = 1000 * (time.perf_counter() - t0) / iters / (b * c.horizon)
    return out


def summarize(rows: list[dict], k: int, ms: dict, horizon: int = 8) -> dict:
    table = {}
    for arm in ("ungated", "gated"):
        sel = [r for r in rows if r["arm"] == arm]
        table[arm] = {}
        for n in HORIZONS:
            have = [r for r in sel if f"mse_{n}" in r]
            if have:
                table[arm][n] = {key: float(np.mean([r[f"{key}_{n}"] for r in have]))
                                 for key in ("mse", "ssim", "copy_mse", "copy_ssim")}
                table[arm][n]["episodes"] = len(have)
    gated = [p for r in rows if r["arm"] == "gated" for p in r["passed_per_decision"]]
    decisions = len(gated)
    frames_all, frames_gated = decisions * k * horizon, int(np.sum(gated)) * horizon
    saved = frames_all - frames_gated
    return {"by_horizon": table, "decisions": decisions, "candidates_passing_per_decision": float(np.mean(gated)),
            "frames_ungated": frames_all, "frames_gated": frames_gated, "frames_saved": saved,
            "frames_saved_fraction": saved / max(frames_all, 1), "ms_per_frame": ms,
            "ms_saved_per_decision_batched": saved / max(decisions, 1) * ms[f"batch{k}"]}


def table_md(s: dict) -> str:
    lines = ["| chunk n | ungated MSE | gated MSE | copy-start MSE (ungated / gated) | ungated SSIM | gated SSIM | episodes |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    u, g = s["by_horizon"]["ungated"], s["by_horizon"]["gated"]
    for n in HORIZONS:
        if n in u and n in g:
            lines.append(f"| {n} | {u[n]['mse']:.4f} | {g[n]['mse']:.4f} | {u[n]['copy_mse']:.4f} / {g[n]['copy_mse']:.4f} | "
                         f"{u[n]['ssim']:.3f} | {g[n]['ssim']:.3f} | {u[n]['episodes']} / {g[n]['episodes']} |")
    lines += ["", f"gating: {s['candidates_passing_per_decision']:.2f} of K candidates pass per decision over "
              f"{s['decisions']} decisions; frames imagined ungated {s['frames_ungated']:,} vs gated {s['frames_gated']:,} "
              f"({100 * s['frames_saved_fraction']:.0f}% saved, {s['ms_saved_per_decision_batched']:.1f} ms per decision "
              f"at {s['ms_per_frame']['batch8' if 'batch8' in s['ms_per_frame'] else list(s['ms_per_frame'])[-1]]:.2f} ms per "
              f"frame batched); ms per imagined frame: " + ", ".join(f"{k} {v:.2f}" for k, v in s["ms_per_frame"].items())]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for arm, color in (("ungated", "C3"), ("gated", "C2")):
        t = s["by_horizon"][arm]
        ns = sorted(t)
        ax[0].plot(ns, [t[n]["mse"] for n in ns], "o-", color=color, label=f"imagined, {arm}")
        ax[0].plot(ns, [t[n]["copy_mse"] for n in ns], "o--", color=color, alpha=0.5, label=f"copy start, {arm}")
        ax[1].plot(ns, [t[n]["ssim"] for n in ns], "o-", color=color, label=f"imagined, {arm}")
    ax[0].set_xlabel("chunk"), ax[0].set_ylabel("frame MSE"), ax[0].legend(fontsize=7), ax[0].set_xscale("log", base=2)
    ax[1].set_xlabel("chunk"), ax[1].set_ylabel("SSIM"), ax[1].legend(fontsize=7), ax[1].set_xscale("log", base=2)
    fig.tight_layout(), fig.savefig(path, dpi=100), plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import json

    from tqdm import tqdm

    from prevla_training.cli_args import write_report

    p = argparse.ArgumentParser(prog="bench_world_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="0-9")
    p.add_argument("--inits", default="40,41", help="comma list of official init states")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="outputs/bench/world_model.json")
    a = p.parse_args(argv)
    lo, _, hi = a.tasks.partition("-")
    tasks = list(range(int(lo), int(hi or lo) + 1))
    inits = [int(x) for x in a.inits.split(",") if x]
    t0, rows = time.perf_counter(), []
    jobs = [(t, inits, a.chunks, a.k, a.seed, max(1, (os.cpu_count() or 1) // max(a.workers, 1))) for t in tasks]
    with tqdm(total=len(jobs), desc="imagination bench", unit="task") as bar, \
            mp.get_context("spawn").Pool(max(a.workers, 1)) as pool:
        for res in pool.imap_unordered(_job, jobs):
            rows.extend(res)
            bar.update(1)
    s = summarize(rows, a.k, frame_ms(a.k))
    result = {"summary": s, "episodes": rows, "wall_s": round(time.perf_counter() - t0, 1), "tasks": tasks,
              "inits": inits, "k": a.k, "chunks": a.chunks}
    write_report(a.out, json.loads(json.dumps(result, default=float)), table_md(s))
    plot(s, Path(a.out).with_suffix(".png"))
    return 0


def _job(args: tuple) -> list[dict]:
    return run_task(*args)


if __name__ == "__main__":
    raise SystemExit(main())
