"""The README's parameter table and commands stay true to the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from prevla_ros.runtime.configs import NODE_CONFIGS, config_help

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("node", sorted(NODE_CONFIGS))
def test_every_parameter_is_in_the_readme_table_with_its_default(node):
    section = README.split(f"**{node}**", 1)[1].split("\n\n**", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", section, flags=re.M))
    for name, (default, _) in config_help(NODE_CONFIGS[node]).items():
        assert name in rows, f"{node}.{name} missing from the README parameter table"
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert rows[name] == shown, f"{node}.{name}: README says {rows[name]!r}, code {shown!r}"
    assert set(rows) == set(config_help(NODE_CONFIGS[node])), "README lists unknown parameters"


def test_quick_start_commands_exist_in_the_makefile():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    for target in re.findall(r"^make ([a-z-]+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} not in Makefile"
    assert "make test" in (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
