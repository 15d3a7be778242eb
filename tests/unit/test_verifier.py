"""Fast CPU tests of the Pre-VLA verifier: losses, pooling, shared observation encoding, calibration."""
from __future__ import annotations

import math

import pytest
import torch

from prevla_models.verifier import (MODALITIES, Verifier, VerifierConfig, advantage_loss, focal_loss,
                                    load_checkpoint, save_checkpoint, sha256_file, soft_threshold_loss)

S, H = 32, 4
WORDS = ["put", "the", "bowl", "on", "plate", "pick", "up", "cup"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_cfg(**kw) -> VerifierConfig:
    base = dict(image_size=S, horizon=H, d_model=32, n_layers=1, n_heads=2, fusion_layers=1, action_layers=1,
                vocab=WORDS, max_words=8)
    return VerifierConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> Verifier:
    torch.manual_seed(seed)
    return Verifier(tiny_cfg(**kw)).eval()


def obs_batch(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 2, S, S, 3), generator=g, dtype=torch.uint8)
    instr = (["put the bowl on the plate", "pick up the cup"] * b)[:b]
    return images, torch.randn(b, 8, generator=g), instr


def chunks(b: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, k, H, 7, generator=g) * 2 - 1


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kw, field", [
    (dict(focal_alpha=1.5), "focal_alpha"), (dict(init_threshold=1.0), "init_threshold"),
    (dict(init_threshold=0.0), "init_threshold"), (dict(calib_temperature=0.0), "calib_temperature"),
    (dict(fusion_layers=0), "fusion_layers"), (dict(d_model=33), "n_heads"), (dict(image_size=40), "image_size"),
    (dict(focal_gamma=float("nan")), "focal_gamma"), (dict(vocab=["a", "a"]), "vocab"),
])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"VerifierConfig.{field}"):
        tiny_cfg(**kw)


def test_default_config_matches_the_spec():
    c = VerifierConfig()
    assert (c.image_size, c.cameras, c.horizon, c.action_dim, c.proprio_dim, c.d_model, c.n_layers, c.n_heads,
            c.fusion_layers, c.max_words) == (64, 2, 8, 7, 8, 96, 2, 4, 1, 24)
    assert (c.dropout, c.focal_gamma, c.focal_alpha, c.adv_weight, c.calib_weight, c.calib_margin,
            c.init_threshold) == (0.0, 2.0, 0.75, 1.0, 0.1, 0.5, 0.5)


# ------------------------------------------------------------------ losses vs hand-computed values
def test_focal_loss_hand_values():
    logits, targets = [2.0, -1.0, 0.5], [1.0, 0.0, 0.0]  # 1 = SAFE; alpha weighs UNSAFE (0)
    alpha, gamma = 0.25, 2.0
    expect = []
    for z, y in zip(logits, targets):
        q = sig(z) if y == 1 else 1 - sig(z)
        w = 1 - alpha if y == 1 else alpha
        expect.append(-w * (1 - q) ** gamma * math.log(q))
    got = focal_loss(torch.tensor(logits), torch.tensor(targets), alpha, gamma)
    assert got.item() == pytest.approx(sum(expect) / 3, rel=1e-5)
    # mask: drop the middle element (its label is garbage and must not matter)
    got = focal_loss(torch.tensor(logits), torch.tensor([1.0, 7.0, 0.0]), alpha, gamma,
                     mask=torch.tensor([True, False, True]))
    assert got.item() == pytest.approx((expect[0] + expect[2]) / 2, rel=1e-5)
    # gamma = 0, alpha = 0.5: half the plain binary cross-entropy
    bce = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0))]
    got = focal_loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]), 0.5, 0.0)
    assert got.item() == pytest.approx(0.5 * sum(bce) / 2, rel=1e-5)


def test_advantage_loss_hand_values_ignores_nan_and_masked_targets():
    pred = torch.tensor([0.0, 2.0, 1.0, 5.0], requires_grad=True)
    target = torch.tensor([0.5, 0.0, float("nan"), 1.0])
    # SmoothL1 (beta 1): |d| = 0.5 -> 0.5 * 0.25; |d| = 2 -> 2 - 0.5; |d| = 4 -> 4 - 0.5
    loss = advantage_loss(pred, target)
    assert loss.item() == pytest.approx((0.125 + 1.5 + 3.5) / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[2] == 0
    got = advantage_loss(pred, target, mask=torch.tensor([True, True, True, False]))
    assert got.item() == pytest.approx((0.125 + 1.5) / 2, rel=1e-6)
    assert advantage_loss(pred, target, beta=2.0).item() == pytest.approx((0.0625 + 1.0 + 3.0) / 3, rel=1e-6)


def test_soft_threshold_loss_hand_values_and_gradient():
    p, y, m, s, theta0 = [0.9, 0.7, 0.2], [1, 1, 0], 0.5, 1.0, 0.3
    z = [math.log(v / (1 - v)) for v in p]
    safe = [softplus((theta0 + m - z[0]) / s), softplus((theta0 + m - z[1]) / s)]
    unsafe = softplus((z[2] - theta0 + m) / s)
    expect = 0.5 * (sum(safe) / 2 + unsafe)
    # d/dtheta: safe terms + sigmoid(.)/s, unsafe term - sigmoid(.)/s
    grad = 0.5 * ((sig((theta0 + m - z[0]) / s) + sig((theta0 + m - z[1]) / s)) / 2 - sig((z[2] - theta0 + m) / s)) / s
    probs = torch.tensor(p, requires_grad=True)
    theta = torch.tensor(theta0, requires_grad=True)
    loss = soft_threshold_loss(probs, torch.tensor(y, dtype=torch.float32), theta, m, s)
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    loss.backward()
    assert theta.grad.item() == pytest.approx(grad, rel=1e-4)
    assert probs.grad is None  # probabilities are detached: calibration only moves the threshold
    # temperature 2: arguments halve
    expect2 = 0.5 * (sum(softplus((theta0 + m - v) / 2) for v in z[:2]) / 2 + softplus((z[2] - theta0 + m) / 2))
    got2 = soft_threshold_loss(torch.tensor(p), torch.tensor(y, dtype=torch.float32), torch.tensor(theta0), m, 2.0)
    assert got2.item() == pytest.approx(expect2, rel=1e-5)
    probs2 = torch.tensor(p, requires_grad=True)
    soft_threshold_loss(probs2, torch.tensor(y, dtype=torch.float32), torch.tensor(theta0), m, s,
                        detach_probs=False).backward()
    assert probs2.grad is not None and probs2.grad.abs().sum() > 0


def test_soft_threshold_loss_is_class_balanced_and_zero_without_both_classes():
    theta = torch.tensor(0.2)
    p, y = torch.tensor([0.9, 0.8, 0.85, 0.2]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    base = soft_threshold_loss(p, y, theta)
    more_unsafe = soft_threshold_loss(torch.cat([p, p[3:].repeat(5)]), torch.cat([y, y[3:].repeat(5)]), theta)
    assert more_unsafe.item() == pytest.approx(base.item(), rel=1e-6)  # class ratio does not matter
    only_safe = soft_threshold_loss(p[:3], y[:3], theta.clone().requires_grad_())
    assert only_safe.item() == 0.0
    masked = soft_threshold_loss(p, y, theta, mask=torch.tensor([True, True, True, False]))
    assert masked.item() == 0.0


@pytest.mark.parametrize("start", [0.5, 0.95, 0.05])
def test_calibration_moves_threshold_between_imbalanced_classes(start):
    g = torch.Generator().manual_seed(0)
    n_safe, n_unsafe = 180, 20  # 10% unsafe
    probs = torch.cat([0.8 + 0.15 * torch.rand(n_safe, generator=g), 0.1 + 0.2 * torch.rand(n_unsafe, generator=g)])
    labels = torch.cat([torch.ones(n_safe), torch.zeros(n_unsafe)])
    theta = torch.nn.Parameter(torch.tensor(math.log(start / (1 - start))))
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        soft_threshold_loss(probs, labels, theta, margin=0.5, temperature=1.0).backward()
        opt.step()
    tau = torch.sigmoid(theta).item()
    assert 0.3 < tau < 0.8, tau
    assert abs(tau - start) > 0.02
    # it sits between the classes: every safe sample accepted, every unsafe one rejected
    assert (probs[:n_safe] >= tau).all() and (probs[n_safe:] < tau).all()


# ------------------------------------------------------------------ model
@pytest.mark.parametrize("k", [1, 4, 8])
def test_shapes_for_k_candidates(k):
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    obs = m.encode_observation(images, proprio, instr)
    assert obs.shape == (2, len(MODALITIES) - 1, 32)
    out = m.score(obs, chunks(2, k))
    assert set(out) == {"safety_logit", "advantage"}
    assert out["safety_logit"].shape == (2, k) and out["advantage"].shape == (2, k)
    assert torch.isfinite(out["safety_logit"]).all() and torch.isfinite(out["advantage"]).all()
    torch.testing.assert_close(m(images, proprio, instr, chunks(2, k))["safety_logit"], out["safety_logit"])


def test_each_modality_has_its_own_pooling_parameters():
    m = tiny_model()
    pools = [m.pools[name] for name in MODALITIES]
    assert len({id(p) for p in pools}) == 4
    ptrs = {p.data_ptr() for pool in pools for p in pool.parameters()}
    assert len(ptrs) == sum(1 for pool in pools for _ in pool.parameters())  # nothing shared
    images, proprio, instr = obs_batch(2)
    out = m(images, proprio, instr, chunks(2, 3))
    (out["safety_logit"].sum() + out["advantage"].sum()).backward()
    for name in MODALITIES:
        assert m.pools[name].query.grad is not None and m.pools[name].query.grad.abs().sum() > 0, name


def test_observation_is_encoded_once_for_k_candidates():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    calls = {"image_encoder": [], "obs_encoder": [], **{f"pool_{n}": [] for n in MODALITIES}}
    hooks = [m.observation.image_encoder.register_forward_hook(lambda mod, i, o: calls["image_encoder"].append(i[0].shape[0])),
             m.obs_encoder.register_forward_hook(lambda mod, i, o: calls["obs_encoder"].append(i[0].shape[0]))]
    for n in MODALITIES:
        hooks.append(m.pools[n].register_forward_hook(lambda mod, i, o, n=n: calls[f"pool_{n}"].append(i[0].shape[0])))
    m(images, proprio, instr, chunks(2, 8))
    for h in hooks:
        h.remove()
    assert calls["image_encoder"] == [2 * 2]  # B * cameras images, once: not B * K * cameras
    assert calls["obs_encoder"] == [2]
    assert calls["pool_image"] == calls["pool_language"] == calls["pool_proprio"] == [2]
    assert calls["pool_action"] == [2 * 8]


def test_candidates_are_scored_independently_of_their_set():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    acts = chunks(2, 8)
    with torch.no_grad():
        obs = m.encode_observation(images, proprio, instr)
        full = m.score(obs, acts)
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
        permuted = m.score(obs, acts[:, perm])
        single = m.score(obs, acts[:, 5:6])
    for key in full:
        torch.testing.assert_close(permuted[key], full[key][:, perm], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single[key][:, 0], full[key][:, 5], rtol=1e-5, atol=1e-5)


def test_empty_and_unknown_instructions_and_large_images():
    m = tiny_model()
    images, proprio, _ = obs_batch(2)
    obs = m.encode_observation(images, proprio, ["", "fly to the moon"])
    assert torch.isfinite(obs).all()
    big = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(m.encode_observation(big, proprio, ["put", "cup"]),
                               m.encode_observation(images, proprio, ["put", "cup"]))


def test_threshold_and_accept():
    m = tiny_model(init_threshold=0.7)
    assert m.threshold == pytest.approx(0.7, rel=1e-6)
    assert m.accept(torch.tensor([0.69, 0.7, 0.9])).tolist() == [False, True, True]
    m.set_threshold(0.2)
    assert m.threshold == pytest.approx(0.2, rel=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        m.set_threshold(1.0)


def test_tiny_overfit_loss_halves_and_threshold_learns():
    torch.manual_seed(0)
    m = Verifier(tiny_cfg()).train()
    images, proprio, instr = obs_batch(2)
    batch = {"images": images, "proprio": proprio, "instructions": instr, "actions": chunks(2, 4),
             "safe": torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]),
             "advantage": torch.tensor([[0.5, -1.0, 0.2, float("nan")], [-0.7, 0.9, 0.1, -0.3]])}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first, _ = m.loss(batch)
    theta0 = m.threshold_logit.item()
    for _ in range(100):
        opt.zero_grad()
        loss, parts = m.loss(batch)
        loss.backward()
        opt.step()
    assert set(parts) == {"total", "focal", "advantage", "calib", "threshold"}
    assert all(math.isfinite(v) for v in parts.values())
    assert parts["total"] < 0.5 * first.item(), (first.item(), parts)
    assert m.threshold_logit.item() != theta0  # the calibration term reaches the threshold
    with torch.no_grad():
        p = torch.sigmoid(m(images, proprio, instr, batch["actions"])["safety_logit"])
    assert (m.accept(p) == batch["safe"].bool()).all()


def test_loss_ignores_masked_candidates():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    acts = chunks(2, 3)
    safe = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    adv = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    base = {"images": images, "proprio": proprio, "instructions": instr, "actions": acts}
    a, _ = m.loss({**base, "safe": safe, "advantage": adv, "mask": mask})
    garbage = safe.clone(), adv.clone()
    garbage[0][:, 2], garbage[1][:, 2] = 5.0, float("nan")
    b, _ = m.loss({**base, "safe": garbage[0], "advantage": garbage[1], "mask": mask})
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    with pytest.raises(ValueError, match="safe labels"):
        m.loss({**base, "safe": garbage[0]})


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_clear_errors():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    obs = m.encode_observation(images, proprio, instr)
    acts = chunks(2, 4)
    cases = [
        (lambda: m.score(obs, acts[:, 0]), r"4-D .*actions\[:, None\]"),  # (B, H, A): K missing
        (lambda: m.score(obs, acts[:, :0]), "K >= 1"),
        (lambda: m.score(obs, acts[:, :, :2]), "horizon must be H=4"),
        (lambda: m.score(obs, acts[..., :6]), "action_dim=7, got 6"),
        (lambda: m.score(obs, acts.masked_fill(torch.rand(acts.shape) < 0.05, float("nan"))), "NaN or inf"),
        (lambda: m.score(obs, acts.long()), "float tensor"),
        (lambda: m.score(obs[:1], acts), "batch size mismatch: obs features have B=1, actions have B=2"),
        (lambda: m.score(obs[:, :2], acts), "obs features must be"),
        (lambda: m.encode_observation(images.float(), proprio, instr), "uint8"),
        (lambda: m.encode_observation(images[:, :1], proprio, instr), r"images must be \(B, 2, S, S, 3\)"),
        (lambda: m.encode_observation(images, proprio[:, :7], instr), "proprio must be"),
        (lambda: m.encode_observation(images, proprio.clone().fill_(float("inf")), instr), "proprio contains NaN"),
        (lambda: m.encode_observation(images, proprio, instr[:1]), "expected 2 instructions"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()
    with pytest.raises(ValueError, match="proprio_std"):
        m.set_normalization(torch.zeros(8), torch.ones(7))


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_corrupt_files(tmp_path):
    m = tiny_model()
    m.set_normalization(torch.arange(8.0), torch.full((8,), 2.0))
    m.set_threshold(0.63)
    path = str(tmp_path / "ver.pt")
    save_checkpoint(path, m, {"step": 7})
    assert len(sha256_file(path)) == 64
    m2, extra = load_checkpoint(path)
    assert extra == {"step": 7} and not m2.training and m2.cfg == m.cfg
    assert m2.threshold == pytest.approx(0.63, rel=1e-6)
    images, proprio, instr = obs_batch(2)
    acts = chunks(2, 3)
    with torch.no_grad():
        a, b = m(images, proprio, instr, acts), m2(images, proprio, instr, acts)
    for key in a:
        torch.testing.assert_close(a[key], b[key])

    raw = open(path, "rb").read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a valid prevla verifier checkpoint"):
        load_checkpoint(str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a valid prevla verifier checkpoint"):
        load_checkpoint(str(junk))
    from prevla_models.vla import VLA, VLAConfig, save_checkpoint as save_vla
    save_vla(str(tmp_path / "vla.pt"), VLA(VLAConfig(image_size=S, d_model=32, n_layers=1, n_heads=2, head_layers=1)))
    with pytest.raises(ValueError, match="kind is 'vla', expected 'verifier'"):
        load_checkpoint(str(tmp_path / "vla.pt"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))
