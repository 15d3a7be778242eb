"""verifier_node resampling over ROS: a rejected candidate set makes it ask policy_node's
``sample_candidates`` for more (the scheduler's rounds, budget and fallback); a dead, hung,
refusing or malformed policy ends the resampling with the fallback, and the node goes on."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pytest
from prevla_interfaces.srv import SampleCandidates
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.parameter import Parameter
from rclpy.task import Future

from prevla_ros import conversions as conv
from prevla_ros.nodes.policy_node import PolicyNode
from prevla_ros.nodes.verifier_node import VerifierNode
from prevla_ros.runtime.types import ActionChunk as Chunk
from prevla_ros.runtime.types import CandidateSet as Candidates
from tests.ros.fake_robot import candidate_set
from tests.ros.test_verifier_node import H, SIDE, Robot, _observation

pytestmark = pytest.mark.ros


def _verifier(ros, *params):
    """The zoo verifier with a tau nothing passes, so every first set is rejected."""
    return ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("threshold", value=0.999), *params]))


def _chunks(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, (H, 7)).astype(np.float32) for _ in range(n)]


def test_rejected_set_is_resampled_from_the_policy_node(ros):
    policy = ros.add(PolicyNode(context=ros.context))  # the zoo VLA on ONNX Runtime, K = 4
    assert policy.models.slot.loaded.backend == "onnxruntime"
    node = _verifier(ros, Parameter("max_rounds", value=3), Parameter("max_samples", value=24))
    robot = Robot(ros, node)  # publishes the observation both nodes see
    for n, stamp in enumerate((100_000_000, 200_000_000), start=1):
        robot.observe(_observation(stamp, SIDE))
        assert ros.wait_for(lambda: len(robot.verdicts) >= n and len(robot.chunks) >= n,
                            timeout_s=20), node._stats
        v = robot.verdicts[n - 1]
        assert conv.from_time(v.header.stamp) == stamp
        assert v.rounds == 3 and v.samples_drawn == 12, (v.rounds, v.samples_drawn, v.reason)
        assert v.outcome in ("fallback_best", "hold") and "budget spent (3 rounds" in v.reason
        assert len(v.safety_probs) == 12 and np.all(np.isfinite(v.safety_probs))
        if v.outcome == "fallback_best":
            assert conv.msg_to_chunk(robot.chunks[n - 1]).source == "vla_libero_spatial"
    # policy_node served rounds 1 and 2 of each decision, the first set being round 0
    assert policy._stats["resample_requests"] == 4 and policy._stats["holds"] == 0
    assert node._stats["resample_requests"] == 4 and node._stats["resample_failures"] == 0


class FakePolicy:
    """A ``sample_candidates`` server that answers as told: well, refuses, garbles or hangs.

    ``chunks(k, round)`` makes a round's answer (None: that request hangs)."""

    def __init__(self, ros):
        self.node = ros.node("fake_policy")
        self.behaviour, self.requests = "good", []
        self.chunks: Callable[[int, int], list[np.ndarray] | None] = (
            lambda k, round_: _chunks(k, seed=round_))
        # Reentrant: a hung request must not block the next one (as a real server would not)
        self.node.create_service(SampleCandidates, "sample_candidates", self._serve,
                                 callback_group=ReentrantCallbackGroup())

    async def _serve(self, request, response):
        self.requests.append((int(request.k), float(request.temperature), int(request.round)))
        stamp = conv.from_time(request.observation_stamp)
        chunks = self.chunks(int(request.k), int(request.round))
        if self.behaviour == "hang" or chunks is None:
            await Future()  # never answered
        response.ok = self.behaviour != "refuse"
        response.reason = "policy exploded" if self.behaviour == "refuse" else ""
        if self.behaviour == "malformed":
            chunks = [np.full((H, 7), np.nan, np.float32) for _ in chunks]
        response.candidates = conv.candidates_to_msg(Candidates(
            chunks=[Chunk(c, "fake", stamp) for c in chunks], temperatures=[1.0] * len(chunks),
            seeds=list(range(len(chunks))), policy_id="fake", stamp_ns=stamp))
        return response


def test_a_failing_policy_ends_resampling_with_the_fallback_and_the_node_goes_on(ros):
    node = _verifier(ros, Parameter("resample_timeout_s", value=0.5),
                     Parameter("fallback_min_p_safe", value=0.0),
                     Parameter("temperature_step", value=0.5))
    robot = Robot(ros, node)
    # No policy node at all: the fallback at once (the safest of the first set).
    stamp = 1_000_000
    robot.observe(_observation(stamp, SIDE))
    assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
    v = robot.propose(_chunks(2), stamp, 1)
    assert v.outcome == "fallback_best" and v.rounds == 1 and v.samples_drawn == 2
    assert "service is not available" in v.reason
    # The verdict names the candidate that ran: the safest one, whose chunk was published.
    assert v.accepted_index == int(np.argmax(v.safety_probs))
    np.testing.assert_array_equal(conv.msg_to_chunk(robot.chunks[0]).actions,
                                  _chunks(2)[v.accepted_index])
    fake = FakePolicy(ros)
    assert ros.wait_for(lambda: node._sampler.service_is_ready())
    for n, behaviour in enumerate(("good", "hang", "refuse", "malformed", "good"), start=2):
        fake.behaviour, stamp = behaviour, n * 1_000_000
        robot.observe(_observation(stamp, SIDE))
        assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
        start, asked = time.monotonic(), len(fake.requests)
        robot.candidates.publish(candidate_set(_chunks(2, seed=n), stamp_ns=stamp))
        if behaviour == "hang":  # observations are still taken in while the node waits
            assert ros.wait_for(lambda: len(fake.requests) > asked)
            robot.observe(_observation(stamp + 1, SIDE))
            assert ros.wait_for(lambda: node.intake.get(stamp + 1) is not None,
                                timeout_s=0.4)
            assert len(robot.verdicts) == n - 1
        assert ros.wait_for(lambda: len(robot.verdicts) >= n and len(robot.chunks) >= n,
                            timeout_s=10), behaviour
        elapsed, v = time.monotonic() - start, robot.verdicts[n - 1]
        assert conv.from_time(v.header.stamp) == stamp and v.outcome == "fallback_best", v.reason
        assert v.accepted_index == int(np.argmax(v.safety_probs))  # the candidate that ran
        if behaviour == "good":  # the scheduler's budget: 3 rounds at rising temperature
            assert v.rounds == 3 and v.samples_drawn == 6 and "budget spent" in v.reason
            assert fake.requests[-2:] == [(2, 1.5, 1), (2, 2.0, 2)]
            assert len(v.safety_probs) == 6 and np.all(np.isfinite(v.advantages))
        else:
            assert v.rounds == 1 and v.samples_drawn == 2 and "resampling stopped" in v.reason
            want = {"hang": "no answer from sample_candidates within 0.500 s",
                    "refuse": "policy exploded", "malformed": "non-finite"}[behaviour]
            assert want in v.reason, v.reason
        if behaviour == "hang":
            assert 0.5 <= elapsed < 2.0, elapsed
    assert node._stats["resample_failures"] == 4
    ros.spin_for(0.3)
    assert len(robot.verdicts) == 6  # a late answer never makes a second verdict


def test_resample_false_decides_on_the_first_set_alone(ros):
    node = _verifier(ros, Parameter("resample", value=False))
    assert node._sampler is None
    robot = Robot(ros, node)
    robot.observe(_observation(3_000, SIDE))
    assert ros.wait_for(lambda: node.intake.get(3_000) is not None)
    v = robot.propose(_chunks(2), 3_000, 1)
    assert v.outcome == "hold" and v.rounds == 1 and "tau=0.999" in v.reason


# --- preemptive resampling (overlap: true) ------------------------------------------------
TAU = 0.85
#: Far above / below TAU under the zoo verifier on the observations of these stamps.
SAFE, UNSAFE = np.zeros((H, 7), np.float32), np.full((H, 7), -0.9, np.float32)
STAMPS = (6_000_000, 8_000_000)


def _overlap_verifier(ros, overlap: bool, *params):
    node = ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("threshold", value=TAU), Parameter("max_rounds", value=4),
        Parameter("overlap", value=overlap), Parameter("temperature_step", value=0.5), *params]))
    for stamp in STAMPS:  # the premise: SAFE passes tau, UNSAFE does not
        obs = _observation(stamp, SIDE)
        p_safe, _ = node.scheduler.scorer.score(obs, np.stack([SAFE, UNSAFE]))
        assert p_safe[1] + 0.1 < TAU < p_safe[0] - 0.1, p_safe
    return node


def _safe_from(safe_round: int | None, hang_round: int | None = None):
    """FakePolicy answers: UNSAFE chunks, SAFE ones from ``safe_round`` on; the request
    for ``hang_round`` hangs."""
    def chunks(k: int, round_: int) -> list[np.ndarray] | None:
        if round_ == hang_round:
            return None
        return [SAFE if safe_round is not None and round_ >= safe_round else UNSAFE] * k
    return chunks


def _remove(ros, *nodes) -> None:
    for node in nodes:
        ros.executor.remove_node(node)
        ros.nodes.remove(node)
        node.destroy_node()


def test_overlap_gives_the_same_verdict_and_drops_the_request_ahead(ros):
    fake = FakePolicy(ros)
    fake.chunks = _safe_from(2)  # rounds 0 and 1 rejected, round 2 accepted
    stamp, got = STAMPS[0], {}
    for overlap in (False, True):
        node = _overlap_verifier(ros, overlap)
        robot = Robot(ros, node)
        assert ros.wait_for(lambda: node._sampler.service_is_ready())
        robot.observe(_observation(stamp, SIDE))
        assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
        asked = len(fake.requests)
        v = robot.propose([UNSAFE, UNSAFE], stamp, 1)
        ros.spin_for(0.3)  # the dropped request's answer comes, and is ignored
        assert len(robot.verdicts) == 1 and len(robot.chunks) == 1
        got[overlap] = (v, fake.requests[asked:], dict(node._diagnostics()[2]))
        _remove(ros, node, robot.node)
    (off, asked_off, diag_off), (on, asked_on, diag_on) = got[False], got[True]
    assert (on.outcome, on.rounds, on.samples_drawn, on.accepted_index, on.reason) == (
        off.outcome, off.rounds, off.samples_drawn, off.accepted_index, off.reason)
    assert (on.outcome, on.rounds, on.samples_drawn, on.accepted_index) == ("accepted", 3, 6, 4)
    np.testing.assert_allclose(on.safety_probs, off.safety_probs, atol=1e-6)
    # The policy got the same rounds, plus round 3 asked ahead with round 2 and then dropped.
    assert asked_off == [(2, 1.5, 1), (2, 2.0, 2)]
    assert asked_on == asked_off + [(2, 2.5, 3)]
    assert (diag_off["resample_requests"], diag_off["dropped_samples"]) == (2, 0)
    assert (diag_on["resample_requests"], diag_on["dropped_samples"]) == (3, 2)
    assert diag_on["resample_failures"] == 0


def test_overlap_asks_nothing_ahead_of_a_first_set_that_passes_and_times_out_a_hung_one(ros):
    fake = FakePolicy(ros)
    node = _overlap_verifier(ros, True, Parameter("resample_timeout_s", value=0.5),
                             Parameter("fallback_min_p_safe", value=0.0))
    robot = Robot(ros, node)
    assert ros.wait_for(lambda: node._sampler.service_is_ready())
    for stamp in STAMPS:
        robot.observe(_observation(stamp, SIDE))
        assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
    # Accepted at round 1 (the policy's own set): no request at all, none ahead.
    v = robot.propose([SAFE, UNSAFE], STAMPS[0], 1)
    ros.spin_for(0.2)
    assert (v.outcome, v.rounds, v.accepted_index) == ("accepted", 1, 0)
    assert fake.requests == [] and node._stats["dropped_samples"] == 0
    # The request sent ahead hangs: its deadline runs from when it was sent, then fallback.
    fake.chunks = _safe_from(None, hang_round=2)
    start = time.monotonic()
    v = robot.propose([UNSAFE, UNSAFE], STAMPS[1], 2)
    elapsed = time.monotonic() - start
    assert fake.requests == [(2, 1.5, 1), (2, 2.0, 2)]
    assert (v.outcome, v.rounds, v.samples_drawn) == ("fallback_best", 2, 4), v.reason
    assert "no answer from sample_candidates within 0.500 s" in v.reason
    assert 0.5 <= elapsed < 2.0, elapsed
    assert node._stats["dropped_samples"] == 0 and node._stats["resample_failures"] == 1
    ros.spin_for(0.2)
    assert len(robot.verdicts) == 2
