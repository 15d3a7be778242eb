"""verifier_node resampling over ROS: a rejected candidate set makes it ask policy_node's
``sample_candidates`` for more (the scheduler's rounds, budget and fallback); a dead, hung,
refusing or malformed policy ends the resampling with the fallback, and the node goes on."""
from __future__ import annotations

import time

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
from tests.ros.test_verifier_node import H, SIDE, Robot, _candidate_set, _observation

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
    """A ``sample_candidates`` server that answers as told: well, refuses, garbles or hangs."""

    def __init__(self, ros):
        self.node = ros.node("fake_policy")
        self.behaviour, self.requests = "good", []
        # Reentrant: a hung request must not block the next one (as a real server would not)
        self.node.create_service(SampleCandidates, "sample_candidates", self._serve,
                                 callback_group=ReentrantCallbackGroup())

    async def _serve(self, request, response):
        self.requests.append((int(request.k), float(request.temperature), int(request.round)))
        stamp = conv.from_time(request.observation_stamp)
        if self.behaviour == "hang":
            await Future()  # never answered
        response.ok = self.behaviour != "refuse"
        response.reason = "policy exploded" if self.behaviour == "refuse" else ""
        chunks = _chunks(int(request.k), seed=int(request.round))
        if self.behaviour == "malformed":
            chunks = [np.full((H, 7), np.nan, np.float32) for _ in chunks]
        response.candidates = conv.candidates_to_msg(Candidates(
            chunks=[Chunk(c, "fake", stamp) for c in chunks], temperatures=[1.0] * len(chunks),
            seeds=list(range(len(chunks))), policy_id="fake", stamp_ns=stamp))
        return response


def test_a_failing_policy_ends_resampling_with_the_fallback_and_the_node_goes_on(ros):
    node = _verifier(ros, Parameter("resample_timeout_s", value=0.5),
                     Parameter("fallback_min_p_safe", value=0.0))
    robot = Robot(ros, node)
    # No policy node at all: the fallback at once (the safest of the first set).
    stamp = 1_000_000
    robot.observe(_observation(stamp, SIDE))
    assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
    v = robot.propose(_chunks(2), stamp, 1)
    assert v.outcome == "fallback_best" and v.rounds == 1 and v.samples_drawn == 2
    assert "service is not available" in v.reason
    fake = FakePolicy(ros)
    assert ros.wait_for(lambda: node._sampler.service_is_ready())
    for n, behaviour in enumerate(("good", "hang", "refuse", "malformed", "good"), start=2):
        fake.behaviour, stamp = behaviour, n * 1_000_000
        robot.observe(_observation(stamp, SIDE))
        assert ros.wait_for(lambda: node.intake.get(stamp) is not None)
        start, asked = time.monotonic(), len(fake.requests)
        robot.candidates.publish(_candidate_set(_chunks(2, seed=n), stamp_ns=stamp))
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
