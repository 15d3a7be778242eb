"""Outcome labels by branching in the real simulator with the zoo VLA (~40 s): a short episode
(48 control steps, K = 2, one continuation), the file round trip, that a branch's recorded
outcome is what replaying it gives again, and that branching leaves the rollout untouched."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero.libero")

from prevla_sim.expert import PHASES, expert_for_env  # noqa: E402
from prevla_sim.expert_policy import build_policy  # noqa: E402
from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig  # noqa: E402
from prevla_sim.outcomes import WorldProbe, execute_and_measure  # noqa: E402
from prevla_training.branching import (BranchConfig, assemble, branch_episode, run_policy_to_end,  # noqa: E402
                                       stream_seed)
from prevla_training.critic import load_candidates, mc_q  # noqa: E402

pytestmark = [pytest.mark.libero, pytest.mark.usefixtures("torch_one_thread")]


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
        env.reset(10)
        policy.seed = stream_seed(cfg.seed, 0, 10)
        policy.reset()
        for _ in range(d):
            for a in policy.sample(env.observe(), 2, 1.0)[0]:
                env.step(a)
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


def test_branch_config_refuses_the_evaluation_init_states():
    with pytest.raises(ValueError, match="first_init_state"):
        BranchConfig(first_init_state=9)
    with pytest.raises(ValueError, match="num_candidates"):
        BranchConfig(num_candidates=1)
