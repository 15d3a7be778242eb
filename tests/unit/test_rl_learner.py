"""The RL learner without Ray: an update changes the policy, the critic and the noise, and
save + restore is exact (the next update from a restored learner equals the uninterrupted one)."""
from __future__ import annotations

import pytest
import torch

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
