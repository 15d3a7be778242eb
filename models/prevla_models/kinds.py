"""The one table of model kinds: what prevla knows about each kind of checkpoint.

A checkpoint file names its kind (``"vla"``, ``"verifier"``, ``"world_model"``). Everything
that turns a kind into code looks it up in :data:`KINDS` instead of keeping its own table:

* :func:`prevla_models.checkpoints.load_any` and ``load_model`` (which kinds a runner can
  load, and which kind a file without a ``kind`` key is),
* :mod:`prevla_models.graphs` (the inference graph class, its named inputs and outputs, the
  ``extra`` key that names the model),
* :func:`prevla_models.zoo.register` (loader, saver, id key and manifest signature),
* ``prevla_ros.runtime.engines.loader`` and ``prevla export`` (the kinds with a graph).

Adding a kind is one :class:`ModelKind` row here plus its model module (which defines
``CHECKPOINT_KIND``, ``save_checkpoint`` and ``load_checkpoint``). Model modules and graph
classes are named, not imported, so this table loads without torch and without import cycles.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

#: Checkpoints written before files carried a ``kind`` key are VLAs.
LEGACY_KIND = "vla"


def _observation_inputs(c, note: str = "") -> dict:
    """The observation part of a model's manifest signature (VLA and verifier share it)."""
    proprio = "eef_pos, eef axis-angle, gripper qpos" + (", 7 arm joint positions" if c.proprio_dim == 15 else "")
    return {"images": f"(B, {c.cameras}, S, S, 3) uint8 upright [agentview, wrist], S a multiple of {c.image_size}{note}",
            "proprio": f"(B, {c.proprio_dim}) float32 {proprio}",
            "instruction": f"str ({len(c.vocab)}-word vocabulary)"}


def _summary(model) -> dict:
    return {"params": model.num_parameters(), "config": {k: v for k, v in vars(model.cfg).items() if k != "vocab"}}


def _vla_signature(model, extra: dict) -> dict:
    c = model.cfg
    return {"inputs": _observation_inputs(c),
            "outputs": {"chunks": f"(B, k, {c.horizon}, {c.action_dim}) float32 in [-1, 1], "
                                  "LIBERO OSC_POSE deltas + gripper"}, **_summary(model)}


def _verifier_signature(model, extra: dict) -> dict:
    c = model.cfg
    return {"inputs": {**_observation_inputs(c, " (encoded once per observation)"),
                       "actions": f"(B, K, {c.horizon}, {c.action_dim}) float32 candidate chunks"},
            "outputs": {"safety_logit": "(B, K) float32, P(safe) = sigmoid(logit)",
                        "advantage": f"(B, K) float32, critic advantage / {extra.get('adv_scale', 1.0):.4g}"},
            "threshold": round(model.threshold, 6), **_summary(model)}


def _world_model_signature(model, extra: dict) -> dict:
    c = model.cfg
    return {"inputs": {"frames": f"(B, S, S, 3) uint8 upright agent-view frame, S a multiple of {c.frame_size}",
                       "proprio": f"(B, {c.proprio_dim}) float32 eef_pos, eef axis-angle, gripper qpos",
                       "chunks": f"(B, N, {c.horizon}, {c.action_dim}) float32 action chunks, executed in order"},
            "outputs": {"frames": f"(B, N*{c.horizon} / every, {c.frame_size}, {c.frame_size}, 3) uint8 imagined frames"},
            **_summary(model)}


@dataclass(frozen=True)
class ModelKind:
    """One kind of model.

    Attributes:
        name: the ``kind`` a checkpoint file carries.
        module: the model module (``save_checkpoint`` / ``load_checkpoint``).
        id_key: the ``extra`` key naming the model in candidate sets, verdicts and runner meta.
        signature: ``(model, extra) -> dict``, the I/O description of a zoo manifest entry.
        graph: class in :mod:`prevla_models.graphs` the runners execute and the export traces;
            ``""`` = none (a runner cannot load it, ``prevla export`` cannot export it).
        inputs, outputs: the graph's named arrays, in call order.
    """

    name: str
    module: str
    id_key: str
    signature: Callable[[object, dict], dict]
    graph: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def load_checkpoint(self, path: str, map_location="cpu") -> tuple:
        """``(model, extra)`` of a checkpoint of this kind (errors as the module's loader)."""
        return importlib.import_module(self.module).load_checkpoint(path, map_location)

    def save_checkpoint(self, path: str, model, extra: dict | None = None) -> None:
        importlib.import_module(self.module).save_checkpoint(path, model, extra)

    def graph_class(self) -> type:
        """The inference graph module class (ValueError for a kind without one)."""
        if not self.graph:
            raise ValueError(f"model kind {self.name!r} has no inference graph")
        return getattr(importlib.import_module("prevla_models.graphs"), self.graph)


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("vla", "prevla_models.vla", "policy_id", _vla_signature, "PolicyGraph",
              ("images", "proprio", "tokens", "noise"), ("chunks",)),
    ModelKind("verifier", "prevla_models.verifier", "verifier_id", _verifier_signature, "VerifierGraph",
              ("images", "proprio", "tokens", "actions"), ("safety_logit", "advantage")),
    ModelKind("world_model", "prevla_models.world_model", "world_model_id", _world_model_signature),
)}
#: Kinds with an inference graph: what runners load and ``prevla export`` exports.
RUNNABLE: tuple[str, ...] = tuple(n for n, k in KINDS.items() if k.graph)


def get(kind: str, runnable: bool = False) -> ModelKind:
    """The row of ``kind``; ValueError naming the known kinds (only ``RUNNABLE`` ones if
    ``runnable``)."""
    known = RUNNABLE if runnable else tuple(KINDS)
    if kind not in known:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(known)}")
    return KINDS[kind]
