"""The asynchronous resampling driver without ROS: a fake sampler service, fake timers and a
fake clock stand where verifier_node wires ``call_async``, ``create_timer`` and the rest."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.resampling_driver import ResamplingDriver, SamplingFailed
from prevla_ros.runtime.scheduler import Scheduler, SchedulerConfig
from prevla_ros.runtime.types import ACTION_DIM

STAMP = 42
#: chunk's first value -> (P(safe), advantage); tau 0.5: only 0.3 and 0.4 pass.
TABLE = {0.1: (0.2, 1.0), 0.2: (0.4, 2.0), 0.3: (0.9, 0.5), 0.4: (0.95, 3.0)}


class TableScorer:
    verifier_id, threshold = "table", 0.5

    def score(self, obs, candidates):
        rows = [TABLE[round(float(c[0, 0]), 3)] for c in candidates]
        return (np.array([r[0] for r in rows], np.float32),
                np.array([r[1] for r in rows], np.float32))


def _chunks(*values: float) -> list[np.ndarray]:
    return [np.full((4, ACTION_DIM), v, np.float32) for v in values]


class FakeNode:
    """What verifier_node hands the driver: requests, cancels, timers, a clock, publishing."""

    def __init__(self, **config) -> None:
        self.now, self.available = 0.0, True
        self.requests: list[tuple[object, tuple[int, int, float, int]]] = []
        self.cancelled: list[object] = []
        self.timers: list[list] = []  # [due, callback, alive]
        self.published, self.warnings, self.stats = [], [], {}
        self.scheduler = Scheduler(SchedulerConfig(**{
            "verifier": "model", "threshold": 0.5, "temperature_step": 0.5, **config}),
            TableScorer())
        self.driver = ResamplingDriver(
            self.scheduler.config, self.send, self.cancelled.append, self.schedule,
            lambda timer: timer.__setitem__(2, False), self.publish_decision, timeout_s=0.5,
            warn=self.warnings.append, stats=self.stats, name="sample_candidates",
            clock=lambda: self.now)

    def send(self, stamp_ns: int, k: int, temperature: float, round_: int) -> object:
        if not self.available:
            raise SamplingFailed("the service is not available")
        handle = object()
        self.requests.append((handle, (stamp_ns, k, temperature, round_)))
        return handle

    def schedule(self, delay_s: float, callback) -> list:
        timer = [self.now + delay_s, callback, True]
        self.timers.append(timer)
        return timer

    def publish_decision(self, context, decision, verifier_id) -> None:
        self.published.append((context, decision, verifier_id))

    def start(self, *values: float) -> None:
        resampling = self.scheduler.start(object(), len(values), 1.0, STAMP)
        self.driver.start(resampling, _chunks(*values), STAMP, "the first set")

    def answer(self, i: int, *values: float, stamp: int = STAMP) -> None:
        self.driver.answered(self.requests[i][0], lambda: (stamp, _chunks(*values)))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in list(self.timers):
            if timer[2] and timer[0] <= self.now:
                timer[1]()

    def asked(self) -> list[tuple[int, int, float, int]]:
        return [request for _, request in self.requests]

    @property
    def decision(self):
        [(context, decision, verifier_id)] = self.published
        assert context == "the first set" and verifier_id == "table"
        return decision


def test_a_set_that_passes_is_published_at_once_without_a_request():
    node = FakeNode()
    node.start(0.1, 0.3)
    assert node.decision.outcome == "accepted" and node.decision.accepted_index == 1
    assert node.requests == [] and not node.driver.busy


def test_rejected_rounds_are_requested_hotter_until_one_passes():
    node = FakeNode()
    node.start(0.1, 0.2)
    assert node.driver.busy and node.published == []  # the caller goes on meanwhile
    node.answer(0, 0.1, 0.1)
    node.answer(1, 0.2, 0.4)
    d = node.decision
    assert node.asked() == [(STAMP, 2, 1.5, 1), (STAMP, 2, 2.0, 2)]
    assert (d.outcome, d.rounds, d.samples_drawn, d.accepted_index) == ("accepted", 3, 6, 5)
    assert node.stats == {"resample_requests": 2, "resample_failures": 0,
                          "last_resample_ms": 0.0}
    assert not any(alive for _, _, alive in node.timers)  # every deadline cancelled


def test_no_answer_in_time_falls_back_and_a_late_answer_is_ignored():
    node = FakeNode(fallback_min_p_safe=0.3)
    node.start(0.1, 0.2)
    node.advance(0.4)
    assert node.published == []
    node.advance(0.2)
    d = node.decision
    assert d.outcome == "fallback_best" and d.chunk.actions[0, 0] == pytest.approx(0.2)
    assert "no answer from sample_candidates within 0.500 s (resample_timeout_s)" in d.reason
    assert node.cancelled == [node.requests[0][0]] and node.stats["resample_failures"] == 1
    assert node.warnings and "fallback_best" in node.warnings[0]
    node.answer(0, 0.3, 0.3)  # a late answer never makes a second decision
    assert len(node.published) == 1


def test_the_deadline_is_the_rest_of_max_ms_when_that_is_sooner():
    node = FakeNode(max_ms=100.0, fallback_min_p_safe=0.9)
    node.start(0.1)
    [timer] = node.timers
    assert timer[0] <= 0.1
    node.advance(0.1)
    assert node.decision.outcome == "hold"
    assert "(the rest of the max_ms budget)" in node.decision.reason
    assert node.warnings == []  # a hold is logged where it is published


def test_no_service_falls_back_at_once():
    node = FakeNode(fallback_min_p_safe=0.3)
    node.available = False
    node.start(0.2, 0.1)
    d = node.decision
    assert d.outcome == "fallback_best" and d.rounds == 1
    assert "resampling stopped after 1 rounds (2 samples): the service is not available" in d.reason


def _refuse():
    raise SamplingFailed("policy_node could not resample: policy exploded")


def _crash():
    raise RuntimeError("boom")


@pytest.mark.parametrize("read, want", [
    (_refuse, "policy_node could not resample: policy exploded"),
    (_crash, "sample_candidates failed: boom"),
    (lambda: (STAMP + 1, _chunks(0.3)), f"answered for stamp {STAMP + 1}, not {STAMP}"),
    (lambda: (STAMP, [np.full((4, ACTION_DIM), np.nan, np.float32)]),
     "malformed candidates from sample_candidates: 28 non-finite"),
    (lambda: (STAMP, []), "malformed candidates from sample_candidates: none"),
])
def test_a_bad_answer_ends_the_decision_with_the_fallback(read, want):
    node = FakeNode(fallback_min_p_safe=0.0)
    node.start(0.1, 0.2)
    node.driver.answered(node.requests[0][0], read)
    d = node.decision
    assert d.outcome == "fallback_best" and d.rounds == 1 and want in d.reason, d.reason
    assert node.stats["resample_failures"] == 1 and not node.driver.busy


def test_stop_supersedes_the_pending_decision_and_drops_its_request():
    node = FakeNode(fallback_min_p_safe=0.9)
    node.driver.stop("nothing pending: nothing happens")
    node.start(0.1)
    node.driver.stop("superseded by the candidate set of stamp 43")
    assert node.decision.outcome == "hold" and "superseded" in node.decision.reason
    assert node.cancelled == [node.requests[0][0]]
    node.answer(0, 0.3)
    assert len(node.published) == 1
    node.start(0.1)
    with pytest.raises(RuntimeError, match="pending"):
        node.start(0.1)


def test_overlap_requests_ahead_and_drops_the_request_not_needed():
    decisions = {}
    for overlap in (False, True):
        node = FakeNode(overlap=overlap, max_rounds=4)
        node.start(0.1, 0.1)
        node.answer(0, 0.2, 0.1)  # with overlap: round 2 is asked for before this is scored
        node.answer(1, 0.1, 0.3)  # passes: round 3, asked ahead, is not needed
        decisions[overlap] = node.decision
        if overlap:
            assert node.asked() == [(STAMP, 2, 1.5, 1), (STAMP, 2, 2.0, 2), (STAMP, 2, 2.5, 3)]
            assert node.cancelled == [node.requests[2][0]]
            node.answer(2, 0.4, 0.4)  # its answer, if it comes, is ignored
            assert len(node.published) == 1
        else:
            assert node.asked() == [(STAMP, 2, 1.5, 1), (STAMP, 2, 2.0, 2)]
    off, on = decisions[False], decisions[True]
    assert (on.outcome, on.rounds, on.samples_drawn, on.accepted_index, on.reason) == (
        off.outcome, off.rounds, off.samples_drawn, off.accepted_index, off.reason)
    assert (off.dropped_samples, on.dropped_samples) == (0, 2)
    np.testing.assert_allclose(on.safety_probs, off.safety_probs)


def test_overlap_deadline_runs_from_when_the_request_ahead_was_sent():
    node = FakeNode(overlap=True, max_rounds=4, fallback_min_p_safe=0.0)
    scorer, score = node.scheduler.scorer, node.scheduler.scorer.score
    scorer.score = lambda obs, c: (setattr(node, "now", node.now + 0.2), score(obs, c))[1]
    node.start(0.1, 0.1)  # scored by t = 0.2: round 1 asked for then
    node.answer(0, 0.1, 0.1)  # round 2 asked ahead at t = 0.2, round 1 scored by t = 0.4
    [first, second] = node.timers
    assert not first[2] and second[0] == pytest.approx(0.7)  # 0.5 s after it was sent
    node.advance(0.25)
    assert node.published == []
    node.advance(0.1)
    d = node.decision
    assert d.rounds == 2 and d.outcome == "fallback_best" and "within 0.500 s" in d.reason
