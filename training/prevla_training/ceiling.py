"""The ceiling: how much any chunk selector could gain with this policy (from ``prevla branch``).

At every branched decision, candidate i has M continuation outcomes (``mc/success``), whose
mean estimates Q_i = P(success | run candidate i, then the policy). Per decision:

* ``policy``: Q_0, the policy's own pick (candidate 0, what the policy-alone arm executes);
* ``random``: the mean of the Q_i (a uniformly random candidate);
* ``oracle``: the best candidate, **cross-fitted** so that the noise of M continuations does not
  inflate it: for each continuation j, pick the argmax of the other M - 1 continuations' means
  (ties to the lowest index, i.e. the policy's pick first) and score it on continuation j;
* ``oracle_in_sample``: max_i Q_i, the optimistic (winner's-curse) bound, for reference;
* ``differs``: whether the candidates' success rates differ beyond continuation noise: a
  permutation test of the between-candidate variance of the Q_i (outcomes shuffled across
  candidates), p < ``alpha``;
* ``q_spread_sd``: the standard deviation of the *true* Q over a decision's candidates, by the
  method of moments (observed variance of the Q_i minus the binomial noise M continuations
  leave in it), averaged over decisions: how much there is to select from.

Aggregates (mean and 95% interval over decisions) per task, per phase and overall, written as
JSON and a markdown table:

    prevla ceiling --data outputs/branches/libero_spatial --out docs/results/ceiling.json
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
from pathlib import Path

import numpy as np

from prevla_training.stats import wilson_interval


def permutation_p(success: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """P-value of 'all K candidates share one success rate' for a (K, M) 0/1 table: the share of
    label shuffles whose between-candidate variance of means is >= the observed one."""
    s = np.asarray(success, float)
    k, m = s.shape
    observed = s.mean(1).var()
    flat = s.ravel()
    perms = np.argsort(rng.random((n_perm, flat.size)), axis=1)
    null = flat[perms].reshape(n_perm, k, m).mean(2).var(1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))


def cross_fitted_oracle(success: np.ndarray) -> float:
    """Success of picking, for each held-out continuation j, the best candidate by the others."""
    s = np.asarray(success, float)
    k, m = s.shape
    if m < 2:
        raise ValueError("the cross-fitted oracle needs >= 2 continuations per candidate")
    total = s.sum(1)
    return float(np.mean([s[np.argmax((total - s[:, j]) / (m - 1)), j] for j in range(m)]))


def decision_stats(success: np.ndarray, rng: np.random.Generator, n_perm: int = 2000,
                   alpha: float = 0.05) -> dict:
    """The per-decision figures of the module docstring for one (K, M) 0/1 table."""
    s = np.asarray(success, float)
    q = s.mean(1)
    p = permutation_p(s, n_perm, rng) if 0 < s.mean() < 1 else 1.0
    k, m = s.shape
    # var over candidates of the estimates = var of the true Q + (K-1)/K * mean binomial noise;
    # q(1-q)/(M-1) is unbiased for Q(1-Q)/M, so their difference estimates the true spread
    noise = (k - 1) / k * float(np.mean(q * (1 - q))) / (m - 1) if m > 1 else math.nan
    return dict(policy=float(q[0]), random=float(q.mean()), oracle=cross_fitted_oracle(s),
                oracle_in_sample=float(q.max()), worst=float(q.min()), p_value=p, differs=bool(p < alpha),
                noise_var=noise, between_var=float(q.var()), signal_var=float(q.var()) - noise)


def load_branches(root: str | Path) -> list[dict]:
    """One row per branched decision: task, init, decision, step, phase, mc success (K, M).
    Decisions of episodes still being branched (``init<II>.parts/dNN.npz``) count too."""
    import h5py

    from prevla_sim.expert import PHASES
    from prevla_training.branching import load_part

    paths = sorted(glob.glob(os.path.join(str(root), "task*", "init*.hdf5")))
    parts = sorted(p for p in glob.glob(os.path.join(str(root), "task*", "init*.parts", "d*.npz"))
                   if not os.path.exists(os.path.dirname(p)[:-len(".parts")] + ".hdf5"))
    if not paths and not parts:
        raise FileNotFoundError(f"no branched episodes under {root} (run `prevla branch` first)")
    rows = []
    for p in parts:
        z = load_part(Path(p))
        if "mc_success" not in z:  # a value-bootstrap-only decision (no continuations)
            continue
        episode = Path(p).parent
        rows.append(dict(task_id=int(episode.parent.name[4:]), init_state=int(episode.name[4:6]),
                         decision=int(z["decision"]), step=int(z["step"]), phase=PHASES[int(z["phase"])],
                         success=z["mc_success"].astype(np.uint8), end_step=z["mc_end_step"],
                         rollout_success=None))
    for p in paths:
        with h5py.File(p, "r") as f:
            a = dict(f.attrs)
            if "mc" not in f:
                continue
            for n in range(len(f["step"])):
                rows.append(dict(task_id=int(a["task_id"]), init_state=int(a["init_state"]),
                                 decision=int(f["decision"][n]), step=int(f["step"][n]),
                                 phase=PHASES[int(f["phase"][n])], success=f["mc/success"][n].astype(np.uint8),
                                 end_step=f["mc/end_step"][n], rollout_success=bool(a["success"])))
    return rows


def _mean_ci(x: list[float], lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """[mean, low, high]: the normal 95% interval of a mean, clipped to the range [lo, hi]."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return [float(x.mean()) if len(x) else math.nan] * 3
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    return [float(x.mean()), float(max(lo, x.mean() - half)), float(min(hi, x.mean() + half))]


def aggregate(stats: list[dict]) -> dict:
    """Mean and 95% interval of every figure over decisions; Wilson interval of ``differs``."""
    n = len(stats)
    k = sum(s["differs"] for s in stats)
    out = dict(decisions=n, differs=k / max(1, n), differs_ci95=list(wilson_interval(k, n)))
    for key in ("policy", "random", "oracle", "oracle_in_sample", "worst"):
        out[key] = _mean_ci([s[key] for s in stats])
    out["gain"] = _mean_ci([s["oracle"] - s["policy"] for s in stats], -1.0, 1.0)
    for key in ("noise_var", "between_var", "signal_var"):
        out[key] = float(np.mean([s[key] for s in stats])) if stats else math.nan
    # the spread of the true Q over a decision's candidates (its sd; 0 when noise explains it all)
    out["q_spread_sd"] = math.sqrt(max(0.0, out["signal_var"])) if stats else math.nan
    return out


def ceiling_report(root: str | Path, seed: int = 0, alpha: float = 0.05) -> dict:
    """The whole report: overall, per task, per phase (JSON-ready)."""
    from prevla_sim.expert import PHASES

    rows = load_branches(root)
    rng = np.random.default_rng(seed)
    stats = [dict(decision_stats(r["success"], rng, alpha=alpha), task_id=r["task_id"], phase=r["phase"])
             for r in rows]
    k, m = rows[0]["success"].shape if rows else (0, 0)
    return dict(data=str(root), candidates=int(k), continuations=int(m), alpha=alpha,
                episodes=len({(r["task_id"], r["init_state"]) for r in rows}),
                continuation_steps=int(sum(int((r["end_step"] - r["step"]).sum()) for r in rows)),
                overall=aggregate(stats),
                by_task={t: aggregate([s for s in stats if s["task_id"] == t])
                         for t in sorted({s["task_id"] for s in stats})},
                by_phase={p: aggregate([s for s in stats if s["phase"] == p])
                          for p in PHASES if any(s["phase"] == p for s in stats)})


def format_report(rep: dict) -> str:
    """Markdown: one row per group (overall, tasks, phases)."""
    def pct(v):
        return f"{100 * v[0]:.0f} [{100 * v[1]:.0f}, {100 * v[2]:.0f}]"

    lines = [f"### Selection ceiling: K={rep['candidates']}, {rep['continuations']} continuations per "
             f"candidate, {rep['overall']['decisions']} decisions of {rep['episodes']} episodes", "",
             "| group | decisions | differ beyond noise | Q spread sd | policy's pick | random | oracle (cross-fitted) "
             "| gain oracle - policy | oracle in-sample |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = [("**all**", rep["overall"])] + [(f"task {t}", a) for t, a in rep["by_task"].items()] \
        + [(p, a) for p, a in rep["by_phase"].items()]
    for name, a in groups:
        lines.append(f"| {name} | {a['decisions']} | {100 * a['differs']:.0f}% | {100 * a['q_spread_sd']:.0f} | "
                     f"{pct(a['policy'])} | "
                     f"{pct(a['random'])} | {pct(a['oracle'])} | {pct(a['gain'])} | {pct(a['oracle_in_sample'])} |")
    lines.append(f"\nsuccess rates in % (mean [95% interval] over decisions); differ: permutation test "
                 f"p < {rep['alpha']}; {rep['continuation_steps']} simulated continuation steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``prevla ceiling``."""
    p = argparse.ArgumentParser(prog="prevla ceiling", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="outputs/branches/libero_spatial", help="prevla branch output dir")
    p.add_argument("--out", default=None, help="JSON path (a .md table next to it)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance of 'differs'")
    a = p.parse_args(argv)
    rep = ceiling_report(a.data, alpha=a.alpha)
    table = format_report(rep)
    print(table)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=1, default=str))
        out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
