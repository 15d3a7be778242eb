"""D-VLA throughput: asynchronous lanes against the lock-step baseline, same actors, one run.

    python -m prevla_training.bench_rl [--updates 6] [--runners 1,2] [--out outputs/bench/rl.json] \
        [prevla rl options, e.g. --tasks 0-9 --batch-size 64]

For every runner count, the same :class:`~prevla_training.rl.driver.Run` (same actors, same
resources on the same Ray cluster) trains ``--updates`` updates in ``sync`` and in ``async``
mode from the same starting policy. Measured per arm, from the actors' own records:

* environment steps per second, over the span from the first to the last decision (actor
  start-up and LIBERO construction excluded; both arms pay them alike);
* learner samples (decisions used in updates) per second over the run's wall clock;
* success per episode against environment steps and against wall clock (PNG);
* plane decoupling (async): runner throughput while a weight push is in flight (from the
  learner's push to the last server's receipt) against the rest of the run;
* the same seen from the servers, free of what the runners do meanwhile (LIBERO resets): the
  time each weight swap takes, and the latency runners saw for the requests in flight during
  a swap of their server against the others;
* dropped stale decisions (policy lag over ``max_lag``).

Prints the table, writes JSON + .md + PNG. Reported, never asserted: the goal is async >= 2x
the sync throughput with no loss of success per environment step.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import asdict, replace

import numpy as np

from prevla_training.cli_args import add_config_args, build_config, write_report
from prevla_training.rl.config import RLConfig
from prevla_training.rl.driver import UNUSED, Run, start_ray
from prevla_training.stats import wilson_interval


def rate(timelines: list[list]) -> tuple[float, float, int]:
    """(env steps per second, span s, steps) over all runners' (time, cumulative steps) records."""
    pts = [p for tl in timelines for p in tl]
    if len(pts) < 2:
        return 0.0, 0.0, 0
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    steps = sum(tl[-1][1] - tl[0][1] for tl in timelines if tl)
    return (steps / (t1 - t0) if t1 > t0 else 0.0), t1 - t0, steps


def push_windows(push_times: list, arrivals: list[list]) -> list[tuple[float, float]]:
    """[learner push start, last server receipt] of each version pushed after the first."""
    last: dict[int, float] = {}
    for server in arrivals:
        for version, t in server:
            last[version] = max(last.get(version, 0.0), t)
    return [(start, last[v]) for v, (start, _) in enumerate(push_times, start=1) if v in last]


def stall_ratio(timelines: list[list], windows: list[tuple[float, float]]) -> dict:
    """Runner steps/s over the decision intervals a push window touches vs the others (1.0 =
    pushes cost sampling nothing)."""
    inside = outside = t_in = t_out = 0.0
    for tl in timelines:
        for (ta, sa), (tb, sb) in zip(tl, tl[1:]):  # a push is short: an interval it touches counts
            if any(ta <= b and a <= tb for a, b in windows):
                inside, t_in = inside + sb - sa, t_in + tb - ta
            else:
                outside, t_out = outside + sb - sa, t_out + tb - ta
    r_in = inside / t_in if t_in else float("nan")
    r_out = outside / t_out if t_out else float("nan")
    return dict(steps_per_s_during_push=r_in, steps_per_s_otherwise=r_out, time_in_push_s=t_in, pushes=len(windows),
                push_s_mean=float(np.mean([b - a for a, b in windows])) if windows else float("nan"),
                ratio=r_in / r_out if r_out else float("nan"))


def swap_cost(swap_logs: list[list], request_logs: list[list]) -> dict:
    """What weight swaps cost sampling, seen by each server: its swaps' (start, s) and its
    requests' (end, latency s, as the runner waited: queue + batch). Requests in flight during
    a swap of their server against the others (latency ratio 1.0 = swaps cost nothing)."""
    swaps = np.array([d for log in swap_logs for _, d in log])
    hit, other = [], []
    for swap_log, requests in zip(swap_logs, request_logs):
        for end, latency in requests:
            touched = any(end - latency <= s + d and s <= end for s, d in swap_log)
            (hit if touched else other).append(latency)

    def p50_ms(x: list | np.ndarray) -> float:
        return float(np.median(x) * 1000) if len(x) else math.nan
    return dict(swaps=len(swaps), swap_ms_p50=p50_ms(swaps),
                swap_ms_max=float(swaps.max() * 1000) if len(swaps) else math.nan,
                requests=len(hit) + len(other), requests_during_swap=len(hit),
                latency_ms_during_swap_p50=p50_ms(hit), latency_ms_otherwise_p50=p50_ms(other),
                ratio=p50_ms(hit) / p50_ms(other) if hit and other else math.nan)


def run_arm(cfg: RLConfig) -> dict:
    run = Run(cfg)
    try:
        summary = run.train()
        raw = run.raw
    finally:
        run.shutdown()
    sps, span, steps = rate(raw["timelines"])
    eps = sorted(raw["episodes"])
    succ = [e[2] for e in eps]
    lo, hi = wilson_interval(sum(succ), len(succ)) if succ else (math.nan, math.nan)
    windows = push_windows(raw["push_times"], raw["arrivals"])
    return dict(mode=cfg.mode, runners=cfg.runners, env_steps_per_s=sps, span_s=span, env_steps=steps,
                learner_decisions_per_s=summary["learner_decisions_per_s"], wall_s=summary["wall_s"],
                updates=summary["learner"]["updates"], dropped_stale=summary["learner"]["dropped_stale"],
                episodes=len(succ), success=float(np.mean(succ)) if succ else math.nan, success_ci=[lo, hi],
                ring_blocked_s=summary["ring"].get("blocked_s"), push=stall_ratio(raw["timelines"], windows),
                swap=swap_cost(raw["swap_logs"], raw["request_logs"]),
                curve=[(t - eps[0][0], n, s) for t, n, s, *_ in eps])


def format_table(result: dict) -> str:
    rows = ["| runners | mode | env steps/s | learner decisions/s | episodes | success [95% CI] | dropped stale "
            "| steps/s during push / otherwise |", "|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        lo, hi = a["success_ci"]
        rows.append(f"| {a['runners']} | {a['mode']} | {a['env_steps_per_s']:.1f} | {a['learner_decisions_per_s']:.2f} "
                    f"| {a['episodes']} | {a['success']:.2f} [{lo:.2f}, {hi:.2f}] | {a['dropped_stale']} "
                    f"| {a['push']['ratio']:.2f} |")
    rows += ["", "| runners | mode | swaps | swap ms p50 / max | requests (during a swap) "
             "| request ms p50 during a swap / otherwise | ratio |", "|---|---|---:|---|---|---|---:|"]
    for a in result["arms"]:
        w = a["swap"]
        rows.append(f"| {a['runners']} | {a['mode']} | {w['swaps']} | {w['swap_ms_p50']:.1f} / {w['swap_ms_max']:.1f} "
                    f"| {w['requests']} ({w['requests_during_swap']}) | {w['latency_ms_during_swap_p50']:.1f} / "
                    f"{w['latency_ms_otherwise_p50']:.1f} | {w['ratio']:.2f} |")
    rows += ["", "| runners | async / sync env steps/s | async / sync learner decisions/s |", "|---|---|---|"]
    for r, ratio in result["ratios"].items():
        rows.append(f"| {r} | {ratio['env_steps']:.2f}x | {ratio['learner']:.2f}x |")
    return "\n".join(rows)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for a in result["arms"]:
        if not a["curve"]:
            continue
        t, n, s = (np.array(x, dtype=float) for x in zip(*a["curve"]))
        mean = np.cumsum(s) / np.arange(1, len(s) + 1)
        label = f"{a['mode']}, {a['runners']} runner(s)"
        axes[0].plot(np.cumsum(n), mean, label=label)
        axes[1].plot(t, mean, label=label)
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall clock (s)")
    for ax in axes:
        ax.set_ylabel("success (running mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_rl", description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=6, help="learner updates per arm")
    p.add_argument("--runner-counts", default="1,2", help="runner counts to compare, e.g. '1,2,4'")
    p.add_argument("--out", default="outputs/bench/rl.json")
    add_config_args(p, RLConfig, skip=(*UNUSED, "steps", "mode", "runners", "out_dir", "resume"))
    args = vars(p.parse_args(argv))
    updates, counts, out = args.pop("updates"), [int(x) for x in args.pop("runner_counts").split(",")], args.pop("out")
    base = build_config(p, RLConfig, args)
    started = start_ray(base.address)
    arms = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in counts:
                for mode in ("sync", "async"):
                    cfg = replace(base, mode=mode, runners=r, steps=updates, out_dir=f"{tmp}/{mode}{r}")
                    arms.append(run_arm(cfg))
                    print(f"{mode} x{r}: {arms[-1]['env_steps_per_s']:.1f} env steps/s", flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    by = {(a["runners"], a["mode"]): a for a in arms}
    ratios = {str(r): dict(env_steps=by[r, "async"]["env_steps_per_s"] / max(by[r, "sync"]["env_steps_per_s"], 1e-9),
                           learner=by[r, "async"]["learner_decisions_per_s"]
                           / max(by[r, "sync"]["learner_decisions_per_s"], 1e-9)) for r in counts}
    result = dict(arms=arms, ratios=ratios, updates=updates, config=asdict(base))
    write_report(out, result, format_table(result))
    plot(result, out.rsplit(".", 1)[0] + ".png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
