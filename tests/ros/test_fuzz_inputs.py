"""Each node fed hypothesis-generated malformed messages over real rclpy (issue 17, item 6).

One test per node: every example publishes a few messages a broken or hostile peer could send
(:mod:`tests.strategies`: NaN, wrong and huge declared sizes, junk strings and names, stamps
from the far past, the future or beyond what a Time can carry, over-limit sets and images),
then one good message. The node must stay up (in-process, an exception in a callback would
surface here), answer the good message, and count what it rejected: the input guard's
counters (``rejected_oversize``, ``rejected_stamp`` in /diagnostics) exactly as the ROS-free
limits predict, and the node's own counters (decisions, rejected candidates, holds, invalid
chunks, errors) as its ROS-free core predicts. The properties of the core itself are in
``tests/unit/test_fuzz_conversions.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prevla_interfaces.msg import ActionChunk as ChunkMsg
from prevla_interfaces.msg import CandidateSet, EpisodeStatus
from prevla_interfaces.srv import SampleCandidates
from rclpy.parameter import Parameter
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import LATCHED_QOS, STATUS_QOS, STREAM_QOS
from prevla_ros.nodes.policy_node import PolicyNode
from prevla_ros.runtime import chunks as rchunks
from prevla_ros.runtime import limits as lim
from prevla_ros.runtime.types import ObjectPose, Observation
from tests.ros.fake_robot import FakeRobot, candidate_set
from tests.ros.test_verifier_node import H, INSTRUCTION, _model_node, _observation
from tests.ros.test_verifier_node import Robot as VerifierRobot
from tests.ros.test_verifier_node import verifier_file  # noqa: F401 (a fixture)
from tests.ros.test_world_model_node import Robot as WorldModelRobot
from tests.ros.test_world_model_node import _chunk, _wm_node
from tests.ros.test_world_model_node import _observation as wm_observation
from tests.ros.test_world_model_node import wm_file  # noqa: F401 (a fixture)
from tests.strategies import (ANY_F32, MOSTLY_SMALL, PEER_TIME, POSES, TEXT, TEXT_CHARS, U32,
                              UNIT, candidate_set_msgs, chunk_msgs, image_msgs,
                              joint_state_msgs, sim_state_msgs, weighted)

pytestmark = pytest.mark.ros

#: A handful of messages per example, 20 examples per node: the node's state carries over
#: from one example to the next, as it would in a long run. The ``ros`` fixture (one graph
#: per test, shared by its examples) is deliberate.
ROS_FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
BAD_PER_EXAMPLE = dict(min_size=1, max_size=4)

#: Where a fuzzed message's stamp lies relative to the node's clock: seconds back (far back
#: too: a clock jump), more than max_future_stamp_s (1 s) ahead, or any Time a peer can write
#: (nanosec >= 1e9 included). Never near the 1 s edge, so the prediction cannot flip.
STAMP_AT = weighted((2, st.floats(-100.0, 0.3)), (1, st.floats(3.0, 10**6)), (1, PEER_TIME))


def _stamp(node, at) -> int:
    """The stamp ``at`` (seconds from the node's clock, or a peer's Time) stands for."""
    if isinstance(at, float):
        return node.get_clock().now().nanoseconds + int(at * 1e9)
    return conv.from_time(at)


def _stamped(msg, node, at):
    """``msg`` with the stamp ``at``; returns (msg, the stamp as the node reads it)."""
    if isinstance(at, float):
        stamp = _stamp(node, at)
        msg.header.stamp = conv.to_time(stamp)
        return msg, stamp
    msg.header.stamp = at
    return msg, conv.from_time(at)


def _guard_says(node, msg, problem, stamp) -> str | None:
    """What the node's guard will do with ``msg``: "oversize", "stamp" or None (admit)."""
    limits = node.config.limits
    if problem is not None and problem(msg, limits):
        return lim.OVERSIZE
    if stamp is not None and lim.future_problem(stamp, node.get_clock().now().nanoseconds,
                                                limits.max_future_stamp_s):
        return lim.STAMP
    return None


def _values(node) -> dict:
    """The node's /diagnostics values as published now."""
    return dict(node.diagnostics.status()[2])


def _delta(after: dict, before: dict, *keys: str) -> dict:
    return {k: after[k] - before[k] for k in keys}


# --- verifier_node ------------------------------------------------------------------------------
@pytest.fixture
def fuzzed_verifier(ros, verifier_file):  # noqa: F811 (the fixture)
    node = _model_node(ros, Parameter("checkpoint", value=str(verifier_file)),
                       Parameter("threshold", value=0.01), Parameter("limit_k", value=4))
    robot = VerifierRobot(ros, node)
    return ros, node, robot


CANDIDATE_SETS = st.tuples(st.just("candidates"),
                           candidate_set_msgs(max_k=6, sizes=MOSTLY_SMALL), STAMP_AT)
VERIFIER_INPUTS = weighted(
    (2, CANDIDATE_SETS), (1, st.tuples(st.just("agentview"), image_msgs(), STAMP_AT)),
    (1, st.tuples(st.just("joints"), joint_state_msgs(), STAMP_AT)))


@ROS_FUZZ
@given(bad=st.lists(VERIFIER_INPUTS, **BAD_PER_EXAMPLE))
def test_verifier_node_survives_fuzzed_candidate_sets_and_observation_parts(fuzzed_verifier,
                                                                           bad):
    ros, node, robot = fuzzed_verifier
    before = _values(node)
    want = {lim.OVERSIZE: 0, lim.STAMP: 0, "decisions": 1, "rejected_candidates": 0}
    publish = {"candidates": robot.candidates, "agentview": robot.images["agentview"],
               "joints": robot.joints}
    problems = {"candidates": lim.candidate_set_problem, "agentview": lim.image_problem,
                "joints": lim.joint_state_problem}
    for kind, msg, at in bad:
        msg, stamp = _stamped(msg, node, at)
        verdict = _guard_says(node, msg, problems[kind], stamp)
        event(f"{kind}: {verdict or 'admitted'}")
        if verdict is not None:
            want[verdict] += 1
        elif kind == "candidates":  # admitted: answered with a verdict, invalid ones counted
            want["decisions"] += 1
            want["rejected_candidates"] += sum(
                rchunks.chunk_problem(a, 7, node.config.scheduler.max_abs_action) is not None
                for a in conv.msg_to_candidate_arrays(msg))
        publish[kind].publish(msg)
        ros.spin_for(0.02)
    # The next good observation and set are served: accepted, under their own stamp.
    stamp = node.get_clock().now().nanoseconds
    robot.observe(_observation(stamp))
    assert ros.wait_for(lambda: node.intake.get(stamp) is not None, timeout_s=10)
    robot.candidates.publish(candidate_set([np.zeros((H, 7), np.float32)], stamp_ns=stamp))
    assert ros.wait_for(lambda: any(conv.from_time(v.header.stamp) == stamp
                                    for v in robot.verdicts), timeout_s=10)
    verdict = [v for v in robot.verdicts if conv.from_time(v.header.stamp) == stamp][-1]
    assert verdict.outcome == "accepted" and verdict.accepted_index == 0, verdict.reason
    got = _delta(_values(node), before, "rejected_oversize", "rejected_stamp", "decisions",
                 "rejected_candidates")
    assert got == {"rejected_oversize": want[lim.OVERSIZE], "rejected_stamp": want[lim.STAMP],
                   "decisions": want["decisions"],
                   "rejected_candidates": want["rejected_candidates"]}
    assert node.intake.assembler.instruction == INSTRUCTION


# --- policy_node --------------------------------------------------------------------------------
GOAL_OBJECTS = ("akita_black_bowl_1", "plate_1")  # libero_spatial task 0: the bowl on the plate
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def _policy_observation(stamp: int) -> Observation:
    rng = np.random.default_rng(stamp % 2**32)
    q = np.array([0.0, 0.0, 0.0, 1.0])
    return Observation(
        images={c: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
                for c in ("agentview", "wrist")},
        joint_positions=np.zeros(7), gripper_qpos=np.array([0.02, -0.02]),
        eef_pos=np.array([0.0, 0.0, 1.1]), eef_quat_xyzw=q, instruction=INSTRUCTION,
        stamp_ns=stamp, objects={"akita_black_bowl_1": ObjectPose(np.array([0.0, 0.1, 0.9]), q),
                                 "plate_1": ObjectPose(np.array([0.0, -0.1, 0.9]), q)})


class PolicyRobot(FakeRobot):
    """The fake robot of a synthetic scene with the task's objects, its episode status,
    the candidate sets answered and the resampling client."""

    def __init__(self, ros, node):
        super().__init__(ros, "fuzz_robot", INSTRUCTION, sim_state=True)
        self.status = self.node.create_publisher(EpisodeStatus, "episode_status", STATUS_QOS)
        self.instruction = self.node.create_publisher(String, "instruction", LATCHED_QOS)
        self.candidates = []
        self.node.create_subscription(CandidateSet, "candidates", self.candidates.append,
                                      STREAM_QOS)
        self.client = self.node.create_client(SampleCandidates, "sample_candidates")
        self.connected(self.joints, self.state, self.status)
        self.status.publish(EpisodeStatus(suite="libero_spatial", task_id=0, episode=1,
                                          state="running", instruction=INSTRUCTION))
        assert ros.wait_for(lambda: getattr(node.policy, "ready", False), timeout_s=60)
        assert self.client.wait_for_service(timeout_sec=10)

    def publish_parts(self, obs: Observation, replace: dict | None = None) -> None:
        """Every part of ``obs`` under its stamp; ``replace``: part -> the message to send."""
        t, replace = obs.stamp_ns, replace or {}
        parts = {"agentview": conv.image_to_msg(obs.images["agentview"], t, "agentview_camera"),
                 "wrist": conv.image_to_msg(obs.images["wrist"], t, "wrist_camera"),
                 "joints": conv.joint_state_to_msg(obs.joint_positions, obs.gripper_qpos, t),
                 "eef": conv.eef_to_msg(obs.eef_pos, obs.eef_quat_xyzw, t),
                 "objects": conv.sim_state_to_msg(obs.objects, t)}
        pubs = {"agentview": self.images["agentview"], "wrist": self.images["wrist"],
                "joints": self.joints, "eef": self.eef, "objects": self.state}
        for part, msg in {**parts, **replace}.items():
            pubs[part].publish(msg)

    def answers(self, stamp: int) -> list[CandidateSet]:
        return [c for c in self.candidates if conv.from_time(c.header.stamp) == stamp]


@pytest.fixture
def fuzzed_policy(ros):
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("policy", value="scripted_expert"), Parameter("num_candidates", value=2),
        Parameter("noise_std", value=0.1), Parameter("limit_k", value=8),
        Parameter("limit_instruction_chars", value=64)]))
    return ros, node, PolicyRobot(ros, node)


_PART_MSGS = {"objects": sim_state_msgs(names=st.one_of(st.sampled_from(GOAL_OBJECTS), TEXT)),
              "joints": joint_state_msgs(), "agentview": image_msgs(),
              "eef": POSES.map(lambda p: PoseStamped(pose=p))}
_PART_CHECKS = {"objects": (lim.sim_state_problem, conv.msg_to_sim_state),
                "joints": (lim.joint_state_problem, conv.msg_to_joint_state),
                "agentview": (lim.image_problem,
                              lambda m: conv.msg_to_image(m, expected_hw=(128, 128))),
                "eef": (None, lambda m: conv.msg_to_pose(m.pose))}
#: a complete observation with one part fuzzed, now (mostly) or from the future
FUZZED_OBSERVATIONS = st.tuples(
    st.just("observation"), st.sampled_from(sorted(_PART_MSGS)).flatmap(
        lambda part: st.tuples(st.just(part), _PART_MSGS[part])),
    weighted((2, st.just(0.0)), (1, st.floats(3.0, 1000.0))))
POLICY_INPUTS = weighted(
    # an episode status naming a task that does not exist (or over-long texts)
    (1, st.tuples(st.just("status"), st.builds(
        EpisodeStatus, suite=st.one_of(st.sampled_from(SUITES), TEXT, st.just("s" * 100)),
        task_id=st.integers(90, 2**32 - 1), state=TEXT, instruction=TEXT, detail=TEXT))),
    (3, FUZZED_OBSERVATIONS),
    # a resampling request of any k and temperature, for the last observation or another one
    (1, st.tuples(st.just("sample"), weighted((3, st.integers(0, 10)), (1, U32)), ANY_F32,
                  st.booleans())),
    (1, st.tuples(st.just("instruction"), st.one_of(TEXT, st.text(TEXT_CHARS, min_size=60,
                                                                  max_size=80)))))


@ROS_FUZZ
@given(bad=st.lists(POLICY_INPUTS, **BAD_PER_EXAMPLE))
def test_policy_node_survives_fuzzed_status_parts_requests_and_instructions(fuzzed_policy,
                                                                           bad):
    ros, node, robot = fuzzed_policy
    before, holds_seen = _values(node), 0
    want = {lim.OVERSIZE: 0, lim.STAMP: 0}
    for item in bad:
        kind, oversize_before = item[0], node.guard.rejected[lim.OVERSIZE]
        event(kind if kind != "observation" else f"observation, {item[1][0]} fuzzed")
        if kind == "status":
            msg = item[1]
            node_episode = node._episode
            msg.episode = (node_episode[2] if node_episode else 0) + 1  # a new episode
            guard = _guard_says(node, msg, lim.status_problem, None)
            want[lim.OVERSIZE] += guard == lim.OVERSIZE
            robot.status.publish(msg)
            assert ros.wait_for(lambda: node.guard.rejected[lim.OVERSIZE] > oversize_before
                                if guard else node._episode[2] == msg.episode)
        elif kind == "observation":
            (part, msg), ahead = item[1], item[2]
            stamp = _stamp(node, ahead)
            obs = _policy_observation(stamp)
            msg.header.stamp = conv.to_time(stamp)
            problem, convert = _PART_CHECKS[part]
            guard = _guard_says(node, msg, problem, stamp)
            if ahead > 0:  # every part is from the future: no part is taken, nothing answered
                want[lim.STAMP] += 4 + (guard == lim.STAMP)  # (sizes are checked first)
                want[lim.OVERSIZE] += guard == lim.OVERSIZE
                robot.publish_parts(obs, {part: msg})
                ros.spin_for(0.2)
                assert not robot.answers(stamp)
                continue
            want[lim.OVERSIZE] += guard == lim.OVERSIZE
            robot.publish_parts(obs, {part: msg})
            if guard is not None:  # the part was dropped: the observation never completes
                assert ros.wait_for(lambda: node.guard.rejected[lim.OVERSIZE] > oversize_before)
                ros.spin_for(0.1)
                assert not robot.answers(stamp)
                continue
            # answered once: by the expert, or a hold (a malformed part, or a scene the
            # expert cannot serve: its goal objects missing)
            assert ros.wait_for(lambda: robot.answers(stamp), timeout_s=10)
            [answer] = robot.answers(stamp)
            try:
                convert(msg)
            except ValueError:
                assert answer.policy_id == "hold"
            holds_seen += answer.policy_id == "hold"
            event(f"observation answered: {answer.policy_id}")
        elif kind == "sample":
            _, k, temperature, current = item
            stamp = node._last_obs.stamp_ns if current and node._last_obs else 12_345
            future = robot.client.call_async(SampleCandidates.Request(
                observation_stamp=conv.to_time(stamp), k=k, temperature=temperature, round=1))
            assert ros.wait_for(future.done, timeout_s=10)
            response = future.result()
            event(f"sample: {'ok' if response.ok else response.reason.split(':')[0]}")
            want[lim.OVERSIZE] += k > node.config.limits.limit_k
            if k > node.config.limits.limit_k:
                assert not response.ok and "refused" in response.reason
            elif response.ok:
                assert len(response.candidates.candidates) == max(1, k)
                assert conv.from_time(response.candidates.header.stamp) == stamp
            else:
                assert response.reason
        else:  # instruction
            text = item[1]
            over = len(text) > node.config.limits.limit_instruction_chars
            want[lim.OVERSIZE] += over
            robot.instruction.publish(String(data=text))
            assert ros.wait_for(lambda: node.guard.rejected[lim.OVERSIZE] > oversize_before
                                if over else node.assembler.instruction == text)
    # The next good observation is answered by the expert.
    stamp = node.get_clock().now().nanoseconds
    robot.publish_parts(_policy_observation(stamp))
    assert ros.wait_for(lambda: robot.answers(stamp), timeout_s=10)
    [answer] = robot.answers(stamp)
    assert answer.policy_id == "scripted_expert" and len(answer.candidates) == 2, \
        node.health.last_error
    got = _delta(_values(node), before, "rejected_oversize", "rejected_stamp", "holds")
    assert got == {"rejected_oversize": want[lim.OVERSIZE], "rejected_stamp": want[lim.STAMP],
                   "holds": holds_seen}


# --- world_model_node ---------------------------------------------------------------------------
@pytest.fixture
def fuzzed_world_model(ros, wm_file):  # noqa: F811 (the fixture)
    node = _wm_node(ros, wm_file)
    robot = WorldModelRobot(ros)
    robot.connected(robot.chunk, robot.joints, robot.eef, robot.images["agentview"])
    return ros, node, robot


WORLD_MODEL_INPUTS = weighted(
    (3, st.tuples(st.just("chunk"), chunk_msgs(max_values=80, sizes=MOSTLY_SMALL), STAMP_AT)),
    (1, st.tuples(st.just("agentview"), image_msgs(), STAMP_AT)),
    (1, st.tuples(st.just("joints"), joint_state_msgs(), STAMP_AT)),
    (1, st.tuples(st.just("eef"), POSES.map(lambda p: PoseStamped(pose=p)), STAMP_AT)))


@ROS_FUZZ
@given(bad=st.lists(WORLD_MODEL_INPUTS, **BAD_PER_EXAMPLE))
def test_world_model_node_survives_fuzzed_chunks_and_observation_parts(fuzzed_world_model,
                                                                       bad):
    ros, node, robot = fuzzed_world_model
    before = _values(node)
    want = {lim.OVERSIZE: 0, lim.STAMP: 0, "errors": 0}
    publish = {"chunk": robot.chunk, "agentview": robot.images["agentview"],
               "joints": robot.joints, "eef": robot.eef}
    checks = {"chunk": (lim.chunk_problem, None),
              "agentview": (lim.image_problem, node._image),
              "joints": (lim.joint_state_problem, conv.msg_to_joint_state),
              "eef": (None, lambda m: conv.msg_to_pose(m.pose))}
    for kind, msg, at in bad:
        msg, stamp = _stamped(msg, node, at)
        problem, convert = checks[kind]
        verdict = _guard_says(node, msg, problem, stamp)
        event(f"{kind}: {verdict or 'admitted'}")
        if verdict is not None:
            want[verdict] += 1
        elif kind == "chunk":
            want["errors"] += 1  # malformed, or no observation of its stamp: one line each
        else:
            try:
                convert(msg)
            except ValueError:
                want["errors"] += 1  # a malformed part: one line
        publish[kind].publish(msg)
        ros.spin_for(0.02)
    # The next good observation and chunk are imagined, under their own stamp.
    stamp = node.get_clock().now().nanoseconds
    robot.observe(wm_observation(stamp))
    assert ros.wait_for(lambda: node.intake.get(stamp) is not None, timeout_s=10)
    robot.chunk.publish(conv.chunk_to_msg(rchunks.ActionChunk(_chunk(0.1), "test", stamp)))
    assert ros.wait_for(lambda: any(conv.from_time(m.header.stamp) == stamp
                                    for m in robot.got["images"]), timeout_s=15)
    # chunks waiting for an observation of their own are let go after OBSERVATION_WAIT_S
    keys = ("rejected_oversize", "rejected_stamp", "errors")
    expected = {"rejected_oversize": want[lim.OVERSIZE], "rejected_stamp": want[lim.STAMP],
                "errors": want["errors"]}
    assert ros.wait_for(lambda: _delta(_values(node), before, *keys) == expected, timeout_s=5), \
        (_delta(_values(node), before, *keys), expected, node.health.last_error)


# --- sim_node -------------------------------------------------------------------------------------
@pytest.fixture
def fuzzed_sim(ros):
    from prevla_ros.nodes.sim_node import SimNode

    node = ros.add(SimNode(context=ros.context, parameter_overrides=[
        Parameter("control_rate_hz", value=0.0), Parameter("episodes", value=0),
        Parameter("start_delay_s", value=0.2), Parameter("chunk_timeout_s", value=600.0)]))
    probe = ros.node("fuzz_probe")
    pub = probe.create_publisher(ChunkMsg, "action_chunk", STREAM_QOS)
    assert ros.wait_for(lambda: node._awaiting is not None and pub.get_subscription_count() > 0,
                        timeout_s=90)
    return ros, node, pub


#: a chunk a controller can execute: 7 actions wide, all in [-1, 1]
VALID_CHUNKS = st.integers(1, 8).flatmap(lambda h: st.lists(UNIT, min_size=7 * h,
                                                            max_size=7 * h).map(
    lambda data: ChunkMsg(horizon=h, action_dim=7, data=data)))
#: mostly for the observation awaiting an answer: those are converted, validated, executed
SIM_INPUTS = st.tuples(weighted((3, chunk_msgs(max_values=100, sizes=MOSTLY_SMALL)),
                                (1, VALID_CHUNKS)),
                       weighted((2, st.just("awaited")), (1, STAMP_AT)))


@pytest.mark.libero
@ROS_FUZZ
@given(bad=st.lists(SIM_INPUTS, **BAD_PER_EXAMPLE))
def test_sim_node_survives_fuzzed_action_chunks(fuzzed_sim, bad):
    ros, node, pub = fuzzed_sim
    before = _values(node)
    want = {lim.OVERSIZE: 0, "stale_chunks": 0, "invalid_chunks": 0}
    for msg, at in bad:
        awaited = node._awaiting
        if at == "awaited":
            msg.header.stamp = conv.to_time(awaited)
            stamp = awaited
        else:
            msg, stamp = _stamped(msg, node, at)
        counters = dict(_values(node))
        if _guard_says(node, msg, lim.chunk_problem, None):  # no stamp check: stale ones are
            want[lim.OVERSIZE] += 1                          # the sim's own rule
            key = "rejected_oversize"
        elif stamp != awaited:
            want["stale_chunks"] += 1
            key = "stale_chunks"
        else:
            try:
                chunk = conv.msg_to_chunk(msg, expected_dim=7)
                invalid = rchunks.chunk_problem(chunk.actions, 7, node.config.max_abs_action)
            except ValueError as exc:
                invalid = str(exc)
            want["invalid_chunks"] += invalid is not None
            key = "invalid_chunks" if invalid else None
        event(f"chunk: {key or 'executed'}")
        pub.publish(msg)
        if key is None:  # a valid chunk for the awaited observation: executed, observed anew
            assert ros.wait_for(lambda: node._awaiting not in (None, awaited), timeout_s=30)
        else:
            assert ros.wait_for(lambda: _values(node)[key] > counters[key], timeout_s=30)
    # The next good chunk is executed and a new observation follows.
    awaited = node._awaiting
    good = np.zeros((4, 7), np.float32)
    good[:, 6] = -1.0
    pub.publish(conv.chunk_to_msg(rchunks.ActionChunk(good, "test", awaited)))
    assert ros.wait_for(lambda: node._awaiting not in (None, awaited), timeout_s=30)
    got = _delta(_values(node), before, "rejected_oversize", "stale_chunks", "invalid_chunks")
    assert got == {"rejected_oversize": want[lim.OVERSIZE],
                   "stale_chunks": want["stale_chunks"], "invalid_chunks": want["invalid_chunks"]}
