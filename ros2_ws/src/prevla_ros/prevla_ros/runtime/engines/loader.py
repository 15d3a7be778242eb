"""Model spec + backend -> a runner, with the documented fallback chain.

Specs (as everywhere in prevla): ``""`` / ``zoo:default`` = the zoo's default model of the kind,
``zoo:NAME`` = a manifest entry, anything else = a file (``.pt`` torch checkpoint, ``.onnx``
export, ``.engine`` / ``.plan`` TensorRT engine with its ``.json`` description).

A zoo model is a *family*: the torch checkpoint entry and the entries exported from it
(``source: <its name>``, ``format: onnx | tensorrt``). ``backend: auto`` tries the family's
TensorRT engines (GPU only), then its ONNX export, then the checkpoint, and says in
``LoadedModel.notes`` (``fallbacks``: the artifacts that exist but failed) what it skipped and
why; a named backend serves or fails with :class:`EngineError`, never a silent switch. A file
path runs on the backend of its suffix.

Every file is sha256-checked against its records before it loads (the zoo manifest, or its
``<file>.sha256`` sidecar; a TensorRT engine's ``.json`` description too):
:mod:`prevla_models.artifacts`. A file path without a matching record is refused
(``UnverifiedModel``) unless ``allow_unverified``; ``LoadedModel.unverified`` then says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prevla_ros.runtime.engines.errors import EngineError, EngineUnavailable

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
FALLBACK_CHAIN = ("tensorrt", "onnxruntime", "torch")
DEVICES = ("auto", "cpu", "cuda")
FORMAT_BACKEND = {"pt": "torch", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
SUFFIX_BACKEND = {".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


@dataclass
class LoadedModel:
    """A runner and where it came from."""

    runner: object
    backend: str
    path: str
    sha256: str
    name: str  # zoo entry name, or the file path
    device: str
    notes: list[str] = field(default_factory=list)  # why earlier backends of the chain were skipped
    fallbacks: list[str] = field(default_factory=list)  # the notes of artifacts that exist but failed
    record: str = ""  # where the sha256 record it matched is
    unverified: str = ""  # why it is unverified ("" when verified); loaded only by the opt-in

    @property
    def model_id(self) -> str:
        return str(self.runner.meta["model_id"])


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda:N`` / ``cpu`` unchanged."""
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {device!r}")
    return device


def _options(kind: str, spec: str, root: Path | None) -> tuple[list[tuple[str, str, dict | None]], str | None]:
    """[(backend, name or path, zoo entry or None)] of a spec, and the backend the spec names."""
    if spec and not spec.startswith("zoo:"):
        backend = SUFFIX_BACKEND.get(Path(spec).suffix)
        if backend is None:
            raise ValueError(f"model file {spec!r}: unknown suffix; expected one of {sorted(SUFFIX_BACKEND)}")
        return [(backend, spec, None)], backend
    from prevla_models import zoo

    models = zoo.load_manifest(root)
    name = zoo.entry_name(spec, kind, models, root)
    family = models[name].get("source", name)
    members = [n for n, e in models.items() if n == family or e.get("source") == family]
    named = FORMAT_BACKEND[models[name].get("format", "pt")] if "source" in models[name] else None
    return [(FORMAT_BACKEND[models[n].get("format", "pt")], n, models[n]) for n in members], named


def _verified(backend: str, name: str, entry: dict | None, root: Path | None,
              allow_unverified: bool):
    """The artifact's file, sha256-checked (an engine's ``.json`` description too)."""
    from prevla_models import artifacts, zoo

    checked = (zoo.entry_file(name, entry, root, allow_unverified) if entry is not None else
               artifacts.verify(name, allow_unverified, root))
    if backend == "tensorrt":
        description = artifacts.verify(f"{checked.path}.json", allow_unverified, root)
        if description.problem:
            checked = artifacts.Verified(checked.path, checked.sha256, checked.record,
                                         "; ".join(filter(None, (checked.problem, description.problem))))
    return checked


def _runner(backend: str, path: str, device: str, threads: int):
    if backend == "torch":
        from prevla_models.graphs import TorchRunner

        return TorchRunner.from_checkpoint(path, device)
    if backend == "onnxruntime":
        from prevla_ros.runtime.engines.onnxruntime_runner import OrtRunner

        return OrtRunner(path, device, threads)
    from prevla_ros.runtime.engines.tensorrt_runner import TensorRTRunner

    if not device.startswith("cuda"):
        raise EngineUnavailable("TensorRT needs device cuda")
    return TensorRTRunner(path, device)


def load_model(kind: str, spec: str = "", backend: str = "auto", device: str = "cpu", threads: int = 0,
               root: Path | None = None, allow_unverified: bool = False) -> LoadedModel:
    """Load ``spec`` as a ``kind`` runner (a kind with an inference graph, ``prevla_models.kinds.RUNNABLE``:
    "vla" | "verifier"): on ``backend``, or with ``auto`` on the first backend of the chain that works.

    Raises:
        ValueError: bad kind / backend / device / spec syntax (configuration errors).
        FileNotFoundError: the spec names no model.
        prevla_models.artifacts.UnverifiedModel: (a ValueError) a file path whose sha256 matches no
            record, unless ``allow_unverified``.
        EngineError: the named backend, or (``auto``) every backend of the chain, failed; the
            message says why each did.
    """
    from prevla_models import kinds

    kinds.get(kind, runnable=True)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = resolve_device(device)
    options, named = _options(kind, spec, root)
    is_file = bool(spec) and not spec.startswith("zoo:")
    checked_file = None
    if is_file and backend not in ("auto", named):
        raise ValueError(f"backend {backend!r} cannot run {spec!r} (a {named} file); use backend auto or {named}")
    if is_file:
        # A file runs on its own backend or not at all; an unverified one is refused outright.
        chain: tuple[str, ...] = (named,)
        checked_file = _verified(named, spec, None, root, allow_unverified)
    elif backend != "auto":
        chain = (backend,)  # a named backend serves or fails: never a silent switch
    else:
        chain = FALLBACK_CHAIN[FALLBACK_CHAIN.index(named or FALLBACK_CHAIN[0]):]
    notes: list[str] = []
    fallbacks: list[str] = []
    for b in chain:
        mine = [o for o in options if o[0] == b]
        if not mine:
            notes.append(f"{b}: no {b} artifact of {spec or 'the default ' + kind}")
        for _, name, entry in mine:
            try:
                if b == "tensorrt" and not device.startswith("cuda"):
                    raise EngineUnavailable("needs device cuda")
                checked = checked_file or _verified(b, name, entry, root, allow_unverified)
                runner = _runner(b, checked.path, device, threads)
                if runner.meta.get("kind") != kind:
                    raise ValueError(f"{checked.path} holds a {runner.meta.get('kind')!r} model, not a {kind!r}")
                return LoadedModel(runner, b, checked.path, checked.sha256, name, device, notes, fallbacks,
                                   checked.record, checked.problem)
            except (EngineUnavailable, FileNotFoundError, ValueError, RuntimeError, OSError, KeyError) as e:
                notes.append(f"{b} ({Path(name).name}): {e}")
                if not isinstance(e, EngineUnavailable):  # a broken artifact, not a missing library/GPU
                    fallbacks.append(notes[-1])
    raise EngineError(f"cannot load {kind} {spec or '(zoo default)'!r} with backend {backend}: " + "; ".join(notes))
