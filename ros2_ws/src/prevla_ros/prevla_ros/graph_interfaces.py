"""What every prevla node publishes, subscribes, serves and calls: the declared ROS interfaces.

One table, :data:`NODES`, written here once and checked against the running nodes by
``tests/ros/test_sros2_policy.py`` (rclpy graph introspection: each node's publishers,
subscriptions, services and clients must equal the declaration, ROS's own per-node interfaces
included). Two things are generated from it: the SROS2 access-control policy
(``launch/sros2/prevla_policy.xml``, :mod:`prevla_ros.security`) and the check that every rviz
display in ``launch/prevla.rviz`` names a topic and type some node publishes
(``tests/unit/test_rviz_config.py``).

The managed nodes (policy, verifier, world model) are declared as they are when *active*
(their input subscriptions exist only then). An interface that exists only in some
configurations says when (``only(mode="imagine")``:
parameter name -> the values for which the node has it). The SROS2 policy allows the union over
all configurations; the test compares each started configuration with its own subset.

Names are written as the node spells them: relative (``candidates``, resolved against the
node's namespace), absolute (``/diagnostics``) or private (``~/swap_model``). ROS-free: types
are ``package/msg/Name`` strings, nothing is imported from rclpy or message packages.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

Conditions = tuple[tuple[str, tuple[object, ...]], ...]


def only(**conditions: object) -> Conditions:
    """``only(verifier="model", mode=("execute",))``: the node has the interface only while
    every named parameter has one of the given values (a single value or a tuple of them)."""
    return tuple((name, tuple(v) if isinstance(v, (tuple, list)) else (v,))
                 for name, v in sorted(conditions.items()))


@dataclass(frozen=True)
class Endpoint:
    """One topic or service of a node.

    Args:
        name: as the node spells it: ``relative``, ``/absolute`` or ``~/private``.
        type: the interface type, ``package/msg/Name`` or ``package/srv/Name``.
        when: the parameter values under which the node has it (empty: always).
    """

    name: str
    type: str
    when: Conditions = ()

    def fqn(self, node: str, namespace: str = "/") -> str:
        """The fully qualified name in ``namespace`` (how ROS and SROS2 resolve it)."""
        ns = namespace.rstrip("/")
        if self.name.startswith("/"):
            return self.name
        if self.name.startswith("~/"):
            return f"{ns}/{node}/{self.name[2:]}"
        return f"{ns}/{self.name}"

    def applies(self, params: Mapping[str, object]) -> bool:
        """Whether a node with these parameter values has it (``KeyError``: a parameter the
        condition names is missing from ``params``)."""
        return all(params[name] in values for name, values in self.when)

    def condition(self) -> str:
        """The condition as text (``mode=imagine``; ``""`` when always)."""
        return ", ".join(f"{name}={'|'.join(_text(v) for v in values)}"
                         for name, values in self.when)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


KINDS = ("publishes", "subscribes", "serves", "calls")


@dataclass(frozen=True)
class NodeInterfaces:
    """A node's declared interfaces; ``lifecycle``: a managed node (lifecycle services)."""

    node: str
    publishes: tuple[Endpoint, ...] = ()
    subscribes: tuple[Endpoint, ...] = ()
    serves: tuple[Endpoint, ...] = ()
    calls: tuple[Endpoint, ...] = ()
    lifecycle: bool = False

    def active(self, params: Mapping[str, object]) -> NodeInterfaces:
        """The interfaces a node started with these parameter values has."""
        return replace(self, **{kind: tuple(e for e in getattr(self, kind) if e.applies(params))
                                for kind in KINDS})

    def resolved(self, kind: str, namespace: str = "/") -> set[tuple[str, str]]:
        """``{(fully qualified name, type)}`` of one kind (``publishes`` ...)."""
        return {(e.fqn(self.node, namespace), e.type) for e in getattr(self, kind)}


# --- types --------------------------------------------------------------------------------
IMAGE = "sensor_msgs/msg/Image"
JOINT_STATE = "sensor_msgs/msg/JointState"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
STRING = "std_msgs/msg/String"
MARKER = "visualization_msgs/msg/Marker"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
ACTION_CHUNK = "prevla_interfaces/msg/ActionChunk"
CANDIDATE_SET = "prevla_interfaces/msg/CandidateSet"
EPISODE_STATUS = "prevla_interfaces/msg/EpisodeStatus"
SIM_STATE = "prevla_interfaces/msg/SimState"
VERDICT = "prevla_interfaces/msg/Verdict"
SAMPLE_CANDIDATES = "prevla_interfaces/srv/SampleCandidates"
SWAP_MODEL = "prevla_interfaces/srv/SwapModel"
RESET_ESTOP = "prevla_interfaces/srv/ResetEStop"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"

# --- what rclpy gives every node, listed so that nothing is ignored silently ---------------
#: Log records (``/rosout``) and parameter change events, published by every node.
STANDARD_PUBLISHES = (Endpoint("/rosout", "rcl_interfaces/msg/Log"),
                      Endpoint("/parameter_events", "rcl_interfaces/msg/ParameterEvent"))
#: Sim time: every node listens to ``/clock`` while its ``use_sim_time`` is true.
STANDARD_SUBSCRIBES = (Endpoint("/clock", "rosgraph_msgs/msg/Clock", only(use_sim_time=True)),)
#: The parameter services (``ros2 param``) and the type description service (Jazzy and later,
#: unless ``start_type_description_service`` is false).
STANDARD_SERVES = tuple(
    Endpoint(f"~/{name}", f"rcl_interfaces/srv/{kind}") for name, kind in (
        ("describe_parameters", "DescribeParameters"),
        ("get_parameter_types", "GetParameterTypes"),
        ("get_parameters", "GetParameters"),
        ("list_parameters", "ListParameters"),
        ("set_parameters", "SetParameters"),
        ("set_parameters_atomically", "SetParametersAtomically"))) + (
    Endpoint("~/get_type_description", "type_description_interfaces/srv/GetTypeDescription",
             only(start_type_description_service=True)),)
#: A managed (lifecycle) node's state machine services and its transition events.
LIFECYCLE_SERVES = tuple(Endpoint(f"~/{name}", f"lifecycle_msgs/srv/{kind}") for name, kind in (
    ("change_state", "ChangeState"), ("get_state", "GetState"),
    ("get_available_states", "GetAvailableStates"),
    ("get_available_transitions", "GetAvailableTransitions"),
    ("get_transition_graph", "GetAvailableTransitions")))
LIFECYCLE_PUBLISHES = (Endpoint("~/transition_event", "lifecycle_msgs/msg/TransitionEvent"),)


def node(name: str, *, publishes: tuple[Endpoint, ...] = (),
         subscribes: tuple[Endpoint, ...] = (), serves: tuple[Endpoint, ...] = (),
         calls: tuple[Endpoint, ...] = (), lifecycle: bool = False) -> NodeInterfaces:
    """A node's own interfaces plus the standard ones every node (or lifecycle node) has."""
    return NodeInterfaces(
        name,
        publishes=publishes + STANDARD_PUBLISHES + (LIFECYCLE_PUBLISHES if lifecycle else ()),
        subscribes=subscribes + STANDARD_SUBSCRIBES,
        serves=serves + STANDARD_SERVES + (LIFECYCLE_SERVES if lifecycle else ()),
        calls=calls, lifecycle=lifecycle)


# --- the prevla nodes ---------------------------------------------------------------------
DIAGNOSTICS_OUT = Endpoint("/diagnostics", DIAGNOSTICS)
#: The observation parts (``nodes/observation_topics.py``) and the latched instruction.
AGENTVIEW = Endpoint("agentview/image_raw", IMAGE)
WRIST = Endpoint("wrist/image_raw", IMAGE)
JOINTS = Endpoint("joint_states", JOINT_STATE)
EEF = Endpoint("eef_pose", POSE_STAMPED)
OBJECTS = Endpoint("sim_state", SIM_STATE)
INSTRUCTION = Endpoint("instruction", STRING)

MODEL_VERIFIER = only(verifier="model")

NODES: dict[str, NodeInterfaces] = {n.node: n for n in (
    node("sim_node",
         publishes=(AGENTVIEW, WRIST, JOINTS, EEF, OBJECTS, INSTRUCTION,
                    Endpoint("episode_status", EPISODE_STATUS), DIAGNOSTICS_OUT),
         subscribes=(Endpoint("action_chunk", ACTION_CHUNK),)),
    node("policy_node",
         publishes=(Endpoint("candidates", CANDIDATE_SET), DIAGNOSTICS_OUT),
         subscribes=(AGENTVIEW, WRIST, JOINTS, EEF, OBJECTS, INSTRUCTION,
                     Endpoint("episode_status", EPISODE_STATUS)),
         serves=(Endpoint("sample_candidates", SAMPLE_CANDIDATES),
                 Endpoint("~/swap_model", SWAP_MODEL)),
         lifecycle=True),
    node("verifier_node",
         publishes=(Endpoint("action_chunk", ACTION_CHUNK),
                    Endpoint("imagine_candidates", CANDIDATE_SET, only(mode="imagine")),
                    Endpoint("verdict", VERDICT), Endpoint("verdict_text", MARKER),
                    Endpoint("approved_path", MARKER_ARRAY), DIAGNOSTICS_OUT),
         subscribes=(Endpoint("candidates", CANDIDATE_SET), EEF,
                     *(replace(e, when=MODEL_VERIFIER)
                       for e in (AGENTVIEW, WRIST, JOINTS, INSTRUCTION))),
         serves=(Endpoint("~/swap_model", SWAP_MODEL),),
         calls=(Endpoint("sample_candidates", SAMPLE_CANDIDATES,
                         only(verifier="model", resample=True, mode="execute")),),
         lifecycle=True),
    node("world_model_node",
         publishes=(Endpoint("imagined/image_raw", IMAGE),
                    Endpoint("imagined_path", MARKER_ARRAY), DIAGNOSTICS_OUT),
         subscribes=(AGENTVIEW, JOINTS, EEF,
                     Endpoint("action_chunk", ACTION_CHUNK, only(source="approved")),
                     Endpoint("candidates", CANDIDATE_SET, only(source="candidates")),
                     Endpoint("imagine_candidates", CANDIDATE_SET,
                              only(source="imagine_candidates"))),
         lifecycle=True),
    # a real robot's: approved chunks to Cartesian velocity and gripper commands
    node("controller_adapter_node",
         publishes=(Endpoint("twist_command", TWIST_STAMPED),
                    Endpoint("gripper_command", FLOAT64_ARRAY), DIAGNOSTICS_OUT),
         subscribes=(Endpoint("action_chunk", ACTION_CHUNK),),
         serves=(Endpoint("~/reset_estop", RESET_ESTOP),)),
)}


def publishers_of(topic: str, namespace: str = "/") -> dict[str, set[str]]:
    """node -> the types it may publish on ``topic`` (fully qualified), in any configuration."""
    out: dict[str, set[str]] = {}
    for n in NODES.values():
        for name, kind in n.resolved("publishes", namespace):
            if name == topic:
                out.setdefault(n.node, set()).add(kind)
    return out
