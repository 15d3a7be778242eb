"""What a soak measures, ROS-free: per-process RSS, the decisions' latency in time windows and
the messages that never got an answer (used by :mod:`prevla_training.bench_soak`).

A *decision* is one observation stamp followed through the graph as a probe sees it:

    observation parts (sim_node) --> candidates (policy_node) --> action_chunk (verifier_node)

Its latency is ``chunk - observation`` (the probe's receipt times, one clock): the policy's
sampling, the verifier's decision and three DDS hops, without the sim's render (the stamp is
taken before it). A stamp that has no chunk ``lost_after_s`` after it was first seen is
*lost*, charged to the node that should have answered: no candidate set -> policy_node,
candidates but no chunk -> verifier_node. A chunk the sim ignored or refused shows in its own
``/diagnostics`` counters (``stale_chunks``, ``invalid_chunks``, ``timeouts_republished``),
which the soak reports next to these.

RSS growth is the least-squares slope of the samples after the warm-up (MB per hour), robust
to sim_node's swing within an episode (a LIBERO hard reset frees and rebuilds the model);
"start" and "end" are medians of the first and last window of samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: The stages of a decision in the order the graph produces them.
STAGES = ("observation", "candidates", "chunk")
#: Who should have answered a stamp stuck at a stage (the node that produces the next one).
ANSWERS = {"observation": "policy_node", "candidates": "verifier_node"}
#: Settled stamps remembered, so a part arriving after its chunk is not taken for a new stamp.
SETTLED_KEPT = 256
#: Lost stamps kept as examples (stamp and the times of the stages seen) for the report.
LOST_EXAMPLES = 10


def read_rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``);
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """``q``-th percentile, NaN for no values (a window without decisions)."""
    return float(np.percentile(values, q)) if len(values) else math.nan


@dataclass
class Window:
    """Decisions that completed in ``[start_s, start_s + length)`` (seconds since the start)."""

    start_s: float
    latency_ms: list[float] = field(default_factory=list)  # observation -> chunk
    policy_ms: list[float] = field(default_factory=list)  # observation -> candidates
    verifier_ms: list[float] = field(default_factory=list)  # candidates -> chunk
    verdict_ms: list[float] = field(default_factory=list)  # the verifier's own total_ms
    lost: int = 0

    def row(self) -> dict:
        lat = self.latency_ms
        return {"start_s": round(self.start_s, 1), "decisions": len(lat),
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(max(lat), 2) if lat else math.nan,
                "policy_p50_ms": round(percentile(self.policy_ms, 50), 2),
                "verifier_p50_ms": round(percentile(self.verifier_ms, 50), 2),
                "verdict_total_p50_ms": round(percentile(self.verdict_ms, 50), 2),
                "verdict_total_p99_ms": round(percentile(self.verdict_ms, 99), 2),
                "lost": self.lost}


class DecisionLedger:
    """Follows each stamp from observation to chunk; settles it as done or lost.

    Memory is bounded by the stamps in flight (settled ones leave ``pending``; the last
    ``SETTLED_KEPT`` are remembered) plus one list of floats per window.

    Args:
        window_s: length of a latency window in seconds.
        lost_after_s: a stamp without a chunk this long after it was first seen is lost.
    """

    def __init__(self, window_s: float, lost_after_s: float) -> None:
        self.window_s, self.lost_after_s = window_s, lost_after_s
        self.pending: dict[int, dict[str, float]] = {}
        self.windows: list[Window] = []
        self.lost = {node: 0 for node in ANSWERS.values()}
        self._settled: dict[int, None] = {}  # the last SETTLED_KEPT settled stamps, oldest first
        self.lost_examples: list[dict] = []
        self.probe_missed = 0  # a chunk whose observation the probe never saw (probe's own loss)
        self.decisions = 0

    def record(self, stage: str, stamp_ns: int, t_s: float) -> None:
        """The probe saw ``stage`` of ``stamp_ns`` at ``t_s`` (seconds since the start); for
        the observation, the last of its parts counts."""
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
        if stamp_ns in self._settled:
            return  # a part that arrived after its chunk (topics are not ordered): not new
        entry = self.pending.setdefault(stamp_ns, {"first": t_s})
        entry[stage] = max(entry.get(stage, t_s), t_s) if stage == "observation" else t_s
        if stage == "chunk":
            self._remember(stamp_ns)
            self._done(self.pending.pop(stamp_ns), t_s)

    def verdict(self, t_s: float, total_ms: float) -> None:
        """A verdict at ``t_s`` whose decision took ``total_ms`` inside the verifier."""
        self._window(t_s).verdict_ms.append(total_ms)

    def settle(self, now_s: float) -> None:
        """Charge every stamp older than ``lost_after_s`` without a chunk as lost."""
        for stamp in [s for s, e in self.pending.items() if now_s - e["first"] > self.lost_after_s]:
            entry = self.pending.pop(stamp)
            self._remember(stamp)
            stuck = "candidates" if "candidates" in entry else "observation"
            self.lost[ANSWERS[stuck]] += 1
            if len(self.lost_examples) < LOST_EXAMPLES:
                self.lost_examples.append({"stamp_ns": stamp, "node": ANSWERS[stuck],
                                           **{k: round(v, 3) for k, v in entry.items()}})
            self._window(now_s).lost += 1

    def _remember(self, stamp_ns: int) -> None:
        self._settled[stamp_ns] = None
        if len(self._settled) > SETTLED_KEPT:
            del self._settled[next(iter(self._settled))]

    def _window(self, t_s: float) -> Window:
        index = max(0, int(t_s // self.window_s))
        while len(self.windows) <= index:
            self.windows.append(Window(len(self.windows) * self.window_s))
        return self.windows[index]

    def _done(self, entry: dict[str, float], t_s: float) -> None:
        self.decisions += 1
        window = self._window(t_s)
        if "observation" not in entry:
            self.probe_missed += 1
            return
        obs = entry["observation"]
        window.latency_ms.append((t_s - obs) * 1e3)
        if "candidates" in entry:
            window.policy_ms.append((entry["candidates"] - obs) * 1e3)
            window.verifier_ms.append((t_s - entry["candidates"]) * 1e3)

    def rows(self, after_s: float = 0.0) -> list[dict]:
        """One row per window starting at or after ``after_s``."""
        return [w.row() for w in self.windows if w.start_s >= after_s - 1e-9]


def growth_mb_per_h(t_s: list[float] | np.ndarray, rss_mb: list[float] | np.ndarray) -> float:
    """Least-squares slope of RSS over time in MB per hour (NaN for fewer than 2 samples)."""
    t, y = np.asarray(t_s, float), np.asarray(rss_mb, float)
    if len(t) < 2 or np.ptp(t) == 0:
        return math.nan
    return float(np.polyfit(t, y, 1)[0] * 3600.0)


def rss_summary(samples: list[tuple[float, dict[str, float]]], warmup_s: float,
                window_s: float) -> dict[str, dict]:
    """Per process, over the samples after ``warmup_s``: start / end (medians of the first and
    last ``window_s`` of samples), min, max, and growth in MB per hour (fitted slope)."""
    names = sorted({n for _, values in samples for n in values})
    out = {}
    for name in names:
        pts = [(t, v[name]) for t, v in samples if t >= warmup_s and name in v]
        if not pts:
            continue
        t = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        first, last = y[t <= t[0] + window_s], y[t >= t[-1] - window_s]
        out[name] = {"samples": len(y), "start_mb": round(float(np.median(first)), 1),
                     "end_mb": round(float(np.median(last)), 1),
                     "min_mb": round(float(y.min()), 1), "max_mb": round(float(y.max()), 1),
                     "growth_mb_per_h": round(growth_mb_per_h(t, y), 1)}
    return out


def p99_trend(rows: list[dict]) -> dict:
    """How p99 moved over the windows with decisions: first, last, the fitted slope per hour
    (ms) and the ratio of the last to the first window."""
    pts = [(r["start_s"], r["p99_ms"]) for r in rows
           if r["decisions"] and not math.isnan(r["p99_ms"])]
    if not pts:
        return {"windows": 0}
    first, last = pts[0][1], pts[-1][1]
    return {"windows": len(pts), "first_ms": first, "last_ms": last,
            "last_over_first": round(last / first, 2) if first > 0 else math.nan,
            "slope_ms_per_h": round(growth_mb_per_h([p[0] for p in pts], [p[1] for p in pts]), 1)}
