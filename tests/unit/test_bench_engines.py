"""``prevla_training.bench_engines``: structure of a tiny run against the zoo's models."""
from __future__ import annotations

import json
import math

import pytest
import torch

from prevla_training import bench_engines


@pytest.fixture(scope="module")
def result() -> dict:
    before = torch.get_num_threads()
    out = bench_engines.bench(threads=(1,), iters=3, ks=(1, 2), policy_ks=(2,), warmup=1, device="cpu")
    assert torch.get_num_threads() == before  # set_num_threads is process-global: bench restores it
    return out


def test_rows_for_torch_and_onnxruntime(result):
    cells = {(r["model"], r["backend"], r["k"]) for r in result["rows"]}
    for backend in ("torch", "onnxruntime"):
        assert {("verifier", backend, 1), ("verifier", backend, 2), ("vla", backend, 2)} <= cells
    for r in result["rows"]:
        assert r["threads"] == 1 and r["device"] == "cpu"
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert math.isfinite(r["speedup_vs_torch"]) and r["speedup_vs_torch"] > 0
        assert r["candidates_per_s"] == pytest.approx(r["k"] / (r["mean_ms"] / 1000))
        if r["backend"] == "torch":
            assert r["speedup_vs_torch"] == 1.0
    json.dumps(result)  # JSON-ready


def test_unavailable_backends_are_skipped_with_a_reason(result):
    skipped = {(e["backend"], e["model"]): e["reason"] for e in result["skipped"]}
    assert ("torch_compile", "verifier") in skipped  # device cpu and not named: not timed
    assert "CUDA" in skipped[("tensorrt", "verifier")] and skipped[("tensorrt", "vla")]  # device cpu
    assert not any(r["backend"] in ("tensorrt", "torch_compile") for r in result["rows"])


def test_summary_and_table(result):
    s = result["summary"]["verifier_ort_vs_torch"]["threads=1"]
    assert set(s) == {"K=1", "K=2"} and all(math.isfinite(v) for v in s.values())  # no K=8/16 timed: every K
    text = bench_engines.table(result)
    assert "| verifier | onnxruntime | 1 | 2 |" in text and "| vla | torch | 1 | 2 |" in text
    assert result["machine"]["torch"] in text and "Skipped:" in text


def test_summary_target():
    rows = [dict(model="verifier", backend="onnxruntime", threads=t, k=k, speedup_vs_torch=v)
            for t, k, v in ((1, 8, 2.0), (1, 16, 1.6), (2, 8, 1.4), (2, 1, 9.0))]
    s = bench_engines.summary(rows)
    assert s["verifier_ort_vs_torch"] == {"threads=1": {"K=8": 2.0, "K=16": 1.6}, "threads=2": {"K=8": 1.4}}
    assert s["min"] == 1.4 and not s["meets_target"]
    assert bench_engines.summary(rows[:2])["meets_target"]


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backends"):
        bench_engines.bench(backends=("tflite",), device="cpu")


def test_main_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "engines.json"
    assert bench_engines.main(["--threads", "1", "--iters", "2", "--warmup", "0", "--ks", "1", "--policy-ks", "1",
                               "--backends", "onnxruntime", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["rows"]} == {"torch", "onnxruntime"}  # torch eager: always the baseline
    assert out.with_suffix(".md").read_text().strip() in capsys.readouterr().out
