"""ONNX Runtime backend: an exported prevla graph (``prevla export MODEL --to onnx``) in a session.

The ONNX file carries its own description (metadata ``prevla_meta``: kind, config with the
vocabulary, input/output names, camera side, threshold), so it runs without the torch checkpoint.
Execution providers: CPU always; on ``device: cuda`` also TensorRT and CUDA providers when the
installed onnxruntime has them (``onnxruntime-gpu``), in that order.
"""
from __future__ import annotations

import json

import numpy as np

from prevla_ros.runtime.engines.errors import EngineUnavailable

META_KEY = "prevla_meta"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def read_meta(path: str) -> dict:
    """The ``prevla_meta`` metadata of an exported ONNX file (ValueError if it has none)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # truncated / not protobuf
        raise ValueError(f"{path} is not a readable ONNX file: {type(e).__name__}: {e}") from e
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise ValueError(f"{path} is not a prevla export (no {META_KEY!r} metadata); export it with `prevla export`")
    return json.loads(props[META_KEY])


class OrtRunner:
    """A prevla graph in an ONNX Runtime session (see :mod:`prevla_models.graphs` for feeds).

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda[:N]" (GPU providers when the onnxruntime build has them).
        threads: intra-op threads (0 = ONNX Runtime's default, one per core).

    Raises:
        EngineUnavailable: onnxruntime missing, or a GPU asked for and no GPU provider present.
        ValueError: the file is not a loadable prevla export.
    """

    backend = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineUnavailable(f"onnxruntime is not installed ({e})") from e
        self.path = path
        self.meta = read_meta(path)
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            gpu = [p for p in GPU_PROVIDERS if p in available]
            if not gpu:
                raise EngineUnavailable(f"onnxruntime {ort.__version__} has no GPU provider (has {available})")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [(p, {"device_id": index}) for p in gpu] + ["CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # ONNXRuntimeError subclasses vary by build
            raise ValueError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}") from e
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (self.meta["inputs"], self.meta["outputs"]):
            raise ValueError(f"{path}: graph inputs/outputs {names} differ from its metadata "
                             f"{(self.meta['inputs'], self.meta['outputs'])}")
        self.providers = self.session.get_providers()
        self.precision = self.meta.get("precision", "fp32")

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.session.run(None, {name: np.ascontiguousarray(feeds[name]) for name in self.meta["inputs"]})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.meta["outputs"], out)}
