"""The launch file, the params file, the node configs and both packagings agree.

``launch``/``launch_ros`` are not installable from PyPI, so the launch file is read with
``ast`` instead of being executed: every ``Node(...)`` / ``LifecycleNode(...)``,
``DeclareLaunchArgument(...)`` and ``LaunchConfiguration(...)`` in it is a literal call that
these tests can inspect.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from prevla_ros.runtime.configs import NODE_CONFIGS, ROBOT_NODE_CONFIGS
from prevla_ros.runtime.settings import build, settings
from prevla_ros.runtime.supervisor import SupervisorConfig

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "prevla.launch.py"
PARAMS_FILE = ROOT / "launch" / "prevla.params.yaml"
SETUP_PY = ROOT / "ros2_ws" / "src" / "prevla_ros" / "setup.py"
PYPROJECT = ROOT / "pyproject.toml"
#: Launch arguments the README and robot users rely on.
REQUIRED_ARGUMENTS = {"params_file", "suite", "task_id", "init_state", "episodes", "policy",
                      "num_candidates", "verifier", "mode", "use_sim"}
TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool}
#: prevla nodes the launch file may start that have no config of their own here.
NODES_WITHOUT_CONFIG = {"controller_adapter_node"}
#: Launch arguments that switch nodes on or off (or name the params file): no parameter.
SWITCHES = {"params_file", "use_sim", "use_world_model", "use_controller", "rviz"}


def _name(func: ast.expr) -> str:
    """``Node`` for both ``Node(...)`` and ``launch_ros.actions.Node(...)``."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _name(n.func) == name]


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _launch_config_name(expr: ast.expr) -> str:
    """The argument name of a literal ``LaunchConfiguration('name')``."""
    assert isinstance(expr, ast.Call) and _name(expr.func) == "LaunchConfiguration", \
        ast.unparse(expr)
    assert len(expr.args) == 1 and isinstance(expr.args[0], ast.Constant), ast.unparse(expr)
    return expr.args[0].value


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


@pytest.fixture(scope="module")
def constants(tree) -> dict[str, object]:
    """Module-level ``NAME = 'literal'`` assignments (e.g. ``PACKAGE``)."""
    out = {}
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and isinstance(stmt.value, ast.Constant)):
            out[stmt.targets[0].id] = stmt.value.value
    return out


def _literal(expr: ast.expr | None, constants: dict[str, object]) -> object:
    if isinstance(expr, ast.Name) and expr.id in constants:
        return constants[expr.id]
    assert isinstance(expr, ast.Constant), f"expected a literal, got {ast.unparse(expr)}"
    return expr.value


@pytest.fixture(scope="module")
def nodes(tree, constants) -> dict[str, ast.Call]:
    """Launched prevla node name -> its ``Node(...)`` or ``LifecycleNode(...)`` call (rviz2,
    another package's, is not one)."""
    out = {}
    for call in _calls(tree, "Node") + _calls(tree, "LifecycleNode"):
        if _literal(_kw(call, "package"), constants) != "prevla_ros":
            continue
        name = _literal(_kw(call, "name"), constants)
        assert name not in out, f"node {name} launched twice"
        out[name] = call
    return out


@pytest.fixture(scope="module")
def arguments(tree) -> dict[str, ast.Call]:
    out = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        name = call.args[0] if call.args else _kw(call, "name")
        assert isinstance(name, ast.Constant), ast.unparse(call)
        assert name.value not in out, f"launch argument {name.value} declared twice"
        out[name.value] = call
    return out


def _overrides(call: ast.Call) -> dict[str, tuple[str, type | None]]:
    """Parameter name -> (launch argument, explicit value_type) of a Node's override dict."""
    params = _kw(call, "parameters")
    assert isinstance(params, ast.List), "parameters= must be a literal list"
    out = {}
    for item in params.elts:
        if not isinstance(item, ast.Dict):
            continue
        for key, value in zip(item.keys, item.values):
            assert isinstance(key, ast.Constant), ast.unparse(item)
            value_type = None
            if isinstance(value, ast.Call) and _name(value.func) == "ParameterValue":
                vt = _kw(value, "value_type")
                value_type = TYPE_NAMES[vt.id] if isinstance(vt, ast.Name) else None
                value = value.args[0]
            out[key.value] = (_launch_config_name(value), value_type)
    return out


def _console_scripts_setup_py() -> dict[str, str]:
    setup = next(c for c in _calls(ast.parse(SETUP_PY.read_text()), "setup"))
    entry_points = ast.literal_eval(_kw(setup, "entry_points"))
    scripts = {}
    for line in entry_points["console_scripts"]:
        name, target = (part.strip() for part in line.split("=", 1))
        scripts[name] = target
    return scripts


def _console_scripts_pyproject() -> dict[str, str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())


# --- the launch file ----------------------------------------------------------------------
def test_launch_file_has_the_standard_entry_point(tree):
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert _calls(tree, "LaunchDescription"), "generate_launch_description returns nothing"


def test_launches_every_node_with_a_config(nodes):
    assert set(NODE_CONFIGS) <= set(nodes)
    assert set(nodes) - set(NODE_CONFIGS) <= NODES_WITHOUT_CONFIG
    for name, call in nodes.items():
        assert _literal(_kw(call, "output"), {}) == "screen", name


@pytest.mark.parametrize("node", sorted(NODE_CONFIGS))
def test_executable_is_a_console_script_in_both_packagings(nodes, constants, node):
    executable = _literal(_kw(nodes[node], "executable"), constants)
    setup_scripts, pyproject_scripts = _console_scripts_setup_py(), _console_scripts_pyproject()
    assert executable in setup_scripts, f"{executable} missing from setup.py console_scripts"
    assert executable in pyproject_scripts, f"{executable} missing from [project.scripts]"
    target = setup_scripts[executable]
    assert pyproject_scripts[executable] == target, (
        f"{executable}: setup.py -> {target}, pyproject -> {pyproject_scripts[executable]}")
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function, None)), f"{target} is not callable"


def test_every_argument_has_a_description(arguments):
    assert REQUIRED_ARGUMENTS <= set(arguments), REQUIRED_ARGUMENTS - set(arguments)
    for name, call in arguments.items():
        description = _kw(call, "description")
        assert isinstance(description, ast.Constant) and isinstance(description.value, str) \
            and description.value.strip(), f"launch argument {name} has no description"


def test_every_launch_configuration_is_declared_and_every_argument_used(tree, arguments):
    used = {_launch_config_name(c) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= set(arguments), f"undeclared launch arguments: {used - set(arguments)}"
    assert set(arguments) <= used, f"declared but unused: {set(arguments) - used}"


@pytest.mark.parametrize("node", sorted(NODE_CONFIGS))
def test_overrides_name_real_parameters_with_matching_types(nodes, arguments, node):
    cls = NODE_CONFIGS[node]
    hints = {s.name: s.type for s in settings(cls).values()}
    defaults = {s.name: s.default for s in settings(cls).values()}
    overrides = _overrides(nodes[node])
    for param, (arg, value_type) in overrides.items():
        assert param in defaults, f"{node} has no parameter {param!r} (launch override)"
        assert arg == param, f"{node}.{param} is set from launch argument {arg!r}"
        assert arg in arguments, f"{node}.{param} uses undeclared argument {arg!r}"
        assert value_type is hints[param], (
            f"{node}.{param}: override value_type {value_type} != parameter type {hints[param]}")
        # The argument's default must be the node's default, or launching with no
        # arguments would silently change the parameters file's value.
        default = _literal(_kw(arguments[arg], "default_value"), {})
        assert value_type(default) == defaults[param], (
            f"launch argument {arg} defaults to {default!r}, {node}.{param} to "
            f"{defaults[param]!r}")


def test_overrides_cover_the_node_arguments(nodes, arguments):
    overridden = {arg for call in nodes.values() for arg, _ in _overrides(call).values()}
    assert set(arguments) - overridden == SWITCHES


def test_every_node_reads_the_params_file_first(nodes):
    for name, call in nodes.items():
        first = _kw(call, "parameters").elts[0]
        assert isinstance(first, ast.Name) and first.id == "params_file", name


def test_use_sim_false_skips_only_the_simulator(nodes):
    condition = _kw(nodes["sim_node"], "condition")
    assert isinstance(condition, ast.Call) and _name(condition.func) == "IfCondition"
    assert _launch_config_name(condition.args[0]) == "use_sim"
    assert _kw(nodes["policy_node"], "condition") is None
    assert _kw(nodes["verifier_node"], "condition") is None


def test_world_model_node_starts_only_when_asked(nodes, arguments):
    condition = _kw(nodes["world_model_node"], "condition")
    assert isinstance(condition, ast.Call) and _name(condition.func) == "IfCondition"
    assert _launch_config_name(condition.args[0]) == "use_world_model"
    assert _literal(_kw(arguments["use_world_model"], "default_value"), {}) == "false"


def test_managed_nodes_are_lifecycle_nodes_driven_to_active(tree, nodes):
    # prevla up drives the same nodes to active (Graph.MANAGED; --autostart with --processes)
    from prevla_ros.cli import Graph

    lifecycle = {name for name, call in nodes.items() if _name(call.func) == "LifecycleNode"}
    assert lifecycle == set(Graph.MANAGED)
    assert _name(nodes["sim_node"].func) == "Node"
    # configure on every process start (respawns too), activate once configured
    [on_start] = _calls(tree, "OnProcessStart")
    [on_transition] = _calls(tree, "OnStateTransition")
    assert _literal(_kw(on_transition, "start_state"), {}) == "configuring"
    assert _literal(_kw(on_transition, "goal_state"), {}) == "inactive"
    transitions = {ast.unparse(_kw(c, "transition_id")) for c in _calls(tree, "ChangeState")}
    assert transitions == {"transition_id"}  # the helper's parameter: see its two uses
    used = [ast.unparse(c.args[0]) for c in _calls(tree, "change")]
    assert used == ["Transition.TRANSITION_CONFIGURE", "Transition.TRANSITION_ACTIVATE"]
    assert ast.unparse(_kw(on_start, "on_start")) == "[change(Transition.TRANSITION_CONFIGURE)]"
    assert ast.unparse(_kw(on_transition, "entities")) == "[change(Transition.TRANSITION_ACTIVATE)]"
    # ... for each managed node
    [managed] = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "managed" for t in n.targets)]
    assert {ast.unparse(e) for e in managed.elts} == lifecycle
    assert [ast.unparse(c.args[0]) for c in _calls(tree, "drive_to_active")] == ["node"]


def test_rviz_and_the_controller_adapter_start_only_when_asked(tree, constants, nodes,
                                                              arguments):
    for arg in ("rviz", "use_controller"):
        assert _literal(_kw(arguments[arg], "default_value"), {}) == "false", arg
    condition = _kw(nodes["controller_adapter_node"], "condition")
    assert _launch_config_name(condition.args[0]) == "use_controller"
    [rviz] = [c for c in _calls(tree, "Node")
              if _literal(_kw(c, "package"), constants) == "rviz2"]
    assert _launch_config_name(_kw(rviz, "condition").args[0]) == "rviz"
    assert ast.unparse(_kw(rviz, "arguments")) == (
        "['-d', os.path.join(share, 'launch', 'prevla.rviz')]")


@pytest.mark.parametrize("node", sorted(NODE_CONFIGS))
def test_every_node_is_respawned_with_prevla_ups_policy(nodes, constants, node):
    # launch's respawn / respawn_delay / respawn_max_retries are `prevla up --processes`'s
    # respawn / respawn_delay_s / max_restarts: one restart policy, whichever starts the graph.
    policy = SupervisorConfig()
    call = nodes[node]
    assert _literal(_kw(call, "respawn"), constants) is policy.respawn is True, node
    assert _literal(_kw(call, "respawn_delay"), constants) == policy.respawn_delay_s, node
    assert _literal(_kw(call, "respawn_max_retries"), constants) == policy.max_restarts, node


def test_default_params_file_is_the_installed_one(tree):
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert PARAMS_FILE.name in strings
    assert _calls(tree, "get_package_share_directory")


# --- the params file ----------------------------------------------------------------------
def test_params_file_has_one_section_per_node(params):
    # The launched nodes' and the real robot's nodes (started on their own, same params file).
    assert set(params) == set(NODE_CONFIGS) | set(ROBOT_NODE_CONFIGS)
    for node, section in params.items():
        assert set(section) == {"ros__parameters"}, node


@pytest.mark.parametrize("node", sorted({**NODE_CONFIGS, **ROBOT_NODE_CONFIGS}))
def test_params_match_the_config_fields_types_and_defaults(params, node):
    cls = {**NODE_CONFIGS, **ROBOT_NODE_CONFIGS}[node]
    hints = {s.name: s.type for s in settings(cls).values()}
    values = params[node]["ros__parameters"]
    names = list(settings(cls))
    assert set(values) - set(names) == set(), f"{node}: not parameters of {cls.__name__}"
    assert set(names) - set(values) == set(), f"{node}: missing from {PARAMS_FILE.name}"
    for f in settings(cls).values():
        value = values[f.name]
        # Exact type (True is an int, 10 is not a float): ROS rejects a mismatched type.
        assert type(value) is hints[f.name], (
            f"{node}.{f.name}: {value!r} is {type(value).__name__}, expected "
            f"{hints[f.name].__name__}")
        assert value == f.default, f"{node}.{f.name}: {value!r} != default {f.default!r}"
    build(cls, values)  # and the whole section is a valid config


def test_every_node_runs_in_the_enclave_of_the_sros2_policy(tree, constants):
    """Each prevla node gets ``--enclave /prevla/<node>``: the enclave the generated SROS2
    policy (``prevla security``) grants that node's topics and services."""
    from prevla_ros.graph_interfaces import NODES
    from prevla_ros.security import ENCLAVE_ROOT, enclave_path

    assert constants["ENCLAVE_ROOT"] == ENCLAVE_ROOT
    enclaves = {}
    for call in _calls(tree, "Node") + _calls(tree, "LifecycleNode"):
        package = _kw(call, "package")
        if not (isinstance(package, ast.Name) and package.id == "PACKAGE"):
            continue  # rviz2
        args = _kw(call, "ros_arguments")
        assert args is not None, f"{ast.literal_eval(_kw(call, 'name'))}: no --enclave"
        flag, path = args.elts
        assert ast.literal_eval(flag) == "--enclave"
        assert isinstance(path, ast.BinOp) and path.left.id == "ENCLAVE_ROOT"
        enclaves[ast.literal_eval(_kw(call, "name"))] = ENCLAVE_ROOT + ast.literal_eval(path.right)
    assert enclaves == {name: enclave_path(name) for name in NODES}
