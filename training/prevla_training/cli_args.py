"""One argparse front-end for the config dataclasses of the off-board jobs (``--field-name`` per
setting, composed sections flattened: :mod:`prevla_ros.runtime.settings`)."""
from __future__ import annotations

import argparse
import dataclasses

from prevla_ros.runtime.settings import build, settings


def add_config_args(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                    rename: dict[str, str] | None = None) -> None:
    """Add ``--<setting>`` for every scalar setting of config ``cls`` (help from its metadata).

    Booleans become ``--<setting>`` flags (store_true, default False required); a ``None``
    default takes text; settings in ``skip`` and non-scalar (dataclass) fields are left out;
    ``rename`` maps setting -> option name.
    """
    for s in settings(cls).values():
        if s.name in skip or dataclasses.is_dataclass(s.default):
            continue
        opt = "--" + (rename or {}).get(s.name, s.name.replace("_", "-"))
        if isinstance(s.default, bool):
            p.add_argument(opt, dest=s.name, action="store_true", help=s.help)
        else:
            p.add_argument(opt, dest=s.name, default=s.default, help=s.help,
                           type=str if s.default is None else type(s.default))


def build_config(p: argparse.ArgumentParser, cls, args: dict):
    """``cls`` from flat ``args`` (:func:`~prevla_ros.runtime.settings.build`); a ValueError
    becomes an argparse error (exit 2, naming the field)."""
    try:
        return build(cls, args)
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
