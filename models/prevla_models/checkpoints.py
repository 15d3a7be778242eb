"""What every prevla model shares: the observation/action config fields, the instruction
vocabulary, and checkpoint files.

A checkpoint is ``{"kind", "config", "state_dict", "extra"}`` written with ``torch.save``
(atomically, via a temp file, with its sha256 sidecar ``<file>.sha256``: see
:mod:`prevla_models.artifacts`) and read with ``weights_only=True`` (no code runs on load);
its ``kind`` is a row of the kind table, :mod:`prevla_models.kinds`.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from prevla_models.artifacts import sha256_file, write_sidecar  # noqa: F401 (sha256_file re-exported)
from prevla_models.kinds import KINDS, LEGACY_KIND, RUNNABLE

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lower-case words of an instruction (punctuation dropped)."""
    return _WORD.findall(text.lower())


def build_vocab(instructions) -> list[str]:
    """Sorted distinct words of the given instructions (for a model config's ``vocab``)."""
    return sorted({w for s in instructions for w in split_words(s)})


def word_ids(vocab) -> dict[str, int]:
    """Word -> embedding row of a model's vocabulary: 0 = <pad>, 1 = <unk>, then the words."""
    return {w: i + 2 for i, w in enumerate(vocab)}


def token_ids(word_to_id: dict[str, int], max_words: int, instructions) -> np.ndarray:
    """Instructions (a string or a list) -> (B, max_words) int64 word ids; unknown words ->
    <unk>, padding -> <pad>, longer instructions cut. What every backend feeds as ``tokens``."""
    if isinstance(instructions, str):
        instructions = [instructions]
    ids = np.zeros((len(instructions), max_words), dtype=np.int64)
    for b, text in enumerate(instructions):
        words = split_words(str(text))[:max_words]
        ids[b, : len(words)] = [word_to_id.get(w, 1) for w in words]
    return ids


def check_vocab(vocab, owner: str) -> list[str]:
    """``vocab`` as a list, or ValueError naming ``owner`` (e.g. ``"VLAConfig.vocab"``)."""
    vocab = list(vocab)
    if any(not isinstance(w, str) or not w for w in vocab) or len(set(vocab)) != len(vocab):
        raise ValueError(f"{owner} must be a list of distinct non-empty words")
    if PAD in vocab or UNK in vocab:
        raise ValueError(f"{owner} must not contain the special tokens {PAD!r} / {UNK!r}")
    return vocab


@dataclass
class ObsActionConfig:
    """Observation and action fields of every model that reads LIBERO observations (base of
    ``VLAConfig`` and ``VerifierConfig``); ``__post_init__`` validates them, naming the field."""

    image_size: int = field(default=64, metadata={"help": "Square image side the encoder sees (multiple of 16); inputs whose side is a multiple of it are area-downsampled."})
    cameras: int = field(default=2, metadata={"help": "Number of cameras (agentview, wrist); weights are shared."})
    horizon: int = field(default=8, metadata={"help": "Actions per chunk H."})
    action_dim: int = field(default=7, metadata={"help": "Action size (LIBERO OSC_POSE: 3 pos, 3 rot, gripper), values in [-1, 1]."})
    proprio_dim: int = field(default=8, metadata={"help": "Proprio size: eef_pos 3 + axis-angle 3 + gripper 2."})
    vocab: list = field(default_factory=list, metadata={"help": "Known words (from training instructions)."})
    max_words: int = field(default=24, metadata={"help": "Instruction length in words; longer ones are cut."})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("image_size", "cameras", "horizon", "action_dim", "proprio_dim", "max_words"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{owner}.{name} must be a positive int, got {v!r}")
        if self.image_size % 16:
            raise ValueError(f"{owner}.image_size must be a multiple of 16, got {self.image_size}")
        self.vocab = check_vocab(self.vocab, f"{owner}.vocab")


class ModelBase(nn.Module):
    """What every prevla model shares: its parameter count and storing dataset statistics."""

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _store_stats(self, **values) -> None:
        """:func:`store_stats` into this model's buffers."""
        store_stats(self, **values)


def store_stats(module: nn.Module, **values) -> None:
    """Copy statistics into ``module``'s same-named buffers; ValueError on a wrong shape or a
    non-finite value; ``*_std`` floored at 1e-3 so constant dimensions do not blow up."""
    for name, v in values.items():
        t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
        buf = getattr(module, name)
        if t.shape != buf.shape or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be {tuple(buf.shape)} finite values, got {tuple(t.shape)}")
        buf.copy_(t.clamp_min(1e-3) if name.endswith("std") else t)


def save_model(path: str, model: nn.Module, kind: str, extra: dict | None = None) -> None:
    """Write ``model`` (which has a dataclass ``cfg``) as a ``kind`` checkpoint, and its sha256
    record ``<path>.sha256`` (:mod:`prevla_models.artifacts`: what lets it serve by path)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"kind": kind, "config": asdict(model.cfg), "state_dict": model.state_dict(),
                "extra": extra or {}}, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    write_sidecar(path, digest)


def load_model(path: str, kind: str, config_cls: type, build: Callable, map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a ``kind`` checkpoint: ``build(config_cls(**config))`` then its weights.

    Files without a ``kind`` key (written before it existed) are read as
    :data:`prevla_models.kinds.LEGACY_KIND`. Renamed weights of older files are the model's
    business: its ``load_state_dict`` pre-hook maps them (e.g.
    :func:`prevla_models.encoder.adopt_legacy_keys`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted, or not a prevla ``kind`` checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} checkpoint not found: {path}")

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid prevla {kind} checkpoint: {why}")

    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, disallowed pickle globals ...
        raise bad(f"{type(e).__name__}: {e}") from e
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= set(blob):
        keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise bad(f"expected keys 'config' and 'state_dict', got {keys}")
    if blob.get("kind", LEGACY_KIND) != kind:  # a file from before 'kind' existed is a VLA
        raise bad(f"kind is {blob.get('kind')!r}, expected {kind!r}")
    if not isinstance(blob["config"], dict):
        raise bad("'config' is not a dict")
    known = {f.name for f in fields(config_cls)}
    try:
        model = build(config_cls(**{k: v for k, v in blob["config"].items() if k in known}))
        model.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise bad(f"{type(e).__name__}: {e}") from e
    model.eval()
    extra = blob.get("extra") or {}
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model, extra


def load_any(path: str, map_location="cpu") -> tuple[nn.Module, dict, str]:
    """``(model, extra, kind)`` of a checkpoint of a runnable kind (:data:`prevla_models.kinds.RUNNABLE`:
    VLA or verifier); the kind is read from the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a prevla VLA or verifier checkpoint (or unreadable).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, disallowed pickle globals ...
        raise ValueError(f"{path} is not a prevla checkpoint: {type(e).__name__}: {e}") from e
    kind = blob.get("kind", LEGACY_KIND) if isinstance(blob, dict) else None
    if kind not in RUNNABLE:
        raise ValueError(f"{path} is not a prevla VLA or verifier checkpoint (kind {kind!r})")
    model, extra = KINDS[kind].load_checkpoint(path, map_location)
    return model, extra, kind
