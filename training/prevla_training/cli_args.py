"""One argparse front-end for the training jobs' config dataclasses (``--field-name`` per field)."""
from __future__ import annotations

import argparse
import dataclasses


def add_config_args(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                    rename: dict[str, str] | None = None) -> None:
    """Add ``--<field>`` for every scalar field of dataclass ``cls`` (help from its metadata).

    Booleans become ``--<field>`` flags (store_true, default False required); fields in ``skip``
    and non-scalar (dataclass) fields are left out; ``rename`` maps field -> option name.
    """
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if f.name in skip or dataclasses.is_dataclass(value):
            continue
        opt = "--" + (rename or {}).get(f.name, f.name.replace("_", "-"))
        if isinstance(value, bool):
            p.add_argument(opt, dest=f.name, action="store_true", help=f.metadata.get("help"))
        else:
            p.add_argument(opt, dest=f.name, type=type(value), default=value, help=f.metadata.get("help"))


def build_config(p: argparse.ArgumentParser, cls, args: dict):
    """``cls(**args)``; a ValueError becomes an argparse error (exit 2, naming the field)."""
    try:
        return cls(**args)
    except ValueError as exc:
        p.error(str(exc))


def parse_config(p: argparse.ArgumentParser, cls, argv: list[str] | None):
    """Parse ``argv`` into ``cls`` (see :func:`build_config`)."""
    return build_config(p, cls, vars(p.parse_args(argv)))


def write_report(out: str, result: dict, table: str) -> None:
    """Print a benchmark's markdown ``table`` and write ``result`` as JSON to ``out`` (+ the table
    as ``.md`` next to it)."""
    import json
    from pathlib import Path

    print(table)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(table + "\n")
