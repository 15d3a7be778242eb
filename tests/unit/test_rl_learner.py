"""The RL learner without Ray: an update changes the policy, the critic and the noise, and
save + restore is exact (the next update from a restored learner equals the uninterrupted one)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prevla_models.flow_rl import FlowNoiseConfig
from prevla_training.bench_memory import synthetic_batch
from prevla_training.rl.actors import RLLearner
from prevla_training.rl.config import RLConfig
from prevla_training.rl.ppo import PPOConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _learner() -> RLLearner:
    threads = torch.get_num_threads()
    try:
        cfg = RLConfig(batch_size=4, lr=1e-4, value_lr=1e-3, ppo=PPOConfig(minibatch=2, epochs=1, target_kl=0.0))
        return RLLearner(cfg, ring=None)
    finally:
        torch.set_num_threads(threads)


def _state(learner: RLLearner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def test_save_and_restore_is_exact(tmp_path):
    a = _learner()
    batch = synthetic_batch(a.model, 4, 128, seed=0, device="cpu")
    before = _state(a)
    a._ppo(batch)
    a.version = 1
    after_one = _state(a)
    changed = {k for k in before if not torch.equal(before[k], after_one[k])}
    assert any(k.startswith("vla.") for k in changed) and "noise_rho" in changed
    assert any(k.startswith("value_head.") for k in changed)
    path = a.save(str(tmp_path / "last.pt"))
    a._ppo(batch)
    a.version = 2
    b = _learner()
    assert b.restore(path) == 1
    assert all(torch.equal(v, after_one[k]) for k, v in _state(b).items())
    b._ppo(batch)
    assert all(torch.equal(v, _state(a)[k]) for k, v in _state(b).items())  # bit for bit


def _episode(group: str, success: bool, version: int = 0, n: int = 3) -> dict:
    reward = np.zeros(n, np.float32)
    reward[-1] = float(success)
    return dict(group=group, success=success, version=np.full(n, version), n=n, steps=8 * n, t_end=0.0, task_id=0,
                instruction="pick", reward=reward, done=np.eye(n, dtype=np.float32)[-1],
                images=np.zeros((n, 2, 4, 4, 3), np.uint8), proprio=np.zeros((n, 8), np.float32),
                chain=np.zeros((n, 11, 8, 7), np.float32), logp=np.zeros(n, np.float32))


def test_rloo_trains_on_whole_informative_groups_only():
    threads = torch.get_num_threads()
    try:
        cfg = RLConfig(batch_size=4, max_lag=1, ppo=PPOConfig(advantage="rloo", group_size=2, gamma=0.5))
        learner = RLLearner(cfg, ring=None)
    finally:
        torch.set_num_threads(threads)
    assert learner._accept([_episode("a", True), _episode("b", False)]) == []  # both groups wait
    ready = learner._accept([_episode("a", False), _episode("b", False), _episode("c", True)])
    # group a: success and failure, A = +1 / -1 on every decision; group b: two failures, skipped
    assert [float(a[0]) for _, a, _ in ready] == [1.0, -1.0]
    assert all(len(a) == 3 and len(set(a)) == 1 for _, a, _ in ready)
    np.testing.assert_allclose(ready[0][2], [0.25, 0.5, 1.0])  # the critic's target: gamma^(T-1-t) R
    np.testing.assert_allclose(ready[1][2], [0.0, 0.0, 0.0])
    assert learner.counters["groups"] == 2 and learner.counters["groups_skipped"] == 1
    batch = learner._batch(ready)
    assert len(batch["adv"]) == 6 and len(batch["instructions"]) == 6
    learner.version = 3  # group c's lone episode (version 0) is now too old: forgotten, counted
    assert learner._accept([_episode("d", True, version=3)]) == [] and set(learner.groups.pending) == {"d"}
    assert learner.counters["dropped_stale"] == 3


def test_critic_only_moves_the_critic_alone_towards_the_monte_carlo_return(tmp_path):
    threads = torch.get_num_threads()
    try:
        cfg = RLConfig(batch_size=4, lr=1e-3, value_lr=1e-2, weight_decay=0.1, critic_only=True,
                       ppo=PPOConfig(minibatch=2, epochs=1, gae_lambda=0.5))
        learner = RLLearner(cfg, ring=None)
    finally:
        torch.set_num_threads(threads)
    # the target is the discounted Monte-Carlo return whatever gae_lambda says: 3 decisions, success
    # on the last: gamma^2, gamma, 1; a failure: 0 everywhere
    # ... and nothing is stale: the policy that sampled a decision never changes
    learner.version = 50
    (_, _, ret_ok), (_, _, ret_fail) = learner._accept([_episode("a", True), _episode("b", False)])
    assert learner.counters["dropped_stale"] == 0
    g = cfg.ppo.gamma
    assert np.allclose(ret_ok, [g * g, g, 1.0]) and np.allclose(ret_fail, 0.0)
    batch = synthetic_batch(learner.model, 4, 128, seed=0, device="cpu")
    before = _state(learner)
    stats = learner._ppo(batch)
    after = _state(learner)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("value_head.") for k in changed)  # weight decay touched no policy weight
    assert "value_loss" in stats and "approx_kl" not in stats
    # save + restore under critic_only is exact, and the next update matches bit for bit
    path = learner.save(str(tmp_path / "last.pt"))
    learner.version = 1
    learner._ppo(batch)
    threads = torch.get_num_threads()
    try:
        other = RLLearner(cfg, ring=None)
    finally:
        torch.set_num_threads(threads)
    other.restore(path)
    assert all(torch.equal(v, after[k]) for k, v in _state(other).items())
    other.version = 1
    other._ppo(batch)
    assert all(torch.equal(v, _state(learner)[k]) for k, v in _state(other).items())


@pytest.mark.parametrize("bad", [dict(ppo=PPOConfig(advantage="rloo", group_size=2)),
                                 dict(flow=FlowNoiseConfig(value_trains_encoder=True))])
def test_critic_only_refuses_settings_that_would_skip_episodes_or_move_the_policy(bad):
    with pytest.raises(ValueError, match="critic_only"):
        RLConfig(critic_only=True, **bad)
