"""Closed-loop LIBERO evaluation of any ``Policy`` (ROS-free).

reset(init) -> policy.reset() -> loop { obs = env.observe(); chunks = policy.sample(obs, K, T);
pick one per arm; validate (invalid -> hold); execute } until success or the step budget.

    prevla eval --suite libero_spatial --tasks 0-9 --episodes-per-task 10 \
        --policy scripted_expert --arms policy,random --workers 2 --out outputs/eval.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from prevla_ros.runtime.scheduler_config import SchedulerConfig
from prevla_ros.runtime.settings import build, flatten, section, settings
from prevla_training.cli_args import add_config_args, build_config
from prevla_training.eval_report import VERIFIER_ARMS, format_table, paired, plot, scheduler_stats
from prevla_training.jobs import map_jobs
from prevla_training.stats import wilson_interval

#: Selection arms, all over the same K candidates of the same seeds (equal compute).
ARMS = ("policy", "random", "consensus", *VERIFIER_ARMS)
VIDEOS = ("all", "failures", "none")


@dataclass
class EvalConfig:
    """What to evaluate, and how."""

    suite: str = field(default="libero_spatial", metadata={"help": "LIBERO suite"})
    task_ids: list[int] = field(default_factory=list, metadata={"help": "tasks; empty = all"})
    episodes_per_task: int = field(default=10, metadata={"help": "episodes per task and arm"})
    init_start: int = field(default=0, metadata={"help": "official init state of episode 0"})
    init_count: int = field(default=0, metadata={
        "help": "init states used (init_start .. + init_count - 1), cycled with a new policy seed "
                "per cycle; 0 = every init state of the task"})
    policy: str = field(default="scripted_expert", metadata={
        "help": "scripted_expert | vla (zoo default) | vla:<file or zoo:NAME> | remote:<ws url>"})
    arms: tuple[str, ...] = field(default=("policy",), metadata={
        "help": "policy = candidate 0 of K; random = a uniformly random candidate (seeded); "
                "consensus = the medoid of the K (training-free); verifier = the scheduler with "
                "the learned verifier and its ranking (resampling, fallback); verifier_advantage "
                "= the same with ranking advantage"})
    verifier: str = field(default="", metadata={
        "help": "verifier checkpoint of the verifier arm: '' = zoo default, zoo:NAME or a file"})
    backend: str = field(default="auto", metadata={
        "help": "VLA and verifier backend: auto | tensorrt | onnxruntime | torch (fallback chain)"})
    num_candidates: int = field(default=1, metadata={"help": "K candidates per decision"})
    horizon: int = field(default=8, metadata={"help": "H actions per chunk"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    noise_std: float = field(default=0.0, metadata={"help": "scripted-expert noise std"})
    execute_steps: int = field(default=0, metadata={"help": "actions executed per chunk; 0 = all"})
    seed: int = field(default=0, metadata={"help": "seed of policy sampling and arm picks"})
    workers: int = field(default=2, metadata={"help": "processes; 0 = in-process"})
    ray_address: str = field(default="", metadata={
        "help": "'' = local processes; 'local' = a local Ray cluster of --workers CPUs; 'auto' or "
                "host:port = a running Ray cluster (one CPU per task and arm)"})
    render: str = field(default="auto", metadata={"help": "auto | on | off (auto: not for expert)"})
    out: str | None = field(default=None, metadata={"help": "JSON path (a .md table next to it)"})
    reuse: str = field(default="", metadata={
        "help": "a previous run's --out JSON: its (task, arm) jobs whose result-relevant settings "
                "equal this run's are taken from it, not run again (needs --out); models are compared "
                "by their spec (zoo:NAME, path), so reuse only reports made with the same zoo"})
    videos: str = field(default="failures", metadata={
        "help": "all | failures | none: an MP4 per episode (agent view at each decision, the arm's "
                "pick or verdict) under <out>.videos/; needs rendered frames (a learned policy or "
                "--render on) and --out"})
    scheduler: SchedulerConfig = section(
        SchedulerConfig, "the verifier arm's decision settings (verifier_node's, same defaults)",
        fixed={"verifier": "model", "mode": "execute"},
        hidden=("hold_horizon", "imagine_threshold", "imagine_max_candidates"))

    def __post_init__(self) -> None:
        self.arms = tuple(self.arms)
        self.task_ids = [int(t) for t in self.task_ids]
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ValueError(f"arms: expected a non-empty subset of {ARMS}, got {self.arms}")
        for name, lo in (("episodes_per_task", 1), ("num_candidates", 1), ("horizon", 1),
                         ("init_start", 0), ("init_count", 0), ("execute_steps", 0), ("workers", 0)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name}: expected >= {lo}, got {getattr(self, name)}")
        if self.temperature < 0 or self.noise_std < 0:
            raise ValueError(f"temperature/noise_std: expected >= 0, got "
                             f"{self.temperature}/{self.noise_std}")
        from prevla_ros.runtime.engines import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {self.backend!r}")
        if self.render not in ("auto", "on", "off"):
            raise ValueError(f"render: expected auto|on|off, got {self.render!r}")
        if self.videos not in VIDEOS:
            raise ValueError(f"videos: expected one of {VIDEOS}, got {self.videos!r}")
        parse_policy_spec(self.policy)
        if self.reuse and not self.out:
            raise ValueError("reuse: needs --out (reused jobs go to its job cache)")
        if set(VERIFIER_ARMS) & set(self.arms) and not self.policy.startswith(("vla", "remote")):
            raise ValueError("arms: the verifier arm scores learned-policy candidates; "
                             f"use --policy vla (got {self.policy!r})")

    @property
    def renders(self) -> bool:
        """Whether episodes render camera frames (``render``; auto: all but the expert)."""
        return self.render == "on" or (self.render == "auto" and self.policy != "scripted_expert")

    def scheduler_config(self, arm: str = "verifier") -> SchedulerConfig:
        """A verifier arm's decision settings; a hold lasts one chunk of the policy's."""
        ranking = "advantage" if arm == "verifier_advantage" else self.scheduler.ranking
        return replace(self.scheduler, hold_horizon=self.horizon, ranking=ranking)

    def episode(self, e: int, n_init: int) -> tuple[int, int]:
        """Episode e of a task -> (init state, cycle): init states cycle with a new seed."""
        count = min(self.init_count or n_init, n_init)
        return (self.init_start + e % count) % n_init, e // count


def episode_seed(seed: int, task_id: int, init: int, cycle: int) -> int:
    """The policy's sampling seed of one episode: every arm gets the same (paired arms)."""
    return int(np.random.SeedSequence([seed, task_id, init, cycle]).generate_state(1)[0] & 0x7FFFFFFF)


def parse_policy_spec(spec: str) -> tuple[str, str]:
    """Split a policy spec into (kind, argument); ValueError naming the expected forms."""
    if spec in ("scripted_expert", "vla"):
        return spec, ""
    kind, sep, arg = spec.partition(":")
    if kind in ("vla", "remote") and sep and arg:
        return kind, arg
    raise ValueError(f"policy: expected 'scripted_expert', 'vla', 'vla:<checkpoint>' or "
                     f"'remote:<ws url>', got {spec!r}")


def _build_policy(cfg: EvalConfig, suite: str, task_id: int):
    from prevla_sim.expert_policy import ScriptedExpertPolicy, build_policy

    kind, arg = parse_policy_spec(cfg.policy)
    # A per-task seed so tasks evaluated in parallel draw independent expert noise.
    seed = cfg.seed * 1009 + task_id if kind == "scripted_expert" else cfg.seed
    policy = build_policy(kind, cfg.horizon, cfg.noise_std, seed, backend=cfg.backend,
                          checkpoint=arg if kind == "vla" else "",
                          remote_url=arg if kind == "remote" else "")
    if isinstance(policy, ScriptedExpertPolicy):
        policy.set_task(suite, task_id)
    return policy


def _build_scheduler(cfg: EvalConfig, arm: str):
    """The runtime's scheduler with the learned verifier (a verifier arm)."""
    from prevla_models.verifier_scorer import VerifierScorer
    from prevla_ros.runtime.engines import load_model
    from prevla_ros.runtime.scheduler import Scheduler

    scorer = VerifierScorer(load_model("verifier", cfg.verifier, cfg.backend).runner)
    return Scheduler(cfg.scheduler_config(arm), scorer)


def run_task_arm(cfg_dict: dict, suite: str, task_id: int, arm: str) -> list[dict]:
    """Worker: all episodes of one (task, arm) on one env; picklable arguments only."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from prevla_ros.runtime.chunks import chunk_problem, hold_chunk, medoid_index
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig, num_init_states
    from prevla_sim.video import EpisodeVideo

    cfg = build(EvalConfig, cfg_dict)
    if cfg.workers > 0 and cfg.policy.startswith("vla"):  # share the cores, do not oversubscribe
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    policy = _build_policy(cfg, suite, task_id)
    scheduler = _build_scheduler(cfg, arm) if arm in VERIFIER_ARMS else None
    n_init = num_init_states(suite, task_id)
    video_dir = video_root(cfg) if cfg.renders else None
    env = LiberoEnv(LiberoEnvConfig(suite=suite, task_id=task_id,
                                    init_state=cfg.init_start % n_init, render=cfg.renders))
    results = []
    try:
        for e in range(cfg.episodes_per_task):
            init, cycle = cfg.episode(e, n_init)
            env.reset(init)
            if cfg.policy.startswith("vla"):
                policy.seed = episode_seed(cfg.seed, task_id, init, cycle)
            rng = np.random.default_rng([cfg.seed, task_id, init, cycle])  # the random arm's picks
            policy.reset()
            done = success = False
            decisions = invalid = 0
            gripper = -1.0
            ms: list[float] = []
            stats: dict[str, list] = {"verify_ms": [], "samples": [], "rounds": [], "outcome": []}
            video = EpisodeVideo([f"{suite}/{task_id} init {init} c{cycle}", f"arm {arm}"]) \
                if video_dir else None
            while not done:
                obs = env.observe()
                t0 = time.perf_counter()
                if scheduler is not None:
                    d = scheduler.run(lambda n, t: policy.sample(obs, n, t), obs, cfg.num_candidates,
                                      cfg.temperature, last_gripper=gripper)
                    actions = d.chunk.actions
                    for key, v in (("verify_ms", round(d.verify_ms, 3)), ("samples", d.samples_drawn),
                                   ("rounds", d.rounds), ("outcome", d.outcome)):
                        stats[key].append(v)
                    pick = d
                else:
                    chunks = np.asarray(policy.sample(obs, cfg.num_candidates, cfg.temperature))
                    if not len(chunks):
                        actions, pick = None, (-1, 0)
                    else:
                        i = {"policy": 0, "consensus": medoid_index(chunks)}.get(arm)
                        pick = (int(rng.integers(len(chunks))) if i is None else i, len(chunks))
                        actions = chunks[pick[0]]
                ms.append(1000 * (time.perf_counter() - t0))
                held = actions is None or chunk_problem(actions) is not None
                if held:
                    invalid += 1
                    actions = hold_chunk(cfg.horizon, gripper).actions
                if video is not None and "agentview" in obs.images:
                    video.add_frame(decisions, obs.images["agentview"])
                    video.add_verdict(decisions, *_verdict(arm, pick, held))
                if cfg.execute_steps:
                    actions = actions[:cfg.execute_steps]
                decisions += 1
                for a in actions:
                    gripper = float(a[-1])
                    done, success = env.step(a)
                    if done:
                        break
            results.append(dict(task_id=task_id, arm=arm, init_state=init, cycle=cycle, success=bool(success),
                                steps=env.step_count, decisions=decisions, invalid_picks=invalid,
                                policy_ms=[round(m, 3) for m in ms], **stats))
            if video is not None and (cfg.videos == "all" or not success):
                path = video.write(video_dir / f"{suite}_task{task_id:02d}_{arm}_init{init:02d}_c{cycle}",
                                   ["SUCCESS" if success else "FAILURE", f"{env.step_count} steps"],
                                   bool(success), env.observe().images.get("agentview"))  # the end state
                if path is not None:
                    results[-1]["video"] = os.path.relpath(path, Path(cfg.out).resolve().parent)
    finally:
        env.close()
    return results


def video_root(cfg: EvalConfig) -> Path | None:
    """Where a run's episode videos go (``<out>.videos/``); None when none are written."""
    return Path(cfg.out).resolve().with_suffix(".videos") if cfg.out and cfg.videos != "none" else None


def _verdict(arm: str, pick, held: bool) -> tuple[list[str], str]:
    """A video's panel lines and colour: a verifier arm's :class:`Decision`, or another arm's
    (chosen index, candidates); ``held``: the pick was invalid and a hold chunk ran instead."""
    from prevla_sim.video import decision_lines

    if isinstance(pick, tuple):
        lines, outcome = decision_lines(arm, *pick), ""
    else:
        i = pick.accepted_index
        scores = (float(pick.safety_probs[i]), float(pick.advantages[i])) if i >= 0 else ()
        outcome = pick.outcome
        lines = decision_lines(outcome, i, len(pick.safety_probs), pick.rounds, *scores)
    return (lines + ["invalid chunk: held"], "hold") if held and outcome != "hold" else (lines, outcome)


def _job(args: tuple) -> tuple[tuple, list[dict]]:
    return args, run_task_arm(*args)


#: Settings that do not change a (task, arm) job's episodes.
_NOT_RESULT = ("arms", "task_ids", "workers", "ray_address", "out", "videos", "reuse")


class JobCache:
    """Finished (task, arm) jobs of a run, one JSON each in ``<out>.jobs/``: a rerun (after an
    interruption, or with more arms) skips a job whose result-relevant settings are unchanged
    (for the policy, random and consensus arms the verifier's settings are not relevant)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _path_and_key(self, job: tuple) -> tuple[Path, str]:
        flat, suite, task_id, arm = job
        skip = set(_NOT_RESULT)
        if arm not in VERIFIER_ARMS:
            skip |= {"verifier"} | set(settings(SchedulerConfig))
        key = json.dumps({k: v for k, v in sorted(flat.items()) if k not in skip}, default=str)
        return self.root / f"{suite}_task{task_id:02d}_{arm}.json", key

    def get(self, job: tuple) -> list[dict]:
        if self.root is None:
            return []
        path, key = self._path_and_key(job)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return doc["episodes"] if doc.get("key") == key else []

    def put(self, job: tuple, episodes: list[dict]) -> None:
        if self.root is None:
            return
        path, key = self._path_and_key(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "episodes": episodes}))
        os.replace(tmp, path)

    def adopt(self, report: dict, jobs: list[tuple]) -> int:
        """Cache each of ``jobs`` (not cached yet) that a previous run's report (``prevla eval --out``
        JSON) holds with the same result-relevant settings and a full set of episodes; returns how
        many. Episodes are functions of their settings, init state and seed, so a job adopted is the
        job that would run."""
        adopted = 0
        for job in jobs:
            flat, suite, task_id, arm = job
            if self.get(job) or report.get("suite") != suite:
                continue
            if self._path_and_key((report["config"], suite, task_id, arm))[1] != self._path_and_key(job)[1]:
                continue
            eps = [e for e in report["episodes"] if e["task_id"] == task_id and e["arm"] == arm]
            if len(eps) == flat["episodes_per_task"]:
                self.put(job, eps)
                adopted += 1
        return adopted


def evaluate(cfg: EvalConfig) -> dict:
    """Run every (task, arm), aggregate, print the table; write JSON + .md if ``cfg.out``."""
    from tqdm import tqdm

    from prevla_sim.libero_env import suite_instructions, suite_num_tasks

    task_ids = cfg.task_ids or list(range(suite_num_tasks(cfg.suite)))
    instructions = suite_instructions(cfg.suite)
    jobs = [(flatten(cfg), cfg.suite, t, arm) for t in task_ids for arm in cfg.arms]
    cache = JobCache(Path(cfg.out).with_suffix(".jobs") if cfg.out else None)
    reused = 0
    if cfg.reuse:
        reused = cache.adopt(json.loads(Path(cfg.reuse).read_text()), jobs)
        print(f"reuse: {reused} of {len(jobs)} (task, arm) jobs taken from {cfg.reuse}")
    episodes: list[dict] = [e for j in jobs for e in cache.get(j)]
    todo = [j for j in jobs if not cache.get(j)]
    if cfg.videos != "none" and not (cfg.out and cfg.renders):
        print(f"videos: none written ({'no --out' if not cfg.out else 'no rendered frames: --render on'})")
    t_start = time.perf_counter()
    with tqdm(total=len(todo) * cfg.episodes_per_task, desc=f"eval {cfg.suite}",
              unit="ep") as bar:
        for job, res in map_jobs(_job, todo, cfg.workers, cfg.ray_address):
            cache.put(job, res)
            episodes.extend(res)
            bar.update(len(res))
    wall = time.perf_counter() - t_start
    tasks = []
    for t in task_ids:
        for arm in cfg.arms:
            eps = [e for e in episodes if e["task_id"] == t and e["arm"] == arm]
            ok = sum(e["success"] for e in eps)
            lo, hi = wilson_interval(ok, len(eps))
            ms = [m for e in eps for m in e["policy_ms"]]
            good = [e["steps"] for e in eps if e["success"]]
            tasks.append(dict(
                task_id=t, arm=arm, instruction=instructions[t], episodes=len(eps),
                successes=ok, success_rate=ok / max(1, len(eps)), ci95=[lo, hi],
                mean_steps_success=float(np.mean(good)) if good else None,
                mean_steps=float(np.mean([e["steps"] for e in eps])) if eps else 0.0,
                decisions_per_episode=float(np.mean([e["decisions"] for e in eps])),
                invalid_picks=sum(e["invalid_picks"] for e in eps),
                policy_ms_p50=float(np.percentile(ms, 50)) if ms else 0.0,
                policy_ms_p99=float(np.percentile(ms, 99)) if ms else 0.0,
                **scheduler_stats(eps)))
    suite_avg = {arm: float(np.mean([r["success_rate"] for r in tasks if r["arm"] == arm]))
                 for arm in cfg.arms}
    result = dict(config=flatten(cfg), suite=cfg.suite, policy=cfg.policy,
                  success_rate=suite_avg, wall_time_s=round(wall, 1),
                  jobs_cached=len(jobs) - len(todo), jobs_reused=reused, jobs=len(jobs), tasks=tasks,
                  paired=paired(episodes, cfg.arms), episodes=episodes)
    table = format_table(result)
    print(table)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(table + "\n")
        plot(result, out.with_suffix(".png"))
    return result


def parse_tasks(text: str) -> list[int]:
    """'0-9' or '0,3,5' (or '' for all) -> task ids."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"tasks: expected e.g. '0-9' or '0,3', got {text!r}") from None
    return ids


def main(argv: list[str] | None = None) -> int:
    """``prevla eval``: one ``--field-name`` per :class:`EvalConfig` field (its default and
    help), ``--tasks`` and ``--arms`` as text."""
    p = argparse.ArgumentParser(prog="prevla eval", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="", help="'0-9' or '0,3' (default: all)")
    p.add_argument("--arms", default="policy", help="comma list of " + ",".join(ARMS))
    add_config_args(p, EvalConfig, skip=("task_ids", "arms"))  # + the verifier arm's settings
    a = vars(p.parse_args(argv))
    try:
        task_ids = parse_tasks(a.pop("tasks"))
    except ValueError as exc:
        p.error(str(exc))
    cfg = build_config(p, EvalConfig, dict(task_ids=task_ids,
                                           arms=tuple(filter(None, a.pop("arms").split(","))), **a))
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
