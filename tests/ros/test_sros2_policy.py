"""The declared interfaces (``prevla_ros/graph_interfaces.py``) are what the running nodes have,
and the committed SROS2 policy allows exactly them.

Each real node is started in the configurations that switch its optional interfaces on and
off, and rclpy's graph introspection (``get_*_names_and_types_by_node``, what ``ros2 security
generate_policy`` reads) must list exactly the declared publishers, subscriptions, services and
clients with their types, ROS's own per-node ones included. SROS2 itself needs the Fast DDS
security plugins, which the PyPI wheels lack: the policy is checked by resolving its names the
way sros2's permissions template does.
"""
from __future__ import annotations

import ast
import importlib
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from prevla_ros import security
from prevla_ros.graph_interfaces import (KINDS, LIFECYCLE_PUBLISHES, LIFECYCLE_SERVES, NODES,
                                        STANDARD_PUBLISHES, STANDARD_SERVES,
                                        STANDARD_SUBSCRIBES, Endpoint, NodeInterfaces)
from prevla_ros.runtime.configs import NODE_CONFIGS, ROBOT_NODE_CONFIGS
from prevla_ros.runtime.settings import settings

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
SETUP_PY = ROOT / "ros2_ws" / "src" / "prevla_ros" / "setup.py"
#: rclpy's own parameters that the table's conditions name, with their defaults.
RCLPY_DEFAULTS = {"use_sim_time": False, "start_type_description_service": True}
#: Keep LIBERO idle: no control loop, no first observation during the test.
QUIET_SIM = {"control_rate_hz": 0.0, "start_delay_s": 3600.0}
#: (node, parameter overrides): together they switch every conditional interface on and off.
CASES = [
    ("sim_node", QUIET_SIM),
    ("policy_node", {"policy": "scripted_expert"}),
    ("verifier_node", {}),  # model verifier, execute mode, resampling: the client
    ("verifier_node", {"verifier": "passthrough", "use_sim_time": True,
                       "start_type_description_service": False}),
    ("verifier_node", {"mode": "imagine"}),
    ("world_model_node", {"source": "approved"}),
    ("world_model_node", {"source": "candidates"}),
    ("world_model_node", {"source": "imagine_candidates"}),
    ("controller_adapter_node", {}),
]
CLASSES = {"sim_node": "SimNode", "policy_node": "PolicyNode", "verifier_node": "VerifierNode",
           "world_model_node": "WorldModelNode",
           "controller_adapter_node": "ControllerAdapterNode"}
STANDARD = set(STANDARD_PUBLISHES + STANDARD_SUBSCRIBES + STANDARD_SERVES + LIFECYCLE_SERVES
               + LIFECYCLE_PUBLISHES)
GRAPH = {"publishes": "get_publisher_names_and_types_by_node",
         "subscribes": "get_subscriber_names_and_types_by_node",
         "serves": "get_service_names_and_types_by_node",
         "calls": "get_client_names_and_types_by_node"}


def _params(node: str, overrides: dict[str, object]) -> dict[str, object]:
    """Every parameter value a case's node starts with: its config's defaults, rclpy's, the
    case's overrides."""
    config = {**NODE_CONFIGS, **ROBOT_NODE_CONFIGS}[node]
    defaults = {name: s.default for name, s in settings(config).items()}
    return {**defaults, **RCLPY_DEFAULTS, **overrides}


def _conditional(n: NodeInterfaces, standard: bool) -> list[tuple[str, Endpoint]]:
    """The node's conditional interfaces: its own, or rclpy's standard ones."""
    return [(kind, e) for kind in KINDS for e in getattr(n, kind)
            if e.when and (e in STANDARD) == standard]


def _case_id(case) -> str:
    node, overrides = case
    return node + "".join(f"-{k}={v}" for k, v in overrides.items() if k not in QUIET_SIM)


# --- the table covers the graph's nodes, and the cases cover the table ---------------------
def test_every_node_executable_is_declared():
    """A node added to the package (a console script ``*_node``) must be declared."""
    scripts = set()
    for call in ast.walk(ast.parse(SETUP_PY.read_text())):
        if isinstance(call, ast.Constant) and isinstance(call.value, str) and " = " in call.value:
            name = call.value.split(" = ")[0].strip()
            if name.endswith("_node"):
                scripts.add(name)
    assert scripts == set(NODES), "declare each node in prevla_ros/graph_interfaces.py"
    assert set(CLASSES) == set(NODES), "add a case and the class of each declared node here"


def _assert_switched(what: str, e: Endpoint, cases: list[dict[str, object]]) -> None:
    seen = {e.applies(p) for p in cases}
    assert seen == {True, False}, (f"{what} {e.name} ({e.condition()}): the cases only see it "
                                   f"{'present' if True in seen else 'absent'}; add a case")


@pytest.mark.parametrize("node", sorted(NODES))
def test_cases_switch_every_conditional_interface_on_and_off(node):
    cases = [_params(n, o) for n, o in CASES if n == node]
    assert cases, f"no case starts {node}"
    for kind, e in _conditional(NODES[node], standard=False):
        _assert_switched(f"{node} {kind}", e, cases)


def test_some_node_switches_rclpys_conditional_interfaces_on_and_off():
    """rclpy's conditional interfaces (sim time, type descriptions) are the same in every
    node: one node started both ways checks the rule."""
    def switched(node: str) -> bool:
        cases = [_params(n, o) for n, o in CASES if n == node]
        return all({e.applies(p) for p in cases} == {True, False}
                   for _, e in _conditional(NODES[node], standard=True))

    assert any(switched(node) for node in NODES), "add a case with use_sim_time etc. switched"


# --- the running nodes have exactly the declared interfaces --------------------------------
def _start(ros, node: str, namespace: str, overrides: dict[str, object]):
    from rclpy.parameter import Parameter

    module = importlib.import_module(f"prevla_ros.nodes.{node}")
    cls = getattr(module, CLASSES[node])
    instance = ros.add(cls(context=ros.context, namespace=namespace, parameter_overrides=[
        Parameter(k, value=v) for k, v in overrides.items()]))
    from rclpy.lifecycle import LifecycleNode

    if isinstance(instance, LifecycleNode):  # declared as active: inputs exist only then
        from prevla_ros.nodes.lifecycle import bring_up

        assert bring_up(instance), f"{node} did not become active"
    return instance


def _graph(probe, node: str, namespace: str) -> dict[str, set[tuple[str, str]]]:
    return {kind: {(name, t) for name, types in getattr(probe, method)(node, namespace)
                   for t in types}
            for kind, method in GRAPH.items()}


def _diff(expected: dict, actual: dict) -> list[str]:
    lines = []
    for kind in KINDS:
        lines += [f"declared, not in the graph: {kind} {n} [{t}]"
                  for n, t in sorted(expected[kind] - actual[kind])]
        lines += [f"in the graph, not declared: {kind} {n} [{t}]"
                  for n, t in sorted(actual[kind] - expected[kind])]
    return lines


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=(
    [pytest.mark.libero] if c[0] == "sim_node" else [])) for c in CASES])
def test_running_node_has_exactly_the_declared_interfaces(ros, case):
    node, overrides = case
    # A namespace of its own: another test process on the same DDS domain (the domain id is
    # drawn at random) may run a node of the same name. Relative names move into it.
    namespace = f"/sros2_{uuid.uuid4().hex[:8]}"
    instance = _start(ros, node, namespace, overrides)
    declared = NODES[node]
    from rclpy.lifecycle import LifecycleNode

    assert isinstance(instance, LifecycleNode) == declared.lifecycle, (
        f"{node}: lifecycle={declared.lifecycle} in graph_interfaces.py")
    names = {name for kind in KINDS for e in getattr(declared, kind) for name, _ in e.when}
    params = {name: instance.get_parameter(name).value for name in sorted(names)}
    assert params == {k: v for k, v in _params(node, overrides).items() if k in names}
    active = declared.active(params)
    expected = {kind: active.resolved(kind, namespace) for kind in KINDS}
    probe = ros.node("sros2_probe")
    ros.wait_for(lambda: _graph(probe, node, namespace) == expected, timeout_s=10)
    ros.spin_for(0.5)  # nothing more shows up later
    problems = _diff(expected, _graph(probe, node, namespace))
    assert not problems, f"{namespace}/{node}:\n" + "\n".join(problems)


# --- the committed policy is the table's -----------------------------------------------------
def test_committed_policy_is_generated_from_the_table():
    assert security.stale() is None, "run `prevla security --write`"


def _sros2_fqn(name: str, ns: str, node: str) -> str:
    """How sros2's permissions template resolves a policy name (absolute, ~ private or
    relative to the profile's namespace)."""
    prefix = ns if ns.endswith("/") else ns + "/"
    if name.startswith("/"):
        return name
    if name.startswith("~"):
        return prefix + node + name[1:]
    return prefix + name


ALLOWED_CHILDREN = {"topics": ({"publish", "subscribe"}, "topic"),
                    "services": ({"reply", "request"}, "service")}


def test_policy_allows_exactly_the_declared_names_per_enclave():
    root = ET.parse(security.POLICY).getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    assert [c.tag for c in root] == ["enclaves"]
    seen = []
    for enclave in root.find("enclaves"):
        assert enclave.tag == "enclave" and [c.tag for c in enclave] == ["profiles"]
        (profile,) = enclave.find("profiles")
        node, ns = profile.get("node"), profile.get("ns")
        assert enclave.get("path") == f"/prevla/{node}" and ns == "/"
        seen.append(node)
        allowed = {kind: set() for kind in KINDS}
        direction = {"publish": "publishes", "subscribe": "subscribes", "reply": "serves",
                     "request": "calls"}
        for rule in profile:
            attributes, item = ALLOWED_CHILDREN[rule.tag]
            assert set(rule.attrib) <= attributes and set(rule.attrib.values()) == {"ALLOW"}
            assert len(rule) >= 1 and all(c.tag == item for c in rule)
            for attribute in rule.attrib:
                allowed[direction[attribute]] |= {_sros2_fqn(c.text, ns, node) for c in rule}
        declared = NODES[node]
        for kind in KINDS:
            assert allowed[kind] == {name for name, _ in declared.resolved(kind)}, (node, kind)
    assert seen == list(NODES)
