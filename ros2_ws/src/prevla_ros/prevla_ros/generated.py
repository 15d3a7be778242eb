"""Files generated from the sources (``prevla params``, ``prevla security``): which are stale,
their diff, or rewriting them. Each command names its files; this is the one check-or-write CLI."""
from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from pathlib import Path

#: The source checkout the generated files belong to.
ROOT = Path(__file__).resolve().parents[4]


def stale_files(files: dict[Path, str]) -> dict[Path, str]:
    """path -> the text it should have, for each of ``files`` that is missing or different."""
    return {path: text for path, text in files.items() if not path.exists() or path.read_text() != text}


def main(prog: str, doc: str, stale: Callable[[], dict[Path, str]], argv: list[str] | None = None) -> int:
    """Print the unified diff of every stale file (exit 1 if any), or rewrite them with ``--write``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the generated files")
    args = p.parse_args(argv)
    if not (ROOT / "launch").is_dir():
        p.error(f"{ROOT} is not a prevla source checkout ({prog} works on the sources)")
    todo = stale()
    for path, text in todo.items():
        name = str(path.relative_to(ROOT))
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {name}")
        else:
            old = path.read_text().splitlines() if path.exists() else []
            sys.stdout.writelines(line + "\n" for line in difflib.unified_diff(
                old, text.splitlines(), name, "generated", lineterm=""))
    return 1 if todo and not args.write else 0
