"""Errors of the engine layer (a backend that cannot run here is not a broken model)."""
from __future__ import annotations


class EngineUnavailable(RuntimeError):
    """The backend cannot run on this machine (library missing, no GPU, engine built for
    another GPU or TensorRT version); the loader falls back to the next backend."""


class EngineError(RuntimeError):
    """No backend of the fallback chain could load the model; the message lists why each failed."""
