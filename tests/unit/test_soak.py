"""The soak benchmark's bookkeeping (``prevla_training.soak_stats``, ``bench_soak``) on synthetic
events: decisions matched by stamp, losses charged to the node that should have answered,
latency windows, RSS growth fitted through sim_node's swing; and the report it writes. The
soak itself is a benchmark (``make soak``), never a timed test."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from prevla_training import bench_soak
from prevla_training.soak_stats import (DecisionLedger, growth_mb_per_h, p99_trend, read_rss_mb,
                                        rss_summary)


def test_rss_of_this_process_and_of_none():
    assert 1 < read_rss_mb(os.getpid()) < 1e6
    assert read_rss_mb(2**22 + 12345) is None  # above pid_max's default: no such process


def _decision(ledger, stamp, t, policy_s=0.004, verifier_s=0.006):
    ledger.record("observation", stamp, t)
    ledger.record("candidates", stamp, t + policy_s)
    ledger.record("chunk", stamp, t + policy_s + verifier_s)


def test_a_decision_is_observation_to_chunk_and_its_parts():
    ledger = DecisionLedger(window_s=60, lost_after_s=15)
    ledger.record("observation", 7, 1.000)
    ledger.record("observation", 7, 1.002)  # the last part counts
    ledger.record("candidates", 7, 1.010)
    ledger.record("chunk", 7, 1.020)
    (row,) = ledger.rows()
    assert row["decisions"] == 1 and ledger.decisions == 1 and not ledger.pending
    assert row["p50_ms"] == pytest.approx(18.0) and row["policy_p50_ms"] == pytest.approx(8.0)
    assert row["verifier_p50_ms"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="stage"):
        ledger.record("verdict", 7, 2.0)


def test_losses_are_charged_to_the_node_that_should_have_answered():
    ledger = DecisionLedger(window_s=60, lost_after_s=15)
    ledger.record("observation", 1, 0.0)  # the policy never answered
    ledger.record("observation", 2, 0.5)
    ledger.record("candidates", 2, 0.6)  # the verifier never answered
    ledger.record("observation", 3, 10.0)  # still in flight at t = 16
    ledger.settle(16.0)
    assert ledger.lost == {"policy_node": 1, "verifier_node": 1}
    assert set(ledger.pending) == {3} and ledger.rows()[0]["lost"] == 2
    assert [e["node"] for e in ledger.lost_examples] == ["policy_node", "verifier_node"]
    ledger.record("chunk", 9, 17.0)  # a chunk whose observation the probe never saw
    assert ledger.probe_missed == 1
    ledger.record("observation", 9, 17.1)  # a part that came after its chunk is not a new stamp
    ledger.record("observation", 1, 17.2)  # nor one of a stamp already charged as lost
    ledger.settle(40.0)
    assert ledger.lost == {"policy_node": 2, "verifier_node": 1} and not ledger.pending


def test_windows_and_the_p99_trend():
    ledger = DecisionLedger(window_s=10, lost_after_s=15)
    for i in range(100):  # 10 decisions a window; the last window is twice as slow
        slow = 2 if i >= 90 else 1
        _decision(ledger, i, i * 1.0, 0.004 * slow, 0.006 * slow)
    rows = ledger.rows(after_s=20)
    assert [r["start_s"] for r in rows] == [20.0 + 10 * k for k in range(8)]
    assert all(r["decisions"] == 10 for r in rows)
    trend = p99_trend(rows)
    assert trend["first_ms"] == pytest.approx(10.0) and trend["last_ms"] == pytest.approx(20.0)
    assert trend["last_over_first"] == 2.0 and trend["windows"] == 8
    assert p99_trend([]) == {"windows": 0}


def test_growth_is_the_fitted_slope_through_a_swing():
    t = np.arange(0, 3600, 10.0)
    swing = np.where((t // 10) % 5 == 0, -400.0, 0.0)  # sim_node mid-reset every 5th sample
    flat, growing = 2000 + swing, 2000 + swing + t / 3600 * 100
    assert abs(growth_mb_per_h(t, flat)) < 10  # 400 MB swings, 10 MB/h at most
    assert growth_mb_per_h(t, growing) == pytest.approx(100, abs=10)
    assert math.isnan(growth_mb_per_h([1.0], [2.0]))
    samples = [(float(ti), {"sim_node": float(v), "policy_node": 200.0})
               for ti, v in zip(t, growing)]
    s = rss_summary(samples, warmup_s=300, window_s=300)
    assert s["policy_node"] == {"samples": 330, "start_mb": 200.0, "end_mb": 200.0, "min_mb": 200.0,
                                "max_mb": 200.0, "growth_mb_per_h": 0.0}
    assert 2000 < s["sim_node"]["start_mb"] < 2020  # medians of the first and last window
    assert 2090 < s["sim_node"]["end_mb"] < 2100
    assert s["sim_node"]["min_mb"] < 1700 and s["sim_node"]["growth_mb_per_h"] > 90


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_sink_report_table_and_plot(tmp_path):
    clock = _Clock()
    soak = bench_soak.Soak(window_s=30, lost_after_s=15, pids=lambda: {"sim_node": os.getpid()},
                           restarts=lambda: {"sim_node": 0}, clock=clock)
    for i in range(60):
        clock.t = 100.0 + i
        soak.stage("observation", i)
        clock.t += 0.01
        soak.stage("candidates", i)
        clock.t += 0.01
        soak.stage("chunk", i)
        soak.verdict("accepted", 4.0)
        soak.diagnostics("sim_node", 0, {"stale_chunks": "0", "episodes": "3"})
        if i % 5 == 0:
            soak.sample()
    soak.episode_done(True)
    soak.diagnostics("verifier_node", 2, {"holds": "1"})
    graph = {"policy": "scripted_expert", "verifier": "model", "control_rate_hz": 20.0}
    result = soak.result(soak.now(), warmup_s=30, graph=graph)
    json.dumps(result)
    assert result["episodes"] == 1 and result["decisions"] == 60
    assert result["outcomes"] == {"accepted": 60}
    assert set(result["rss"]) == {"sim_node", bench_soak.SELF}
    assert [w["decisions"] for w in result["windows"]] == [30]
    assert result["windows"][0]["p50_ms"] == pytest.approx(20.0, abs=0.5)
    assert result["counters"]["sim_node"]["stale_chunks"] == 0
    assert result["counters"]["policy_node"]["holds"] is None  # never reported: unknown, not 0
    assert result["error_reports"] == {"sim_node": 0, "verifier_node": 1}
    assert result["goal"]["no_loss"] and result["goal"]["lost_or_refused"] == {}
    text = bench_soak.table(result)
    assert "| sim_node |" in text and "scripted_expert" in text and "p99 first / last" in text
    bench_soak.plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 1000


def test_options_are_checked_before_the_graph_starts():
    with pytest.raises(SystemExit) as exc:
        bench_soak.main(["--minutes", "1", "--warmup-minutes", "1"])
    assert exc.value.code == 2
