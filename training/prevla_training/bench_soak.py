"""Soak: the graph under ``prevla up --processes`` for a long time, episodes back to back.

    python -m prevla_training.bench_soak [--minutes 60] [--warmup-minutes 5] [--sample-s 10] \
        [--window-s 0] [--out outputs/bench/soak.json] [prevla up options, e.g. --policy vla]

Every node runs in its own process (``--processes``, supervised) so each RSS is its own; the
sim runs episodes forever (``--episodes 0``) until the time is up. A probe node in this process
(:class:`~prevla_ros.nodes.soak_probe.SoakProbe`) watches the topics; nothing in the graph is
changed. Measured (:mod:`prevla_training.soak_stats`):

* RSS of each node process (``VmRSS``) and of this process (supervisor + probe) every
  ``--sample-s``; after the warm-up: start / end (window medians), min, max, growth in MB/h.
* decision latency (observation -> approved chunk as the probe sees them) p50 / p99 per
  ``--window-s`` window (5 min for the hour), with the policy's and the verifier's parts and
  the verifier's own ``total_ms``;
* message loss: stamps left unanswered (charged to the node that should have answered), the
  nodes' own counters from ``/diagnostics`` (stale / invalid chunks, re-published observations,
  rejected inputs, holds) and node restarts.

The goal (reported, never asserted): after the warm-up no node grows more than
``GOAL_MB_PER_H``, no message is lost, p99 stays flat. Prints a markdown table, writes JSON +
.md + a PNG (RSS per node over time; p50 / p99 per window).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Callable

from prevla_training.soak_stats import DecisionLedger, p99_trend, read_rss_mb, rss_summary

#: Growth after the warm-up that the goal allows, MB per hour.
GOAL_MB_PER_H = 50.0
#: /diagnostics values that count lost or refused messages, per node (plus ``holds``).
LOSS_COUNTERS = {"sim_node": ("stale_chunks", "invalid_chunks", "timeouts_republished",
                              "rejected_inputs"),
                 "policy_node": ("holds", "rejected_inputs"),
                 "verifier_node": ("holds", "rejected_candidates", "resample_failures",
                                   "rejected_inputs")}
SELF = "soak (supervisor + probe)"
ERROR_LEVEL = 2  # diagnostic_msgs/DiagnosticStatus.ERROR


class Soak:
    """The probe's sink: the ledger of decisions, RSS samples and the nodes' diagnostics.

    Args:
        window_s: latency window; lost_after_s: a stamp unanswered this long is lost.
        pids: name -> pid of the node processes running now; restarts: name -> restarts.
    """

    def __init__(self, window_s: float, lost_after_s: float,
                 pids: Callable[[], dict[str, int]], restarts: Callable[[], dict[str, int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.t0 = clock, clock()
        self.pids, self.restarts = pids, restarts
        self.ledger = DecisionLedger(window_s, lost_after_s)
        self.rss: list[tuple[float, dict[str, float]]] = []
        self.outcomes: dict[str, int] = {}
        self.episodes = self.successes = 0
        self.diag: dict[str, dict[str, str]] = {}
        self.error_reports: dict[str, int] = {}  # /diagnostics messages at ERROR, per node

    def now(self) -> float:
        return self.clock() - self.t0

    def stage(self, stage: str, stamp_ns: int) -> None:
        self.ledger.record(stage, stamp_ns, self.now())

    def verdict(self, outcome: str, total_ms: float) -> None:
        self.ledger.verdict(self.now(), total_ms)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def episode_done(self, success: bool) -> None:
        self.episodes += 1
        self.successes += int(success)

    def diagnostics(self, node: str, level: int, values: dict[str, str]) -> None:
        self.diag[node] = values
        self.error_reports[node] = self.error_reports.get(node, 0) + int(level == ERROR_LEVEL)

    def sample(self) -> None:
        t = self.now()
        values = {name: mb for name, pid in self.pids().items()
                  if (mb := read_rss_mb(pid)) is not None}
        values[SELF] = read_rss_mb(os.getpid()) or math.nan
        self.rss.append((round(t, 2), values))
        self.ledger.settle(t)

    def result(self, duration_s: float, warmup_s: float, graph: dict) -> dict:
        """Everything measured, for the JSON; ``graph`` names the settings the graph ran."""
        self.ledger.settle(duration_s)
        rows = self.ledger.rows(after_s=warmup_s)
        counters = {node: {k: _number(self.diag.get(node, {}).get(k)) for k in keys}
                    for node, keys in LOSS_COUNTERS.items()}
        rss = rss_summary(self.rss, warmup_s, self.ledger.window_s)
        return {"graph": graph, "duration_s": round(duration_s, 1), "warmup_s": warmup_s,
                "window_s": self.ledger.window_s, "episodes": self.episodes,
                "successes": self.successes, "decisions": self.ledger.decisions,
                "outcomes": self.outcomes, "rss": rss, "windows": rows, "p99": p99_trend(rows),
                "unanswered": dict(self.ledger.lost),
                "unanswered_examples": self.ledger.lost_examples,
                "in_flight": len(self.ledger.pending),
                "probe_missed": self.ledger.probe_missed, "counters": counters,
                "error_reports": self.error_reports, "restarts": self.restarts(),
                "goal": _goal(rss, self.ledger.lost, counters, p99_trend(rows)),
                "samples": [{"t_s": t, **v} for t, v in self.rss]}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _goal(rss: dict, lost: dict, counters: dict, p99: dict) -> dict:
    refused = {f"{n}.{k}": v for n, c in counters.items() for k, v in c.items()
               if v and k != "holds"}
    return {"growth_ok": {n: s["growth_mb_per_h"] <= GOAL_MB_PER_H for n, s in rss.items()},
            "no_loss": not any(lost.values()) and not refused, "lost_or_refused": refused,
            "p99_last_over_first": p99.get("last_over_first")}


def table(r: dict) -> str:
    g = r["graph"]
    lines = [f"### Soak: {r['duration_s'] / 60:.1f} min (warm-up {r['warmup_s'] / 60:.1f} min), "
             f"policy {g['policy']}, verifier {g['verifier']}, control {g['control_rate_hz']} Hz: "
             f"{r['episodes']} episodes ({r['successes']} successes), {r['decisions']} decisions",
             "", f"RSS after the warm-up ({(r['duration_s'] - r['warmup_s']) / 60:.1f} min; growth "
             "is the fitted slope, noise in a run of minutes):", "",
             "| process | RSS start MB | end MB | min | max | growth MB/h | goal <= "
             f"{GOAL_MB_PER_H:.0f} | restarts |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for name, s in r["rss"].items():
        ok = "yes" if s["growth_mb_per_h"] <= GOAL_MB_PER_H else "**no**"
        lines.append(f"| {name} | {s['start_mb']:.0f} | {s['end_mb']:.0f} | {s['min_mb']:.0f} | "
                     f"{s['max_mb']:.0f} | {s['growth_mb_per_h']:+.1f} | {ok} | "
                     f"{r['restarts'].get(name, '')} |")
    lines += ["", "| window from (min) | decisions | p50 ms | p99 ms | max ms | policy p50 | "
              "verifier p50 | verifier total_ms p50 / p99 | lost |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in r["windows"]:
        lines.append(f"| {w['start_s'] / 60:.1f} | {w['decisions']} | {w['p50_ms']:.1f} | "
                     f"{w['p99_ms']:.1f} | {w['max_ms']:.1f} | {w['policy_p50_ms']:.1f} | "
                     f"{w['verifier_p50_ms']:.1f} | {w['verdict_total_p50_ms']:.1f} / "
                     f"{w['verdict_total_p99_ms']:.1f} | {w['lost']} |")
    counters = "; ".join(f"{n}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in c.items())
                         for n, c in r["counters"].items())
    p99 = r["p99"]
    lines += ["", f"unanswered stamps: {r['unanswered']} (in flight at the end: {r['in_flight']},"
              f" probe missed: {r['probe_missed']}); node counters: {counters}; /diagnostics "
              f"ERROR reports: {r['error_reports']}",
              f"p99 first / last window: {p99.get('first_ms', math.nan):.1f} / "
              f"{p99.get('last_ms', math.nan):.1f} ms (x{p99.get('last_over_first', math.nan)}); "
              f"goal: growth ok {r['goal']['growth_ok']}, no loss {r['goal']['no_loss']}"]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "?" if v is None else f"{v:g}"


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    names = sorted({k for s in r["samples"] for k in s if k != "t_s"},
                   key=lambda n: -max(s.get(n, 0) for s in r["samples"]))
    for i, name in enumerate(names):  # the largest (sim_node) alone: the others keep their scale
        pts = [(s["t_s"] / 60, s[name]) for s in r["samples"] if name in s]
        ax[min(i, 1)].plot([p[0] for p in pts], [p[1] for p in pts], lw=1, color=f"C{i}",
                           label=name)
    for a in ax[:2]:
        a.axvline(r["warmup_s"] / 60, color="grey", ls=":", label="end of warm-up")
        a.set_xlabel("minutes"), a.set_ylabel("RSS MB"), a.legend(fontsize=7)
    mid = [(w["start_s"] + r["window_s"] / 2) / 60 for w in r["windows"]]
    ax[2].plot(mid, [w["p50_ms"] for w in r["windows"]], "o-", label="p50")
    ax[2].plot(mid, [w["p99_ms"] for w in r["windows"]], "o-", label="p99")
    ax[2].set_xlabel("minutes (window middle)"), ax[2].set_ylabel("decision latency ms")
    ax[2].set_ylim(bottom=0), ax[2].legend(fontsize=7)
    fig.suptitle(f"soak: policy {r['graph']['policy']}, verifier {r['graph']['verifier']}",
                 fontsize=9)
    fig.tight_layout(), fig.savefig(path, dpi=100), plt.close(fig)


#: The graph's settings the report names: (node, setting).
GRAPH_REPORTED = (("policy_node", "policy"), ("verifier_node", "verifier"),
                  ("policy_node", "num_candidates"), ("sim_node", "control_rate_hz"),
                  ("sim_node", "suite"), ("sim_node", "task_id"))


def _setting(args: argparse.Namespace, node: str, name: str):
    """A setting as the graph runs it: the flag, else the params file, else its default."""
    from prevla_ros.runtime.configs import NODE_CONFIGS
    from prevla_ros.runtime.settings import settings

    if getattr(args, name, None) is not None:
        return getattr(args, name)
    if args.params_file:
        import yaml

        params = yaml.safe_load(Path(args.params_file).read_text()) or {}
        value = params.get(node, {}).get("ros__parameters", {}).get(name)
        if value is not None:
            return value
    return settings(NODE_CONFIGS[node])[name].default


def run(a: argparse.Namespace, graph_argv: list[str]) -> dict:
    """Run the graph for ``a.minutes`` with the probe; the measurements as a dict."""
    from prevla_ros.cli import run_graph, up_args
    from prevla_ros.nodes.soak_probe import SoakProbe

    args = up_args([*graph_argv, "--processes", "--episodes", "0"])
    soak: list[Soak] = []

    def add_probe(graph) -> None:
        sup = graph.supervisor
        soak.append(Soak(a.window_s, a.lost_after_s, lambda: sup.pids, lambda: sup.restarts))
        graph.add(SoakProbe(soak[0], a.sample_s))

    end = time.monotonic() + a.minutes * 60
    finished, rc = run_graph(args, lambda: time.monotonic() >= end, add_probe)
    if not soak:
        raise SystemExit("the graph stopped before it was up")
    s = soak[0]
    graph = {name: _setting(args, node, name) for node, name in GRAPH_REPORTED}
    result = s.result(s.now(), a.warmup_minutes * 60, graph)
    result.update(finished=finished, exit_code=rc)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_soak", description=__doc__.split("\n\n")[0],
                                epilog="Other options go to the graph (prevla up --help).")
    p.add_argument("--minutes", type=float, default=60.0, help="how long the graph runs")
    p.add_argument("--warmup-minutes", type=float, default=5.0,
                   help="RSS growth and the latency windows count from here on")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--window-s", type=float, default=0.0,
                   help="latency window in seconds; 0: a sixth of the time after the warm-up, "
                        "at most 300")
    p.add_argument("--lost-after-s", type=float, default=15.0,
                   help="a stamp with no chunk this long after its observation is lost")
    p.add_argument("--out", default="outputs/bench/soak.json",
                   help="JSON path (.md, .png next to it)")
    a, graph_argv = p.parse_known_args(argv)
    if a.window_s == 0:
        a.window_s = min(300.0, max(a.sample_s, (a.minutes - a.warmup_minutes) * 60 / 6))
    for name, ok in (("minutes", a.minutes > 0),
                     ("warmup_minutes", 0 <= a.warmup_minutes < a.minutes),
                     ("sample_s", a.sample_s > 0), ("window_s", a.window_s >= a.sample_s),
                     ("lost_after_s", a.lost_after_s > 0)):
        if not ok:
            p.error(f"--{name.replace('_', '-')}: out of range ({getattr(a, name)})")
    from prevla_training.cli_args import write_report

    result = run(a, graph_argv)
    write_report(a.out, result, table(result))
    plot(result, Path(a.out).with_suffix(".png"))
    return result["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
