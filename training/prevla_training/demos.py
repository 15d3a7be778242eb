"""Record scripted-expert demonstrations for a LIBERO suite in LIBERO's own HDF5 layout.

One file per task, named like LIBERO's (``<task_name>_demo.hdf5``), so ``DemoDataset`` reads
ours and the official datasets alike. Every control step is observed (both cameras rendered),
as in LIBERO's files. ROS-free; one task per worker, on local processes (spawn) or a Ray
cluster (``--ray-address``, ``prevla_training.jobs``).

Resumable: demos go to ``<task_name>_demo.hdf5.part`` as they complete (flushed); the file is
renamed when the task is done. A rerun counts the demos already there and records only the
missing ones (also after a finished run, when ``demos_per_task`` grows).

    prevla record-demos --suite libero_spatial --tasks 0-9 --demos-per-task 10 --workers 2 \
        --out outputs/demos/libero_spatial
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from prevla_training.demos_read import (DemoDataset, PROPRIO_DIM, open_hdf5,  # noqa: F401
                                        proprio_from_observation, quat2axisangle)
from prevla_training.jobs import map_jobs, progress_sink

#: Image convention of the stored images (robosuite's raw offscreen render: upside down).
IMAGE_CONVENTION = "opengl"
_IMAGE_KW = dict(compression="lzf")  # fast, built into h5py; images are ~all of the bytes


def parse_tasks(spec: str | None, n_tasks: int) -> list[int]:
    """``"0-9"``, ``"0,3"``, ``"0-2,5"`` or None (all) -> sorted task ids (ValueError if bad)."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(n_tasks))
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"--tasks: cannot parse {part!r} in {spec!r} (expected e.g. 0-9 or 0,3)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= n_tasks:
            raise ValueError(f"--tasks: range {part!r} invalid for a suite of {n_tasks} tasks")
        out.update(range(lo, hi + 1))
    return sorted(out)


# ---------------------------------------------------------------- seams (patched in tests)
def _task_info(suite: str, task_id: int) -> dict:
    """Name, BDDL path, instruction and number of official init states of a task."""
    from prevla_sim.libero_env import num_init_states, suite_instructions, task_bddl_path

    bddl = task_bddl_path(suite, task_id)
    return dict(task_name=Path(bddl).stem, bddl_path=bddl, n_init=num_init_states(suite, task_id),
                instruction=suite_instructions(suite)[task_id])


def _make_env(suite: str, task_id: int, image_size: int):
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig

    return LiberoEnv(LiberoEnvConfig(suite=suite, task_id=task_id, image_size=image_size))


def _make_expert(env):
    from prevla_sim.expert import expert_for_env

    return expert_for_env(env)


# ---------------------------------------------------------------- one episode
def record_episode(env, expert, init_state: int, horizon: int, noise_std: float,
                   rng: np.random.Generator) -> tuple[dict[str, np.ndarray], bool]:
    """Run the expert closed loop from ``init_state``, observing every control step.

    The expert is queried at chunk boundaries with the observation of that step, exactly as
    the runtime drives it. Row t holds the observation and state *before* action t.

    With ``noise_std > 0`` the *executed* actions are perturbed (DART-style: the robot visits
    states off the expert's path) and stored as ``actions`` (LIBERO's key: replaying them
    reproduces the episode); the clean expert actions for those states are stored as
    ``expert_actions``, the labels a policy learns from.

    Returns:
        (arrays, success): ``arrays`` maps LIBERO dataset keys to stacked arrays.
    """
    env.reset(init_state)
    expert.reset()
    rows: dict[str, list] = {k: [] for k in ("actions", "expert_actions", "states", "agentview", "wrist",
                                             "joints", "gripper", "pos", "quat")}
    chunk, clean, k = np.zeros((0, 7)), np.zeros((0, 7)), 0
    done = success = False
    while not done:
        obs = env.observe()
        if k >= len(chunk):
            clean, k = np.array(expert.act_chunk(obs, horizon), dtype=np.float64), 0
            chunk = clean.copy()
            if noise_std > 0:  # perturb motion only, like ScriptedExpertPolicy / expert_eval
                chunk[:, :6] = np.clip(chunk[:, :6] + rng.normal(0, noise_std, (len(chunk), 6)),
                                       -1, 1)
        a = chunk[k]
        rows["expert_actions"].append(clean[k])
        k += 1
        rows["states"].append(env.get_state())
        rows["actions"].append(a)
        rows["agentview"].append(obs.images["agentview"])
        rows["wrist"].append(obs.images["wrist"])
        rows["joints"].append(obs.joint_positions)
        rows["gripper"].append(obs.gripper_qpos)
        rows["pos"].append(obs.eef_pos)
        rows["quat"].append(obs.eef_quat_xyzw)
        done, success = env.step(a)
    pos = np.asarray(rows["pos"], np.float64)
    quat = np.asarray(rows["quat"], np.float64)
    ori = np.stack([quat2axisangle(q) for q in quat])
    gripper = np.asarray(rows["gripper"], np.float64)
    n = len(rows["actions"])
    term = np.zeros(n, np.uint8)
    term[-1] = 1
    flip = lambda ims: np.ascontiguousarray(np.asarray(ims, np.uint8)[:, ::-1, ::-1])  # noqa: E731
    arrays = {
        "actions": np.asarray(rows["actions"], np.float64),
        "expert_actions": np.asarray(rows["expert_actions"], np.float64),
        "states": np.asarray(rows["states"], np.float64),
        # LIBERO's env.get_robot_state_vector: gripper qpos (2), eef pos (3), eef quat xyzw (4)
        "robot_states": np.concatenate([gripper, pos, quat], axis=1),
        "rewards": term.copy(), "dones": term,
        # back to LIBERO's raw (upside-down) orientation: Observation images are upright
        "obs/agentview_rgb": flip(rows["agentview"]),
        "obs/eye_in_hand_rgb": flip(rows["wrist"]),
        "obs/joint_states": np.asarray(rows["joints"], np.float64),
        "obs/gripper_states": gripper,
        "obs/ee_pos": pos, "obs/ee_ori": ori, "obs/ee_states": np.concatenate([pos, ori], 1),
    }
    return arrays, bool(success)


# ---------------------------------------------------------------- files
def _problem_info(bddl_path: str, instruction: str) -> dict:
    text = Path(bddl_path).read_text() if Path(bddl_path).exists() else ""
    prob = re.search(r"\(problem\s+([^\s)]+)", text)
    dom = re.search(r"\(:domain\s+([^\s)]+)", text)
    return dict(problem_name=prob.group(1).lower() if prob else "", domain_name=(
        dom.group(1) if dom else "robosuite"), language_instruction=instruction)


def _open_part(part: Path, info: dict, job: dict):
    """Open (or create) a task's partial file; drop a half-written trailing demo."""
    f = open_hdf5(part, "a")
    data = f.require_group("data")
    if "problem_info" not in data.attrs:
        pinfo = _problem_info(info["bddl_path"], info["instruction"])
        data.attrs["problem_info"] = json.dumps(pinfo)
        data.attrs["env_name"] = pinfo["problem_name"]
        data.attrs["env_args"] = json.dumps(dict(
            type=1, env_name=pinfo["problem_name"], problem_name=pinfo["problem_name"],
            bddl_file=info["bddl_path"],
            env_kwargs=dict(bddl_file_name=info["bddl_path"], camera_heights=job["image_size"],
                            camera_widths=job["image_size"], control_freq=20,
                            camera_names=["robot0_eye_in_hand", "agentview"],
                            controller="OSC_POSE", ignore_done=True)))
        data.attrs["bddl_file_name"] = info["bddl_path"]
        if Path(info["bddl_path"]).exists():
            data.attrs["bddl_file_content"] = Path(info["bddl_path"]).read_text()
        data.attrs["macros_image_convention"] = IMAGE_CONVENTION
        data.attrs["num_demos"], data.attrs["total"] = 0, 0
        data.attrs["prevla_attempts"] = 0
        data.attrs["prevla_recorder"] = json.dumps(dict(
            suite=job["suite"], task_id=job["task_id"], horizon=job["horizon"],
            noise_std=job["noise_std"], seed=job["seed"], first_init_state=job["first_init_state"]))
    n = int(data.attrs["num_demos"])
    for key in [k for k in data if k.startswith("demo_") and int(k[5:]) >= n]:
        del data[key]  # written when the previous run died, before num_demos was bumped
    return f


def _write_demo(data, index: int, arrays: dict[str, np.ndarray], init_state: int) -> None:
    g = data.create_group(f"demo_{index}")
    for key, arr in arrays.items():
        kw = _IMAGE_KW if arr.ndim == 4 else {}
        if kw:
            kw = dict(kw, chunks=(1,) + arr.shape[1:])  # one frame per chunk: cheap random reads
        g.create_dataset(key, data=arr, **kw)
    n = int(arrays["actions"].shape[0])
    g.attrs["num_samples"] = n
    g.attrs["init_state"] = arrays["states"][0]
    g.attrs["prevla_init_state_index"] = init_state
    # bump the counters last: a demo counts only once it is completely written
    data.attrs["num_demos"] = index + 1
    data.attrs["total"] = int(data.attrs["total"]) + n


def record_task(job: dict) -> dict:
    """Worker: record the missing demos of one task; returns its stats row."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    t0 = time.perf_counter()
    info = _task_info(job["suite"], job["task_id"])
    out_dir = Path(job["out_dir"])
    final = out_dir / f"{info['task_name']}_demo.hdf5"
    part = final.with_name(final.name + ".part")
    if final.exists():
        if part.exists():
            raise ValueError(f"both {final} and {part} exist; delete one of them")
        final.rename(part)  # reopen a finished task: more demos were asked for
    want, max_attempts = job["demos_per_task"], job["max_attempts_factor"] * job["demos_per_task"]
    f = _open_part(part, info, job)
    data = f["data"]
    have0 = int(data.attrs["num_demos"])
    attempts0 = int(data.attrs["prevla_attempts"])
    stats = dict(task_id=job["task_id"], task_name=info["task_name"],
                 instruction=info["instruction"], file=str(final), demos_before=have0,
                 new_attempts=0, new_demos=0, steps=0, step_s=0.0)
    env = None
    try:
        while int(data.attrs["num_demos"]) < want and int(data.attrs["prevla_attempts"]) < max_attempts:
            if env is None:
                env = _make_env(job["suite"], job["task_id"], job["image_size"])
                expert = _make_expert(env)
            attempt = int(data.attrs["prevla_attempts"])
            first = min(job["first_init_state"], info["n_init"] - 1)
            init = first + attempt % (info["n_init"] - first)  # successive official init states
            rng = np.random.default_rng([job["seed"], job["task_id"], attempt])
            ts = time.perf_counter()
            arrays, ok = record_episode(env, expert, init, job["horizon"], job["noise_std"], rng)
            stats["step_s"] += time.perf_counter() - ts
            stats["steps"] += len(arrays["actions"])
            stats["new_attempts"] += 1
            if ok:
                _write_demo(data, int(data.attrs["num_demos"]), arrays, init)
                stats["new_demos"] += 1
            data.attrs["prevla_attempts"] = attempt + 1
            f.flush()
            job["progress"].put(1 if ok else 0)
    finally:
        if env is not None:
            env.close()
        stats.update(demos=int(data.attrs["num_demos"]), attempts=int(data.attrs["prevla_attempts"]),
                     total_steps=int(data.attrs["total"]))
        f.close()
    part.rename(final)
    stats["wall_s"] = round(time.perf_counter() - t0, 1)
    stats["ms_per_step"] = round(1000 * stats["step_s"] / max(1, stats["steps"]), 1)
    stats["success_rate"] = stats["new_demos"] / max(1, stats["new_attempts"])
    stats["attempts_before"] = attempts0
    return stats


def record_demos(suite: str, task_ids: list[int] | None, demos_per_task: int, out_dir: str | Path,
                 workers: int, horizon: int = 8, noise_std: float = 0.0, image_size: int = 128,
                 seed: int = 0, max_attempts_factor: int = 3, first_init_state: int = 10,
                 ray_address: str = "") -> dict:
    """Record successful scripted-expert demos for ``task_ids`` of ``suite`` into ``out_dir``.

    Args:
        suite: LIBERO suite name.
        task_ids: tasks to record (None: all tasks of the suite).
        demos_per_task: successful demos wanted per task (already recorded ones count).
        out_dir: output directory (one ``<task_name>_demo.hdf5`` per task + ``summary.json``).
        workers: parallel processes (one task each); 0 runs in this process (tests, debugging).
        horizon: actions per expert chunk.
        noise_std: Gaussian noise std on the 6 motion dims of every action.
        image_size: square camera resolution.
        seed: noise seed.
        max_attempts_factor: give up on a task after this many attempts per wanted demo.
        first_init_state: demos start from official init states ``first_init_state, ...``
            (cycling); the default 10 keeps init states 0-9, used by ``prevla eval``, unseen.
        ray_address: '' = ``workers`` local processes; 'local' = a local Ray cluster of
            ``workers`` CPUs; 'auto' or host:port = a running Ray cluster (one CPU per task).

    Returns:
        The summary dict (also written to ``out_dir/summary.json``).
    """
    from tqdm import tqdm

    if demos_per_task < 1:
        raise ValueError(f"demos_per_task must be >= 1, got {demos_per_task}")
    if first_init_state < 0:
        raise ValueError(f"first_init_state must be >= 0, got {first_init_state}")
    if max_attempts_factor < 1:
        raise ValueError(f"max_attempts_factor must be >= 1, got {max_attempts_factor}")
    if task_ids is None:
        from prevla_sim.libero_env import suite_num_tasks

        task_ids = list(range(suite_num_tasks(suite)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(suite=suite, demos_per_task=demos_per_task, out_dir=str(out), horizon=horizon,
                noise_std=noise_std, image_size=image_size, seed=seed,
                max_attempts_factor=max_attempts_factor, first_init_state=first_init_state)
    jobs = [dict(base, task_id=t) for t in task_ids]
    t_start = time.perf_counter()
    bar = tqdm(total=len(jobs) * demos_per_task, desc=f"demos {suite}", unit="demo")
    n_workers = max(0, workers)  # <= 0: in this process
    rows = []
    try:
        with progress_sink(bar.update, n_workers, ray_address) as progress:
            for row in map_jobs(record_task, [dict(j, progress=progress) for j in jobs], n_workers,
                                ray_address):  # a worker's exception is re-raised here
                rows.append(row)
                if ray_address:  # no live progress from a cluster: the task's new demos now
                    bar.update(row["new_demos"])
    finally:
        bar.close()
    order = {t: i for i, t in enumerate(task_ids)}
    rows.sort(key=lambda r: order[r["task_id"]])  # task order, not completion order
    summary = dict(base, workers=workers, wall_time_s=round(time.perf_counter() - t_start, 1),
                   tasks=rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(format_table(summary))
    return summary


def format_table(summary: dict) -> str:
    """Per-task markdown table of a ``record_demos`` summary."""
    lines = [f"### demos {summary['suite']} -> {summary['out_dir']}", "",
             "| task | demos | attempts (this run) | success rate | steps (this run) | ms/step "
             "| wall s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["tasks"]:
        lines.append(f"| {r['task_id']} | {r['demos']}/{summary['demos_per_task']} | "
                     f"{r['attempts']} ({r['new_attempts']}) | {100 * r['success_rate']:.0f}% | "
                     f"{r['total_steps']} ({r['steps']}) | {r['ms_per_step']:.0f} | {r['wall_s']} |")
    lines.append(f"\nwall time {summary['wall_time_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``prevla record-demos``: record expert demos in LIBERO's HDF5 format."""
    p = argparse.ArgumentParser(prog="prevla record-demos", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial", help="LIBERO suite")
    p.add_argument("--tasks", default=None, help="task ids, e.g. 0-9 or 0,3 (default: all)")
    p.add_argument("--demos-per-task", type=int, default=10, help="successful demos per task")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (0: in-process)")
    p.add_argument("--ray-address", default="",
                   help="'' = local processes; 'local' = a local Ray cluster of --workers CPUs; "
                        "'auto' or host:port = a running Ray cluster (one CPU per task)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--noise-std", type=float, default=0.0,
                   help="Gaussian noise std on the 6 motion dims of every action")
    p.add_argument("--image-size", type=int, default=128, help="square camera resolution")
    p.add_argument("--horizon", type=int, default=8, help="actions per expert chunk")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--max-attempts-factor", type=int, default=3,
                   help="attempts allowed per wanted demo before giving up on a task")
    p.add_argument("--first-init-state", type=int, default=10,
                   help="first official init state to record from (0-9 are left for evaluation)")
    a = p.parse_args(argv)
    from prevla_sim.libero_env import suite_num_tasks

    record_demos(a.suite, parse_tasks(a.tasks, suite_num_tasks(a.suite)), a.demos_per_task,
                 a.out, a.workers, horizon=a.horizon, noise_std=a.noise_std,
                 image_size=a.image_size, seed=a.seed, max_attempts_factor=a.max_attempts_factor,
                 first_init_state=a.first_init_state, ray_address=a.ray_address)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
