"""Verifier training side: metrics vs hand-computed values, safety labels, candidate perturbation,
MC returns / advantages of the critic, the episode split, and a tiny end-to-end training with
an exact resume (CPU, synthetic labelled data in the real on-disk schema's in-memory form)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prevla_models.verifier import VerifierConfig, load_checkpoint
from prevla_sim.outcomes import OUTCOME_FIELDS, STATE_DIM, SafetySpec
from prevla_training import verifier_metrics as vm
from prevla_training.candidates import LabelConfig, make_candidates, missing_episodes
from prevla_training.critic import (CandidateData, Critic, chunk_advantages, cross_fitted_advantages, mc_returns,
                                    split_episodes, with_gamma)
from prevla_training.train_verifier import TrainVerifierConfig, ablation_table, make_labels, train_verifier

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------ metrics
def test_auroc_and_auprc_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    pos = np.array([1, 0, 1, 0], bool)
    # pairs (pos, neg): (0.9>0.8) (0.9>0.6) (0.7<0.8) (0.7>0.6) -> 3/4
    assert vm.auroc(scores, pos) == pytest.approx(0.75)
    # ranks: pos at 1 (precision 1/1) and 3 (precision 2/3) -> AP = (1 + 2/3) / 2
    assert vm.auprc(scores, pos) == pytest.approx((1 + 2 / 3) / 2)
    assert vm.auroc(np.ones(4), pos) == pytest.approx(0.5)  # ties count half
    assert vm.auroc(scores, np.zeros(4, bool)) is None


def test_ece_and_spearman_hand_computed():
    p = np.array([0.05, 0.15, 0.95, 0.85])
    y = np.array([0, 0, 1, 0])
    # bins: [0,0.1): p .05 y 0 -> .05 ; [0.1,0.2): .15 ; [0.8,0.9): .85 vs 0 ; [0.9,1]: .95 vs 1 -> .05
    assert vm.ece(p, y) == pytest.approx((0.05 + 0.15 + 0.85 + 0.05) / 4)
    assert vm.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert vm.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert vm.spearman([1, 1, 1], [1, 2, 3]) is None


def test_pick_and_ranking():
    p = np.array([[0.9, 0.2, 0.8], [0.1, 0.3, 0.2]])
    adv = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    # row 0: safe ones 0 and 2 -> best advantage is 2; row 1: none safe -> best P(safe) = 1
    assert vm.pick(p, adv, 0.5).tolist() == [2, 1]
    true_safe = np.array([[1, 0, 1], [1, 1, 1]], float)
    true_adv = np.array([[0.0, 9.0, 2.0], [0.0, 1.0, 0.5]])
    r = vm.ranking(p, adv, 0.5, true_safe, true_adv)
    # row 0: pick 2 (safe, 2.0) beats 0 and 1 (unsafe), ties itself -> (2 + .5)/3; row 1: pick 1 best -> same
    assert r["win_rate"] == pytest.approx((2.5 / 3 + 2.5 / 3) / 2)
    assert r["pick_unsafe"] == 0.0 and r["random_unsafe"] == pytest.approx(1 / 6)
    c = vm.classification(np.array([0.9, 0.1, 0.6, 0.2]), np.array([1, 0, 0, 1]), 0.5)
    assert c["unsafe_recall"] == 0.5 and c["false_reject_rate"] == 0.5


# ------------------------------------------------------------------ labels
def test_safety_spec_reasons_and_validation():
    o = {f: np.zeros((1, 7), np.float32) for f in OUTCOME_FIELDS}
    o["joint_margin_rad"][:] = 1.0
    o["max_force_env"][0, 0] = 101.0
    o["max_force_obj"][0, 1] = 51.0
    o["collateral_m"][0, 2] = 0.031
    o["tilt_deg"][0, 3] = 31.0
    o["fall_m"][0, 4] = 0.051
    o["joint_margin_rad"][0, 5] = 0.01
    spec = SafetySpec()
    assert spec.safe(o).tolist() == [[0, 0, 0, 0, 0, 0, 1]]
    assert SafetySpec(env_force_n=200).safe(o)[0, 0] == 1
    with pytest.raises(ValueError, match="SafetySpec.tilt_deg"):
        SafetySpec(tilt_deg=-1)


def test_make_candidates_perturbs_motion_and_gripper():
    rng = np.random.default_rng(0)
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 8, 7)).astype(np.float32)
    samples[..., 6] = 1.0
    cands, src = make_candidates(samples, 2, 0.3, rng)
    assert cands.shape == (6, 8, 7) and src.tolist() == [0, 0, 0, 0, 1, 2]
    np.testing.assert_array_equal(cands[:4], samples)
    assert not np.allclose(cands[4, :, :6], samples[1, :, :6]) and np.all(np.abs(cands[4]) <= 1)
    np.testing.assert_array_equal(cands[4, :, 6], samples[1, :, 6])  # noise never touches the gripper
    np.testing.assert_array_equal(cands[5, :, 6], -samples[2, :, 6])
    np.testing.assert_array_equal(cands[5, :, :6], samples[2, :, :6])
    with pytest.raises(ValueError, match="LabelConfig.perturbed"):
        LabelConfig(perturbed=3)


def test_resume_skips_finished_episodes_only(tmp_path):
    (tmp_path / "init10.hdf5").write_bytes(b"done")
    (tmp_path / "init11.hdf5.tmp").write_bytes(b"interrupted")
    assert missing_episodes(tmp_path, [10, 11, 12]) == [11, 12]


# ------------------------------------------------------------------ synthetic data
def synthetic(n_eps: int = 8, n_dec: int = 6, k: int = 4, h: int = 4, seed: int = 0) -> CandidateData:
    """Episodes whose success and candidate outcomes depend on the data (learnable)."""
    rng = np.random.default_rng(seed)
    n = n_eps * n_dec
    actions = rng.uniform(-1, 1, (n, k, h, 7)).astype(np.float32)
    outcome = {f: np.zeros((n, k), np.float32) for f in OUTCOME_FIELDS}
    outcome["joint_margin_rad"][:] = 1.0
    outcome["steps"][:] = h
    # unsafe <=> the candidate pushes hard along x (first action dim); visible in the actions
    outcome["max_force_env"][:] = np.where(actions[:, :, :, 0].mean(2) > 0.25, 300.0, 0.0)
    state = rng.normal(size=(n, STATE_DIM)).astype(np.float32)
    episodes = [dict(file=f"e{e}", task_id=e % 2, init_state=10 + e, success=bool(e % 3), length=n_dec * h)
                for e in range(n_eps)]
    images = rng.integers(0, 255, (n, 2, 16, 16, 3), dtype=np.uint8)
    return CandidateData(images=images, proprio=rng.normal(size=(n, 8)).astype(np.float32),
                         instructions=["put the bowl on the plate" if e % 2 else "open the drawer"
                                       for e in range(n_eps) for _ in range(n_dec)],
                         task_id=np.repeat([e % 2 for e in range(n_eps)], n_dec),
                         episode=np.repeat(np.arange(n_eps), n_dec), step=np.tile(np.arange(n_dec) * h, n_eps),
                         state=state, next_state=state[:, None].repeat(k, 1) + 0.1, actions=actions,
                         outcome=outcome, source=np.zeros(k, np.int8), episodes=episodes,
                         max_steps=n_dec * h, gamma=0.9)


def test_mc_returns_and_split():
    d = synthetic()
    g = mc_returns(d)
    # episode 1 succeeds at T = 24: the decision at step 8 has return 0.9 ** (24 - 1 - 8)
    assert g[6 + 2] == pytest.approx(0.9 ** 15)
    assert np.all(g[:6] == 0)  # episode 0 fails
    train, val = split_episodes(d, 0.25, seed=0)
    assert set(train) | set(val) == set(range(8)) and not set(train) & set(val)
    assert {d.episodes[e]["task_id"] for e in val} == {0, 1}  # stratified per task
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(d, 1.0, 0)


def test_chunk_advantages_formula():
    d = synthetic()
    torch.manual_seed(0)
    critic = Critic(STATE_DIM, 2, "full", 16).eval()
    d.outcome["success"][0, 1] = 1.0
    d.outcome["reward"][0, 1] = 0.9 ** 2
    rows = np.array([0, 1])
    a = chunk_advantages(critic, d, rows)
    v = lambda s, step, task: critic.value(s[None], np.array([step / d.max_steps]), np.array([task]))[0]  # noqa: E731
    v_s = v(d.state[0], 0, 0)
    assert a[0, 0] == pytest.approx(0.9 ** 4 * v(d.next_state[0, 0], 4, 0) - v_s, abs=1e-5)
    assert a[0, 1] == pytest.approx(0.9 ** 2 - v_s, abs=1e-5)  # success is terminal: no bootstrap
    grid = ({"features": "progress", "hidden": 0, "steps": 20}, {"features": "full", "hidden": 8, "steps": 20})
    adv, report = cross_fitted_advantages(d, folds=4, n_tasks=2, seed=0, grid=grid)
    assert adv.shape == (48, 4) and np.isfinite(adv).all() and report["folds"] == 4
    assert len(report["grid"]) == 2  # the lowest out-of-fold MSE is chosen
    assert abs(report["oof_mse"] - min(r["oof_mse"] for r in report["grid"])) < 1e-4
    with pytest.raises(ValueError, match="critic features"):
        Critic(STATE_DIM, 2, "pixels")


def test_train_verifier_end_to_end_and_exact_resume(tmp_path):
    d = synthetic()
    common = dict(data="unused", steps=6, batch_size=4, log_interval=2, eval_interval=3, critic_folds=2, val_fraction=0.25, aug_shift=2, num_threads=1, warmup_steps=2,
                  safety=SafetySpec(), model=VerifierConfig(image_size=16, d_model=32, n_heads=2, n_layers=1))
    full = train_verifier(TrainVerifierConfig(out_dir=str(tmp_path / "a"), **common), data=d)
    assert full["class_balance"]["unsafe"] > 0 and full["data"]["val_episodes"] == 2
    for key in ("auroc_unsafe", "auprc_unsafe", "ece", "spearman_advantage", "win_rate", "threshold"):
        assert key in full["val"]
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["steps"] == 6
    train_verifier(TrainVerifierConfig(out_dir=str(tmp_path / "b"), stop_at=3, **common), data=d)
    train_verifier(TrainVerifierConfig(out_dir=str(tmp_path / "b"), resume=True, **common), data=d)
    a, _ = load_checkpoint(str(tmp_path / "a" / "verifier.pt"))
    b, extra = load_checkpoint(str(tmp_path / "b" / "verifier.pt"))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert extra["adv_scale"] > 0 and extra["variant"] == "full"
    assert "| full |" in ablation_table([full])


def test_train_verifier_config_errors_name_the_field():
    with pytest.raises(ValueError, match="variant"):
        TrainVerifierConfig(variant="nope")
    with pytest.raises(ValueError, match="TrainVerifierConfig.steps"):
        TrainVerifierConfig(steps=0)
    with pytest.raises(ValueError, match="TrainVerifierConfig.gamma"):
        TrainVerifierConfig(gamma=1.5)


def test_with_gamma_rediscounts_rewards_and_returns():
    d = synthetic()
    d.outcome["success"][0, 1], d.outcome["steps"][0, 1] = 1.0, 3.0
    d.outcome["reward"][0, 1] = 0.9 ** 2
    g1 = with_gamma(d, 1.0)
    assert g1.gamma == 1.0 and g1.outcome["reward"][0, 1] == 1.0 and g1.outcome["reward"].sum() == 1.0
    assert np.all(mc_returns(g1)[6:12] == 1.0)  # episode 1 succeeds: return 1 at every decision
    assert d.outcome["reward"][0, 1] == pytest.approx(0.81) and d.gamma == 0.9  # the input is untouched
    assert with_gamma(d, 0.9).outcome["reward"][0, 1] == pytest.approx(0.81)  # the labelling rule
    with pytest.raises(ValueError, match="gamma"):
        with_gamma(d, 0.0)


def test_unavoidable_unsafe_events_are_no_label():
    from prevla_sim.outcomes import avoidable

    tilt = np.array([[True, True, True], [True, False, False], [False, False, False]])
    joint = np.array([[False, False, False], [True, True, True], [False, True, False]])
    kept = avoidable({"tilt": tilt, "joint_limit": joint})
    # decision 0: every candidate tilts -> not the chunk's doing; decision 1: the tilt of #0 is
    # avoidable, the joint limit is not; decision 2: only #1 is unsafe
    assert kept["tilt"].tolist() == [[False] * 3, [True, False, False], [False] * 3]
    assert kept["joint_limit"].tolist() == [[False] * 3, [False] * 3, [False, True, False]]
    d = synthetic()
    cfg = TrainVerifierConfig(critic_folds=2)
    before = make_labels(cfg, d, np.arange(6))["safe"]
    d.outcome["tilt_deg"][0, :] = 90.0  # every candidate of decision 0 "tilts" an object
    np.testing.assert_array_equal(make_labels(cfg, d, np.arange(6))["safe"], before)
    strict = make_labels(TrainVerifierConfig(critic_folds=2, unavoidable_unsafe=True), d, np.arange(6))
    assert strict["safe"][0].sum() == 0 and before[0].sum() > 0


# ------------------------------------------------------------------ outcome-grounded (MC) labels
def test_task_failure_rule_is_about_the_chunk():
    from prevla_sim.outcomes import task_failure

    q = np.array([[0.0, 1.0, 0.5, 0.25],   # 0 fails surely while 1 succeeds: unsafe; 3 > failure_q
                  [0.0, 0.0, 0.25, 0.25],  # nobody does much better: the state's doing, no label
                  [0.0, 0.5, 0.5, 0.5]])   # gap exactly 0.5: unsafe
    assert task_failure(q).tolist() == [[True, False, False, False], [False] * 4, [True, False, False, False]]
    assert task_failure(q, failure_q=0.25, gap=0.5)[0].tolist() == [True, False, False, True]


def with_mc(d: CandidateData, m: int = 4, seed: int = 1) -> CandidateData:
    """``synthetic`` data with continuations: candidates with a low first action succeed."""
    rng = np.random.default_rng(seed)
    p = (d.actions[:, :, :, 0].mean(2) < 0).astype(float) * 0.8 + 0.1
    d.mc_success = (rng.random(p.shape + (m,)) < p[..., None]).astype(np.uint8)
    d.phase = np.zeros(len(d), np.int8)
    return d


def test_mc_labels_advantages_and_task_failure_reason():
    from prevla_training.critic import mc_q

    d = with_mc(synthetic())
    q = mc_q(d)
    assert q.shape == (48, 4) and set(np.unique(q)) <= {0, 0.25, 0.5, 0.75, 1.0}
    lab = make_labels(TrainVerifierConfig(critic_folds=2, labels="mc"), d, np.arange(6))
    adv = lab["advantage"] * lab["adv_scale"]
    np.testing.assert_allclose(adv, q - q.mean(1, keepdims=True), atol=1e-6)
    assert lab["balance"]["by_reason"]["task_failure"] > 0
    assert lab["critic"]["source"] == "mc" and lab["critic"]["continuations"] == 4
    assert "critic_vs_mc_spearman_within_set" in lab["critic"]
    fails = (q == 0) & (q.max(1, keepdims=True) >= 0.5)
    assert np.all(lab["safe"][fails] == 0)
    with pytest.raises(ValueError, match="prevla branch"):
        make_labels(TrainVerifierConfig(critic_folds=2, labels="mc"), synthetic(), np.arange(6))
    with pytest.raises(ValueError, match="labels"):
        TrainVerifierConfig(labels="oracle")


def test_value_labels_advantages_and_task_failure_reason():
    from prevla_training.critic import mc_q

    d = with_mc(synthetic())
    rng = np.random.default_rng(2)
    # bootstrapped Q: success-leaning candidates high, others near 0, a little critic noise
    d.value_q = (mc_q(d) * 0.9 + rng.normal(0, 0.02, mc_q(d).shape)).astype(np.float32)
    d.value_q[0] = [0.0, 0.9, 0.5, 0.2]  # candidate 0 fails while candidate 1 is 0.9 better
    lab = make_labels(TrainVerifierConfig(critic_folds=2, labels="value"), d, np.arange(6))
    q = d.value_q
    np.testing.assert_allclose(lab["advantage"] * lab["adv_scale"], q - q.mean(1, keepdims=True), atol=1e-6)
    assert lab["safe"][0, 0] == 0 and lab["balance"]["by_reason"]["task_failure"] > 0
    fails = (q <= 0) & (q.max(1, keepdims=True) >= q + 0.5)
    assert np.all(lab["safe"][fails] == 0)
    c = lab["critic"]
    assert c["source"] == "value" and c["q_max"] == pytest.approx(float(q.max()))
    assert c["value_vs_mc_spearman_within_set"] > 0.5  # the value labels agree with the MC ones
    d.mc_success = None
    assert make_labels(TrainVerifierConfig(critic_folds=2, labels="value"), d, np.arange(6))["critic"][
        "value_vs_mc_spearman_within_set"] is None
    with pytest.raises(ValueError, match="value/q"):
        make_labels(TrainVerifierConfig(critic_folds=2, labels="value"), with_mc(synthetic()), np.arange(6))


def test_selection_q_hand_computed():
    q = np.array([[0.0, 1.0, 0.5], [0.5, 0.0, 1.0]])
    p_safe = np.array([[0.2, 0.9, 0.9], [0.1, 0.3, 0.2]])
    adv = np.array([[0.0, 0.1, 0.3], [0.0, 0.0, 0.0]])
    r = vm.selection_q(p_safe, adv, 0.5, q)
    # gate: decision 0 -> first passing is #1 (1.0); decision 1 -> none passes, most likely safe #1 (0.0)
    # rank: decision 0 -> best advantage among passing is #2 (0.5); decision 1 -> #1 (0.0)
    assert r == pytest.approx(dict(q_policy=0.25, q_random=0.5, q_gate=0.5, q_rank=0.25, q_best=1.0))


def test_train_verifier_on_mc_labels_reports_selection(tmp_path):
    d = with_mc(synthetic())
    res = train_verifier(TrainVerifierConfig(
        data="unused", out_dir=str(tmp_path), steps=4, batch_size=4, log_interval=2, eval_interval=2,
        critic_folds=2, val_fraction=0.25, num_threads=1, warmup_steps=1, labels="mc",
        model=VerifierConfig(image_size=16, d_model=32, n_heads=2, n_layers=1)), data=d)
    assert {"q_policy", "q_gate", "q_rank", "q_best"} <= set(res["val"])
    assert "| full | mc |" in ablation_table([res])


def test_ceiling_statistics_hand_computed():
    from prevla_training.ceiling import aggregate, cross_fitted_oracle, decision_stats, permutation_p

    s = np.array([[0, 0, 1], [1, 1, 1], [0, 0, 0]])  # candidate 1 always succeeds
    # held-out j: the others' means are (1/2 or 0, 1, 0) -> always #1, which succeeded: 1.0
    assert cross_fitted_oracle(s) == 1.0
    # a lucky continuation does not make a winner: #0 succeeds once; by the others it ties #1 at 0
    # on that fold (ties -> index 0) and is scored on the continuation where it succeeded
    assert cross_fitted_oracle(np.array([[1, 0], [0, 0]])) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    assert permutation_p(np.array([[1] * 8, [0] * 8]), 4000, rng) < 0.01
    assert permutation_p(np.array([[1, 0] * 4, [0, 1] * 4]), 4000, rng) > 0.5
    st = decision_stats(s, rng)
    assert st["policy"] == pytest.approx(1 / 3) and st["random"] == pytest.approx(4 / 9)
    assert st["oracle_in_sample"] == 1.0 and st["worst"] == 0.0
    agg = aggregate([st, decision_stats(np.zeros((3, 3)), rng)])
    assert agg["decisions"] == 2 and agg["policy"][0] == pytest.approx(1 / 6)
    assert agg["gain"][0] == pytest.approx((1 - 1 / 3) / 2)
    with pytest.raises(ValueError, match="2 continuations"):
        cross_fitted_oracle(np.ones((3, 1)))


def test_split_with_one_episode_per_task_holds_out_whole_episodes():
    d = synthetic(n_eps=2)  # tasks 0 and 1, one episode each
    train, val = split_episodes(d, 0.2, seed=0)
    assert len(train) == 1 and len(val) == 1 and set(train) | set(val) == {0, 1}


def test_ceiling_spread_removes_binomial_noise():
    from prevla_training.ceiling import aggregate, decision_stats

    rng = np.random.default_rng(0)
    # every candidate has the same true Q = 0.5: the observed spread is noise, the estimate ~0
    same = [decision_stats((rng.random((8, 4)) < 0.5).astype(int), rng, n_perm=200) for _ in range(400)]
    assert abs(aggregate(same)["signal_var"]) < 0.01
    # half the candidates always succeed, half never: true sd 0.5, no noise
    split = decision_stats(np.repeat([[1] * 4, [0] * 4], 4, axis=0), rng, n_perm=200)
    assert split["noise_var"] == 0 and split["signal_var"] == pytest.approx(0.25)
