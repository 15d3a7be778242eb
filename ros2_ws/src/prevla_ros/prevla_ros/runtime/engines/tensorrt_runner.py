"""Native TensorRT backend: a serialized engine (``prevla export MODEL --to tensorrt``).

An engine file ``X.engine`` comes with ``X.engine.json`` (written by the export): the graph's
meta (:func:`prevla_models.graphs.model_meta`) plus ``target`` = the GPU name, compute
capability and TensorRT version it was built with. An engine only runs on that GPU model with
that TensorRT version, so a mismatch is reported as *stale* (:class:`EngineUnavailable`, the
loader falls back) before deserializing. I/O buffers are torch CUDA tensors allocated once for
K_max (the engine's optimisation profile) and reused; inference runs on its own CUDA stream.

Untested on the machines this was written on (no GPU): see docs/results.md (engines).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prevla_ros.runtime.engines.errors import EngineUnavailable


def import_tensorrt():
    """The TensorRT Python module (full ``tensorrt``, else the lean runtime), or EngineUnavailable."""
    for name in ("tensorrt", "tensorrt_lean"):
        try:
            return __import__(name)
        except ImportError:
            continue
        except Exception as e:  # the PyPI stub wheels raise at import when the real libs are absent
            raise EngineUnavailable(f"{name} cannot be imported: {type(e).__name__}: {e}") from e
    raise EngineUnavailable("TensorRT Python bindings are not installed (tensorrt / tensorrt_lean)")


def gpu_target(device: str = "cuda") -> dict:
    """What an engine is tied to: this GPU's name and compute capability, and TensorRT's version."""
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("no CUDA device (torch.cuda.is_available() is False)")
    trt = import_tensorrt()
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}",
            "tensorrt": trt.__version__}


def read_sidecar(path: str) -> dict:
    side = Path(f"{path}.json")
    if not side.is_file():
        raise ValueError(f"{path}: its description {side.name} is missing (written by `prevla export --to tensorrt`)")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{side} is not valid JSON: {e}") from e


class TensorRTRunner:
    """A prevla graph as a TensorRT engine (see :mod:`prevla_models.graphs` for feeds).

    Raises:
        EngineUnavailable: no GPU / TensorRT here, or the engine is stale (other GPU or version).
        ValueError: the engine or its description is missing or corrupt.
    """

    backend = "tensorrt"

    def __init__(self, path: str, device: str = "cuda") -> None:
        import torch

        if not Path(path).is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        self.meta = read_sidecar(path)
        here, built = gpu_target(device), self.meta.get("target", {})
        stale = [f"{k} {built.get(k)!r} != {here[k]!r}" for k in here if built.get(k) != here[k]]
        if stale:
            raise EngineUnavailable(f"stale engine {path}: built for another target ({'; '.join(stale)}); "
                                    "rebuild it with `prevla export --to tensorrt` on this machine")
        trt = import_tensorrt()
        self.trt, self.torch = trt, torch
        self.device = torch.device(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ValueError(f"TensorRT could not deserialize {path} (corrupt file or built by another version)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self.k_max = int(self.meta["k_max"])
        self.precision = self.meta.get("precision", "fp16")
        self.buffers = {name: self._allocate(name) for name in self.meta["inputs"] + self.meta["outputs"]}

    def _allocate(self, name: str):
        """One buffer per tensor, shaped for B = 1 and K = K_max (the profile's maximum)."""
        shape = list(self.engine.get_tensor_profile_shape(name, 0)[2]) if name in self.meta["inputs"] \
            else [1, self.k_max] + ([self.meta["config"]["horizon"], self.meta["config"]["action_dim"]]
                                    if name == "chunks" else [])
        dtype = {self.trt.uint8: self.torch.uint8, self.trt.int64: self.torch.int64,
                 self.trt.int32: self.torch.int32, self.trt.float16: self.torch.float16}.get(
            self.engine.get_tensor_dtype(name), self.torch.float32)
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, k = self.torch, None
        with torch.cuda.stream(self.stream):
            for name in self.meta["inputs"]:
                arr = np.ascontiguousarray(feeds[name])
                if arr.ndim == 4 and name in ("actions", "noise"):
                    k = arr.shape[1]
                    if not 1 <= k <= self.k_max or arr.shape[0] != 1:
                        raise ValueError(f"this engine takes B = 1 and 1 <= K <= {self.k_max}, got {arr.shape[:2]}")
                view = self.buffers[name].flatten()[: arr.size].view(arr.shape)
                view.copy_(torch.from_numpy(arr), non_blocking=True)
                self.context.set_input_shape(name, arr.shape)
                self.context.set_tensor_address(name, view.data_ptr())
            for name in self.meta["outputs"]:
                self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = {name: self.buffers[name].flatten()[: int(np.prod(self.context.get_tensor_shape(name)))]
                   .view(tuple(self.context.get_tensor_shape(name))).float().cpu().numpy()
                   for name in self.meta["outputs"]}
        self.stream.synchronize()
        return out
