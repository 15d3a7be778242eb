"""The decision step: validation of every candidate, passthrough and model selection, holds."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.chunks import HOLD_SOURCE
from prevla_ros.runtime.scheduler import (OUTCOME_ACCEPTED, OUTCOME_HOLD, Scheduler,
                                          SchedulerConfig, UnavailableScorer)
from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_CLOSE


def _valid(value: float, h: int = 4) -> np.ndarray:
    return np.full((h, ACTION_DIM), value, dtype=np.float32)


def _nan() -> np.ndarray:
    bad = _valid(0.1)
    bad[1, 2] = np.nan
    return bad


def test_passthrough_picks_first_valid_candidate():
    scheduler = Scheduler(SchedulerConfig())
    candidates = [_nan(), np.zeros((4, 3), dtype=np.float32), _valid(0.2), _valid(0.3)]
    d = scheduler.decide(candidates, stamp_ns=99, source="expert")
    assert d.outcome == OUTCOME_ACCEPTED and d.accepted_index == 2
    np.testing.assert_array_equal(d.chunk.actions, candidates[2])
    assert d.chunk.actions.dtype == np.float32
    assert d.chunk.source == "expert" and d.chunk.stamp_ns == 99
    assert d.samples_drawn == 4 and d.rounds == 1
    assert sorted(d.rejected) == [0, 1]
    assert "passthrough" in d.reason
    assert d.total_ms >= d.verify_ms >= 0.0


def test_per_candidate_scores_zero_for_rejected_nan_for_unscored():
    d = Scheduler(SchedulerConfig()).decide([_valid(0.1), _nan(), _valid(50.0), _valid(0.2)])
    assert d.accepted_index == 0
    assert d.safety_probs.shape == (4,) and d.advantages.shape == (4,)
    assert d.safety_probs[1] == 0.0 and d.safety_probs[2] == 0.0  # NaN values, |a| > 10
    assert np.isnan(d.safety_probs[0]) and np.isnan(d.safety_probs[3])  # passthrough: unscored
    assert np.all(np.isnan(d.advantages))
    assert "non-finite" in d.rejected[1] and "exceeds limit" in d.rejected[2]


def test_float64_candidate_is_accepted_as_float32():
    d = Scheduler(SchedulerConfig()).decide([np.full((3, ACTION_DIM), 0.25)])
    assert d.outcome == OUTCOME_ACCEPTED and d.chunk.actions.dtype == np.float32


def test_all_invalid_holds_with_last_gripper_and_names_problems():
    config = SchedulerConfig(hold_horizon=5)
    candidates = [_nan(), np.zeros((4, 6), dtype=np.float32), np.zeros(28, dtype=np.float32)]
    d = Scheduler(config).decide(candidates, stamp_ns=7, last_gripper=GRIPPER_CLOSE)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.chunk.source == HOLD_SOURCE and d.chunk.stamp_ns == 7
    assert d.chunk.actions.shape == (5, ACTION_DIM)
    assert np.all(d.chunk.actions[:, :-1] == 0.0)
    assert np.all(d.chunk.actions[:, -1] == GRIPPER_CLOSE)
    np.testing.assert_array_equal(d.safety_probs, np.zeros(3, dtype=np.float32))
    assert "#0: 1 non-finite" in d.reason
    assert "#1: action dimension 6 != expected 7" in d.reason
    assert "#2: expected shape (H, 7), got (28,)" in d.reason


def test_no_candidates_holds():
    d = Scheduler(SchedulerConfig(hold_horizon=3)).decide([], last_gripper=GRIPPER_CLOSE)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.reason == "no candidates"
    assert d.samples_drawn == 0 and d.safety_probs.shape == (0,)
    assert d.chunk.actions.shape == (3, ACTION_DIM)
    assert np.all(d.chunk.actions[:, -1] == GRIPPER_CLOSE)


def test_action_dim_and_limit_come_from_config():
    scheduler = Scheduler(SchedulerConfig(action_dim=3, max_abs_action=0.5))
    d = scheduler.decide([np.full((2, 3), 0.6), np.full((2, 7), 0.1), np.full((2, 3), 0.4)])
    assert d.accepted_index == 2 and sorted(d.rejected) == [0, 1]
    hold = scheduler.decide([np.full((2, 7), 0.1)])
    assert hold.chunk.actions.shape == (SchedulerConfig().hold_horizon, 3)
    assert scheduler.verifier_id == "passthrough"


@pytest.mark.parametrize("field, value", [
    ("mode", "dream"), ("verifier", "oracle"), ("action_dim", 0),
    ("max_abs_action", 0.0), ("max_abs_action", float("nan")), ("hold_horizon", 0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SchedulerConfig\.{field}"):
        SchedulerConfig(**{field: value})


def test_config_accepts_both_modes():
    assert SchedulerConfig(mode="imagine").mode == "imagine"
    assert SchedulerConfig(mode="execute").mode == "execute"


# --- the model verifier -------------------------------------------------------------------
class ScriptedScorer:
    """A scorer whose answers are fixed per candidate (matched by the chunk's first value)."""

    verifier_id = "scripted_verifier"

    def __init__(self, table: dict[float, tuple[float, float]], threshold: float = 0.5,
                 error: Exception | None = None) -> None:
        self.table, self.threshold, self.error = table, threshold, error
        self.calls: list[tuple[object, np.ndarray]] = []

    def score(self, obs, candidates):
        self.calls.append((obs, candidates))
        if self.error is not None:
            raise self.error
        rows = [self.table[round(float(c[0, 0]), 3)] for c in candidates]
        return (np.array([r[0] for r in rows], np.float32),
                np.array([r[1] for r in rows], np.float32))


OBS = object()  # the scheduler hands the observation to the scorer untouched


def _model(scorer=None, **config) -> Scheduler:
    # These tests exercise advantage ranking and hotter resampled rounds unless they say
    # otherwise (the library defaults are the gate and the same temperature: test_defaults_*).
    return Scheduler(SchedulerConfig(**{"verifier": "model", "ranking": "advantage",
                                        "temperature_step": 0.5, **config}), scorer)


def test_model_accepts_highest_advantage_among_safe_candidates():
    # 0.1: safe, low advantage; 0.2: unsafe, best advantage; 0.3: safe, best safe advantage.
    scorer = ScriptedScorer({0.1: (0.9, 0.1), 0.2: (0.2, 5.0), 0.3: (0.6, 1.0), 0.4: (0.5, 0.5)})
    scheduler = _model(scorer)
    candidates = [_valid(0.1), _nan(), _valid(0.2), _valid(0.3), _valid(0.4)]
    d = scheduler.decide(candidates, stamp_ns=5, source="vla", observation=OBS)
    assert d.outcome == OUTCOME_ACCEPTED and d.accepted_index == 3
    np.testing.assert_array_equal(d.chunk.actions, candidates[3])
    assert d.chunk.source == "vla" and d.chunk.stamp_ns == 5
    # One scoring call for the valid candidates only, with the observation untouched.
    [(obs, batch)] = scorer.calls
    assert obs is OBS and batch.shape == (4, 4, ACTION_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(d.safety_probs, [0.9, 0.0, 0.2, 0.6, 0.5])
    np.testing.assert_allclose(d.advantages, [0.1, np.nan, 5.0, 1.0, 0.5])
    assert "tau=0.500" in d.reason and "p_safe=0.600" in d.reason and "advantage=1.000" in d.reason
    assert scheduler.verifier_id == "scripted_verifier" and scheduler.threshold == 0.5
    assert d.total_ms >= d.verify_ms >= 0.0


def test_model_threshold_is_inclusive_and_ties_keep_the_policy_order():
    scorer = ScriptedScorer({0.1: (0.5, 1.0), 0.2: (0.7, 1.0)})
    d = _model(scorer).decide([_valid(0.1), _valid(0.2)], observation=OBS)
    assert d.accepted_index == 0  # p_safe == tau passes; equal advantages: first one


def test_model_holds_when_no_candidate_is_safe():
    scorer = ScriptedScorer({0.1: (0.3, 2.0), 0.2: (0.45, 1.0)}, threshold=0.5)
    d = _model(scorer, hold_horizon=3).decide([_valid(0.1), _valid(0.2)], stamp_ns=9,
                                              last_gripper=GRIPPER_CLOSE, observation=OBS)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.reason == "no candidate passed the safety threshold tau=0.500; best p_safe=0.450"
    assert d.chunk.source == HOLD_SOURCE and d.chunk.stamp_ns == 9
    assert d.chunk.actions.shape == (3, ACTION_DIM)
    assert np.all(d.chunk.actions[:, -1] == GRIPPER_CLOSE)
    np.testing.assert_allclose(d.safety_probs, [0.3, 0.45])  # scored, even when holding
    np.testing.assert_allclose(d.advantages, [2.0, 1.0])


def test_explicit_threshold_overrides_the_calibrated_one():
    scorer = ScriptedScorer({0.1: (0.6, 2.0), 0.2: (0.9, 1.0)}, threshold=0.5)
    assert _model(scorer).decide([_valid(0.1), _valid(0.2)], observation=OBS).accepted_index == 0
    strict = _model(scorer, threshold=0.8)
    assert strict.threshold == 0.8
    d = strict.decide([_valid(0.1), _valid(0.2)], observation=OBS)
    assert d.accepted_index == 1 and "tau=0.800" in d.reason
    assert strict.decide([_valid(0.1)], observation=OBS).outcome == OUTCOME_HOLD


@pytest.mark.parametrize("error", [ValueError("camera 'wrist': expected (S, S, 3) uint8"),
                                   RuntimeError("CUDA out of memory")])
def test_scorer_error_holds_with_its_message(error):
    scorer = ScriptedScorer({}, error=error)
    d = _model(scorer).decide([_valid(0.1), _valid(0.2)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert d.reason == f"verifier could not score the candidates: {error}"
    assert np.all(np.isnan(d.safety_probs)) and np.all(np.isnan(d.advantages))


def test_scorer_answer_of_the_wrong_shape_holds():
    class Short(ScriptedScorer):
        def score(self, obs, candidates):
            return np.ones(1, np.float32), np.ones(1, np.float32)

    d = _model(Short({})).decide([_valid(0.1), _valid(0.2)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD and "expected (2,)" in d.reason


def test_candidates_of_different_horizons_hold_instead_of_crashing():
    scorer = ScriptedScorer({0.1: (0.9, 1.0)})
    d = _model(scorer).decide([_valid(0.1, h=4), _valid(0.1, h=5)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD and d.reason.startswith("verifier could not score")


def test_missing_observation_holds_and_does_not_score():
    scorer = ScriptedScorer({0.1: (0.9, 1.0)})
    d = _model(scorer).decide([_valid(0.1)], stamp_ns=1234)
    assert d.outcome == OUTCOME_HOLD and "no observation for stamp 1234" in d.reason
    assert scorer.calls == []


def test_missing_or_unavailable_scorer_holds_with_the_reason():
    d = _model(None).decide([_valid(0.1)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD and "no scorer" in d.reason
    unavailable = UnavailableScorer("verifier checkpoint unusable: /x.pt not found")
    scheduler = _model(unavailable)
    d = scheduler.decide([_valid(0.1)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD
    assert d.reason == "verifier unavailable: verifier checkpoint unusable: /x.pt not found"
    assert np.isnan(scheduler.threshold) and scheduler.verifier_id == "model"


def test_model_still_validates_first():
    scorer = ScriptedScorer({})
    d = _model(scorer).decide([_nan(), np.zeros((4, 6), np.float32)], observation=OBS)
    assert d.outcome == OUTCOME_HOLD and d.reason.startswith("no valid candidate: #0")
    assert scorer.calls == [] and d.samples_drawn == 2
    assert _model(scorer).decide([], observation=OBS).reason == "no candidates"


def test_passthrough_ignores_a_scorer():
    scorer = ScriptedScorer({})
    scheduler = Scheduler(SchedulerConfig(verifier="passthrough"), scorer)
    d = scheduler.decide([_valid(0.1)], observation=OBS)
    assert d.accepted_index == 0 and scorer.calls == [] and scheduler.verifier_id == "passthrough"


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan"), float("inf"), True])
def test_threshold_validation_names_the_field(value):
    with pytest.raises(ValueError, match=r"SchedulerConfig\.threshold"):
        SchedulerConfig(threshold=value)


def test_threshold_accepts_zero_and_the_open_interval():
    assert SchedulerConfig().threshold == 0.0
    assert SchedulerConfig(threshold=0.01).threshold == 0.01
    assert SchedulerConfig(threshold=0.99).threshold == 0.99


# --- adaptive resampling under a budget (Scheduler.run) -----------------------------------
class ScriptedSampler:
    """Round r returns the chunks listed for it (first value = the scorer's key)."""

    def __init__(self, rounds: list[list[float]]) -> None:
        self.rounds, self.calls = rounds, []

    def __call__(self, k: int, temperature: float) -> np.ndarray:
        self.calls.append((k, temperature))
        values = self.rounds[min(len(self.calls) - 1, len(self.rounds) - 1)][:k]
        return np.stack([_valid(v) for v in values])


RUN_TABLE = {0.1: (0.2, 1.0), 0.2: (0.4, 2.0), 0.3: (0.9, 0.5), 0.4: (0.95, 3.0), 0.5: (0.6, 0.0)}


def test_run_accepts_in_the_first_round_without_resampling():
    sampler = ScriptedSampler([[0.1, 0.3, 0.4]])
    d = _model(ScriptedScorer(RUN_TABLE)).run(sampler, OBS, k=3, temperature=1.0)
    assert d.outcome == OUTCOME_ACCEPTED and d.rounds == 1 and d.samples_drawn == 3
    assert d.chunk.actions[0, 0] == pytest.approx(0.4) and sampler.calls == [(3, 1.0)]


def test_run_resamples_hotter_until_a_candidate_passes():
    sampler = ScriptedSampler([[0.1, 0.2], [0.1, 0.1], [0.2, 0.3]])
    d = _model(ScriptedScorer(RUN_TABLE), temperature_step=0.25).run(sampler, OBS, k=2, temperature=1.0)
    assert d.outcome == OUTCOME_ACCEPTED and d.rounds == 3 and d.samples_drawn == 6
    assert [t for _, t in sampler.calls] == [1.0, 1.25, 1.5]
    assert d.chunk.actions[0, 0] == pytest.approx(0.3)


def test_run_sample_budget_then_fallback_to_the_safest_seen():
    from prevla_ros.runtime.scheduler import OUTCOME_FALLBACK

    sampler = ScriptedSampler([[0.2, 0.1], [0.1, 0.1], [0.1, 0.1]])
    # tau 0.5: nothing passes; budget 4 samples -> two rounds; safest seen is 0.2 (p 0.4)
    d = _model(ScriptedScorer(RUN_TABLE), max_samples=4, fallback_min_p_safe=0.3).run(sampler, OBS, k=2)
    assert d.outcome == OUTCOME_FALLBACK and d.rounds == 2 and d.samples_drawn == 4
    assert d.chunk.actions[0, 0] == pytest.approx(0.2) and "fallback" in d.reason
    # the same, but the safest is not safe enough for the fallback: hold
    d = _model(ScriptedScorer(RUN_TABLE), max_samples=4, fallback_min_p_safe=0.5).run(
        ScriptedSampler([[0.2, 0.1]]), OBS, k=2)
    assert d.outcome == OUTCOME_HOLD and d.chunk.source == HOLD_SOURCE and "budget spent" in d.reason


def test_a_fallback_verdict_names_the_candidate_that_ran():
    # Round 1: 0.1, 0.1 (p 0.2); round 2: 0.1, 0.2 (p 0.2, 0.4). Nothing passes tau 0.5; the
    # budget of 4 samples ends it and the safest seen (0.2, the 4th candidate) is executed.
    sampler = ScriptedSampler([[0.1, 0.1], [0.1, 0.2]])
    d = _model(ScriptedScorer(RUN_TABLE), max_samples=4, fallback_min_p_safe=0.3).run(sampler, OBS, k=2)
    assert d.outcome == "fallback_best" and d.accepted_index == 3
    assert d.safety_probs[d.accepted_index] == pytest.approx(0.4) == d.safety_probs.max()
    assert d.chunk.actions[0, 0] == pytest.approx(0.2)
    # The safest one in the first round: its index over both rounds.
    d = _model(ScriptedScorer(RUN_TABLE), max_samples=4, fallback_min_p_safe=0.3).run(
        ScriptedSampler([[0.1, 0.2], [0.1, 0.1]]), OBS, k=2)
    assert d.outcome == "fallback_best" and d.accepted_index == 1


def test_run_round_and_time_budgets_and_modes_keep_their_own_settings():
    d = _model(ScriptedScorer(RUN_TABLE), max_rounds=2).run(ScriptedSampler([[0.1]]), OBS, k=1)
    assert d.rounds == 2 and d.outcome == OUTCOME_HOLD
    slow = ScriptedSampler([[0.1]])
    d = _model(ScriptedScorer(RUN_TABLE), max_rounds=50, max_ms=1e-6).run(slow, OBS, k=1)
    assert d.rounds == 1 and d.outcome == OUTCOME_HOLD  # the time budget stops resampling
    imagine = _model(ScriptedScorer(RUN_TABLE), mode="imagine", threshold=0.3)
    execute = _model(ScriptedScorer(RUN_TABLE), mode="execute", threshold=0.5)
    for scheduler, accepted in ((imagine, True), (execute, False)):
        d = scheduler.run(ScriptedSampler([[0.2]]), OBS, k=1)
        assert (d.outcome == OUTCOME_ACCEPTED) == accepted


def test_run_passthrough_and_unscorable_never_resample():
    sampler = ScriptedSampler([[0.1, 0.2]])
    d = Scheduler(SchedulerConfig()).run(sampler, OBS, k=2)
    assert d.outcome == OUTCOME_ACCEPTED and d.rounds == 1 and len(sampler.calls) == 1
    sampler = ScriptedSampler([[0.1]])
    d = _model(ScriptedScorer(RUN_TABLE)).run(sampler, None, k=1)  # no observation: final hold
    assert d.outcome == OUTCOME_HOLD and len(sampler.calls) == 1


@pytest.mark.parametrize("field, value", [("max_rounds", 0), ("max_samples", 0), ("max_ms", -1.0),
                                          ("temperature_step", -0.1), ("fallback_min_p_safe", 1.5)])
def test_budget_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SchedulerConfig\.{field}"):
        SchedulerConfig(**{field: value})


def test_policy_order_ranking_is_a_pure_gate():
    scorer = ScriptedScorer({0.1: (0.2, 9.0), 0.2: (0.6, 0.1), 0.3: (0.9, 5.0)})
    candidates = [_valid(0.1), _valid(0.2), _valid(0.3)]
    assert _model(scorer).decide(candidates, observation=OBS).accepted_index == 2
    assert _model(scorer, ranking="policy_order").decide(candidates, observation=OBS).accepted_index == 1
    with pytest.raises(ValueError, match=r"SchedulerConfig\.ranking"):
        SchedulerConfig(ranking="vibes")


def test_run_never_falls_back_to_an_invalid_candidate():
    # 0.5 is scorable (p 0.6 < tau 0.9); the NaN chunk is invalid (P(safe) recorded as 0.0).
    sampler = ScriptedSampler([[0.5]])
    invalid = lambda k, t: np.stack([_nan()])  # noqa: E731
    d = _model(ScriptedScorer(RUN_TABLE), threshold=0.9, fallback_min_p_safe=0.0).run(invalid, OBS, k=1)
    assert d.outcome == OUTCOME_HOLD and d.rounds == 1  # nothing scorable: no resampling, no fallback
    d = _model(ScriptedScorer(RUN_TABLE), threshold=0.9, fallback_min_p_safe=0.0, max_rounds=1).run(sampler, OBS, k=1)
    assert d.outcome == "fallback_best" and d.chunk.actions[0, 0] == pytest.approx(0.5)
    assert d.scored().tolist() == [0]


# --- the same rounds driven step by step (Scheduler.start: verifier_node over ROS) --------
def test_resampling_step_by_step_is_run():
    rounds = [[0.1, 0.2], [0.1, 0.1], [0.2, 0.3]]
    scheduler = _model(ScriptedScorer(RUN_TABLE), temperature_step=0.25)
    by_run = scheduler.run(ScriptedSampler(rounds), OBS, k=2, temperature=1.0)
    sampler, requests = ScriptedSampler(rounds), []
    resampling = scheduler.start(OBS, k=2, temperature=1.0)
    resampling.add(list(sampler(2, 1.0)))  # the first set arrives unasked, as a topic
    while (request := resampling.next_request()) is not None:
        requests.append(request)
        resampling.add(list(sampler(*request)))
    d = resampling.finish()
    assert requests == [(2, 1.25), (2, 1.5)]
    assert (d.outcome, d.rounds, d.samples_drawn, d.reason) == (
        by_run.outcome, by_run.rounds, by_run.samples_drawn, by_run.reason)
    assert d.reason.startswith("resampled 3 rounds (6 samples): model: #1")
    # scores over every candidate considered (as a Verdict carries them); the index into them
    np.testing.assert_allclose(d.safety_probs, [0.2, 0.4, 0.2, 0.2, 0.4, 0.9])
    assert d.accepted_index == 5 and d.scored().tolist() == list(range(6))
    np.testing.assert_array_equal(d.chunk.actions, by_run.chunk.actions)


def test_resampling_stopped_early_falls_back_or_holds():
    from prevla_ros.runtime.scheduler import OUTCOME_FALLBACK

    for min_p, outcome in ((0.3, OUTCOME_FALLBACK), (0.5, OUTCOME_HOLD)):
        resampling = _model(ScriptedScorer(RUN_TABLE), fallback_min_p_safe=min_p).start(OBS, k=2)
        resampling.add([_valid(0.2), _valid(0.1)])  # best p_safe 0.4 < tau 0.5
        assert resampling.next_request() == (2, 1.5) and not resampling.done
        with pytest.raises(RuntimeError, match="before the decision"):
            resampling.finish()
        resampling.stop("no answer within 1 s")
        d = resampling.finish()
        assert d.outcome == outcome and d.rounds == 1 and d.samples_drawn == 2
        assert d.reason.startswith("resampling stopped after 1 rounds (2 samples): no answer")
        assert resampling.next_request() is None
    assert d.chunk.source == HOLD_SOURCE


# --- imagine mode: the gate before the world model ----------------------------------------
IMAGINE_TABLE = {0.1: (0.9, 0.1), 0.2: (0.2, 5.0), 0.3: (0.6, 1.0), 0.4: (0.55, 2.0),
                 0.5: (0.7, np.nan)}


def test_gate_forwards_safe_candidates_best_advantage_first_within_the_budget():
    scorer = ScriptedScorer(IMAGINE_TABLE, threshold=0.5)
    scheduler = _model(scorer, mode="imagine", imagine_max_candidates=3)
    candidates = [_valid(0.1), _nan(), _valid(0.2), _valid(0.3), _valid(0.4), _valid(0.5)]
    forwarded, d = scheduler.gate(candidates, OBS, stamp_ns=9, source="vla")
    # Safe (p >= 0.5): 0.1 (adv 0.1), 0.3 (1.0), 0.4 (2.0), 0.5 (NaN ranks last); budget 3.
    assert forwarded == [4, 3, 0] == d.forwarded
    assert d.outcome == OUTCOME_ACCEPTED and d.accepted_index == 4
    assert d.chunk.stamp_ns == 9 and d.chunk.source == "vla"
    assert d.rejected.keys() == {1} and d.safety_probs[1] == 0.0
    assert "3 of 4 safe / 5 scored" in d.reason and "budget 3" in d.reason
    assert len(scorer.calls) == 1


def test_gate_has_its_own_threshold_and_zero_means_tau():
    scorer = ScriptedScorer(IMAGINE_TABLE, threshold=0.5)
    candidates = [_valid(v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    strict = _model(scorer, mode="imagine", imagine_threshold=0.65, imagine_max_candidates=8)
    assert strict.imagine_threshold == 0.65 and strict.threshold == 0.5
    assert strict.gate(candidates, OBS)[0] == [0, 4]  # 0.7 has a NaN advantage: last
    loose = _model(scorer, mode="imagine", imagine_threshold=0.1, imagine_max_candidates=8)
    assert loose.gate(candidates, OBS)[0] == [1, 3, 2, 0, 4]
    calibrated = _model(scorer, mode="imagine", imagine_max_candidates=8)
    assert calibrated.imagine_threshold == 0.5
    assert calibrated.gate(candidates, OBS)[0] == [3, 2, 0, 4]
    explicit_tau = _model(scorer, mode="imagine", threshold=0.8, imagine_max_candidates=8)
    assert explicit_tau.gate(candidates, OBS)[0] == [0]


def test_gate_forwards_nothing_when_none_passes_or_nothing_can_be_scored():
    scorer = ScriptedScorer(IMAGINE_TABLE, threshold=0.5)
    scheduler = _model(scorer, mode="imagine", imagine_threshold=0.95)
    forwarded, d = scheduler.gate([_valid(0.1), _valid(0.2)], OBS, last_gripper=GRIPPER_CLOSE)
    assert forwarded == [] and d.outcome == OUTCOME_HOLD and d.accepted_index == -1
    assert "imagine threshold 0.950" in d.reason and "best p_safe=0.900" in d.reason
    assert d.chunk.source == HOLD_SOURCE
    assert scheduler.gate([_valid(0.1)], None)[0] == []  # no observation: nothing to score
    assert _model(UnavailableScorer("gone"), mode="imagine").gate([_valid(0.1)], OBS)[0] == []
    assert scheduler.gate([], OBS)[1].reason == "no candidates"
    assert scheduler.gate([_nan()], OBS)[1].reason.startswith("no valid candidate")


def test_gate_passthrough_forwards_the_first_valid_ones_in_policy_order():
    scheduler = Scheduler(SchedulerConfig(mode="imagine", imagine_max_candidates=2))
    forwarded, d = scheduler.gate([_nan(), _valid(0.1), _valid(0.2), _valid(0.3)])
    assert forwarded == [1, 2] and d.accepted_index == 1 and d.outcome == OUTCOME_ACCEPTED


def test_execute_mode_is_untouched_by_the_imagine_settings():
    scorer = ScriptedScorer(IMAGINE_TABLE, threshold=0.5)
    candidates = [_valid(v) for v in (0.1, 0.2, 0.3, 0.4)]
    plain = _model(scorer).decide(candidates, observation=OBS)
    gated = _model(scorer, imagine_threshold=0.95, imagine_max_candidates=1).decide(
        candidates, observation=OBS)
    assert plain.accepted_index == gated.accepted_index == 3
    assert plain.reason == gated.reason and gated.forwarded == []


@pytest.mark.parametrize("field, value", [("imagine_threshold", 1.0), ("imagine_threshold", -0.1),
                                          ("imagine_threshold", float("nan")),
                                          ("imagine_max_candidates", 0)])
def test_imagine_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**{field: value})


# --- preemptive resampling (overlap) ------------------------------------------------------
@pytest.mark.parametrize("rounds,k,budget", [
    ([[0.1, 0.2], [0.1, 0.1], [0.2, 0.3]], 2, {}),  # accepted in round 3
    ([[0.2, 0.1], [0.1, 0.1], [0.1, 0.1]], 2, {"max_samples": 4}),  # sample budget, fallback
    ([[0.1], [0.1], [0.1], [0.4]], 1, {"max_rounds": 3}),  # round budget, hold
    ([[0.3, 0.4]], 2, {}),  # accepted at once
])
def test_overlap_decides_exactly_as_without(rounds, k, budget):
    plain = _model(ScriptedScorer(RUN_TABLE), temperature_step=0.25, **budget).run(
        ScriptedSampler(rounds), OBS, k=k, temperature=1.0)
    sampler = ScriptedSampler(rounds)
    fast = _model(ScriptedScorer(RUN_TABLE), temperature_step=0.25, overlap=True, **budget).run(
        sampler, OBS, k=k, temperature=1.0)
    for name in ("outcome", "accepted_index", "rounds", "samples_drawn", "reason"):
        assert getattr(fast, name) == getattr(plain, name), name
    np.testing.assert_array_equal(fast.chunk.actions, plain.chunk.actions)
    np.testing.assert_array_equal(fast.safety_probs, plain.safety_probs)
    # the rounds it asked for are the plain ones, plus at most one speculative round ahead
    assert sampler.calls[:plain.rounds] == [(k, 1.0 + 0.25 * r) for r in range(plain.rounds)]
    assert len(sampler.calls) - plain.rounds == (1 if fast.dropped_samples else 0)


class GatedSampler(ScriptedSampler):
    """Records, per call, whether another call was still running (there must never be one)."""

    def __init__(self, rounds) -> None:
        import threading

        super().__init__(rounds)
        self.started = [threading.Event() for _ in range(8)]
        self.busy = threading.Lock()
        self.overlapping_calls = 0

    def __call__(self, k, temperature):
        if not self.busy.acquire(blocking=False):
            self.overlapping_calls += 1
            self.busy.acquire()
        try:
            self.started[len(self.calls)].set()
            return super().__call__(k, temperature)
        finally:
            self.busy.release()


class WaitingScorer(ScriptedScorer):
    """On its n-th call, waits until the sampler's (n+1)-th call has started (5 s; 0.2 s on
    the first call, where nothing may be sampled ahead)."""

    def __init__(self, table, sampler: GatedSampler) -> None:
        super().__init__(table)
        self.sampler, self.saw_next_round_running = sampler, []

    def score(self, obs, candidates):
        n = len(self.calls)
        self.saw_next_round_running.append(self.sampler.started[n + 1].wait(5.0 if n else 0.2))
        return super().score(obs, candidates)


def test_overlap_samples_the_next_round_while_scoring_and_drops_it_when_not_needed():
    sampler = GatedSampler([[0.1, 0.2], [0.1, 0.1], [0.2, 0.3], [0.1, 0.1]])
    scorer = WaitingScorer(RUN_TABLE, sampler)
    scheduler = _model(scorer, overlap=True, max_rounds=4)
    d = scheduler.run(sampler, OBS, k=2, temperature=1.0)
    assert d.outcome == OUTCOME_ACCEPTED and d.rounds == 3 and d.chunk.actions[0, 0] == pytest.approx(0.3)
    # round 1 is scored alone (no rejection yet); rounds 2 and 3 are scored while the next
    # round is being sampled
    assert scorer.saw_next_round_running == [False, True, True]
    assert d.dropped_samples == 2  # round 4 was sampled ahead and not needed
    assert sampler.started[3].wait(5.0) and sampler.overlapping_calls == 0
    # the next decision's sampling waits for the dropped round: calls never run concurrently
    scheduler.config = SchedulerConfig(verifier="model", overlap=True, max_rounds=1)
    scheduler.run(sampler, OBS, k=2)
    assert sampler.overlapping_calls == 0


def test_overlap_config_must_be_a_bool():
    with pytest.raises(ValueError, match="overlap"):
        SchedulerConfig(overlap="yes")


def test_advantage_margin_keeps_the_policy_choice_unless_clearly_better():
    table = {0.1: (0.9, 1.0), 0.2: (0.9, 1.4), 0.3: (0.9, 2.5), 0.4: (0.2, 9.0)}
    cands = [_valid(v) for v in (0.4, 0.1, 0.2)]  # 0.4 is unsafe: the first safe one is #1
    for margin, accepted in ((0.0, 2), (0.3, 2), (0.39, 2), (0.5, 1), (5.0, 1)):
        d = _model(ScriptedScorer(table), advantage_margin=margin).decide(cands, observation=OBS)
        assert d.accepted_index == accepted, margin
    d = _model(ScriptedScorer(table), advantage_margin=1.0).decide(cands + [_valid(0.3)], observation=OBS)
    assert d.accepted_index == 3  # 2.5 - 1.0 >= 1.0
    with pytest.raises(ValueError, match="advantage_margin"):
        SchedulerConfig(advantage_margin=-0.1)


def test_defaults_are_the_ones_the_closed_loop_evidence_supports():
    # The verifier as a gate in the policy's order, resampled rounds at the same temperature
    # (docs/results.md: advantage ranking and hotter samples both lost closed-loop success).
    c = SchedulerConfig()
    assert (c.ranking, c.temperature_step, c.verifier) == ("policy_order", 0.0, "passthrough")
