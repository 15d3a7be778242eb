"""The model zoo: committed default checkpoints under ``models/zoo/`` and their manifest.

``models/zoo/manifest.yaml`` lists every model::

    models:
      vla_libero_spatial:
        kind: vla                  # which loader reads it (prevla_models.kinds)
        file: vla_libero_spatial.pt
        sha256: <hex>              # checked before every load (prevla_models.artifacts)
        bytes: 5170000
        default: true              # the default of its kind (checkpoint "" / "zoo:default")
        signature: {inputs: ..., outputs: ...}
        training: {data: ..., command: ..., wall_s: ..., machine: ...}
        metrics: {...}

Checkpoint specs understood by :func:`resolve`: ``zoo:NAME`` (a manifest entry),
``zoo:default`` or ``""`` (the default entry of a kind), anything else is a file path.
The zoo directory is ``$PREVLA_ZOO`` if set, else ``models/zoo`` beside this package.
Whatever the spec, the file is sha256-checked against its records (this manifest, or a
``<file>.sha256`` sidecar, which ``register`` and :func:`put_entry` also write) and refused
if none matches, unless ``allow_unverified`` (:mod:`prevla_models.artifacts`).

    python -m prevla_models.zoo register NAME --kind vla --checkpoint outputs/policy/last.pt \
        --training training.json [--metrics metrics.json] [--default]
    python -m prevla_models.zoo verify           # sha256 of every entry (and its sidecar)
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from prevla_models.artifacts import Verified, sha256_file, verify, write_sidecar
from prevla_models.kinds import KINDS

ZOO_PREFIX = "zoo:"


def zoo_dir() -> Path:
    """Directory holding the manifest and the model files."""
    env = os.environ.get("PREVLA_ZOO")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "zoo"


def load_manifest(root: Path | None = None) -> dict:
    """``{name: entry}`` of the manifest (empty if there is no manifest yet)."""
    path = (root or zoo_dir()) / "manifest.yaml"
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    models = doc.get("models") or {} if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: 'models' must be a mapping of name -> entry")
    return models


def save_manifest(models: dict, root: Path | None = None) -> Path:
    path = (root or zoo_dir()) / "manifest.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# prevla model zoo: written by `python -m prevla_models.zoo register`; sha256 checked on load\n"
    path.write_text(header + yaml.safe_dump({"models": models}, sort_keys=False, width=100))
    return path


def entry_file(name: str, entry: dict, root: Path | None = None,
               allow_unverified: bool = False) -> Verified:
    """The file of a manifest entry, checked against the entry's sha256 (and any other record).

    Raises:
        FileNotFoundError: the file is missing.
        prevla_models.artifacts.UnverifiedModel: (a ValueError) sha256 mismatch, unless
            ``allow_unverified``.
    """
    base = root or zoo_dir()
    path = base / str(entry.get("file", ""))
    if not path.is_file():
        raise FileNotFoundError(f"zoo model {name!r}: file {path} is missing")
    record = (str(entry.get("sha256") or "").lower(),
              f"the zoo manifest {base / 'manifest.yaml'} (entry {name})")
    return verify(path, allow_unverified, root, extra=[record])


def entry_path(name: str, entry: dict, root: Path | None = None) -> Path:
    """Verified path of a manifest entry (ValueError on a missing file or sha256 mismatch)."""
    return Path(entry_file(name, entry, root).path)


def resolve_file(spec: str, kind: str, root: Path | None = None,
                 allow_unverified: bool = False) -> Verified:
    """Checkpoint spec -> its file, sha256-checked whatever the spec (see module docstring)."""
    if spec and not spec.startswith(ZOO_PREFIX):
        return verify(spec, allow_unverified, root)
    models = load_manifest(root)
    name = entry_name(spec, kind, models, root)
    return entry_file(name, models[name], root, allow_unverified)


def resolve(spec: str, kind: str, root: Path | None = None, allow_unverified: bool = False) -> str:
    """Checkpoint spec -> verified file path (:func:`resolve_file`'s path)."""
    return resolve_file(spec, kind, root, allow_unverified).path


def entry_name(spec: str, kind: str, models: dict, root: Path | None = None) -> str:
    """Manifest entry named by a zoo spec (``zoo:NAME``, ``zoo:default`` or ``""``) of ``models``.

    Raises:
        FileNotFoundError: no such entry, or no default ``kind`` entry.
        ValueError: the entry is not a ``kind`` model.
    """
    name = spec[len(ZOO_PREFIX):] if spec else "default"
    if name == "default":
        names = [n for n, e in models.items() if e.get("kind") == kind and e.get("default")]
        if not names:
            raise FileNotFoundError(f"the model zoo ({zoo_dir() if root is None else root}) has "
                                    f"no default {kind!r} model")
        name = names[0]
    if name not in models:
        raise FileNotFoundError(f"zoo model {name!r} not in the manifest (has {sorted(models)})")
    if models[name].get("kind") != kind:
        raise ValueError(f"zoo model {name!r} is a {models[name].get('kind')!r}, not a {kind!r}")
    return name


def register(name: str, kind: str, checkpoint: str, training: dict, metrics: dict | None = None,
             default: bool = False, root: Path | None = None) -> dict:
    """Copy a weights-only checkpoint into the zoo and (re)write its manifest entry."""
    root = root or zoo_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}.pt"
    if kind not in KINDS:
        raise ValueError(f"register: unsupported kind {kind!r}; expected one of {sorted(KINDS)}")
    row = KINDS[kind]
    model, extra = row.load_checkpoint(checkpoint)
    keep = {k: v for k, v in extra.items() if k != "train_state"}  # no optimizer state in the zoo
    keep[row.id_key] = name  # candidate sets and verdicts name the model they came from
    row.save_checkpoint(str(target), model, keep)
    models = load_manifest(root)
    if default:
        for e in models.values():
            if e.get("kind") == kind:
                e["default"] = False
    old = models.get(name, {})
    models[name] = {"kind": kind, "file": target.name, "sha256": sha256_file(str(target)),
                    "bytes": target.stat().st_size, "default": bool(default or old.get("default")),
                    "signature": row.signature(*row.load_checkpoint(str(target))), "training": training,
                    "metrics": metrics if metrics is not None else old.get("metrics", {})}
    save_manifest(models, root)
    return models[name]


def put_entry(name: str, entry: dict, root: Path | None = None) -> None:
    """Add or replace one manifest entry as is (exported artifacts: ``prevla export``) and write
    its file's sidecar; ValueError if the entry's sha256 is not its file's."""
    path = (root or zoo_dir()) / str(entry.get("file", ""))
    if entry.get("file") and path.is_file():
        if sha256_file(path) != entry.get("sha256"):
            raise ValueError(f"put_entry {name!r}: sha256 {entry.get('sha256')} is not that of {path}")
        write_sidecar(path, entry["sha256"])
    models = load_manifest(root)
    models[name] = entry
    save_manifest(models, root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prevla_models.zoo", description="model zoo manifest")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("register", help="add or replace a model")
    r.add_argument("name")
    r.add_argument("--kind", default="vla")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--training", required=True, help="JSON file: data, command, wall time, machine")
    r.add_argument("--metrics", default=None, help="JSON file of metrics (kept if omitted)")
    r.add_argument("--default", action="store_true", help="make it the default of its kind")
    m = sub.add_parser("set-metrics", help="replace the metrics of an entry")
    m.add_argument("name")
    m.add_argument("--metrics", required=True)
    sub.add_parser("verify", help="check the sha256 of every entry")
    a = p.parse_args(argv)
    if a.cmd == "register":
        metrics = json.loads(Path(a.metrics).read_text()) if a.metrics else None
        e = register(a.name, a.kind, a.checkpoint, json.loads(Path(a.training).read_text()), metrics, a.default)
        print(json.dumps({k: e[k] for k in ("file", "sha256", "bytes", "default")}))
    elif a.cmd == "set-metrics":
        models = load_manifest()
        if a.name not in models:
            raise SystemExit(f"no zoo model {a.name!r}")
        models[a.name]["metrics"] = json.loads(Path(a.metrics).read_text())
        save_manifest(models)
    else:
        models = load_manifest()
        for name, e in models.items():
            entry_path(name, e)  # the manifest's sha256 and, where there is one, the sidecar's
            print(f"{name}: ok ({e['sha256'][:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
