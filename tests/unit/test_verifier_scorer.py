"""VerifierScorer: the learned verifier behind the runtime's scorer contract (CPU, tiny model)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prevla_models.verifier import Verifier, VerifierConfig, save_checkpoint
from prevla_models.verifier_scorer import VerifierScorer
from prevla_models.encoder import observation_tensors

S, H = 32, 4
WORDS = ["put", "the", "bowl", "on", "plate", "pick", "up", "cup"]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_verifier(seed: int = 0) -> Verifier:
    torch.manual_seed(seed)
    return Verifier(VerifierConfig(image_size=S, horizon=H, d_model=32, n_layers=1, n_heads=2,
                                   fusion_layers=1, action_layers=1, vocab=WORDS, max_words=8))


def make_obs(side: int = S, instruction: str = "put the bowl on the plate"):
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        images={"agentview": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (side, side, 3), dtype=np.uint8)},
        eef_pos=np.array([0.1, 0.0, 1.0]), eef_quat_xyzw=np.array([1.0, 0, 0, 0]),
        gripper_qpos=np.array([0.04, -0.04]), instruction=instruction)


def candidates(k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (k, H, 7)).astype(np.float32)


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_verifier()
    model.set_threshold(0.3)
    path = tmp_path / "tiny_verifier.pt"
    save_checkpoint(str(path), model)
    return path


def test_from_checkpoint_names_and_threshold(checkpoint, tmp_path):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    assert scorer.verifier_id == "tiny_verifier"  # the file stem without an id in extra
    assert scorer.threshold == pytest.approx(0.3) and isinstance(scorer.threshold, float)
    assert not scorer.runner.model.training
    named = tmp_path / "named.pt"
    save_checkpoint(str(named), tiny_verifier(), {"verifier_id": "verifier_libero_spatial"})
    assert VerifierScorer.from_checkpoint(str(named)).verifier_id == "verifier_libero_spatial"
    assert VerifierScorer.from_checkpoint(str(named), verifier_id="mine").verifier_id == "mine"


@pytest.mark.parametrize("k", [1, 5])
def test_score_shapes_and_values_match_the_model(checkpoint, k):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    obs, chunks = make_obs(), candidates(k)
    p_safe, adv = scorer.score(obs, chunks)
    assert p_safe.shape == (k,) and adv.shape == (k,)
    assert p_safe.dtype == np.float32 and adv.dtype == np.float32
    assert np.all((p_safe > 0) & (p_safe < 1)) and np.all(np.isfinite(adv))
    with torch.no_grad():
        images, proprio = observation_tensors(obs, S, 2)
        out = scorer.runner.model(images, proprio, [obs.instruction], torch.from_numpy(chunks)[None])
    np.testing.assert_allclose(p_safe, torch.sigmoid(out["safety_logit"][0]).numpy(), atol=1e-6)
    np.testing.assert_allclose(adv, out["advantage"][0].numpy(), atol=1e-6)
    # Each candidate is scored independently of the others in its set.
    p_one, adv_one = scorer.score(obs, chunks[-1:])
    np.testing.assert_allclose(p_one, p_safe[-1:], atol=1e-5)
    np.testing.assert_allclose(adv_one, adv[-1:], atol=1e-5)


def test_observation_is_encoded_once_for_all_candidates(checkpoint, monkeypatch):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    calls = []
    encode = scorer.runner.model.encode_observation
    monkeypatch.setattr(scorer.runner.model, "encode_observation",
                        lambda *a, **kw: calls.append(a[0].shape) or encode(*a, **kw))
    scorer.score(make_obs(), candidates(5))
    assert calls == [(1, 2, S, S, 3)]


def test_score_runs_without_autograd(checkpoint):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    seen = []
    scorer.runner.model.safety_head.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    scorer.score(make_obs(), candidates(2))
    assert seen == [False]


def test_larger_camera_images_are_accepted(checkpoint):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    p_safe, _ = scorer.score(make_obs(side=2 * S), candidates(3))
    assert p_safe.shape == (3,)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, H, 7), np.float32), "K=0"),
    (np.zeros((2, H + 1, 7), np.float32), r"\(K, H=4, action_dim=7\)"),
    (np.zeros((2, H, 6), np.float32), "action_dim=7"),
    (np.zeros((H, 7), np.float32), r"got \(4, 7\)"),
    ([np.zeros((H, 7)), np.zeros((H + 1, 7))], "numeric array"),
    (np.full((2, H, 7), np.nan, np.float32), "non-finite"),
    (np.full((1, H, 7), np.inf, np.float32), "non-finite"),
])
def test_bad_candidates_raise_value_error(checkpoint, bad, match):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    with pytest.raises(ValueError, match=match):
        scorer.score(make_obs(), bad)


def test_bad_observation_raises_value_error(checkpoint):
    scorer = VerifierScorer.from_checkpoint(str(checkpoint))
    obs = make_obs()
    obs.images["wrist"] = obs.images["wrist"][:16]
    with pytest.raises(ValueError, match="wrist"):
        scorer.score(obs, candidates(2))
    del obs.images["wrist"]
    with pytest.raises(ValueError, match="lacks camera 'wrist'"):
        scorer.score(obs, candidates(2))
    odd = make_obs(side=S + 8)
    with pytest.raises(ValueError, match=f"multiple of {S}"):
        scorer.score(odd, candidates(2))


def test_missing_and_wrong_kind_checkpoints_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        VerifierScorer.from_checkpoint(str(tmp_path / "absent.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid prevla verifier checkpoint"):
        VerifierScorer.from_checkpoint(str(junk))


def test_vla_policy_and_the_scorer_share_one_observation_conversion():
    from prevla_models.graphs import TorchRunner, observation_feeds
    from prevla_models.vla import VLA, VLAConfig
    from prevla_models.vla_policy import VLAPolicy

    policy = VLAPolicy(TorchRunner(VLA(VLAConfig(image_size=S, horizon=H, d_model=32, n_layers=1,
                                                 n_heads=2, head_layers=1, vocab=WORDS, max_words=8)), "vla"))
    obs = make_obs()
    feeds = observation_feeds(obs, policy.runner.meta)
    for a, b in zip((feeds["images"], feeds["proprio"]), observation_tensors(obs, S, 2)):
        np.testing.assert_array_equal(a, b.numpy())
    assert feeds["tokens"].shape == (1, 8) and feeds["tokens"].dtype == np.int64
    images, proprio = observation_tensors(obs, S, 1)
    assert images.shape == (1, 1, S, S, 3) and images.dtype == torch.uint8
    assert proprio.shape == (1, 8) and proprio.dtype == torch.float32
