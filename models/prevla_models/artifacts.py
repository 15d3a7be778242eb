"""Verified model artifacts: no model file serves unless its sha256 matches a record.

A *record* of a file's sha256 is either

* its zoo manifest entry (``models/zoo/manifest.yaml``, :mod:`prevla_models.zoo`): the entry's
  ``sha256`` for its ``file``, and ``description_sha256`` for the ``.json`` description of a
  TensorRT engine; or
* a *sidecar* ``<file>.sha256`` beside the file, in ``sha256sum`` format: one line
  ``<64 hex digits>  <file name>``, so ``cd DIR && sha256sum -c FILE.sha256`` checks it by hand.
  Every prevla tool that writes a model file writes its sidecar: checkpoints
  (:func:`prevla_models.checkpoints.save_model`, so training outputs), ``prevla export`` and the
  zoo tools (``register``, :func:`prevla_models.zoo.put_entry`). For a file from elsewhere that
  you trust: ``python -m prevla_models.artifacts record FILE``.

The rule (:func:`verify`): a file verifies when at least one record names it and its sha256
equals every record. Otherwise it is refused with :class:`UnverifiedModel` (a ``ValueError``
naming the file, the digest expected and where it was recorded, and the actual digest), unless
the caller opts in (``allow_unverified_models``): then it loads and the result says it is
unverified, and why. The check sits where a model spec becomes a file
(:func:`prevla_models.zoo.resolve`, ``prevla_ros.runtime.engines.load_model``), so it holds for
every spec: a file path, ``zoo:NAME``, a hot-swap. ``load_checkpoint`` reads what it is given.

    python -m prevla_models.artifacts record FILE [FILE ...]   # write sidecars for trusted files
    python -m prevla_models.artifacts check FILE [FILE ...]    # exit 1 unless every file verifies
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

SIDECAR_SUFFIX = ".sha256"
#: The opt-in's name everywhere (ROS parameter, config field; CLI flag --allow-unverified-models).
OPT_IN = "allow_unverified_models"
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


class UnverifiedModel(ValueError):
    """A model file whose sha256 matches no record (none, or a different digest)."""


@dataclass(frozen=True)
class Verified:
    """A model file and its sha256, checked against its records.

    Attributes:
        path: the file.
        sha256: its hex sha256 (the one that loads: hashed before loading).
        record: where the matching record is ("" when unverified).
        problem: why it is unverified ("" when verified): loaded only by the opt-in.
    """

    path: str
    sha256: str
    record: str
    problem: str = ""

    @property
    def verified(self) -> bool:
        return not self.problem


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<file>.sha256``: where a file's sidecar record lives."""
    return Path(f"{path}{SIDECAR_SUFFIX}")


def write_sidecar(path: str | os.PathLike, digest: str = "") -> Path:
    """Record ``path``'s sha256 (``digest``, else hashed now) in its sidecar, atomically."""
    digest = (digest or sha256_file(path)).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"write_sidecar: {digest!r} is not a hex sha256")
    side = sidecar_path(path)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(f"{digest}  {Path(path).name}\n")
    os.replace(tmp, side)
    return side


def _sidecar_record(path: str) -> tuple[str, str] | None:
    """(digest, where) of ``path``'s sidecar; a malformed sidecar records "" (matches nothing)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    name = Path(path).name
    for line in side.read_text(errors="replace").splitlines():
        m = _LINE.fullmatch(line.strip())
        if m and m.group(2) == name:
            return m.group(1).lower(), f"sidecar {side}"
    return "", f"sidecar {side} (malformed: no '<sha256>  {name}' line)"


def _manifest_records(path: str, root: Path | None) -> list[tuple[str, str]]:
    """(digest, where) of every zoo manifest entry naming ``path`` (its file or description)."""
    from prevla_models import zoo  # zoo imports this module

    root = Path(root) if root is not None else zoo.zoo_dir()
    target, out = Path(path).resolve(), []
    for name, entry in zoo.load_manifest(root).items():
        if not isinstance(entry, dict) or not entry.get("file"):
            continue
        where = f"the zoo manifest {root / 'manifest.yaml'} (entry {name})"
        base = (root / str(entry["file"])).resolve()
        if base == target:
            out.append((str(entry.get("sha256") or "").lower(), where))
        elif Path(f"{base}.json") == target and entry.get("description_sha256"):
            out.append((str(entry["description_sha256"]).lower(), f"{where}, description_sha256"))
    return out


def records(path: str | os.PathLike, root: Path | None = None) -> list[tuple[str, str]]:
    """Every record of ``path``'s sha256 as (digest, where): its sidecar, and the zoo manifest
    (``root``, default the zoo) entries that name it."""
    side = _sidecar_record(str(path))
    return ([side] if side else []) + _manifest_records(str(path), root)


def verify(path: str | os.PathLike, allow_unverified: bool = False, root: Path | None = None,
           extra: list[tuple[str, str]] | None = None) -> Verified:
    """Check ``path`` against its :func:`records` (plus ``extra`` ones, e.g. the manifest entry
    a ``zoo:`` spec named); see the module docstring for the rule.

    Raises:
        FileNotFoundError: no such file.
        UnverifiedModel: no record, or a record with another digest (unless ``allow_unverified``).
    """
    p = str(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"model file not found: {p}")
    actual = sha256_file(p)
    found = list(dict.fromkeys([*(extra or []), *records(p, root)]))
    wrong = [(digest, where) for digest, where in found if digest != actual]
    if found and not wrong:
        return Verified(p, actual, found[0][1])
    if wrong:
        expected, where = wrong[0]
        problem = (f"sha256 of {p} is {actual}, {where} says {expected or '(nothing)'} "
                   "(corrupt or replaced file)")
    else:
        problem = (f"{p} has no recorded sha256 (its sha256 is {actual}; no sidecar "
                   f"{sidecar_path(p).name} beside it, and no zoo manifest entry names it)")
    if allow_unverified:
        return Verified(p, actual, "", problem)
    raise UnverifiedModel(
        f"refusing unverified model file {p}: {problem}. If you trust this file, record it "
        f"(python -m prevla_models.artifacts record {p}) or opt in with {OPT_IN}: true")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prevla_models.artifacts",
                                description="sha256 records (sidecars) of model files")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record", help="write FILE.sha256 for files you trust").add_argument("files", nargs="+")
    sub.add_parser("check", help="verify files against their records").add_argument("files", nargs="+")
    a = p.parse_args(argv)
    bad = 0
    for f in a.files:
        try:
            if a.cmd == "record":
                digest = sha256_file(f)
                print(f"{write_sidecar(f, digest)}: {digest}")
            else:
                v = verify(f)
                print(f"{f}: ok ({v.sha256[:12]}, {v.record})")
        except (OSError, ValueError) as e:
            print(f"{f}: {e}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
