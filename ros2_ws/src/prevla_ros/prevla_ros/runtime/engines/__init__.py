"""Runtime backends: one interface (a *runner*, :mod:`prevla_models.graphs`) over torch, ONNX
Runtime and TensorRT, the fallback chain that picks one, and hot-swapping a node's model.

* :func:`load_model` — model spec + backend -> a runner. Every file is sha256-checked against
  its record (zoo manifest or ``<file>.sha256`` sidecar, :mod:`prevla_models.artifacts`) and an
  unverified one is refused unless ``allow_unverified``. ``auto`` walks the fallback chain
  ``tensorrt -> onnxruntime -> torch``: a backend that cannot run here (library missing, no GPU,
  stale engine, corrupt file, sha256 mismatch) adds one line to ``LoadedModel.notes`` (and to
  ``fallbacks`` when its artifact exists but is broken) and the next one is tried. A named
  backend serves or raises :class:`EngineError`.
* :class:`ModelSlot` — the model a node runs: load and warm up a new one beside the old one,
  check it, and switch between two messages; the old one stays if anything fails.
"""
from prevla_ros.runtime.engines.errors import EngineError, EngineUnavailable
from prevla_ros.runtime.engines.loader import (BACKENDS, DEVICES, FALLBACK_CHAIN, LoadedModel,
                                               load_model, resolve_device)
from prevla_ros.runtime.engines.slot import ModelSlot

__all__ = ["BACKENDS", "DEVICES", "FALLBACK_CHAIN", "EngineError", "EngineUnavailable", "LoadedModel",
           "ModelSlot", "load_model", "resolve_device"]
