"""Outcome labels by branching in the real simulator with the zoo VLA (~40 s): a short episode
(48 control steps, K = 2, one continuation), the file round trip, that a branch's recorded
outcome is what replaying it gives again, and that branching leaves the rollout untouched.
Value labels (``value_model``, no continuations) from an RL critic made here from the zoo VLA:
the file round trip, the formula, and that V(s'_i) is what a re-rendered replay gives again."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero.libero")

from prevla_sim.expert import PHASES, expert_for_env  # noqa: E402
from prevla_sim.expert_policy import build_policy  # noqa: E402
from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig  # noqa: E402
from prevla_sim.outcomes import WorldProbe, execute_and_measure  # noqa: E402
from prevla_training.branching import (BranchConfig, ValueBootstrap, assemble, branch_episode,  # noqa: E402
                                       run_policy_to_end, stream_seed)
from prevla_training.critic import load_candidates, mc_q  # noqa: E402

pytestmark = [pytest.mark.libero, pytest.mark.usefixtures("torch_one_thread")]


def _replay_rollout_to(env, policy, cfg: BranchConfig, decision: int) -> None:
    """Task 0, init 10: re-run the rollout's first ``decision`` decisions by hand (K = 2, the
    first candidate executed, the rollout's own seed)."""
    env.reset(10)
    policy.seed = stream_seed(cfg.seed, 0, 10)
    policy.reset()
    for _ in range(decision):
        for a in policy.sample(env.observe(), 2, 1.0)[0]:
            env.step(a)


def test_branch_outcomes_replay_and_leave_the_rollout_alone(tmp_path):
    cfg = BranchConfig(num_candidates=2, continuations=1, branch_every=2, workers=0, out=str(tmp_path))
    env = LiberoEnv(LiberoEnvConfig(suite="libero_spatial", task_id=0, init_state=10, max_steps=48))
    try:
        probe, expert = WorldProbe(env), expert_for_env(env)
        policy = build_policy("vla", 8, backend="torch")
        parts = tmp_path / "task00" / "init10.parts"
        parts.mkdir(parents=True)
        first = branch_episode(env, probe, policy, expert, cfg, 0, 10, parts)
        assert first["decisions"] == 6 and len(first["branched"]) == 3
        assert sorted(p.name for p in parts.iterdir()) == [f"d{d:02d}.npz" for d in first["branched"]]
        again = branch_episode(env, probe, policy, expert, cfg, 0, 10, parts)  # resume: nothing to branch
        assert again == first  # the rollout is the same with or without branching
        attrs = dict(suite=cfg.suite, task_id=0, init_state=10, instruction=env.instruction, num_candidates=2,
                     continuations=1, gamma=cfg.gamma, policy_id="vla", **first)
        assert assemble(parts, tmp_path / "task00" / "init10.hdf5", attrs) == 3
        data = load_candidates(tmp_path)
        assert data.mc_success.shape == (3, 2, 1) and data.actions.shape == (3, 2, 8, 7)
        assert set(data.phase.tolist()) <= set(range(len(PHASES)))
        assert np.array_equal(mc_q(data), data.mc_success[..., 0].astype(np.float32))

        # Replay the last branched decision, candidate 1, continuation 0, by hand.
        n, d = 2, first["branched"][2]
        _replay_rollout_to(env, policy, cfg, d)
        assert env.step_count == data.step[n]
        cands = policy.sample(env.observe(), 2, 1.0)
        np.testing.assert_array_equal(cands, data.actions[n])
        execute_and_measure(env, probe, cands[1], cfg.gamma)
        policy.seed = stream_seed(cfg.seed, 0, 10, d, 1, 0)
        policy.reset()
        ok, end = run_policy_to_end(env, policy, 1.0)
        assert (ok, end) == (bool(data.mc_success[n, 1, 0]), int(env.step_count))
        assert end == 48 or ok
    finally:
        env.close()


def test_value_labels_without_continuations(tmp_path):
    import h5py
    import torch

    from prevla_models import zoo
    from prevla_models.flow_rl import FlowActorCritic
    from prevla_models.vla import load_checkpoint, save_checkpoint
    from prevla_training.ceiling import ceiling_report

    torch.manual_seed(0)
    vla, _ = load_checkpoint(zoo.resolve("", "vla"))
    critic = tmp_path / "rl.pt"
    save_checkpoint(str(critic), vla, {"rl": FlowActorCritic(vla).rl_state(), "rl_version": 3,
                                       "rl_config": {"ppo": {"gamma": 0.9}}})
    out = tmp_path / "branches"
    cfg = BranchConfig(num_candidates=2, continuations=0, branch_every=2, workers=0, out=str(out),
                       value_model=str(critic))
    value = ValueBootstrap(cfg.value_model)
    assert (value.gamma, value.rl_version) == (0.9, 3)
    env = LiberoEnv(LiberoEnvConfig(suite="libero_spatial", task_id=0, init_state=10, max_steps=32))
    try:
        probe, expert = WorldProbe(env), expert_for_env(env)
        policy = build_policy("vla", 8, backend="torch")
        parts = out / "task00" / "init10.parts"
        parts.mkdir(parents=True)
        first = branch_episode(env, probe, policy, expert, cfg, 0, 10, parts, value)
        assert first["decisions"] == 4 and len(first["branched"]) == 2
        attrs = dict(suite=cfg.suite, task_id=0, init_state=10, instruction=env.instruction, num_candidates=2,
                     continuations=0, gamma=cfg.gamma, policy_id="vla", **first, **value.attrs())
        path = out / "task00" / "init10.hdf5"
        assert assemble(parts, path, attrs) == 2
        with h5py.File(path, "r") as f:
            assert "mc" not in f and f["value/q"].shape == (2, 2) and f["value/q"].dtype == np.float32
            v_next = f["value/v_next"][:]
            assert f.attrs["value_sha256"] == value.sha256 and f.attrs["value_rl_version"] == 3
        data = load_candidates(out)
        assert data.mc_success is None and data.value_q.shape == (2, 2) and np.isfinite(data.value_q).all()
        assert data.phase.shape == (2,)
        o = data.outcome
        terminal = data.step[:, None] + o["steps"] >= 32
        want = np.where(o["success"] > 0, 1.0, np.where(terminal, 0.0, 0.9 * v_next))
        np.testing.assert_allclose(data.value_q, want, rtol=1e-6)
        assert ceiling_report(out)["overall"]["decisions"] == 0  # no continuations: nothing for the ceiling

        # Replay the first branched decision, re-render s'_i of both candidates, ask the critic again.
        n, d = 0, first["branched"][0]
        _replay_rollout_to(env, policy, cfg, d)
        cands = policy.sample(env.observe(), 2, 1.0)
        np.testing.assert_array_equal(cands, data.actions[n])
        snap, seen = env.snapshot(), []
        for i in range(2):
            env.restore(snap)
            execute_and_measure(env, probe, cands[i], cfg.gamma)
            seen.append(env.observe())
        np.testing.assert_allclose(value.values(seen, env.instruction), v_next[n], rtol=0, atol=1e-6)
    finally:
        env.close()


def test_branch_config_refuses_the_evaluation_init_states():
    with pytest.raises(ValueError, match="first_init_state"):
        BranchConfig(first_init_state=9)
    with pytest.raises(ValueError, match="num_candidates"):
        BranchConfig(num_candidates=1)
    with pytest.raises(ValueError, match="value_model"):
        BranchConfig(continuations=0)
    assert BranchConfig(continuations=0, value_model="rl.pt").continuations == 0
