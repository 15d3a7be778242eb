"""Export a model to ONNX or TensorRT, check it against torch, and publish it to the zoo.

    prevla export MODEL --to onnx [--image-side 128] [--k-max 16]
    prevla export MODEL --to tensorrt [--precision fp16|int8|fp32] [--k-max 16]   (on the GPU it is for)
    prevla export --record-inputs outputs/candidates/libero_spatial     (the recorded parity inputs)

MODEL is a zoo spec (``""`` / ``zoo:default-verifier`` style: ``zoo:NAME``) or a ``.pt`` file; the
kind (vla / verifier) is read from the checkpoint. Both formats run the inference graph of
:mod:`prevla_models.graphs` with dynamic B and K and named inputs/outputs.

Every export runs the artifact and torch on **recorded inputs** (``models/zoo/recorded_inputs_libero_spatial.npz``:
8 real LIBERO-Spatial decisions, two 128x128 cameras, 15-D proprio, 16 labelled candidate chunks
each) at K = 1, 8 and K_max and refuses to publish when the largest absolute difference of any
output (verifier: P(safe) and advantage; VLA: chunks, from the same noise) exceeds the
tolerance of its precision. A published artifact gets a manifest entry: ``source`` (the
checkpoint entry it came from) and its sha256, ``format``, ``precision``, the I/O signature,
the parity report, the builder versions and the target it runs on (TensorRT: the GPU model,
compute capability and TensorRT version; an engine is only valid there).

Every published file gets its sha256 sidecar ``<file>.sha256`` (``sha256sum`` format; a TensorRT
engine's ``.json`` description too, also recorded as the entry's ``description_sha256``): what
lets the runtime serve it by path (:mod:`prevla_models.artifacts`). The source checkpoint must
itself verify against its record (``--allow-unverified-models`` to export one that does not).

TensorRT: ``--to tensorrt`` needs a CUDA GPU and the TensorRT Python builder; INT8 calibrates
on the recorded inputs. It has not been run on the machines this was written on (no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prevla_models.kinds import RUNNABLE

FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
#: Largest allowed |artifact - torch| of any output, per precision (P(safe), advantage, chunk values).
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.15}
RECORDED = "recorded_inputs_libero_spatial.npz"


class ExportError(RuntimeError):
    """The artifact failed its parity check (nothing was published) or cannot be built here."""


@dataclass
class ExportConfig:
    """One export; every field is a ``prevla export`` flag."""

    model: str = ""            # zoo spec or .pt file ("" = the zoo's default of --kind)
    kind: str = "verifier"     # only used to pick the zoo default when model is ""
    to: str = "onnx"
    precision: str = ""        # "" = fp32 for onnx, fp16 for tensorrt
    k_max: int = 16
    image_side: int = 128
    opset: int = 17
    inputs: str = ""           # recorded inputs (.npz); "" = the zoo's
    tolerance: float = 0.0     # 0 = TOLERANCE[precision]
    out_dir: str = ""          # "" = the zoo (and register the entry)
    name: str = ""             # "" = <source>_onnx / <source>_trt_<precision>_<gpu>
    device: str = "cuda"       # TensorRT build / parity device
    allow_unverified_models: bool = False  # export a source .pt whose sha256 matches no record

    def __post_init__(self) -> None:
        if self.to not in FORMATS:
            raise ValueError(f"ExportConfig.to must be one of {FORMATS}, got {self.to!r}")
        if self.kind not in RUNNABLE:
            raise ValueError(f"ExportConfig.kind must be {' or '.join(RUNNABLE)}, got {self.kind!r}")
        self.precision = self.precision or ("fp32" if self.to == "onnx" else "fp16")
        if self.precision not in PRECISIONS or (self.to == "onnx" and self.precision != "fp32"):
            raise ValueError(f"ExportConfig.precision must be fp32 for onnx and one of {PRECISIONS} for "
                             f"tensorrt, got {self.precision!r}")
        for name, low in (("k_max", 1), ("image_side", 16), ("opset", 13)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"ExportConfig.{name} must be an int >= {low}, got {v!r}")
        if not (self.tolerance >= 0):
            raise ValueError(f"ExportConfig.tolerance must be >= 0, got {self.tolerance!r}")
        self.tolerance = self.tolerance or TOLERANCE[self.precision]


# ---------------------------------------------------------------- recorded inputs
def record_inputs(data_dir: str, out: str, tasks: int = 8) -> dict:
    """Write the recorded parity inputs: the middle decision of the last episode of each of the
    first ``tasks`` tasks of a ``prevla label-candidates`` directory (its 8 candidates + the
    next decision's 8)."""
    import glob

    import h5py

    from prevla_models.geometry import with_joints
    from prevla_sim.outcomes import JOINTS

    rows = {k: [] for k in ("images", "proprio", "instructions", "actions", "source")}
    for t in range(tasks):
        files = sorted(glob.glob(f"{data_dir}/task{t:02d}/init*.hdf5"))
        if not files:
            raise FileNotFoundError(f"{data_dir}/task{t:02d}: no labelled episodes")
        with h5py.File(files[-1]) as f:
            n = f["actions"].shape[0]
            i = n // 2
            rows["images"].append(f["images"][i])
            rows["proprio"].append(with_joints(f["proprio"][i], f["state"][i][JOINTS]))
            rows["instructions"].append(str(f.attrs["instruction"]))
            rows["actions"].append(np.concatenate([f["actions"][i], f["actions"][min(i + 1, n - 1)]]))
            rows["source"].append(f"{Path(files[-1]).parent.name}/{Path(files[-1]).name}#decision{i}")
    arrays = {k: np.array(v) for k, v in rows.items()}
    arrays["proprio"] = arrays["proprio"].astype(np.float32)
    arrays["actions"] = arrays["actions"].astype(np.float32)
    np.savez_compressed(out, **arrays)
    return {k: list(v.shape) for k, v in arrays.items()}


def recorded_feeds(meta: dict, k: int, path: str = "", seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed dict per recorded observation for a runner of ``meta`` (K = ``k``).

    The verifier gets the first ``k`` recorded candidates (cycled when k > 16); the VLA gets
    seeded N(0, 1) start noise. Images are area-downsampled if the graph takes a smaller side.
    """
    from prevla_models import zoo
    from prevla_models.checkpoints import token_ids, word_ids
    from prevla_models.geometry import area_downsample

    data = np.load(path or zoo.zoo_dir() / RECORDED)
    c = meta["config"]
    images = data["images"]
    side = meta.get("image_side") or images.shape[2]
    if images.shape[2] % side:
        raise ValueError(f"recorded images are {images.shape[2]}px, not a multiple of the graph's {side}px")
    images = area_downsample(images, side)
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(len(images)):
        row = {"images": images[i:i + 1, : c["cameras"]], "proprio": data["proprio"][i:i + 1, : c["proprio_dim"]],
               "tokens": token_ids(word_ids(c["vocab"]), c["max_words"], [str(data["instructions"][i])])}
        if "actions" in meta["inputs"]:  # verifier: score recorded candidates
            acts = data["actions"][i]
            row["actions"] = np.resize(acts, (k, *acts.shape[1:]))[None].astype(np.float32)
        else:
            row["noise"] = rng.standard_normal((1, k, c["horizon"], c["action_dim"])).astype(np.float32)
        feeds.append(row)
    return feeds


def parity(reference, candidate, meta: dict, ks: tuple[int, ...], inputs: str = "") -> dict:
    """Largest |candidate - reference| per output over the recorded inputs at each K."""
    worst: dict[str, float] = {}
    agree, total = 0, 0
    for k in ks:
        for feeds in recorded_feeds(meta, k, inputs):
            ref, out = reference(feeds), candidate(feeds)
            for name in meta["outputs"]:
                a, b = np.asarray(ref[name], np.float64), np.asarray(out[name], np.float64)
                if name == "safety_logit":  # compare what the scheduler uses: P(safe)
                    a, b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
                    tau = meta["threshold"]
                    agree += int(np.sum((a >= tau) == (b >= tau)))
                    total += a.size
                    name = "p_safe"
                worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(a - b))))
    report = {"max_abs_err": worst, "observations": len(recorded_feeds(meta, 1, inputs)), "ks": list(ks)}
    if total:
        report["accept_agreement"] = agree / total
    return report


def _check_parity(report: dict, tolerance: float, what: str) -> None:
    bad = {k: v for k, v in report["max_abs_err"].items() if not v <= tolerance}
    if bad:
        raise ExportError(f"{what} failed its parity check against torch (tolerance {tolerance:g}): "
                          f"{bad}; nothing was published")


# ---------------------------------------------------------------- ONNX
def _signature(model_proto) -> dict:
    """``{inputs: {name: [dims], dtype}, outputs: ...}`` of an ONNX graph (symbolic dims by name)."""
    import onnx

    def one(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": {v.name: one(v) for v in model_proto.graph.input},
            "outputs": {v.name: one(v) for v in model_proto.graph.output}}


def _source(cfg: ExportConfig) -> tuple[str, str, str]:
    """(checkpoint path, source name, source sha256) of the model to export."""
    from prevla_models import artifacts, zoo

    if cfg.model and not cfg.model.startswith("zoo:"):
        checked = artifacts.verify(cfg.model, cfg.allow_unverified_models)
        return checked.path, Path(cfg.model).stem, checked.sha256
    models = zoo.load_manifest()
    path = zoo.resolve(cfg.model, cfg.kind) if not cfg.model else None
    name = Path(path).stem if path else cfg.model[len("zoo:"):]
    if name not in models:
        raise FileNotFoundError(f"zoo model {name!r} not in the manifest")
    path = str(zoo.entry_path(name, models[name]))
    return path, name, models[name]["sha256"]


def _publish(cfg: ExportConfig, name: str, entry: dict, tmp: Path, final: Path) -> dict:
    """Move the checked artifact into place, record its sha256 (sidecar + manifest entry)."""
    from prevla_models import zoo
    from prevla_models.artifacts import sha256_file, write_sidecar

    entry = json.loads(json.dumps(entry, default=str))  # plain YAML-able types only
    digest = sha256_file(str(tmp))
    os.replace(tmp, final)
    write_sidecar(final, digest)
    entry.update(file=final.name, sha256=digest, bytes=final.stat().st_size)
    if not cfg.out_dir:
        zoo.put_entry(name, entry)
    else:
        Path(f"{final}.manifest.json").write_text(json.dumps({name: entry}, indent=1))
    return entry


def export_onnx(cfg: ExportConfig) -> tuple[str, dict]:
    """Export, check parity with ONNX Runtime, publish; returns (entry name, manifest entry)."""
    import onnx
    import onnxruntime
    import torch

    from prevla_models import zoo
    from prevla_models.checkpoints import load_any
    from prevla_models.graphs import DYNAMIC_AXES, TorchRunner, build_graph, model_meta
    from prevla_ros.runtime.engines.onnxruntime_runner import META_KEY, OrtRunner

    path, source, source_sha = _source(cfg)
    model, extra, kind = load_any(path)
    meta = {**model_meta(model, extra, kind, cfg.image_side), "precision": "fp32",
            "source": source, "source_sha256": source_sha}
    graph = build_graph(model, kind)
    example = recorded_feeds(meta, 8, cfg.inputs)[0]
    out_dir = Path(cfg.out_dir) if cfg.out_dir else zoo.zoo_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    final, name = out_dir / f"{source}.onnx", cfg.name or f"{source}_onnx"
    tmp = out_dir / f".{source}.onnx.tmp"
    t0 = time.perf_counter()
    # Traced with autograd on: under no_grad torch takes the fused transformer fast path
    # (aten::_transformer_encoder_layer_fwd), which has no ONNX symbolic.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the input checks are traced as constants
        torch.onnx.export(graph, tuple(torch.from_numpy(example[n]) for n in meta["inputs"]), str(tmp),
                          dynamo=False, opset_version=cfg.opset, input_names=meta["inputs"],
                          output_names=meta["outputs"], do_constant_folding=True,
                          dynamic_axes={n: DYNAMIC_AXES[n] for n in meta["inputs"] + meta["outputs"]})
    proto = onnx.load(str(tmp))
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    try:
        report = parity(TorchRunner(model, kind, extra), OrtRunner(str(tmp), "cpu"), meta,
                        (1, 8, cfg.k_max), cfg.inputs)
        _check_parity(report, cfg.tolerance, f"ONNX export of {source}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    entry = {"kind": kind, "format": "onnx", "source": source, "source_sha256": source_sha,
             "precision": "fp32", "signature": _signature(proto), "image_side": cfg.image_side,
             "parity": {**report, "tolerance": cfg.tolerance, "reference": "torch eager fp32 (CPU)",
                        "inputs": cfg.inputs or RECORDED},
             "builder": {"torch": str(torch.__version__), "onnx": onnx.__version__, "opset": cfg.opset,
                         "onnxruntime": onnxruntime.__version__, "export_s": round(time.perf_counter() - t0, 2),
                         "machine": f"{platform.machine()} {os.cpu_count()} cores"},
             "target": {"runs_on": "onnxruntime CPU (and CUDA / TensorRT execution providers)"}}
    return name, _publish(cfg, name, entry, tmp, final)


# ---------------------------------------------------------------- TensorRT
def build_tensorrt(cfg: ExportConfig) -> tuple[str, dict]:
    """ONNX -> TensorRT engine for this GPU (profiles K = 1..K_max), parity vs torch on the GPU."""
    import tempfile

    from prevla_models import zoo
    from prevla_models.artifacts import sha256_file, write_sidecar
    from prevla_models.checkpoints import load_any
    from prevla_models.graphs import TorchRunner
    from prevla_ros.runtime.engines.errors import EngineUnavailable
    from prevla_ros.runtime.engines.onnxruntime_runner import read_meta
    from prevla_ros.runtime.engines.tensorrt_runner import TensorRTRunner, gpu_target, import_tensorrt

    try:
        target = gpu_target(cfg.device)
        trt = import_tensorrt()
        if not hasattr(trt, "Builder"):
            raise EngineUnavailable(f"{trt.__name__} is a runtime-only TensorRT (no Builder)")
    except EngineUnavailable as e:
        raise ExportError(f"cannot build a TensorRT engine here: {e}") from e
    path, source, source_sha = _source(cfg)
    with tempfile.TemporaryDirectory() as work:
        _, onnx_entry = export_onnx(ExportConfig(**{**vars(cfg), "to": "onnx", "precision": "fp32", "out_dir": work,
                                                    "tolerance": 0.0}))
        onnx_path = Path(work) / onnx_entry["file"]
        meta = read_meta(str(onnx_path))
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ExportError(f"TensorRT cannot parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        if cfg.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if cfg.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _calibrator(trt, meta, cfg)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            shape = [1 if d == -1 else d for d in inp.shape]
            lo, opt, hi = list(shape), list(shape), list(shape)
            if inp.name in ("actions", "noise"):
                lo[1], opt[1], hi[1] = 1, min(8, cfg.k_max), cfg.k_max
            profile.set_shape(inp.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        t0 = time.perf_counter()
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise ExportError("TensorRT failed to build the engine (see its log above)")
        build_s = time.perf_counter() - t0
    out_dir = Path(cfg.out_dir) if cfg.out_dir else zoo.zoo_dir()
    slug = re.sub(r"[^a-z0-9]+", "_", target["gpu"].lower()).strip("_")
    name = cfg.name or f"{source}_trt_{cfg.precision}_{slug}"
    final, tmp = out_dir / f"{name}.engine", out_dir / f".{name}.engine.tmp"
    tmp.write_bytes(bytes(blob))
    meta = {**meta, "precision": cfg.precision, "k_max": cfg.k_max, "target": target}
    Path(f"{tmp}.json").write_text(json.dumps(meta))
    try:
        model, extra, kind = load_any(path, cfg.device)
        report = parity(TorchRunner(model, kind, extra, cfg.device), TensorRTRunner(str(tmp), cfg.device), meta,
                        (1, min(8, cfg.k_max), cfg.k_max), cfg.inputs)
        _check_parity(report, cfg.tolerance, f"TensorRT {cfg.precision} engine of {source}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.json").unlink(missing_ok=True)
        raise
    os.replace(f"{tmp}.json", f"{final}.json")
    description_sha = sha256_file(f"{final}.json")
    write_sidecar(f"{final}.json", description_sha)
    entry = {"kind": kind, "format": "tensorrt", "source": source, "source_sha256": source_sha,
             "description_sha256": description_sha,
             "precision": cfg.precision, "signature": onnx_entry["signature"], "image_side": cfg.image_side,
             "k_max": cfg.k_max, "parity": {**report, "tolerance": cfg.tolerance, "reference": "torch eager fp32 (GPU)"},
             "builder": {"tensorrt": trt.__version__, "build_s": round(build_s, 1)}, "target": target}
    return name, _publish(cfg, name, entry, tmp, final)


def _calibrator(trt, meta: dict, cfg: ExportConfig):
    """INT8 entropy calibrator over the recorded inputs (one observation per batch, K = 8)."""
    import torch

    batches = recorded_feeds(meta, min(8, cfg.k_max), cfg.inputs)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.i, self.held = 0, []

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.i >= len(batches):
                return None
            self.held = [torch.from_numpy(batches[self.i][n]).cuda() for n in names]
            self.i += 1
            return [t.data_ptr() for t in self.held]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return Calibrator()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prevla export", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="", help="zoo:NAME or a .pt checkpoint ('' = the zoo default of --kind)")
    p.add_argument("--kind", default="verifier", help=f"{' | '.join(RUNNABLE)} (for the zoo default)")
    p.add_argument("--to", default="onnx", help="onnx | tensorrt")
    p.add_argument("--precision", default="", help="fp32 (onnx) | fp16 (tensorrt default) | int8 | fp32")
    p.add_argument("--k-max", type=int, default=16, help="largest K of the parity check / TensorRT profile")
    p.add_argument("--image-side", type=int, default=128, help="camera side the graph takes")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--inputs", default="", help="recorded inputs .npz ('' = the zoo's)")
    p.add_argument("--tolerance", type=float, default=0.0, help="max |artifact - torch| (0 = per precision)")
    p.add_argument("--out-dir", default="", help="write here instead of the zoo (and do not register)")
    p.add_argument("--name", default="", help="manifest entry name")
    p.add_argument("--device", default="cuda", help="TensorRT: GPU to build for")
    p.add_argument("--allow-unverified-models", action="store_true",
                   help="export a .pt whose sha256 matches no record (zoo manifest or FILE.sha256)")
    p.add_argument("--record-inputs", default="", metavar="DATA_DIR",
                   help="write the recorded parity inputs from a label-candidates directory and exit")
    a = p.parse_args(argv)
    try:
        if a.record_inputs:
            from prevla_models import zoo

            print(json.dumps(record_inputs(a.record_inputs, str(Path(a.out_dir or zoo.zoo_dir()) / RECORDED))))
            return 0
        cfg = ExportConfig(model=a.model, kind=a.kind, to=a.to, precision=a.precision, k_max=a.k_max,
                           image_side=a.image_side, opset=a.opset, inputs=a.inputs, tolerance=a.tolerance,
                           out_dir=a.out_dir, name=a.name, device=a.device,
                           allow_unverified_models=a.allow_unverified_models)
        name, entry = (export_onnx if cfg.to == "onnx" else build_tensorrt)(cfg)
    except (ValueError, FileNotFoundError, ExportError) as e:
        print(f"prevla export: {e}")
        return 2
    print(json.dumps({"name": name, **{k: entry[k] for k in ("file", "sha256", "bytes", "precision")},
                      "parity": entry["parity"]["max_abs_err"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
