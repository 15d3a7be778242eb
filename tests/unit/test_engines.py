"""Runtime backends: the fallback chain, corrupt / stale / mismatched / unverified artifacts, named
backends that never switch, backend agreement, and ModelSlot's checks (real ONNX Runtime sessions
on the committed zoo exports)."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from prevla_models import zoo
from prevla_models.artifacts import UnverifiedModel, write_sidecar
from prevla_models.verifier_scorer import VerifierScorer
from prevla_models.vla_policy import VLAPolicy
from prevla_ros.runtime.engines import EngineError, ModelSlot, load_model
from prevla_ros.runtime.engines.errors import EngineUnavailable
from prevla_ros.runtime.engines.slot import warm_up

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def observation(seed: int = 0):
    data = np.load(zoo.zoo_dir() / "recorded_inputs_libero_spatial.npz")
    return SimpleNamespace(images={"agentview": data["images"][seed, 0], "wrist": data["images"][seed, 1]},
                           eef_pos=np.zeros(3), eef_quat_xyzw=np.array([1.0, 0, 0, 0]),
                           gripper_qpos=np.array([0.04, -0.04]), joint_positions=data["proprio"][seed, 8:],
                           instruction=str(data["instructions"][seed]))


@pytest.fixture
def private_zoo(tmp_path):
    """A copy of the zoo's verifier family (manifest + files) that tests may damage."""
    models = zoo.load_manifest()
    keep = {n: e for n, e in models.items() if n.startswith("verifier_libero_spatial") and "file" in e}
    for e in keep.values():
        shutil.copy(zoo.zoo_dir() / e["file"], tmp_path / e["file"])
    zoo.save_manifest(keep, tmp_path)
    return tmp_path


def test_auto_picks_onnxruntime_on_cpu_and_says_why_not_tensorrt():
    m = load_model("verifier", "", "auto", "cpu")
    assert m.backend == "onnxruntime" and m.name == "verifier_libero_spatial_onnx"
    assert m.path.endswith(".onnx") and len(m.sha256) == 64
    assert any(n.startswith("tensorrt") for n in m.notes)
    assert load_model("vla", "", "auto", "cpu").backend == "onnxruntime"


def test_named_backends_and_files():
    assert load_model("verifier", "", "torch").backend == "torch"
    assert load_model("verifier", "", "onnxruntime").backend == "onnxruntime"
    onnx = str(zoo.zoo_dir() / "verifier_libero_spatial.onnx")
    assert load_model("verifier", onnx).backend == "onnxruntime"
    with pytest.raises(ValueError, match="backend 'torch' cannot run"):
        load_model("verifier", onnx, "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model("verifier", "", "tensorflow")
    with pytest.raises(ValueError, match="device must be"):
        load_model("verifier", "", "auto", "tpu")
    with pytest.raises(EngineError, match="holds a 'verifier' model, not a 'vla'"):
        load_model("vla", onnx)


def test_backends_agree_on_scores_and_samples():
    obs, chunks = observation(), np.load(zoo.zoo_dir() / "recorded_inputs_libero_spatial.npz")["actions"][0]
    torch_scorer = VerifierScorer(load_model("verifier", "", "torch").runner)
    ort_scorer = VerifierScorer(load_model("verifier", "", "onnxruntime").runner)
    for a, b in zip(torch_scorer.score(obs, chunks), ort_scorer.score(obs, chunks)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert torch_scorer.threshold == pytest.approx(ort_scorer.threshold)
    assert torch_scorer.verifier_id == ort_scorer.verifier_id == "verifier_libero_spatial"
    # Same seed -> same noise (drawn on the CPU whatever the backend) -> the same chunks.
    p_torch = VLAPolicy(load_model("vla", "", "torch").runner, seed=3)
    p_ort = VLAPolicy(load_model("vla", "", "onnxruntime").runner, seed=3)
    for k, t in ((8, 1.0), (1, 0.0)):
        np.testing.assert_allclose(p_torch.sample(obs, k, t), p_ort.sample(obs, k, t), atol=1e-4)


def test_a_corrupt_onnx_artifact_falls_back_under_auto_with_the_reason(private_zoo):
    onnx = private_zoo / "verifier_libero_spatial.onnx"
    onnx.write_bytes(onnx.read_bytes()[: 4096])  # truncated copy
    m = load_model("verifier", "", "auto", root=private_zoo)
    assert m.backend == "torch"
    assert any("sha256" in n and "corrupt or replaced" in n for n in m.notes), m.notes
    assert m.fallbacks and "corrupt or replaced" in m.fallbacks[0]  # what the node logs as a warning
    # Re-registered with the corrupt file's sha256: ONNX Runtime itself refuses it.
    models = zoo.load_manifest(private_zoo)
    models["verifier_libero_spatial_onnx"]["sha256"] = zoo.sha256_file(str(onnx))
    zoo.save_manifest(models, private_zoo)
    m = load_model("verifier", "", "auto", root=private_zoo)
    assert m.backend == "torch" and any("not a readable ONNX file" in n for n in m.fallbacks), m.notes
    # A file path has no fallback: a clear error.
    with pytest.raises(EngineError, match="not a readable ONNX file"):
        load_model("verifier", str(onnx), root=private_zoo)


def test_a_named_backend_that_cannot_serve_raises_instead_of_switching(private_zoo):
    onnx = private_zoo / "verifier_libero_spatial.onnx"
    good = onnx.read_bytes()
    onnx.write_bytes(good[: 4096])  # corrupt: its sha256 is not the manifest's
    with pytest.raises(EngineError, match="backend onnxruntime.*corrupt or replaced"):
        load_model("verifier", "", "onnxruntime", root=private_zoo)
    with pytest.raises(EngineError, match="backend onnxruntime.*corrupt or replaced"):
        load_model("verifier", "zoo:verifier_libero_spatial_onnx", "onnxruntime", root=private_zoo)
    models = zoo.load_manifest(private_zoo)
    models["verifier_libero_spatial_onnx"]["sha256"] = zoo.sha256_file(str(onnx))
    zoo.save_manifest(models, private_zoo)  # recorded, but ONNX Runtime cannot read it
    with pytest.raises(EngineError, match="not a readable ONNX file"):
        load_model("verifier", "", "onnxruntime", root=private_zoo)
    assert load_model("verifier", "", "torch", root=private_zoo).backend == "torch"  # named, intact


def _copy(src: Path, dst: Path, sidecar: bool) -> Path:
    shutil.copy(src, dst)
    if sidecar:
        write_sidecar(dst)
    return dst


@pytest.mark.parametrize("name", ["verifier_libero_spatial.onnx", "verifier_libero_spatial.pt"])
def test_a_flipped_byte_in_a_file_loaded_by_path_is_refused(tmp_path, name):
    path = _copy(zoo.zoo_dir() / name, tmp_path / name, sidecar=True)
    m = load_model("verifier", str(path))
    assert m.record.startswith("sidecar") and not m.unverified and m.sha256 == zoo.sha256_file(str(path))
    recorded = m.sha256
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one weight byte
    path.write_bytes(bytes(data))
    with pytest.raises(UnverifiedModel) as err:
        load_model("verifier", str(path))
    text = str(err.value)
    assert str(path) in text and recorded in text and zoo.sha256_file(str(path)) in text
    assert "corrupt or replaced" in text and "allow_unverified_models" in text
    # A ModelSlot (what a node's startup and hot-swap use) refuses it the same way.
    with pytest.raises(UnverifiedModel):
        ModelSlot("verifier", lambda m: VerifierScorer(m.runner)).prepare(str(path))


def test_a_file_without_a_record_is_refused_unless_the_user_opts_in(tmp_path):
    path = _copy(zoo.zoo_dir() / "verifier_libero_spatial.onnx", tmp_path / "mine.onnx", sidecar=False)
    with pytest.raises(UnverifiedModel, match=f"refusing unverified model file {path}: .*no recorded sha256"):
        load_model("verifier", str(path))
    m = load_model("verifier", str(path), allow_unverified=True)
    assert m.backend == "onnxruntime" and m.record == "" and "no recorded sha256" in m.unverified
    staged = ModelSlot("verifier", lambda m: VerifierScorer(m.runner)).prepare(str(path), allow_unverified=True)
    assert staged.loaded.unverified  # what the node logs (a warning) and reports in /diagnostics
    write_sidecar(path)  # recorded: verified from now on
    assert not load_model("verifier", str(path)).unverified
    # Files in the zoo directory are verified by the manifest (and their committed sidecars).
    m = load_model("verifier", str(zoo.zoo_dir() / "verifier_libero_spatial.onnx"))
    assert not m.unverified and m.record


def test_a_tensorrt_engine_file_needs_a_record_of_its_description_too(tmp_path):
    engine = tmp_path / "v.engine"
    engine.write_bytes(b"an engine")
    Path(f"{engine}.json").write_text(json.dumps({"kind": "verifier", "threshold": 0.5}))
    write_sidecar(engine)
    with pytest.raises(UnverifiedModel, match=r"v\.engine\.json"):
        load_model("verifier", str(engine), device="cpu")
    write_sidecar(f"{engine}.json")
    with pytest.raises(EngineError, match="cuda"):  # verified; then TensorRT needs a GPU
        load_model("verifier", str(engine), device="cpu")


def test_an_onnx_file_that_is_not_a_prevla_export_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    write_sidecar(tmp_path / "other.onnx")
    with pytest.raises(EngineError, match="not a prevla export"):
        load_model("verifier", str(tmp_path / "other.onnx"))


def test_a_tensorrt_engine_is_skipped_without_a_gpu_and_a_missing_one_is_clear(private_zoo, tmp_path):
    engine = private_zoo / "verifier_trt.engine"
    engine.write_bytes(b"not really an engine")
    Path(f"{engine}.json").write_text(json.dumps({"target": {"gpu": "NVIDIA H100", "tensorrt": "10.0"}}))
    models = zoo.load_manifest(private_zoo)
    models["verifier_trt"] = {"kind": "verifier", "format": "tensorrt", "source": "verifier_libero_spatial",
                              "file": engine.name, "sha256": zoo.sha256_file(str(engine))}
    zoo.save_manifest(models, private_zoo)
    m = load_model("verifier", "zoo:verifier_trt", root=private_zoo, device="cpu")
    assert m.backend == "onnxruntime" and any("tensorrt" in n and "cuda" in n for n in m.notes), m.notes
    from prevla_ros.runtime.engines.tensorrt_runner import TensorRTRunner

    with pytest.raises(FileNotFoundError):
        TensorRTRunner(str(tmp_path / "absent.engine"))
    with pytest.raises((EngineUnavailable, ValueError)):  # no CUDA here, or (on a GPU) a stale/corrupt engine
        TensorRTRunner(str(engine))


def test_model_slot_checks_before_it_switches(tmp_path):
    slot = ModelSlot("verifier", lambda m: VerifierScorer(m.runner))
    staged = slot.prepare("", "onnxruntime")
    assert staged.warmup_ms > 0 and slot.adapter is None  # nothing switched yet
    slot.commit(staged)
    assert slot.loaded.backend == "onnxruntime" and slot.swaps == 1
    with pytest.raises(ValueError, match="expected deadbeef"):
        slot.prepare("", "torch", expected_sha256="deadbeef")
    with pytest.raises(EngineError, match="holds a 'vla' model, not a 'verifier'"):
        slot.prepare(str(zoo.zoo_dir() / "vla_libero_spatial.onnx"))
    with pytest.raises(ValueError, match="signature: a 'vla' model cannot replace a 'verifier'"):
        slot.check_signature(load_model("vla", "", "onnxruntime").runner.meta)
    assert slot.loaded.backend == "onnxruntime"  # failures leave the running model alone
    slot.commit(slot.prepare("", "torch"))
    assert slot.loaded.backend == "torch" and slot.swaps == 2


def test_model_slot_refuses_a_different_chunk_shape(tmp_path):
    import torch

    from prevla_models.verifier import Verifier, VerifierConfig, load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(zoo.resolve("", "verifier"))
    cfg = VerifierConfig(**{**vars(model.cfg), "horizon": 4, "d_model": 32, "n_layers": 1, "n_heads": 2})
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "h4.pt"), Verifier(cfg))
    slot = ModelSlot("verifier", lambda m: VerifierScorer(m.runner))
    slot.commit(slot.prepare("", "onnxruntime"))
    with pytest.raises(ValueError, match="horizon 8 -> 4"):
        slot.prepare(str(tmp_path / "h4.pt"))


def test_model_slot_allows_one_prepare_at_a_time(monkeypatch):
    slot = ModelSlot("verifier", lambda m: VerifierScorer(m.runner))
    gate, entered = threading.Event(), threading.Event()
    import prevla_ros.runtime.engines.slot as slot_module

    real = slot_module.load_model

    def slow(*a, **kw):
        entered.set()
        gate.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(slot_module, "load_model", slow)
    t = threading.Thread(target=lambda: slot.prepare("", "torch"))
    t.start()
    entered.wait(10)
    with pytest.raises(RuntimeError, match="another model swap is in progress"):
        slot.prepare("", "torch")
    gate.set()
    t.join(30)


def test_warm_up_rejects_non_finite_outputs():
    class Broken:
        meta = load_model("verifier", "", "onnxruntime").runner.meta

        def __call__(self, feeds):
            k = feeds["actions"].shape[1]
            return {"safety_logit": np.full((1, k), np.nan, np.float32), "advantage": np.zeros((1, k), np.float32)}

    with pytest.raises(ValueError, match="'safety_logit' is not finite"):
        warm_up(Broken())


def test_manifest_exports_point_at_their_checkpoints():
    models = zoo.load_manifest()
    for name, e in models.items():
        if e.get("format") in ("onnx", "tensorrt"):
            assert e["source"] in models and e["source_sha256"] == models[e["source"]]["sha256"], name
            assert e["parity"]["max_abs_err"] and all(v <= e["parity"]["tolerance"] for v in e["parity"]["max_abs_err"].values())
    assert {"verifier_libero_spatial_onnx", "vla_libero_spatial_onnx"} <= set(models)
    yaml.safe_dump(models)  # plain types only
