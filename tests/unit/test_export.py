"""prevla export: ONNX round trip with parity against torch, refusal on parity failure, the
committed exports in sync with their checkpoints, and TensorRT (GPU only)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from prevla_models import zoo
from prevla_models.artifacts import sidecar_path, verify
from prevla_models.graphs import TorchRunner
from prevla_ros.runtime.engines import load_model
from prevla_ros.runtime.engines.onnxruntime_runner import OrtRunner, read_meta
from prevla_training.export import ExportConfig, ExportError, export_onnx, main, parity, recorded_feeds

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("kind, outputs", [("verifier", {"p_safe", "advantage"}), ("vla", {"chunks"})])
def test_onnx_round_trip_matches_torch_and_writes_its_manifest_entry(tmp_path, kind, outputs):
    name, entry = export_onnx(ExportConfig(kind=kind, out_dir=str(tmp_path), k_max=4))
    path = tmp_path / entry["file"]
    assert path.is_file() and entry["sha256"] == zoo.sha256_file(str(path))
    assert set(entry["parity"]["max_abs_err"]) == outputs and entry["parity"]["ks"] == [1, 8, 4]
    assert max(entry["parity"]["max_abs_err"].values()) < 1e-4
    sig = entry["signature"]
    chunk_input = "actions" if kind == "verifier" else "noise"
    assert list(sig["inputs"]) == ["images", "proprio", "tokens", chunk_input]
    assert sig["inputs"][chunk_input]["shape"][:2] == ["B", "K"] and sig["inputs"]["images"]["dtype"] == "uint8"
    assert entry["source_sha256"] == zoo.load_manifest()[entry["source"]]["sha256"]
    assert json.loads((tmp_path / f"{entry['file']}.manifest.json").read_text())[name]["sha256"] == entry["sha256"]
    # Its sidecar (sha256sum format) is the record that lets it serve by path.
    assert sidecar_path(path).read_text() == f"{entry['sha256']}  {entry['file']}\n"
    assert verify(path).record == f"sidecar {sidecar_path(path)}"
    assert load_model(kind, str(path)).sha256 == entry["sha256"]
    # K beyond the export's example (8) and the parity set works: K is a dynamic axis.
    runner = OrtRunner(str(path))
    out = runner(recorded_feeds(runner.meta, 32)[0])
    assert next(iter(out.values())).shape[:2] == (1, 32)
    assert not list(tmp_path.glob(".*tmp*"))  # no leftovers


def test_a_source_checkpoint_without_a_record_is_not_exported(tmp_path, capsys):
    import shutil

    src = tmp_path / "copy.pt"
    shutil.copy(zoo.zoo_dir() / "verifier_libero_spatial.pt", src)  # no sidecar, not in the manifest
    assert main([str(src), "--out-dir", str(tmp_path / "out")]) == 2
    assert "refusing unverified model file" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_failed_parity_check_publishes_nothing(tmp_path):
    with pytest.raises(ExportError, match="failed its parity check.*nothing was published"):
        export_onnx(ExportConfig(kind="verifier", out_dir=str(tmp_path), tolerance=1e-12, k_max=2))
    assert list(tmp_path.iterdir()) == []


def test_committed_exports_are_in_sync_with_their_checkpoints():
    for kind in ("verifier", "vla"):
        ort = load_model(kind, "", "onnxruntime").runner
        meta = read_meta(load_model(kind, "", "onnxruntime").path)
        assert meta["source_sha256"] == zoo.load_manifest()[meta["source"]]["sha256"]
        report = parity(load_model(kind, "", "torch").runner, ort, ort.meta, (1, 16))
        assert max(report["max_abs_err"].values()) < 1e-4, report
        if kind == "verifier":
            assert report["accept_agreement"] == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"to": "tflite"}, "ExportConfig.to"), ({"precision": "fp16"}, "ExportConfig.precision"),
    ({"k_max": 0}, "ExportConfig.k_max"), ({"kind": "critic"}, "ExportConfig.kind"),
    ({"tolerance": -1.0}, "ExportConfig.tolerance")])
def test_bad_export_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**kwargs)


def test_cli_reports_what_cannot_be_done_here(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: see the gpu tests")
    assert main(["--to", "tensorrt", "--out-dir", str(tmp_path)]) == 2
    assert "cannot build a TensorRT engine here" in capsys.readouterr().out
    assert main([str(tmp_path / "absent.pt"), "--out-dir", str(tmp_path)]) == 2


def test_recorded_inputs_are_real_observations():
    data = np.load(zoo.zoo_dir() / "recorded_inputs_libero_spatial.npz")
    assert data["images"].shape == (8, 2, 128, 128, 3) and data["images"].std() > 10
    assert data["actions"].shape == (8, 16, 8, 7) and np.all(np.abs(data["actions"]) <= 1)
    meta = TorchRunner.from_checkpoint(zoo.resolve("", "verifier")).meta
    feeds = recorded_feeds({**meta, "image_side": 64}, 3)
    assert feeds[0]["images"].shape == (1, 2, 64, 64, 3) and feeds[0]["actions"].shape == (1, 3, 8, 7)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engine_builds_matches_torch_and_runs_k16(tmp_path, precision):
    import time

    from prevla_ros.runtime.engines.tensorrt_runner import TensorRTRunner

    name, entry = __import__("prevla_training.export", fromlist=["build_tensorrt"]).build_tensorrt(
        ExportConfig(kind="verifier", to="tensorrt", precision=precision, out_dir=str(tmp_path)))
    assert entry["target"]["gpu"] and entry["parity"]["max_abs_err"]
    runner = TensorRTRunner(str(tmp_path / entry["file"]))
    feeds = recorded_feeds(runner.meta, 16)[0]
    for _ in range(20):
        runner(feeds)
    t0 = time.perf_counter()
    for _ in range(100):
        runner(feeds)
    print(f"TensorRT {precision} K=16: {(time.perf_counter() - t0) * 10:.3f} ms per call")
