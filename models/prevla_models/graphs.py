"""Inference graphs: what every runtime backend runs, with one fixed signature per model kind.

The robot runs two graphs, each on plain arrays (no strings, no Python control flow):

* verifier: ``images`` (B, C, S, S, 3) uint8, ``proprio`` (B, P) float32, ``tokens`` (B, W) int64,
  ``actions`` (B, K, H, A) float32  ->  ``safety_logit`` (B, K), ``advantage`` (B, K);
  the observation is encoded once per row and shared by its K candidates.
* policy (VLA): the same observation inputs and ``noise`` (B, K, H, A) float32, the flow's start
  points (:func:`prevla_models.vla.start_noise`)  ->  ``chunks`` (B, K, H, A) in [-1, 1].

B and K are dynamic axes. :class:`VerifierGraph` / :class:`PolicyGraph` are the torch modules
the ONNX export traces and the torch backend runs, so every backend computes the same function.
Which kind runs which graph, with which named inputs and outputs, is the kind table's
(:mod:`prevla_models.kinds`).
A *runner* is any callable ``runner(feeds: dict[str, ndarray]) -> dict[str, ndarray]`` with a
``meta`` dict (:func:`model_meta`) and a ``backend`` name; :class:`TorchRunner` is the torch one,
``prevla_ros.runtime.engines`` adds ONNX Runtime and TensorRT.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn

from prevla_models import kinds
from prevla_models.checkpoints import token_ids, word_ids
from prevla_models.encoder import observation_tensors

#: ONNX dynamic axes per input/output name (batch B and candidates K).
DYNAMIC_AXES = {"images": {0: "B"}, "proprio": {0: "B"}, "tokens": {0: "B"},
                "actions": {0: "B", 1: "K"}, "noise": {0: "B", 1: "K"},
                "safety_logit": {0: "B", 1: "K"}, "advantage": {0: "B", 1: "K"},
                "chunks": {0: "B", 1: "K"}}


class VerifierGraph(nn.Module):
    """:class:`~prevla_models.verifier.Verifier` as (images, proprio, tokens, actions) -> two tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, proprio, tokens, actions):
        out = self.model.score(self.model.encode_observation(images, proprio, tokens), actions)
        return out["safety_logit"], out["advantage"]


class PolicyGraph(nn.Module):
    """:class:`~prevla_models.vla.VLA` sampling as (images, proprio, tokens, noise) -> chunks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, proprio, tokens, noise):
        ctx, pad = self.model.encode(images, proprio, tokens)
        return self.model.integrate(ctx, pad, noise)


def build_graph(model: nn.Module, kind: str) -> nn.Module:
    """The inference graph of a loaded ``kind`` model, in eval mode (what runners and the export run)."""
    return kinds.get(kind, runnable=True).graph_class()(model).eval()


def model_meta(model: nn.Module, extra: dict, kind: str, image_side: int | None = None) -> dict:
    """JSON-able description a runner needs to prepare feeds and report results.

    Args:
        image_side: camera side S the graph was built for (an exported graph has a fixed S);
            None = any multiple of ``config.image_size`` (torch).
    """
    row = kinds.get(kind, runnable=True)
    meta = {"kind": kind, "model_id": str(extra.get(row.id_key) or kind), "config": asdict(model.cfg),
            "inputs": list(row.inputs), "outputs": list(row.outputs), "image_side": image_side}
    if kind == "verifier":
        meta["threshold"] = float(model.threshold)
        meta["adv_scale"] = float(extra.get("adv_scale", 1.0))
    return meta


def observation_feeds(obs, meta: dict) -> dict[str, np.ndarray]:
    """Duck-typed observation -> the ``images`` / ``proprio`` / ``tokens`` feeds of one row."""
    c = meta["config"]
    images, proprio = observation_tensors(obs, c["image_size"], c["cameras"], "cpu", c["proprio_dim"])
    side = meta.get("image_side")
    if side and images.shape[2] != side:
        raise ValueError(f"this {meta['kind']} graph was built for {side}x{side} cameras, the observation's "
                         f"are {images.shape[2]}x{images.shape[3]}: re-export with --image-side "
                         f"{images.shape[2]} or use the torch backend")
    return {"images": images.numpy(), "proprio": proprio.numpy(),
            "tokens": token_ids(word_ids(c["vocab"]), c["max_words"], [str(obs.instruction)])}


class TorchRunner:
    """Runs a model's inference graph in torch (eager; ``compile=True`` wraps it in ``torch.compile``).

    Args:
        model: a loaded VLA or Verifier.
        kind: "vla" or "verifier".
        extra: the checkpoint's extra dict (ids, adv_scale).
        device: torch device.
        compile: use ``torch.compile`` (worth it on a GPU; slow to warm up on CPU).
    """

    backend = "torch"

    def __init__(self, model: nn.Module, kind: str, extra: dict | None = None, device: str = "cpu",
                 compile: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = model_meta(model, extra or {}, kind)
        graph = build_graph(self.model, kind)
        self.graph = torch.compile(graph) if compile else graph
        self.precision = "fp32"

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", compile: bool = False) -> "TorchRunner":
        """Load a VLA or verifier checkpoint (its kind is read from the file)."""
        from prevla_models.checkpoints import load_any

        model, extra, kind = load_any(path, device)
        return cls(model, kind, extra, device, compile)

    @torch.inference_mode()
    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in self.meta["inputs"]]
        out = self.graph(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.meta["outputs"], out)}
