"""Before / after: two ``prevla eval`` results of two policies on the same episodes, paired.

    python -m prevla_training.rl.compare --before outputs/eval/zoo.json --after outputs/eval/rl.json \
        --arm policy --out docs/results/rl_spatial.json

Both evaluations must use the same tasks, init states, cycles and seeds (``prevla eval`` derives
every episode's seed from them), so episode (task, init, cycle) of one is the pair of the
other. Per task and overall: success with its 95% Wilson interval, the paired difference with
its 95% interval and the exact McNemar p-value (:mod:`prevla_training.stats`). Prints the
table, writes JSON + .md.
"""
from __future__ import annotations

import argparse
import json

from prevla_training.cli_args import write_report
from prevla_training.stats import episodes_by_key, paired_comparison, wilson_interval


def compare(before: dict, after: dict, arm: str = "policy") -> dict:
    a, b = episodes_by_key(after["episodes"], arm), episodes_by_key(before["episodes"], arm)
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError(f"compare: the two results share no {arm!r} episode (same tasks, inits, seeds?)")
    rows = {}
    for task in sorted({k[0] for k in keys}) + ["all"]:
        ks = [k for k in keys if task == "all" or k[0] == task]
        sa, sb = [a[k]["success"] for k in ks], [b[k]["success"] for k in ks]
        rows[str(task)] = dict(episodes=len(ks), before=sum(sb) / len(ks), after=sum(sa) / len(ks),
                               before_ci95=wilson_interval(sum(sb), len(ks)), after_ci95=wilson_interval(sum(sa), len(ks)),
                               **paired_comparison(sa, sb, [a[k]["steps"] for k in ks], [b[k]["steps"] for k in ks]))
    return dict(arm=arm, before_policy=before.get("policy"), after_policy=after.get("policy"), tasks=rows)


def format_table(result: dict) -> str:
    lines = [f"before: `{result['before_policy']}`, after: `{result['after_policy']}` (arm {result['arm']})", "",
             "| task | episodes | before [95% CI] | after [95% CI] | after - before [95% CI] | p (McNemar) |",
             "|---|---|---|---|---|---|"]
    for task, r in result["tasks"].items():
        (bl, bh), (al, ah), (dl, dh) = r["before_ci95"], r["after_ci95"], r["diff_ci95"]
        lines.append(f"| {task} | {r['episodes']} | {100 * r['before']:.0f}% [{100 * bl:.0f}, {100 * bh:.0f}] "
                     f"| {100 * r['after']:.0f}% [{100 * al:.0f}, {100 * ah:.0f}] "
                     f"| {100 * r['diff']:+.1f} [{100 * dl:+.1f}, {100 * dh:+.1f}] | {r['p_value']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--arm", default="policy")
    p.add_argument("--out", default="outputs/rl/compare.json")
    args = p.parse_args(argv)
    with open(args.before) as fb, open(args.after) as fa:
        result = compare(json.load(fb), json.load(fa), args.arm)
    write_report(args.out, result, format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
