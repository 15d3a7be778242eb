"""Property-based tests (hypothesis) of the ROS-free input path each node's callbacks run
(issue 17, item 6): the input limits, the guard, observation assembly, the verifier's decision
and the sim's chunk broker, fed what a peer can send (:mod:`tests.strategies`).

The properties:
- the limits decide from sizes alone: a message over a limit is rejected without an element
  being read, an accepted candidate set is looked at candidate by candidate at most
  ``limit_k`` times (O(limit), whatever the peer declared);
- the guard counts every rejection by reason and logs a bounded number of lines;
- each node's path (guard -> conversion -> assembly / decision / broker) never raises past the
  node, keeps its state bounded, and hands on only values that are safe to use.
The conversions themselves: ``test_fuzz_conversions.py``; the nodes over real rclpy:
``tests/ros/test_fuzz_inputs.py``.
"""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prevla_interfaces.msg import EpisodeStatus, SimState

from prevla_ros import conversions as cv
from prevla_ros.runtime import chunks as rchunks
from prevla_ros.runtime import limits as lim
from prevla_ros.runtime.chunks import ActionChunkBroker
from prevla_ros.runtime.limits import InputGuard, InputLimits
from prevla_ros.runtime.observation import (PART_NAMES, ObservationAssembler, ObservationIntake,
                                            ObservationWait)
from prevla_ros.runtime.scheduler import OUTCOME_ACCEPTED, OUTCOME_HOLD, Scheduler
from prevla_ros.runtime.scheduler_config import SchedulerConfig
from prevla_ros.runtime.types import ACTION_DIM
from tests.strategies import (ANY_F32, POSES, SIZE, TEXT, U32, Unreadable, candidate_set_msgs, chunk_msgs,
                              image_msgs, joint_state_msgs, pose, sim_state_msgs, wire)

FAST = settings(max_examples=100, deadline=None)
SLOWER = settings(max_examples=50, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Counted(list):
    """A list that counts how many of its items were read (iteration or indexing)."""

    reads = 0

    def __iter__(self):
        for item in super().__iter__():
            self.reads += 1
            yield item

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


# --- the limits: sizes only, never the data ---------------------------------------------------
@FAST
@given(st.one_of(SIZE, st.integers(0, 10**7)), st.one_of(SIZE, st.integers(0, 10**7)),
       st.integers(0, 10**9), st.integers(1, 2048))
def test_the_image_limit_reads_sizes_only(h, w, n, side):
    msg = NS(height=h, width=w, data=Unreadable(n))
    problem = lim.image_problem(msg, InputLimits(limit_image_side=side))
    over = h > side or w > side or n > h * w * lim.MAX_BYTES_PER_PIXEL
    assert (problem is not None) == over


@FAST
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
       st.integers(0, 10**9))
def test_the_joint_and_object_limits_read_sizes_only(a, b, c, d):
    msg = NS(name=Unreadable(a), position=Unreadable(b), velocity=Unreadable(c),
             effort=Unreadable(d))
    assert (lim.joint_state_problem(msg, InputLimits()) is not None) == (
        max(a, b, c, d) > lim.MAX_JOINTS)
    objects = NS(object_names=Unreadable(a), object_poses=Unreadable(b))
    assert (lim.sim_state_problem(objects, InputLimits()) is not None) == (
        max(a, b) > lim.MAX_OBJECTS)


@st.composite
def sized_sets(draw):
    """A candidate set stand-in of any sizes (up to 10**9) whose elements must never be read."""
    limits = InputLimits(limit_k=draw(st.integers(1, 64)),
                         limit_chunk_length=draw(st.integers(1, 64)))
    k = draw(st.one_of(st.integers(0, limits.limit_k + 2), st.integers(0, 10**9)))
    if k > limits.limit_k:
        candidates = Unreadable(k)
    else:
        candidates = Counted(NS(horizon=draw(SIZE), action_dim=draw(SIZE),
                                data=Unreadable(draw(st.one_of(st.integers(0, 5000), U32))))
                             for _ in range(k))
    temperatures = Unreadable(draw(st.one_of(st.integers(0, 70), U32)))
    seeds = Unreadable(draw(st.one_of(st.integers(0, 70), U32)))
    return limits, NS(candidates=candidates, temperatures=temperatures, seeds=seeds)


@FAST
@given(sized_sets())
def test_the_candidate_set_limit_reads_sizes_only_and_at_most_limit_k_candidates(case):
    limits, msg = case
    problem = lim.candidate_set_problem(msg, limits)
    k, m = len(msg.candidates), limits.limit_chunk_length
    over = (k > limits.limit_k or max(len(msg.temperatures), len(msg.seeds)) > limits.limit_k
            or any(c.horizon > m or c.action_dim > lim.MAX_ACTION_DIM
                   or len(c.data) > m * lim.MAX_ACTION_DIM
                   for c in list.__iter__(msg.candidates)))  # not counted: the test's own look
    assert (problem is not None) == over
    if isinstance(msg.candidates, Counted):
        assert msg.candidates.reads <= limits.limit_k  # O(limit), whatever the peer declared


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 64), st.integers(0, 10**7),
       st.integers(0, 10**7))
def test_requests_and_texts_are_checked_by_length(k, limit, n_text, n_status):
    limits = InputLimits(limit_k=limit, limit_instruction_chars=limit)
    assert (lim.k_problem(k, limits) is None) == (k <= limit)
    text = "x" * min(n_text, 2 * limit + 1)
    assert (lim.text_problem(text, limits) is None) == (len(text) <= limit)
    status = NS(suite="s" * min(n_status, 2 * limit + 1), state="", instruction="", detail="")
    assert (lim.status_problem(status, limits) is None) == (len(status.suite) <= limit)


# --- the nodes' input paths -------------------------------------------------------------------
class FakeScorer:
    """A verifier whose outputs are whatever the test draws (NaN, inf, outside [0, 1])."""

    verifier_id = "fake"
    threshold = 0.5

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def score(self, obs, candidates):
        k = len(candidates)
        p = np.resize(np.array(self.values or [0.5], np.float32), k)
        return p, p[::-1].copy()


@SLOWER
@given(candidate_set_msgs(), st.sampled_from(["passthrough", "model"]),
       st.sampled_from(["execute", "imagine"]), st.lists(ANY_F32, max_size=4),
       st.floats(-2.0, 2.0))
def test_verifier_path_any_admitted_set_gets_a_safe_verdict(msg, verifier, mode, scores,
                                                            last_gripper):
    """verifier_node's path for one set (guard -> arrays -> scheduler -> verdict and chunk):
    never raises; the verdict has one entry per candidate; the chunk published is a valid
    candidate's (finite, 7-D, within max_abs_action) or a hold."""
    limits = InputLimits()
    if lim.candidate_set_problem(msg, limits) is not None:
        return  # dropped by the guard (sizes only: the property above)
    stamp = cv.from_time(msg.header.stamp)
    config = SchedulerConfig(verifier=verifier, mode=mode, threshold=0.5)
    scheduler = Scheduler(config, FakeScorer(scores) if verifier == "model" else None)
    arrays = cv.msg_to_candidate_arrays(msg)
    obs = object()  # the fake scorer does not look at it
    if mode == "imagine":
        forwarded, decision = scheduler.gate(arrays, obs, stamp, last_gripper, msg.policy_id)
        assert forwarded == decision.forwarded and len(forwarded) <= config.imagine_max_candidates
        assert all(rchunks.chunk_problem(arrays[i], ACTION_DIM, config.max_abs_action) is None
                   for i in forwarded)
    else:
        decision = scheduler.decide(arrays, stamp, last_gripper, msg.policy_id, obs)
    verdict = wire(cv.decision_to_verdict(decision, stamp, mode, scheduler.verifier_id))
    k = len(arrays)
    assert len(verdict.safety_probs) == len(verdict.advantages) == k == verdict.samples_drawn
    assert -1 <= verdict.accepted_index < k and cv.from_time(verdict.header.stamp) == stamp
    chunk = wire(cv.chunk_to_msg(decision.chunk))
    actions = cv.msg_to_chunk(chunk, expected_dim=ACTION_DIM).actions
    assert rchunks.chunk_problem(actions, ACTION_DIM, config.max_abs_action) is None
    assert cv.from_time(chunk.header.stamp) == stamp
    if verdict.accepted_index >= 0:
        assert decision.outcome == OUTCOME_ACCEPTED or mode == "imagine"
        np.testing.assert_array_equal(actions, arrays[verdict.accepted_index])
        assert verdict.accepted_index not in decision.rejected
    else:
        assert decision.outcome == OUTCOME_HOLD and np.all(actions[:, :6] == 0)
    for i in decision.rejected:  # an invalid candidate is never scored as safe
        assert verdict.safety_probs[i] == 0.0
    assert len(verdict.reason) < 2000  # one bounded line, however many were rejected


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


NOW_NS = 1_700_000_000 * 10**9
EVENTS = st.lists(st.tuples(
    st.sampled_from(["candidates", "joint_states", "instruction"]),  # topic
    st.booleans(),  # over a size limit
    st.one_of(st.none(), st.integers(-10**10, 10**10)),  # stamp offset from the clock
    st.floats(0.0, 0.2)),  # seconds until the next message
    max_size=60)


@FAST
@given(EVENTS, st.sampled_from([0.0, 5.0, 100.0]), st.floats(0.0, 3.0))
def test_the_guard_counts_every_rejection_by_reason_and_logs_a_bounded_number_of_lines(
        events, rate_hz, max_future_s):
    lines, errors, clock = [], [], Clock()
    guard = InputGuard(InputLimits(limit_rate_hz=rate_hz, max_future_stamp_s=max_future_s),
                       lines.append, errors.append, now_ns=lambda: NOW_NS, clock=clock)
    admitted, per_topic, start = 0, {}, clock.t
    for topic, oversize, offset, dt in events:
        stamp = None if offset is None else NOW_NS + offset
        if guard.admit(topic, NS(), lambda m, lims, o=oversize: "too big" if o else None, stamp):
            admitted += 1
            per_topic[topic] = per_topic.get(topic, 0) + 1
            assert not oversize and (offset is None or offset <= max_future_s * 1e9)
        clock.t += dt
    assert admitted + sum(guard.rejected.values()) == len(events) == admitted + len(errors)
    if rate_hz == 0:
        assert guard.rejected[lim.RATE] == 0
        assert guard.rejected[lim.OVERSIZE] == sum(o for _, o, _, _ in events)
    else:  # a burst of one second's worth, then the rate: never more per topic
        for n in per_topic.values():
            assert n <= max(1.0, rate_hz) + rate_hz * (clock.t - start) + 1e-9
    assert len(lines) <= 1 + (clock.t - start) / lim.LOG_EVERY_S  # one line per 5 s at most
    assert guard.values()["rejected_inputs"] == len(errors)


PART_MSGS = {
    "agentview": image_msgs(), "wrist": image_msgs(),
    "joints": st.one_of(joint_state_msgs(), st.builds(
        lambda j: cv.joint_state_to_msg(np.array(j[:7]), np.array(j[7:]), 0),
        st.lists(st.floats(-3, 3), min_size=9, max_size=9))),
    "eef": POSES, "objects": sim_state_msgs(),
}
CONVERT = {"agentview": cv.msg_to_image, "wrist": cv.msg_to_image,
           "joints": cv.msg_to_joint_state, "eef": cv.msg_to_pose,
           "objects": cv.msg_to_sim_state}


@st.composite
def part_streams(draw):
    """Observation parts in any order, stamps near each other, some far back or ahead."""
    stamps = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(-10**10, 10**10)),
                           min_size=1, max_size=6))
    out = []
    for _ in range(draw(st.integers(0, 30))):
        part = draw(st.sampled_from(PART_NAMES))
        stamp = NOW_NS + draw(st.sampled_from(stamps)) * 10**6
        if draw(st.booleans()):  # a well-formed part, so observations complete
            msg = {"agentview": lambda: cv.image_to_msg(np.zeros((4, 4, 3), np.uint8), 0, "c"),
                   "wrist": lambda: cv.image_to_msg(np.zeros((4, 4, 3), np.uint8), 0, "c"),
                   "joints": lambda: cv.joint_state_to_msg(np.zeros(7), np.zeros(2), 0),
                   "eef": lambda: pose([0, 0, 1, 0, 0, 0, 1]),
                   "objects": lambda: SimState()}[part]()
        else:
            msg = draw(PART_MSGS[part])
        out.append((stamp, part, msg))
    return out


@SLOWER
@given(part_streams(), st.sampled_from([("agentview", "wrist", "joints", "eef"),
                                        ("agentview", "joints", "eef"), PART_NAMES]),
       st.lists(st.integers(-6, 6), max_size=8))
def test_observation_path_never_raises_keeps_bounded_state_and_hands_out_sane_observations(
        parts, required, answers):
    """The path every observing node runs (guard -> ObservationWait.add -> conversion ->
    assembly), with messages that answer observations offered in between: nothing raises
    past it, every observation handed out is complete, converted and new (or a clock jump),
    its state stays bounded, and every offered message is released exactly once."""
    limits = InputLimits(limit_image_side=64)
    guard = InputGuard(limits, lambda line: None, now_ns=lambda: NOW_NS, clock=Clock())
    reports, released, clock = [], [], Clock()
    intake = ObservationIntake(required, keep=4, jump_back_s=limits.stamp_jump_back_s)
    wait = ObservationWait(intake, lambda stamp, m: released.append((stamp, m)), reports.append,
                           wait_s=0.5, clock=clock)
    emitted, offered = [], 0
    for i, (stamp, part, msg) in enumerate(parts):
        if guard.admit(part, msg, lim.PART_PROBLEMS[part], stamp):
            obs = wait.add(stamp, part, lambda m=msg, p=part: CONVERT[p](m))
            if obs is not None:
                emitted.append(obs)
        if i < len(answers):
            wait.offer(NOW_NS + answers[i] * 10**6, ("answer", i))
            offered += 1
        assert len(intake.assembler._pending) <= intake.assembler.max_pending + 1
        assert len(intake.malformed) <= intake.keep and len(intake.observations) <= intake.keep
        assert len(wait) <= offered
    clock.t += 1.0
    wait.expire()  # past wait_s: whatever is still held goes now
    assert sorted(m[1] for _, m in released) == list(range(offered)) and len(wait) == 0
    for obs in emitted:
        assert set(required) & {"agentview", "wrist"} <= set(obs.images)
        for image in obs.images.values():
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert max(image.shape[:2]) <= limits.limit_image_side
        assert obs.joint_positions.shape == (7,) and np.all(np.isfinite(obs.joint_positions))
        assert np.all(np.isfinite(obs.eef_pos)) and np.all(np.isfinite(obs.eef_quat_xyzw))
        if "objects" in required:
            assert all(np.all(np.isfinite(p.pos)) for p in obs.objects.values())
    jumps = intake.assembler.time_jumps
    backwards = sum(b.stamp_ns <= a.stamp_ns for a, b in zip(emitted, emitted[1:]))
    assert backwards <= jumps  # stamps only go back when the clock jumped back


@FAST
@given(st.lists(st.tuples(st.integers(-10**10, 10**10), st.sampled_from(PART_NAMES)),
                max_size=40), st.integers(1, 4))
def test_the_assembler_ignores_late_parts_follows_clock_jumps_and_stays_bounded(adds, pending):
    assembler = ObservationAssembler(("joints", "eef"), max_pending=pending, jump_back_s=5.0)
    last = None
    for stamp, part in adds:
        obs = assembler.add(stamp, part, (np.zeros(7), np.zeros(2)) if part == "joints"
                            else (np.zeros(3), np.array([0, 0, 0, 1.0])))
        assert len(assembler._pending) <= pending + 1
        if obs is not None:
            assert last is None or obs.stamp_ns > last or last - obs.stamp_ns > 5 * 10**9
            last = obs.stamp_ns


@FAST
@given(chunk_msgs(), st.booleans(), st.integers(0, 8), st.floats(-1, 1))
def test_sim_path_a_chunk_is_dropped_held_or_executed_within_its_bounds(msg, awaited,
                                                                        execute_steps, grip):
    """sim_node's path for one chunk: guard (sizes) -> stale check -> conversion and
    validation -> the broker hands out only finite actions within max_abs_action."""
    limits, max_abs, stamp = InputLimits(), 1.0, 77
    msg = wire(msg)
    if lim.chunk_problem(msg, limits) is not None:
        return  # dropped, counted
    if awaited:
        msg.header.stamp = cv.to_time(stamp)
    if cv.from_time(msg.header.stamp) != stamp:
        return  # stale: ignored, counted
    try:
        chunk = cv.msg_to_chunk(msg, expected_dim=ACTION_DIM)
        problem = rchunks.chunk_problem(chunk.actions, ACTION_DIM, max_abs)
        if problem:
            raise ValueError(problem)
    except ValueError:
        chunk = rchunks.hold_chunk(8, grip, stamp)
    broker = ActionChunkBroker(execute_steps)
    broker.load(chunk)
    n = 0
    while (action := broker.next_action()) is not None:
        assert action.shape == (ACTION_DIM,) and np.all(np.isfinite(action))
        assert np.all(np.abs(action) <= max(max_abs, abs(grip)))
        n += 1
    assert n == (chunk.horizon if execute_steps == 0 else min(execute_steps, chunk.horizon))
    assert n <= limits.limit_chunk_length


@FAST
@given(st.builds(EpisodeStatus, suite=TEXT | st.just("s" * 40), state=TEXT, instruction=TEXT,
                 detail=TEXT | st.just("d" * 40), task_id=U32, episode=U32),
       st.integers(1, 30))
def test_episode_status_and_instruction_limits_match_their_lengths(msg, limit):
    limits = InputLimits(limit_instruction_chars=limit)
    msg = wire(msg)
    longest = max(len(msg.suite), len(msg.state), len(msg.instruction), len(msg.detail))
    assert (lim.status_problem(msg, limits) is None) == (longest <= limit)
    assert (lim.text_problem(msg.detail, limits) is None) == (len(msg.detail) <= limit)
