"""The learning curve of a ``prevla rl`` run, from its ``metrics.jsonl``.

    python -m prevla_training.rl.curve outputs/rl/spatial --out docs/results/rl_spatial_curve.png

Training success (the runners' episodes, with the exploration noise on, init states >= 10)
per window of ``--window`` updates, against environment steps and wall clock, with a 95% Wilson
interval; the critic's loss, PPO's approximate KL and clipped fraction per update. Writes the
PNG and a JSON of the windows next to it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prevla_training.stats import wilson_interval


def windows(records: list[dict], size: int) -> list[dict]:
    """Success of the episodes finished in each window of ``size`` updates (counters are cumulative)."""
    out, prev = [], {"episodes": 0, "successes": 0}
    for i in range(0, len(records), size):
        last = records[min(i + size, len(records)) - 1]
        n, k = last["episodes"] - prev["episodes"], last["successes"] - prev["successes"]
        if n:
            lo, hi = wilson_interval(k, n)
            out.append(dict(update=last["version"], env_steps=last["env_steps"], wall_s=last["wall_s"],
                            episodes=n, success=k / n, ci95=[lo, hi]))
        prev = last
    return out


def plot(records: list[dict], wins: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for a, key, label in ((ax[0], "env_steps", "environment steps"), (ax[1], "wall_s", "wall clock (s)")):
        x = [w[key] for w in wins]
        a.plot(x, [w["success"] for w in wins], marker="o")
        a.fill_between(x, [w["ci95"][0] for w in wins], [w["ci95"][1] for w in wins], alpha=0.2)
        a.set_xlabel(label)
        a.set_ylabel("training success (window)")
        a.set_ylim(0, 1)
    v = [r["version"] for r in records]
    ax[2].plot(v, [r.get("value_loss", float("nan")) for r in records], label="value loss")
    ax[2].plot(v, [r.get("approx_kl", float("nan")) for r in records], label="approx KL")
    ax[2].plot(v, [r.get("clip_frac", float("nan")) for r in records], label="clip fraction")
    ax[2].set_xlabel("learner update")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="curve", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a prevla rl out_dir (with metrics.jsonl)")
    p.add_argument("--window", type=int, default=20, help="updates per point")
    p.add_argument("--out", default="", help="PNG path (default: <run>/curve.png)")
    args = p.parse_args(argv)
    records = [json.loads(s) for s in (Path(args.run) / "metrics.jsonl").read_text().splitlines() if s.strip()]
    if not records:
        p.error(f"{args.run}/metrics.jsonl has no update yet")
    wins = windows(records, args.window)
    out = args.out or str(Path(args.run) / "curve.png")
    plot(records, wins, out)
    Path(out).with_suffix(".json").write_text(json.dumps(wins, indent=1))
    for w in wins:
        print(f"update {w['update']:4d}  steps {w['env_steps']:7d}  {w['wall_s']:6.0f} s  episodes {w['episodes']:3d}  "
              f"success {w['success']:.2f} [{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
