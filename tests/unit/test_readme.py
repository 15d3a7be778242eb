"""The README stays a front door, its commands exist, and no link in it or in docs/ is dead.

(The parameter tables live in docs/parameters.md, generated from the configs' help text and
checked by their own test.)
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

# [text](target) outside code; images too. Absolute URLs and mailto are not checked.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (where brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_is_a_front_door():
    lines = README.count("\n")
    assert lines <= 160, f"README.md has {lines} lines; move the details into docs/"


def test_quick_start_commands_exist_in_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    targets = set()
    for doc in DOCS:
        targets |= set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", doc.read_text(), flags=re.M))
    assert {"demo", "test"} <= set(re.findall(r"^make ([a-z-]+)", README, flags=re.M))
    for target in sorted(targets):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} not in Makefile"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(doc):
    dead = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            dead.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not dead, f"{doc.relative_to(ROOT)}: dead links: {dead}"
