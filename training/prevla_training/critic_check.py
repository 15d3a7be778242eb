"""How well an RL critic's cheap label ranks the candidates that Monte-Carlo labels rank.

    python -m prevla_training.critic_check --mc outputs/branches/libero_spatial \
        --value outputs/branches/value_rloo [--value outputs/branches/value_gae ...] \
        --out docs/results/critic_vs_mc.json

``--mc`` holds ``prevla branch`` rollouts with continuations (``mc/success``, (K, M) per
decision); each ``--value`` holds the *same* rollouts branched again with ``--continuations 0
--value-model CRITIC`` (same tasks, init states, seed and backend: episodes replay exactly, so
the same decisions see the same K candidates). Decisions are matched by (task, init state,
decision) and kept only when their candidate chunks are equal (the replay check; mismatches are
counted, never compared). Per critic, over the matched decisions:

- the mean within-decision Spearman between the critic's Q(s, a_i) = success ? 1 : gamma V(s'_i)
  and the Monte-Carlo success of each candidate;
- the Pearson correlation, across decisions, of the critic's mean Q and the mean MC success
  (does V track how promising the state is?);
- the MC success of the candidate the critic picks (its argmax), against the policy's own pick
  (candidate 0), a random one, and the cross-fitted oracle of ``prevla ceiling``; the critic's
  pick is scored on continuations it never saw, so that number is unbiased.

Prints a table, writes JSON + .md.
"""
from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

import numpy as np

from prevla_training.ceiling import _mean_ci, cross_fitted_oracle
from prevla_training.cli_args import write_report
from prevla_training.verifier_metrics import within_set_spearman


def load_decisions(root: str | Path, key: str) -> dict[tuple[int, int, int], dict]:
    """(task, init, decision) -> {actions (K, H, A), label}: ``key`` is ``mc/success`` (K, M) or
    ``value/q`` (K,); complete episodes (``init<II>.hdf5``) and parts of unfinished ones."""
    import h5py

    from prevla_training.branching import load_part

    out: dict[tuple[int, int, int], dict] = {}
    for path in sorted(glob.glob(os.path.join(str(root), "task*", "init*.hdf5"))):
        with h5py.File(path, "r") as f:
            if key not in f:
                continue
            task, init = int(f.attrs["task_id"]), int(f.attrs["init_state"])
            for n, d in enumerate(f["decision"][()]):
                out[(task, init, int(d))] = dict(actions=f["actions"][n], label=f[key][n])
    part_key = {"mc/success": "mc_success"}.get(key, key)
    for path in sorted(glob.glob(os.path.join(str(root), "task*", "init*.parts", "d*.npz"))):
        episode = Path(path).parent
        z = load_part(Path(path))
        if part_key in z:
            k = (int(episode.parent.name[4:]), int(episode.name[4:6]), int(z["decision"]))
            out.setdefault(k, dict(actions=z["actions"], label=z[part_key]))
    if not out:
        raise FileNotFoundError(f"no branched decision with {key} under {root}")
    return out


def compare(mc: dict, value: dict) -> dict:
    """One critic's labels (``value``) against the Monte-Carlo ones (``mc``): module docstring."""
    shared = sorted(set(mc) & set(value))
    same = [k for k in shared if np.allclose(mc[k]["actions"], value[k]["actions"], atol=1e-5)]
    if not same:
        raise ValueError(f"no decision replays identically ({len(shared)} shared keys): same tasks, inits, "
                         "seed and backend?")
    succ = [np.asarray(mc[k]["label"], float) for k in same]
    q_mc = np.stack([s.mean(1) for s in succ])
    q_v = np.stack([np.asarray(value[k]["label"], float) for k in same])
    rows = np.arange(len(same))
    pick = q_v.argmax(1)
    per = dict(critic=q_mc[rows, pick], policy=q_mc[:, 0], random=q_mc.mean(1),
               oracle=np.array([cross_fitted_oracle(s) for s in succ]))
    state_r = float(np.corrcoef(q_v.mean(1), q_mc.mean(1))[0, 1]) if q_mc.mean(1).std() > 0 else None
    return dict(decisions=len(same), shared=len(shared), mismatched=len(shared) - len(same),
                spearman_within=within_set_spearman(q_v, q_mc), pearson_state=state_r,
                **{k: _mean_ci(list(v)) for k, v in per.items()},
                gain_critic_vs_policy=_mean_ci(list(per["critic"] - per["policy"]), -1.0, 1.0),
                gain_oracle_vs_policy=_mean_ci(list(per["oracle"] - per["policy"]), -1.0, 1.0))


def format_table(result: dict) -> str:
    def pct(v):
        return f"{100 * v[0]:.0f} [{100 * v[1]:.0f}, {100 * v[2]:.0f}]"

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [f"MC labels: `{result['mc']}`", "",
             "| critic | decisions (mismatched) | Spearman within decision | Pearson across states | MC success: "
             "policy's pick | random | critic's pick | oracle | critic - policy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["critics"].items():
        lines.append(f"| `{name}` | {r['decisions']} ({r['mismatched']}) | {num(r['spearman_within'])} | "
                     f"{num(r['pearson_state'])} | {pct(r['policy'])} | {pct(r['random'])} | {pct(r['critic'])} | "
                     f"{pct(r['oracle'])} | {pct(r['gain_critic_vs_policy'])} |")
    lines.append("\nsuccess in % (mean [95% interval] over decisions)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="critic_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--mc", required=True, help="prevla branch output with continuations")
    p.add_argument("--value", action="append", required=True,
                   help="prevla branch --continuations 0 --value-model ... output of the same rollouts (repeatable)")
    p.add_argument("--tasks", default="", help="also report these tasks alone, e.g. the critics' training tasks '5,7,9'")
    p.add_argument("--out", default="outputs/critic_vs_mc.json")
    a = p.parse_args(argv)
    from prevla_training.evaluate import parse_tasks

    subset = set(parse_tasks(a.tasks))
    import h5py

    mc = load_decisions(a.mc, "mc/success")
    critics = {}
    for root in a.value:
        value = load_decisions(root, "value/q")
        first = sorted(glob.glob(os.path.join(root, "task*", "init*.hdf5")))
        name = root
        if first:
            with h5py.File(first[0], "r") as f:
                name = str(f.attrs.get("value_model", root))
        critics[name] = compare(mc, value)
        if subset:
            critics[f"{name}, tasks {a.tasks}"] = compare({k: v for k, v in mc.items() if k[0] in subset}, value)
    result = dict(mc=a.mc, critics=critics)
    write_report(a.out, result, format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
