"""``ModelSlot``: the model a node runs, hot-swappable between two messages.

A swap has two halves so the node keeps serving while the new model loads:

1. :meth:`ModelSlot.prepare` (any thread, slow): load the new model through the fallback chain
   (sha256 checked against its records, the zoo manifest or its sidecar, an unverified file
   refused unless ``allow_unverified``; and against ``expected_sha256`` when given),
   check its signature against the running one (kind, chunk horizon, action size, cameras),
   run it once on zero inputs (warm-up; output names, shapes and finiteness checked) and build
   the node's adapter. Any failure raises and leaves the running model untouched.
2. :meth:`ModelSlot.commit` (the node's message thread, instant): switch to it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from prevla_ros.runtime.engines.loader import LoadedModel, load_model

#: Config fields a replacement must share with the running model (what the messages carry).
SIGNATURE_FIELDS = ("horizon", "action_dim", "cameras")


@dataclass
class Staged:
    """A loaded, checked and warmed-up model waiting for :meth:`ModelSlot.commit`."""

    loaded: LoadedModel
    adapter: object
    warmup_ms: float


def warm_feeds(meta: dict, k: int = 8) -> dict[str, np.ndarray]:
    """Zero inputs of one observation and ``k`` candidates / noise rows for a runner."""
    c = meta["config"]
    side = meta.get("image_side") or c["image_size"]
    feeds = {"images": np.zeros((1, c["cameras"], side, side, 3), np.uint8),
             "proprio": np.zeros((1, c["proprio_dim"]), np.float32),
             "tokens": np.zeros((1, c["max_words"]), np.int64)}
    chunk = np.zeros((1, k, c["horizon"], c["action_dim"]), np.float32)
    feeds["actions" if meta["kind"] == "verifier" else "noise"] = chunk
    return feeds


def warm_up(runner, k: int = 8) -> float:
    """Run ``runner`` once on :func:`warm_feeds`; ValueError on a wrong or non-finite output."""
    meta = runner.meta
    t0 = time.perf_counter()
    out = runner(warm_feeds(meta, k))
    ms = 1000 * (time.perf_counter() - t0)
    c = meta["config"]
    want = {"safety_logit": (1, k), "advantage": (1, k), "chunks": (1, k, c["horizon"], c["action_dim"])}
    for name in meta["outputs"]:
        if name not in out or tuple(np.shape(out[name])) != want[name]:
            raise ValueError(f"warm-up: output {name!r} should be {want[name]}, got "
                             f"{None if name not in out else np.shape(out[name])}")
        if not np.all(np.isfinite(out[name])):
            raise ValueError(f"warm-up: output {name!r} is not finite")
    return ms


class ModelSlot:
    """Holds a node's current model (``adapter``: a VerifierScorer or VLAPolicy) and swaps it.

    Args:
        kind: "verifier" or "vla".
        build: LoadedModel -> the node's adapter.
    """

    def __init__(self, kind: str, build: Callable[[LoadedModel], object]) -> None:
        self.kind = kind
        self.build = build
        self.loaded: LoadedModel | None = None
        self.adapter = None
        self.swaps = 0
        self._lock = threading.Lock()  # one prepare at a time

    def prepare(self, spec: str, backend: str = "auto", device: str = "cpu", threads: int = 0,
                expected_sha256: str = "", allow_unverified: bool = False) -> Staged:
        """Load, check and warm up a replacement (see the module docstring); raises on any failure."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("another model swap is in progress")
        try:
            loaded = load_model(self.kind, spec, backend, device, threads,
                                allow_unverified=allow_unverified)
            if expected_sha256 and loaded.sha256 != expected_sha256.lower():
                raise ValueError(f"sha256 of {loaded.path} is {loaded.sha256}, expected {expected_sha256}")
            self.check_signature(loaded.runner.meta)
            ms = warm_up(loaded.runner)
            return Staged(loaded, self.build(loaded), ms)
        finally:
            self._lock.release()

    def check_signature(self, meta: dict) -> None:
        """ValueError if ``meta`` cannot replace the running model."""
        if meta.get("kind") != self.kind:
            raise ValueError(f"signature: a {meta.get('kind')!r} model cannot replace a {self.kind!r}")
        if self.loaded is None:
            return
        old, new = self.loaded.runner.meta["config"], meta["config"]
        diff = [f"{f} {old[f]} -> {new[f]}" for f in SIGNATURE_FIELDS if old[f] != new[f]]
        if diff:
            raise ValueError(f"signature differs from the running model: {', '.join(diff)}")

    def commit(self, staged: Staged) -> None:
        """Switch to ``staged`` (call between two messages, on the node's message thread)."""
        self.loaded, self.adapter = staged.loaded, staged.adapter
        self.swaps += 1
