"""D-VLA's math: GAE, RLOO and PPO against hand-computed values; the flow-noise chain's log-probability
against a direct Gaussian computation, its gradient, and what sampling records."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prevla_models.flow_rl import FlowActorCritic, FlowNoiseConfig
from prevla_models.vla import VLA, VLAConfig
from prevla_training.rl.ppo import Groups, PPOConfig, gae, ppo_loss, rloo


def test_gae_by_hand():
    # T = 3, gamma = 0.9, lambda = 0.5, terminal at the end (last_value ignored by done)
    r, v, d = [0.0, 0.0, 1.0], [0.5, 0.6, 0.7], [0, 0, 1]
    adv, ret = gae(r, v, d, last_value=123.0, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.7                      # 0.3
    d1 = 0.0 + 0.9 * 0.7 - 0.6          # 0.03
    d0 = 0.0 + 0.9 * 0.6 - 0.5          # 0.04
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    np.testing.assert_allclose(adv, [a0, a1, a2], rtol=1e-12)
    np.testing.assert_allclose(ret, np.array([a0, a1, a2]) + v, rtol=1e-12)


def test_gae_bootstraps_an_unfinished_trajectory_and_cuts_at_a_done():
    adv, _ = gae([0.0, 0.0], [0.2, 0.4], [0, 0], last_value=1.0, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [0.8, 0.6])           # Monte-Carlo return 1.0 minus V
    adv, _ = gae([1.0, 0.0], [0.2, 0.4], [1, 0], last_value=1.0, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [0.8, 0.6])           # nothing flows back across the done
    with pytest.raises(ValueError, match="lengths"):
        gae([0.0], [0.0, 1.0], [0], 0.0, 0.9, 0.9)


def test_ppo_loss_by_hand():
    cfg = PPOConfig(clip=0.2, value_coef=0.5, entropy_coef=0.1)
    logp_b = torch.zeros(3)
    logp = torch.log(torch.tensor([1.5, 0.9, 1.0]))      # ratios 1.5 (clipped), 0.9, 1.0
    adv = torch.tensor([1.0, -1.0, 2.0])
    value, ret = torch.tensor([0.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0])
    loss, st = ppo_loss(logp, logp_b, adv, value, ret, torch.tensor(2.0), cfg, normalize=False)
    pg = -np.mean([min(1.5 * 1, 1.2 * 1), min(0.9 * -1, 0.9 * -1), 2.0])
    vf = 0.5 * np.mean([1.0, 0.0, 0.25])
    assert float(loss) == pytest.approx(pg + 0.5 * vf - 0.2, abs=1e-6)
    assert st["clip_frac"] == pytest.approx(1 / 3)
    kl = np.mean([(r - 1) - math.log(r) for r in (1.5, 0.9, 1.0)])
    assert st["approx_kl"] == pytest.approx(kl, abs=1e-6)


def test_ppo_gradient_vanishes_outside_the_clip_in_the_advantage_direction():
    cfg = PPOConfig(clip=0.2)
    logp = torch.tensor([math.log(1.5)], requires_grad=True)
    loss, _ = ppo_loss(logp, torch.zeros(1), torch.tensor([1.0]), torch.zeros(1), torch.zeros(1),
                       torch.tensor(0.0), cfg, normalize=False)
    loss.backward()
    assert float(logp.grad) == 0.0


@pytest.fixture(scope="module")
def actor():
    torch.manual_seed(0)
    vla = VLA(VLAConfig(image_size=16, horizon=3, action_dim=4, d_model=32, n_layers=1, n_heads=2,
                        head_layers=1, flow_steps=4, vocab=["pick", "the", "bowl"]))
    vla.set_normalization(torch.full((4,), 0.1), torch.full((4,), 0.5), torch.zeros(8), torch.ones(8))
    return FlowActorCritic(vla, FlowNoiseConfig(sigma_min=0.01, sigma_init=0.1, sigma_max=0.3))


def _obs(b: int):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 2, 16, 16, 3), generator=g, dtype=torch.uint8)
    return images, torch.randn(b, 8, generator=g), ["pick the bowl"] * b


def test_chain_log_prob_is_the_direct_gaussian_density(actor):
    images, proprio, words = _obs(2)
    out = actor.sample(images, proprio, words, k=3, generator=torch.Generator().manual_seed(2))
    chain = out["chain"]
    assert chain.shape == (2, 3, 5, 3, 4) and out["chunks"].shape == (2, 3, 3, 4)
    # direct: for every step, a diagonal Gaussian around x_i + dt v(x_i, t_i) with sigma_i per dim
    ctx, pad = actor.encode(images, proprio, words)
    sig = actor.sigmas().detach()
    direct = torch.zeros(2, 3)
    for bi in range(2):
        for ki in range(3):
            for i in range(4):
                x = chain[bi, ki, i][None]
                v = actor.vla.velocity(x, torch.tensor([i / 4]), ctx[bi:bi + 1], pad[bi:bi + 1])
                dist = torch.distributions.Normal(x + 0.25 * v, sig[i].expand(3, 4))
                direct[bi, ki] += dist.log_prob(chain[bi, ki, i + 1][None]).sum()
    ev = actor.evaluate(images, proprio, words, chain)
    torch.testing.assert_close(ev["logp"].detach(), direct, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(out["logp"], direct, atol=1e-3, rtol=1e-5)   # what runners record
    torch.testing.assert_close(out["chunks"], actor.to_chunks(chain))
    ent = sum(torch.distributions.Normal(0.0, sig[i]).entropy().sum() * 3 for i in range(4))
    assert float(ev["entropy"].detach()) == pytest.approx(float(ent), rel=1e-5)


def test_log_prob_gradient_matches_finite_differences_on_the_noise(actor):
    images, proprio, words = _obs(1)
    chain = actor.sample(images, proprio, words, k=2, generator=torch.Generator().manual_seed(3))["chain"]
    actor.zero_grad()
    actor.evaluate(images, proprio, words, chain)["logp"].sum().backward()
    grad = actor.noise_rho.grad.clone()
    assert grad.abs().sum() > 0
    eps = 1e-3
    for idx in [(0, 0), (2, 3)]:
        with torch.no_grad():
            actor.noise_rho[idx] += eps
            up = actor.evaluate(images, proprio, words, chain)["logp"].sum()
            actor.noise_rho[idx] -= 2 * eps
            down = actor.evaluate(images, proprio, words, chain)["logp"].sum()
            actor.noise_rho[idx] += eps
        assert float(grad[idx]) == pytest.approx(float(up - down) / (2 * eps), rel=2e-2, abs=1e-2)
    # and the flow head's weights get gradients too (the policy is trainable through mu_i)
    assert actor.vla.action_out[1].weight.grad.abs().sum() > 0


def test_sigmas_stay_in_bounds_and_the_value_is_detached(actor):
    with torch.no_grad():
        actor.noise_rho.fill_(50.0)
    assert float(actor.sigmas().detach().max()) <= 0.3 + 1e-6
    with torch.no_grad():
        actor.noise_rho.fill_(-50.0)
    assert float(actor.sigmas().detach().min()) >= 0.01 - 1e-6
    with torch.no_grad():
        actor.noise_rho.fill_(math.log(0.09 / 0.2 / (1 - 0.09 / 0.2)))
    images, proprio, words = _obs(2)
    actor.zero_grad()
    actor.evaluate(images, proprio, words, actor.sample(images, proprio, words)["chain"])["value"].sum().backward()
    assert actor.vla.trunk_norm.weight.grad is None or actor.vla.trunk_norm.weight.grad.abs().sum() == 0
    assert actor.value_head[1].weight.grad.abs().sum() > 0


def test_rl_state_round_trip(actor):
    twin = FlowActorCritic(actor.vla, actor.cfg)
    twin.load_rl_state(actor.rl_state())
    torch.testing.assert_close(twin.noise_rho, actor.noise_rho)
    with pytest.raises(ValueError, match="flow_noise"):
        FlowActorCritic(actor.vla, FlowNoiseConfig(sigma_max=0.5)).load_rl_state(actor.rl_state())
    with pytest.raises(ValueError, match="sigma_min"):
        FlowNoiseConfig(sigma_min=0.2, sigma_init=0.1)


def test_prevla_rl_reads_yaml_and_flags_win(tmp_path, capsys):
    from prevla_training.rl.driver import parse_args

    f = tmp_path / "run.yaml"
    f.write_text("runners: 3\nlr: 1.0e-6\nclip: 0.1\ntasks: '5,7'\n")
    cfg, replication = parse_args(["--config", str(f), "--runners", "2"])
    assert (cfg.runners, cfg.lr, cfg.ppo.clip, cfg.task_ids, replication) == (2, 1e-6, 0.1, [5, 7], "topology")
    f.write_text("runers: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(f)])
    assert "runers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--init-start", "3"])
    assert "init_start" in capsys.readouterr().err


def test_rloo_by_hand():
    # outcomes 1, 0, 0, 1: A_0 = 1 - (0 + 0 + 1) / 3, A_1 = 0 - (1 + 0 + 1) / 3
    np.testing.assert_allclose(rloo([1, 0, 0, 1]), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    np.testing.assert_allclose(rloo([1, 1, 1]), [0, 0, 0])
    with pytest.raises(ValueError, match="at least 2"):
        rloo([1.0])
    with pytest.raises(ValueError, match="advantage"):
        PPOConfig(advantage="grpo")
    with pytest.raises(ValueError, match="group_size"):
        PPOConfig(group_size=1)


def _traj(group: str, version: int, n: int = 3) -> dict:
    return {"group": group, "version": np.full(n, version), "n": n}


def test_groups_complete_and_stale_ones_are_forgotten():
    g = Groups(2)
    assert g.add(_traj("a", 5)) is None and g.add(_traj("b", 1)) is None
    done = g.add(_traj("a", 6))
    assert [int(t["version"][0]) for t in done] == [5, 6] and set(g.pending) == {"b"}
    assert g.drop_older_than(2) == 3 and not g.pending  # b's decision of version 1 is too old
    assert g.drop_older_than(100) == 0


def test_env_tasks_counts_the_environments_of_each_task():
    from prevla_training.rl.config import RLConfig
    from prevla_training.rl.driver import env_tasks

    assert env_tasks(RLConfig(tasks="5,7,9", runners=2, envs_per_runner=2)) == {5: 2, 7: 1, 9: 1}
    assert env_tasks(RLConfig(tasks="5,7,9", runners=3, envs_per_runner=2)) == {5: 2, 7: 2, 9: 2}
