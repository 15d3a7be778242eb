"""The house rules of imports, checked on the source (every import, module-level or inside a
function): the models know neither ROS nor Ray, the robot-side core and the simulator know no
rclpy, the runtime does not know the simulator, only the nodes and the CLI touch rclpy, and only
the off-board training side touches Ray."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"prevla_models": ROOT / "models" / "prevla_models",
            "prevla_ros": ROOT / "ros2_ws" / "src" / "prevla_ros" / "prevla_ros",
            "prevla_sim": ROOT / "sim" / "prevla_sim",
            "prevla_training": ROOT / "training" / "prevla_training"}
ROS_MESSAGES = ("prevla_interfaces", "rcl_interfaces", "lifecycle_msgs")


def _module_name(package: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[package]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def _modules() -> dict[str, set[str]]:
    return {_module_name(pkg, f): _imports(f)
            for pkg, root in PACKAGES.items() for f in sorted(root.rglob("*.py"))}


MODULES = _modules()


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_ros(name: str) -> bool:
    top = _top(name)
    return top == "rclpy" or top in ROS_MESSAGES or top.endswith("_msgs")


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


RULES = [
    # (who, what they must not import, why)
    ("prevla_models", lambda n: _is_ros(n) or _top(n) == "ray",
     "models are pure torch: no ROS, no Ray"),
    ("prevla_ros.runtime", lambda n: _is_ros(n) or _top(n) == "ray",
     "the runtime is the ROS-free core"),
    ("prevla_sim", lambda n: _is_ros(n) or _top(n) == "ray", "the simulator adapter is ROS-free"),
    ("prevla_ros.runtime", lambda n: _within(n, "prevla_sim", "prevla_training", "prevla_ros.nodes",
                                             "prevla_ros.cli"),
     "the runtime does not know the simulator, training, the nodes or the CLI"),
    ("prevla_models", lambda n: _within(n, "prevla_ros.nodes", "prevla_sim", "prevla_training"),
     "models do not know the nodes, the simulator or training"),
    ("prevla_ros", lambda n: _top(n) == "ray", "only training touches Ray"),
    ("prevla_sim", lambda n: _within(n, "prevla_training", "prevla_ros.nodes"),
     "the simulator does not know training or the nodes"),
]


@pytest.mark.parametrize("who, forbidden, why", RULES, ids=[r[2] for r in RULES])
def test_layering(who, forbidden, why):
    bad = {m: sorted(n for n in imports if forbidden(n))
           for m, imports in MODULES.items() if _within(m, who)}
    bad = {m: names for m, names in bad.items() if names}
    assert not bad, f"{why}: {bad}"


def test_only_the_nodes_and_the_cli_touch_rclpy():
    allowed = ("prevla_ros.nodes", "prevla_ros.cli")
    bad = {m for m, imports in MODULES.items()
           if any(_top(n) == "rclpy" for n in imports) and not _within(m, *allowed)}
    assert not bad, f"rclpy outside nodes/ and the CLI: {sorted(bad)}"


def test_ros_messages_stay_in_the_nodes_cli_and_conversions():
    allowed = ("prevla_ros.nodes", "prevla_ros.cli", "prevla_ros.conversions")
    bad = {m for m, imports in MODULES.items()
           if any(_is_ros(n) for n in imports) and not _within(m, *allowed)}
    assert not bad, f"ROS messages outside nodes/, the CLI and conversions: {sorted(bad)}"


def test_the_rules_see_every_package():
    # A package that moved without this test noticing would pass every rule vacuously.
    for package, root in PACKAGES.items():
        assert root.is_dir() and any(m.startswith(package) for m in MODULES), package
    assert _is_ros("sensor_msgs.msg") and _is_ros("rclpy.node") and not _is_ros("numpy")


def test_a_violation_is_caught(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import rclpy.node\n    from ray import util\n")
    imports = _imports(bad)
    assert {"rclpy.node", "ray"} <= imports
    assert RULES[0][1]("rclpy.node") and RULES[5][1]("ray")
