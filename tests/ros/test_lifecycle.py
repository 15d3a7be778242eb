"""policy_node, verifier_node and world_model_node as managed (lifecycle) nodes, driven over real
rclpy from a separate client node through the standard lifecycle_msgs services, as
``ros2 lifecycle set`` and launch's lifecycle handlers drive them.

Each node walks every transition: configure (model loaded, nothing published), activate
(outputs published), deactivate (nothing published, the model still loaded), activate again,
cleanup (the model freed), configure again, shutdown; a configure that cannot load its model
reports the standard failure and the node stays up, saying why; shutdown works from every
state."""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetAvailableStates, GetAvailableTransitions, GetState
from prevla_interfaces.msg import CandidateSet
from prevla_interfaces.srv import SampleCandidates
from rclpy.parameter import Parameter

from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.nodes.policy_node import PolicyNode
from prevla_ros.nodes.verifier_node import VerifierNode
from prevla_ros.nodes.world_model_node import WorldModelNode
from tests.ros import test_verifier_node as tv
from tests.ros import test_world_model_node as tw
from tests.ros.fake_robot import FakeRobot, candidate_set
from tests.ros.test_verifier_node import verifier_file  # noqa: F401 (a fixture)
from tests.ros.test_world_model_node import wm_file  # noqa: F401 (a fixture)

pytestmark = pytest.mark.ros

NODES = ("policy_node", "verifier_node", "world_model_node")


class LifecycleClient:
    """The standard lifecycle services and transition events of one node, from another node."""

    def __init__(self, ros, name: str) -> None:
        self.ros, self.name = ros, name
        client = ros.node(f"{name}_lifecycle_client")
        self.change = client.create_client(ChangeState, f"/{name}/change_state")
        self.get = client.create_client(GetState, f"/{name}/get_state")
        self.states = client.create_client(GetAvailableStates, f"/{name}/get_available_states")
        self.transitions = client.create_client(GetAvailableTransitions,
                                                f"/{name}/get_available_transitions")
        self.graph = client.create_client(GetAvailableTransitions,
                                          f"/{name}/get_transition_graph")
        self.events: list[TransitionEvent] = []
        client.create_subscription(TransitionEvent, f"/{name}/transition_event",
                                   self.events.append, 10)
        self.diag: list[DiagnosticStatus] = []
        client.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diag.extend(
            s for s in m.status if s.name == f"prevla: {name}"), 10)
        for c in (self.change, self.get, self.states, self.transitions, self.graph):
            assert c.wait_for_service(timeout_sec=10), c.srv_name

    def _call(self, client, request):
        future = client.call_async(request)
        assert self.ros.wait_for(future.done, timeout_s=60), f"{client.srv_name}: no answer"
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def set(self, transition: str) -> bool:
        """``ros2 lifecycle set /NAME <transition>``: whether it succeeded."""
        request = ChangeState.Request(transition=Transition(label=transition))
        return self._call(self.change, request).success

    def available(self) -> set[str]:
        response = self._call(self.transitions, GetAvailableTransitions.Request())
        return {t.transition.label for t in response.available_transitions}

    def status(self) -> tuple[bytes, str, dict[str, str]]:
        """The node's newest DiagnosticStatus published after this call (level, message,
        values)."""
        seen = len(self.diag)
        assert self.ros.wait_for(lambda: len(self.diag) > seen, timeout_s=5)
        s = self.diag[-1]
        return s.level, s.message, {kv.key: kv.value for kv in s.values}


@dataclass
class Subject:
    """A node under test and what it takes to exercise it."""

    node: object
    connect: Callable[[], None]  # a peer that feeds it and records its outputs (once active)
    feed: Callable[[int], None]  # send it one input, under a stamp
    outputs: Callable[[], list]  # what it published so far
    model: Callable[[], object]  # its loaded model (None: none)


@pytest.fixture
def vla_file(tmp_path):
    """A small (untrained) VLA whose vocabulary covers the fake robot's instruction."""
    import torch
    from prevla_models.vla import VLA, VLAConfig, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "vla.pt"
    save_checkpoint(str(path), VLA(VLAConfig(vocab=sorted(set(tv.INSTRUCTION.split())),
                                             d_model=32, n_layers=1, n_heads=2, flow_steps=2)),
                    {"policy_id": "vla_lifecycle"})
    return path


def _policy(ros, checkpoint) -> Subject:
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="vla"), Parameter("checkpoint", value=str(checkpoint)),
        Parameter("num_candidates", value=2)]), activate=False)
    robot = FakeRobot(ros, "policy_feeder", instruction=tv.INSTRUCTION)
    got: list[CandidateSet] = []
    robot.node.create_subscription(CandidateSet, "candidates", got.append, STREAM_QOS)
    return Subject(node, lambda: robot.connected(robot.joints, robot.images["wrist"]),
                   lambda stamp: robot.observe(tv._observation(stamp)), lambda: got,
                   lambda: node.models.slot.adapter)


def _verifier(ros, checkpoint) -> Subject:
    node = ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("resample", value=False)]),
        activate=False)
    robot: list[tv.Robot] = []

    def feed(stamp: int) -> None:
        robot[0].observe(tv._observation(stamp))
        robot[0].candidates.publish(candidate_set([np.zeros((tv.H, 7), np.float32)], stamp))

    return Subject(node, lambda: robot.append(tv.Robot(ros, node)) if not robot else
                   robot[0].connected(robot[0].candidates, robot[0].joints),
                   feed, lambda: robot[0].verdicts if robot else [],
                   lambda: node.models.slot.adapter)


def _world_model(ros, checkpoint) -> Subject:
    node = ros.add(WorldModelNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("source", value="candidates"),
        Parameter("max_rate_hz", value=0.0)]), activate=False)
    robot = tw.Robot(ros)

    def feed(stamp: int) -> None:
        robot.observe(tw._observation(stamp))
        ros.spin_for(0.1)
        robot.candidates.publish(candidate_set([tw._chunk(0.1)], stamp))

    return Subject(node, lambda: robot.connected(robot.candidates, robot.eef), feed,
                   lambda: robot.got["images"], lambda: node.imaginer)


def _subject(ros, name: str, files) -> Subject:
    return {"policy_node": _policy, "verifier_node": _verifier,
            "world_model_node": _world_model}[name](ros, files[name])


@pytest.fixture
def files(vla_file, verifier_file, wm_file):  # noqa: F811 (fixtures)
    return {"policy_node": vla_file, "verifier_node": verifier_file,
            "world_model_node": wm_file}


@pytest.mark.parametrize("name", NODES)
def test_every_transition_over_the_standard_services(ros, files, name, torch_one_thread):
    s = _subject(ros, name, files)
    lc = LifecycleClient(ros, name)
    stamp = iter(range(1_000, 100_000, 1_000))

    def silent() -> None:  # an input now is not answered
        before = len(s.outputs())
        s.feed(next(stamp))
        ros.spin_for(0.8)
        assert len(s.outputs()) == before

    def answers() -> None:  # an input now is answered
        s.connect()
        before = len(s.outputs())
        s.feed(next(stamp))
        assert ros.wait_for(lambda: len(s.outputs()) > before, timeout_s=30)

    # Unconfigured: nothing loaded, the standard transitions offered, diagnostics say so.
    assert lc.state() == "unconfigured" and s.model() is None
    assert lc.available() == {"configure", "shutdown"}
    states = lc._call(lc.states, GetAvailableStates.Request()).available_states
    assert {"unconfigured", "inactive", "active", "finalized"} <= {x.label for x in states}
    assert lc._call(lc.graph, GetAvailableTransitions.Request()).available_transitions
    level, message, values = lc.status()
    assert level == DiagnosticStatus.WARN and values["lifecycle_state"] == "unconfigured"

    # configure: the model is loaded; inactive publishes nothing.
    assert lc.set("configure") and lc.state() == "inactive"
    model = s.model()
    assert model is not None
    level, message, values = lc.status()
    assert level == DiagnosticStatus.WARN and "inactive" in message
    assert values["lifecycle_state"] == "inactive"

    # activate: inputs are answered.
    assert lc.set("activate") and lc.state() == "active"
    answers()
    assert lc.status()[2]["lifecycle_state"] == "active"

    # deactivate: nothing published, the model stays loaded; activate again: answered again.
    assert lc.set("deactivate") and lc.state() == "inactive"
    assert s.model() is model
    silent()
    assert lc.set("activate") and lc.state() == "active"
    answers()

    # cleanup (from inactive): the model is freed, memory included.
    freed = weakref.ref(model)
    del model
    assert lc.set("deactivate") and lc.set("cleanup") and lc.state() == "unconfigured"
    assert s.model() is None
    gc.collect()
    assert freed() is None, f"the model is still referenced: {gc.get_referrers(freed())}"

    # configure again: a fresh model; shutdown: finalized.
    assert lc.set("configure") and lc.state() == "inactive" and s.model() is not None
    assert lc.set("shutdown") and lc.state() == "finalized" and s.model() is None
    assert lc.status()[2]["lifecycle_state"] == "finalized"
    assert ros.wait_for(lambda: lc.events and lc.events[-1].goal_state.label == "finalized")
    goals = [e.goal_state.label for e in lc.events]
    for label in ("configuring", "activating", "deactivating", "cleaningup", "shuttingdown"):
        assert label in goals, goals


@pytest.mark.parametrize("name", NODES)
def test_a_configure_that_cannot_load_its_model_fails_the_standard_way(ros, tmp_path, name):
    corrupt = tmp_path / f"{name}.pt"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    s = _subject(ros, name, {name: corrupt})
    lc = LifecycleClient(ros, name)
    assert not lc.set("configure")  # ChangeState answers success = false ...
    assert lc.state() == "unconfigured" and s.model() is None  # ... back where it was
    level, message, values = lc.status()  # the node is up and says why
    assert level == DiagnosticStatus.ERROR and str(corrupt) in message
    assert "configure failed" in message and values["lifecycle_state"] == "unconfigured"
    assert lc.available() == {"configure", "shutdown"}  # it can be tried again
    assert not lc.set("activate")  # not from unconfigured: refused, nothing changes
    assert lc.state() == "unconfigured"


@pytest.mark.parametrize("start", ["unconfigured", "inactive", "active"])
def test_shutdown_works_from_every_state(ros, files, start):
    s = _subject(ros, "world_model_node", files)
    lc = LifecycleClient(ros, "world_model_node")
    for transition in {"unconfigured": [], "inactive": ["configure"],
                       "active": ["configure", "activate"]}[start]:
        assert lc.set(transition)
    assert lc.state() == start
    assert lc.set("shutdown") and lc.state() == "finalized"
    assert s.model() is None and s.node.count_subscribers("candidates") == 0
    assert lc.available() == set()  # finalized: the end of the line


def test_an_inactive_policy_refuses_resampling_at_once(ros, files):
    s = _policy(ros, files["policy_node"])
    lc = LifecycleClient(ros, "policy_node")
    assert lc.set("configure")
    client = ros.node("resampler").create_client(SampleCandidates, "sample_candidates")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SampleCandidates.Request(k=2, temperature=1.0))
    assert ros.wait_for(future.done, timeout_s=10)
    assert not future.result().ok and "inactive" in future.result().reason
    assert s.model() is not None
