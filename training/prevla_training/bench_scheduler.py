"""Preemptive resampling: decision time with and without ``overlap`` (real VLA + verifier).

    python -m prevla_training.bench_scheduler [--backend auto] [--k 8] [--rounds 3] \
        [--decisions 40] [--threads 1] [--out outputs/bench/scheduler.json]

Every decision runs :meth:`Scheduler.run` on one of the zoo's recorded LIBERO observations with
the zoo VLA sampling K candidates per round and the zoo verifier scoring them. The threshold
tau is set near 1 (0.9999), so no candidate passes and every decision spends its whole
``max_rounds`` budget: the case resampling exists for, and the one overlap can speed up. The
baseline is the same decision with ``overlap`` off, timed in alternating blocks in the same run.
Reported per setting: decision ms p50 / p90 / mean, ms per round, and the samples drawn but
dropped (a speculative round that was not needed; with every round rejected there are none).

On a CPU the policy and the verifier share the cores, so the overlap buys at most the scoring
time per round and can lose it to contention; ``--threads`` sets torch / ONNX Runtime threads
per model. Prints a markdown table, writes JSON + .md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from prevla_training.cli_args import write_report


def recorded_observations(path: str = ""):
    """The zoo's recorded LIBERO observations as runtime ``Observation`` objects."""
    from scipy.spatial.transform import Rotation

    from prevla_models import zoo
    from prevla_ros.runtime.types import Observation
    from prevla_training.export import RECORDED

    data = np.load(path or zoo.zoo_dir() / RECORDED)
    out = []
    for i in range(len(data["images"])):
        p = data["proprio"][i]
        out.append(Observation(
            images={"agentview": data["images"][i, 0], "wrist": data["images"][i, 1]},
            joint_positions=p[8:15], gripper_qpos=p[6:8], eef_pos=p[:3],
            eef_quat_xyzw=Rotation.from_rotvec(p[3:6]).as_quat().astype(np.float32),
            instruction=str(data["instructions"][i]), stamp_ns=i))
    return out


def bench(backend: str = "auto", k: int = 8, rounds: int = 3, decisions: int = 40,
          threads: int = 1, block: int = 5) -> dict:
    """Time ``decisions`` decisions per setting (overlap off / on), alternating blocks."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _bench(backend, k, rounds, decisions, threads, block)
    finally:
        torch.set_num_threads(before)  # process-global: restored for the caller


def _bench(backend: str, k: int, rounds: int, decisions: int, threads: int, block: int) -> dict:
    from prevla_models.verifier_scorer import VerifierScorer
    from prevla_models.vla_policy import VLAPolicy
    from prevla_ros.runtime.engines import load_model
    from prevla_ros.runtime.scheduler import Scheduler, SchedulerConfig
    from prevla_training.bench_engines import machine_info

    vla = load_model("vla", "", backend, "cpu", threads)
    ver = load_model("verifier", "", backend, "cpu", threads)
    policy = VLAPolicy(vla.runner, seed=0)
    scorer = VerifierScorer(ver.runner)
    observations = recorded_observations()
    settings = {name: Scheduler(SchedulerConfig(verifier="model", threshold=0.9999, max_rounds=rounds,
                                                max_samples=rounds * k, temperature_step=0.0,
                                                fallback_min_p_safe=0.0, overlap=name == "overlap"),
                                scorer) for name in ("sequential", "overlap")}
    times: dict[str, list[float]] = {n: [] for n in settings}
    per_round: dict[str, list[float]] = {n: [] for n in settings}
    dropped: dict[str, int] = {n: 0 for n in settings}
    sample_ms, score_ms = [], []
    for obs in observations[:2]:  # warm-up, and the two costs alone
        t = time.perf_counter()
        cands = policy.sample(obs, k, 1.0)
        sample_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        scorer.score(obs, cands)
        score_ms.append((time.perf_counter() - t) * 1e3)
        for s in settings.values():
            s.run(lambda n, temp, o=obs: policy.sample(o, n, temp), obs, k)
    i = 0
    while min(len(v) for v in times.values()) < decisions:
        for name, scheduler in settings.items():
            for _ in range(block):
                obs = observations[i % len(observations)]
                i += 1
                d = scheduler.run(lambda n, temp, o=obs: policy.sample(o, n, temp), obs, k)
                times[name].append(d.total_ms)
                per_round[name].append(d.total_ms / d.rounds)
                dropped[name] += d.dropped_samples
    rows = []
    for name in settings:
        t = np.asarray(times[name][:decisions])
        rows.append(dict(setting=name, decisions=len(t), p50_ms=float(np.percentile(t, 50)),
                         p90_ms=float(np.percentile(t, 90)), mean_ms=float(t.mean()),
                         ms_per_round=float(np.median(per_round[name][:decisions])),
                         dropped_samples=dropped[name]))
    base = rows[0]["p50_ms"]
    for r in rows:
        r["speedup_p50"] = base / r["p50_ms"]
    return dict(machine=machine_info("cpu"), backend={"vla": vla.backend, "verifier": ver.backend},
                k=k, rounds=rounds, threads=threads, sample_ms_p50=float(np.median(sample_ms)),
                score_ms_p50=float(np.median(score_ms)), rows=rows)


def table(result: dict) -> str:
    lines = [f"### Preemptive resampling: {result['rounds']} rounds of K = {result['k']} per decision, "
             f"every round rejected (VLA {result['backend']['vla']}, verifier "
             f"{result['backend']['verifier']}, {result['threads']} thread(s), {result['machine']['cpu']})",
             "", f"one round alone: sample {result['sample_ms_p50']:.1f} ms, score "
             f"{result['score_ms_p50']:.1f} ms (warm-up medians)", "",
             "| setting | decisions | decision ms p50 | p90 | mean | ms / round | dropped samples | speed-up (p50) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['setting']} | {r['decisions']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['mean_ms']:.1f} | {r['ms_per_round']:.1f} | {r['dropped_samples']} | "
                     f"{r['speedup_p50']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_scheduler", description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | torch (both models)")
    p.add_argument("--k", type=int, default=8, help="candidates per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per decision (all rejected)")
    p.add_argument("--decisions", type=int, default=40, help="timed decisions per setting")
    p.add_argument("--threads", type=int, default=1, help="threads per model")
    p.add_argument("--out", default="outputs/bench/scheduler.json", help="JSON path (.md next to it)")
    a = p.parse_args(argv)
    for name, ok in (("k", a.k >= 1), ("rounds", a.rounds >= 2), ("decisions", a.decisions >= 1),
                     ("threads", a.threads >= 1)):
        if not ok:
            p.error(f"--{name}: out of range ({getattr(a, name)})")
    result = bench(a.backend, a.k, a.rounds, a.decisions, a.threads)
    write_report(a.out, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
