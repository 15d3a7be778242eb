"""What ``prevla eval`` reports: paired comparisons between arms, per-arm totals with their
intervals and scheduler figures, the Markdown table and the PNG (:mod:`prevla_training.evaluate`
runs the episodes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prevla_training.stats import episodes_by_key, paired_comparison, wilson_interval

#: The arms whose picks go through the verifier (their settings are shown above the table).
VERIFIER_ARMS = ("verifier", "verifier_advantage")


def paired(episodes: list[dict], arms: tuple[str, ...]) -> dict:
    """Every arm against the policy alone and against the consensus pick, episode by episode
    (pairs: same task, init state and seed cycle): ``stats.paired_comparison``."""
    out = {}
    for base in ("policy", "consensus"):
        if base not in arms:
            continue
        ref = episodes_by_key(episodes, base)
        for arm in arms:
            if arm in (base, "policy"):
                continue
            eps = episodes_by_key(episodes, arm)
            keys = sorted(set(eps) & set(ref))
            if keys:
                out[f"{arm} vs {base}"] = paired_comparison(
                    [eps[k]["success"] for k in keys], [ref[k]["success"] for k in keys],
                    [eps[k]["steps"] for k in keys], [ref[k]["steps"] for k in keys])
    return out


def scheduler_stats(eps: list[dict]) -> dict:
    """Verification ms p50/p99, samples per decision, resample / fallback / hold rates."""
    v = [m for e in eps for m in e.get("verify_ms", [])]
    if not v:
        return {}
    rounds = [r for e in eps for r in e["rounds"]]
    outcome = [o for e in eps for o in e["outcome"]]
    return dict(verify_ms_p50=float(np.percentile(v, 50)), verify_ms_p99=float(np.percentile(v, 99)),
                samples_per_decision=float(np.mean([n for e in eps for n in e["samples"]])),
                resample_rate=float(np.mean([r > 1 for r in rounds])),
                fallback_rate=float(np.mean([o == "fallback_best" for o in outcome])),
                hold_rate=float(np.mean([o == "hold" for o in outcome])))


def _scheduler_cells(stats: dict) -> str:
    """The verify ms / samples / resample / fallback / hold cells of a table row."""
    if "verify_ms_p50" not in stats:
        return "- | - | - | - | - |"
    return (f"{stats['verify_ms_p50']:.1f}/{stats['verify_ms_p99']:.1f} | {stats['samples_per_decision']:.1f} | "
            f"{100 * stats['resample_rate']:.0f}% | {100 * stats['fallback_rate']:.0f}% | "
            f"{100 * stats['hold_rate']:.0f}% |")


def overall(result: dict, arm: str) -> dict:
    """One arm over all its episodes: 95% CI of success, mean steps of successes, scheduler stats."""
    eps = [e for e in result["episodes"] if e["arm"] == arm]
    good = [e["steps"] for e in eps if e["success"]]
    return dict(ci95=list(wilson_interval(len(good), len(eps))),
                mean_steps_success=float(np.mean(good)) if good else None, **scheduler_stats(eps))


def plot(result: dict, path: str | Path) -> None:
    """PNG: success rate (95% CI) per task and overall, and mean steps of successes, per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(result["success_rate"])
    tasks = sorted({r["task_id"] for r in result["tasks"]})
    fig, ax = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / len(arms)
    for a, arm in enumerate(arms):
        rows = [next(r for r in result["tasks"] if r["task_id"] == t and r["arm"] == arm) for t in tasks]
        x = np.arange(len(tasks) + 1) + a * width
        sr = [r["success_rate"] for r in rows] + [result["success_rate"][arm]]
        ci = [r["ci95"] for r in rows] + [overall(result, arm)["ci95"]]
        lo, hi = [c[0] for c in ci], [c[1] for c in ci]
        ax[0].bar(x, sr, width, yerr=[np.subtract(sr, lo), np.subtract(hi, sr)], capsize=2, label=arm)
        steps = [r["mean_steps_success"] or 0 for r in rows]
        ax[1].bar(np.arange(len(tasks)) + a * width, steps, width, label=arm)
    ax[0].set_xticks(np.arange(len(tasks) + 1) + 0.4 - width / 2, [str(t) for t in tasks] + ["all"])
    ax[0].set_ylabel("success rate (95% CI)"), ax[0].set_xlabel("task"), ax[0].legend()
    ax[1].set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, [str(t) for t in tasks])
    ax[1].set_ylabel("mean steps of successful episodes"), ax[1].set_xlabel("task")
    fig.suptitle(f"{result['policy']} on {result['suite']}")
    fig.tight_layout(), fig.savefig(path, dpi=100), plt.close(fig)


def format_table(result: dict) -> str:
    """Markdown table: one row per (task, arm), then the suite average per arm."""
    c = result["config"]
    lines = [f"### {result['policy']} on {result['suite']} (K={c['num_candidates']}, "
             f"H={c['horizon']}, T={c['temperature']}, {c['episodes_per_task']} episodes/task "
             f"from init {c['init_start']}"
             + (f", {c['init_count']} init states cycled with new seeds" if c.get("init_count") else "")
             + ")", ""]
    if set(VERIFIER_ARMS) & set(c["arms"]):
        lines += [f"verifier arm: {c['verifier'] or 'zoo default'} ({c['backend']}), "
                  f"tau {c['threshold'] or 'calibrated'}, ranking {c['ranking']}"
                  + (f" (margin {c['advantage_margin']:g})" if c.get("advantage_margin") else "") + ", "
                  f"{c['max_rounds']} rounds / {c['max_samples']} samples"
                  + (f" / {c['max_ms']:g} ms" if c.get("max_ms") else "")
                  + f", temperature step {c.get('temperature_step', 0.5)}, fallback P(safe) >= "
                  f"{c.get('fallback_min_p_safe', 0.5)}" + (", overlap" if c.get("overlap") else ""), ""]
    lines += ["| task | arm | success | 95% CI | steps (success) | decisions/ep | invalid "
              "| decision ms p50/p99 | verify ms p50/p99 | samples/decision | resample | fallback | hold |",
              "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["tasks"]:
        steps = "-" if r["mean_steps_success"] is None else f"{r['mean_steps_success']:.0f}"
        lines.append(f"| {r['task_id']} | {r['arm']} | {r['successes']}/{r['episodes']} "
                     f"({100 * r['success_rate']:.0f}%) | [{100 * r['ci95'][0]:.0f}, "
                     f"{100 * r['ci95'][1]:.0f}]% | {steps} | {r['decisions_per_episode']:.1f} "
                     f"| {r['invalid_picks']} | {r['policy_ms_p50']:.1f}/{r['policy_ms_p99']:.1f} | "
                     + _scheduler_cells(r))
    for arm, sr in result["success_rate"].items():
        o = overall(result, arm)
        steps = "-" if o["mean_steps_success"] is None else f"{o['mean_steps_success']:.0f}"
        lines.append(f"| **all** | {arm} | **{100 * sr:.1f}%** | [{100 * o['ci95'][0]:.0f}, {100 * o['ci95'][1]:.0f}]% "
                     f"| {steps} | | | | {_scheduler_cells(o)}")
    if result.get("paired"):
        lines += ["", "| paired (same task, init state, seed) | pairs | difference | 95% CI | A only / B only "
                  "| McNemar p | steps A - B |", "|---|---:|---:|---|---:|---:|---:|"]
        for name, r in result["paired"].items():
            lines.append(f"| {name} | {r['pairs']} | {100 * r['diff']:+.1f} pts | [{100 * r['diff_ci95'][0]:+.1f}, "
                         f"{100 * r['diff_ci95'][1]:+.1f}] | {r['a_only']} / {r['b_only']} | {r['p_value']:.3g} | "
                         f"{r['steps_diff']:+.1f} |")
    cached = f" ({result['jobs_cached']} of {result['jobs']} (task, arm) jobs from {c['out']}'s cache" \
        + (f", {result['jobs_reused']} of them taken from {c['reuse']}" if result.get("jobs_reused") else "") + ")" \
        if result.get("jobs_cached") else ""
    lines.append(f"\nwall time {result['wall_time_s']:.0f} s{cached}")
    return "\n".join(lines + _video_lines(result))


def _video_lines(result: dict) -> list[str]:
    """The episode videos (``--videos``), one row each, as links relative to the JSON."""
    eps = [e for e in result["episodes"] if e.get("video")]
    if not eps:
        return []
    lines = ["", f"episode videos ({result['config'].get('videos')}): {len(eps)}", "",
             "| task | arm | init | cycle | success | steps | video |", "|---:|---|---:|---:|---|---:|---|"]
    return lines + [f"| {e['task_id']} | {e['arm']} | {e['init_state']} | {e['cycle']} | "
                    f"{'yes' if e['success'] else 'no'} | {e['steps']} | [{e['video']}]({e['video']}) |"
                    for e in eps]
