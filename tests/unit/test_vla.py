"""Fast CPU tests of the VLA model, its policy wrapper, geometry helpers and the training loop."""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prevla_models.geometry import proprio_from_state, quat_xyzw_to_axis_angle
from prevla_models.vla import VLA, VLAConfig, build_vocab, load_checkpoint, save_checkpoint, sha256_file
from prevla_models.graphs import TorchRunner
from prevla_models.vla_policy import VLAPolicy
from prevla_training.train_policy import TrainPolicyConfig, train_policy

S, H = 32, 4
WORDS = ["put", "the", "bowl", "on", "plate", "pick", "up", "cup"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_cfg(**kw) -> VLAConfig:
    base = dict(image_size=S, horizon=H, d_model=32, n_layers=1, n_heads=2, head_layers=1, vocab=WORDS,
                max_words=8, flow_steps=5)
    return VLAConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> VLA:
    torch.manual_seed(seed)
    return VLA(tiny_cfg(**kw)).eval()


def obs_batch(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 2, S, S, 3), generator=g, dtype=torch.uint8)
    return images, torch.randn(b, 8, generator=g), ["put the bowl on the plate", "pick up the cup"][:b] * (b // 2 or 1)


# ------------------------------------------------------------------ model
def test_encode_and_sample_shapes():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    ctx, pad = m.encode(images, proprio, instr)
    assert ctx.shape == (2, 2 * (S // 16) ** 2 + 8 + 1, 32) and pad.shape == ctx.shape[:2]
    out = m.sample(images, proprio, instr, k=3)
    assert out.shape == (2, 3, H, 7) and out.dtype == torch.float32
    assert out.abs().max() <= 1.0


def test_larger_camera_images_are_area_downsampled_to_image_size():
    m = tiny_model()
    images, proprio, instr = obs_batch(2)
    big = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 2x nearest upsample
    torch.testing.assert_close(m.encode(big, proprio, instr)[0], m.encode(images, proprio, instr)[0])
    with pytest.raises(ValueError, match="multiple of image_size"):
        m.encode(images[:, :, : S + 8, : S + 8].repeat(1, 1, 2, 2, 1)[:, :, :48, :48], proprio, instr)


def test_random_shift_moves_content_and_zero_is_identity():
    from prevla_training.train_policy import random_shift

    img = torch.zeros(3, 2, 16, 16, 3, dtype=torch.uint8)
    img[:, :, 8, 8] = 255  # one bright pixel per image
    assert random_shift(img, 0, torch.Generator().manual_seed(0)) is img
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and out.dtype == torch.uint8
    ys, xs = [], []
    for b in range(3):
        for c in range(2):
            (y, x) = torch.nonzero(out[b, c, :, :, 0]).tolist()[0]
            ys.append(y - 8), xs.append(x - 8)
            assert int(out[b, c].sum()) == 3 * 255  # moved, not duplicated or lost
    assert all(abs(v) <= 2 for v in ys + xs) and len(set(zip(ys, xs))) > 1


def test_samples_differ_at_temperature_one_and_are_deterministic_at_zero():
    m = tiny_model()
    images, proprio, instr = obs_batch(1)
    hot = m.sample(images, proprio, instr, k=4, temperature=1.0)[0]
    assert min((hot[i] - hot[j]).abs().max() for i in range(4) for j in range(i + 1, 4)) > 1e-4
    cold = m.sample(images, proprio, instr, k=4, temperature=0.0)[0]
    assert torch.equal(cold, cold[:1].expand_as(cold))
    assert torch.equal(cold, m.sample(images, proprio, instr, k=4, temperature=0.0)[0])


def test_sample_encodes_observation_once_and_batches_k():
    m = tiny_model()
    calls = []
    m.observation.image_encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    heads = []
    m.head.register_forward_hook(lambda mod, inp, out: heads.append(inp[0].shape[0]))
    images, proprio, instr = obs_batch(1)
    m.sample(images, proprio, instr, k=6)
    assert calls == [2]  # one pass over the 2 cameras of the single observation
    assert heads == [6] * m.cfg.flow_steps  # each Euler step handles all k chunks at once


def test_unknown_words_map_to_unk_and_padding():
    m = tiny_model()
    ids = m.tokenize(["Put the ZEBRA, please"])[0]
    assert ids[:4].tolist() == [m.observation.word_to_id["put"], m.observation.word_to_id["the"], 1, 1]
    assert ids[4:].eq(0).all()
    assert build_vocab(["Put the bowl.", "put a cup"]) == ["a", "bowl", "cup", "put", "the"]


def test_overfit_tiny_batch():
    m = tiny_model(seed=1, d_model=64, n_heads=4).train()
    images, proprio, _ = obs_batch(4, seed=3)
    instr = ["put the bowl on the plate", "pick up the cup", "put the cup on the plate", "pick up the bowl"]
    g = torch.Generator().manual_seed(5)
    actions = torch.rand(4, H, 7, generator=g) * 1.6 - 0.8
    batch = dict(images=images, proprio=proprio, instructions=instr, actions=actions)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=400, pct_start=0.1)
    noise = torch.Generator().manual_seed(0)

    def eval_loss() -> float:  # same noise draws before and after training
        g_eval = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(np.mean([m.loss(batch, generator=g_eval).item() for _ in range(20)]))

    first = eval_loss()
    for _ in range(400):
        loss = m.loss(batch, generator=noise)
        opt.zero_grad(), loss.backward(), opt.step(), sched.step()
    m.eval()
    last = eval_loss()
    assert last < first / 10, (first, last)
    pred = m.sample(images, proprio, instr, k=1, temperature=0.0)[:, 0]
    assert (pred - actions).abs().mean() < 0.1, (pred - actions).abs().mean()


def test_bad_inputs_raise_clear_errors():
    m = tiny_model()
    images, proprio, instr = obs_batch(1)
    with pytest.raises(ValueError, match="images must be"):
        m.sample(torch.zeros(1, 2, S + 16, S + 16, 3, dtype=torch.uint8), proprio, instr, k=1)
    with pytest.raises(ValueError, match="uint8"):
        m.sample(images.float(), proprio, instr, k=1)
    with pytest.raises(ValueError, match="NaN"):
        m.sample(images, torch.full((1, 8), float("nan")), instr, k=1)
    with pytest.raises(ValueError, match="proprio must be"):
        m.sample(images, torch.zeros(1, 9), instr, k=1)
    with pytest.raises(ValueError, match="k .* >= 1"):
        m.sample(images, proprio, instr, k=0)
    with pytest.raises(ValueError, match="n_heads"):
        VLAConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        VLAConfig(image_size=100)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(tmp_path):
    m = tiny_model(seed=2)
    m.set_normalization(torch.full((7,), 0.1), torch.full((7,), 0.5), torch.zeros(8), torch.ones(8) * 2)
    path = str(tmp_path / "vla.pt")
    save_checkpoint(path, m, {"note": "hi", "step": 3})
    m2, extra = load_checkpoint(path)
    assert extra == {"note": "hi", "step": 3} and m2.cfg == m.cfg
    images, proprio, instr = obs_batch(2)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(m.sample(images, proprio, instr, 3, generator=g1), m2.sample(images, proprio, instr, 3, generator=g2))
    assert len(sha256_file(path)) == 64 and sha256_file(path) == sha256_file(path)


def test_bad_checkpoints(tmp_path):
    m = tiny_model()
    good = tmp_path / "good.pt"
    save_checkpoint(str(good), m)
    raw = good.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "random.pt": np.random.default_rng(0).bytes(4096),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "wrong_keys.pt")
    torch.save({"config": {"d_model": 64, "n_heads": 2}, "state_dict": m.state_dict()}, tmp_path / "mismatch.pt")
    for name in ("truncated.pt", "random.pt", "wrong_keys.pt", "mismatch.pt"):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match="(?i)not a valid prevla VLA checkpoint") as e:
            load_checkpoint(path)
        assert path in str(e.value)
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(missing)
    torch.save({"kind": "verifier", "config": {}, "state_dict": {}}, tmp_path / "other_kind.pt")
    with pytest.raises(ValueError, match="kind is 'verifier', expected 'vla'"):
        load_checkpoint(str(tmp_path / "other_kind.pt"))


# ------------------------------------------------------------------ geometry + policy
@pytest.mark.parametrize("axis,angle", [((1, 0, 0), 0.0), ((1, 0, 0), math.pi / 2), ((0, 1, 0), 1.0),
                                        ((0, 0, 1), math.pi), ((1, 1, 0), 2.5)])
def test_quat_to_axis_angle_known_rotations(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    q = np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(q), axis * angle, atol=1e-7)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(q, hemisphere=True), axis * angle, atol=1e-7)
    # -q is the same rotation: robosuite's formula gives the long way round, hemisphere mode does not.
    if angle > 0:
        np.testing.assert_allclose(quat_xyzw_to_axis_angle(-q), -axis * (2 * math.pi - angle), atol=1e-7)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(-q, hemisphere=True), axis * angle, atol=1e-7)


def robosuite_quat2axisangle(quat):  # robosuite.utils.transform_utils.quat2axisangle, verbatim maths
    quat = np.array(quat, dtype=np.float64)
    quat[3] = min(max(quat[3], -1.0), 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(quat[3])) / den


def test_quat_to_axis_angle_matches_robosuite_and_hemisphere_range():
    rng = np.random.default_rng(0)
    qs = rng.normal(size=(50, 4))
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    got = quat_xyzw_to_axis_angle(qs)
    np.testing.assert_allclose(got, np.stack([robosuite_quat2axisangle(q) for q in qs]), atol=1e-9)
    assert np.linalg.norm(quat_xyzw_to_axis_angle(qs, hemisphere=True), axis=-1).max() <= math.pi + 1e-9
    angle = 1.5 * math.pi  # same rotation as -pi/2 about z
    q = np.array([0, 0, math.sin(angle / 2), math.cos(angle / 2)])
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(q, hemisphere=True), [0, 0, -math.pi / 2], atol=1e-7)
    with pytest.raises(ValueError):
        quat_xyzw_to_axis_angle(np.array([0, 0, 0, 0.0]))


def make_obs(instruction="put the bowl on the plate"):
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        images={"agentview": rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (S, S, 3), dtype=np.uint8)},
        eef_pos=np.array([0.1, 0.0, 1.0]), eef_quat_xyzw=np.array([1.0, 0, 0, 0]),
        gripper_qpos=np.array([0.04, -0.04]), instruction=instruction)


def test_vla_policy_sample_on_duck_typed_observation():
    policy = VLAPolicy(TorchRunner(tiny_model(), "vla"), policy_id="tiny")
    out = policy.sample(make_obs(), k=5, temperature=1.0)
    assert out.shape == (5, H, 7) and out.dtype == np.float32
    assert np.all(out >= -1) and np.all(out <= 1)
    policy.reset()
    np.testing.assert_array_equal(out, policy.sample(make_obs(), k=5))  # reset re-seeds
    assert np.array_equal(*policy.sample(make_obs(), k=2, temperature=0.0))
    bad = make_obs()
    bad.images["wrist"] = bad.images["wrist"][:16]
    with pytest.raises(ValueError, match="wrist"):
        policy.sample(bad, k=1)
    assert proprio_from_state([0, 0, 0], [1, 0, 0, 0], [0, 0]).shape == (8,)


# ------------------------------------------------------------------ training
class FakeDemos:
    """In-memory stand-in with the DemoDataset interface (``__len__``, ``sample``, ``instructions``)."""

    def __init__(self, n: int = 12) -> None:
        rng = np.random.default_rng(0)
        self.instructions = ["put the bowl on the plate", "pick up the cup"]
        self.images = rng.integers(0, 256, (n, 2, S, S, 3), dtype=np.uint8)
        self.proprio = rng.normal(size=(n, 8)).astype(np.float32)
        self.actions = rng.uniform(-0.5, 0.5, size=(n + 8, 7)).astype(np.float32)
        self.actions[:, 6] = np.sign(self.actions[:, 6])
        self.n = n

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int, horizon: int) -> dict:
        mask = np.arange(horizon) < max(1, self.n - index)  # chunks near the end are padded
        return {"agentview": self.images[index, 0], "wrist": self.images[index, 1], "proprio": self.proprio[index],
                "instruction": self.instructions[index % 2],
                "actions": self.actions[index: index + horizon] * mask[:, None], "action_mask": mask}


def train_cfg(out, steps, resume=False, stop_at=0):
    return TrainPolicyConfig(out_dir=str(out), steps=steps, stop_at=stop_at, batch_size=4, lr=1e-3, warmup_steps=2, log_interval=5,
                             ckpt_interval=10, num_threads=1, stats_samples=12, resume=resume,
                             model=tiny_cfg(vocab=[]))


def test_train_policy_writes_outputs_and_resumes_exactly(tmp_path):
    demos = FakeDemos()
    full = train_policy(train_cfg(tmp_path / "full", 20), demos)
    assert full["step"] == 20 and math.isfinite(full["loss"])
    for name in ("last.pt", "metrics.jsonl", "loss.png", "step_0000010.pt"):
        assert (tmp_path / "full" / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    model, extra = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    assert extra["step"] == 20 and set(model.cfg.vocab) == {"put", "the", "bowl", "on", "plate", "pick", "up", "cup"}

    # Stop at 10 of 20 steps, then resume: identical weights to the uninterrupted run.
    assert train_policy(train_cfg(tmp_path / "split", 20, stop_at=10), demos)["step"] == 10
    resumed = train_policy(train_cfg(tmp_path / "split", 20, resume=True), demos)
    assert resumed["step"] == 20
    rows = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    split_model, _ = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    for (name, a), b in zip(model.state_dict().items(), split_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert os.path.exists(tmp_path / "split" / "loss.png")


def test_train_policy_cli_on_the_real_demo_reader(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    for task, instr in enumerate(["pick up the bowl", "open the drawer"]):
        with h5py.File(tmp_path / f"task{task}_demo.hdf5", "w") as f:
            d = f.create_group("data")
            d.attrs["problem_info"] = json.dumps({"language_instruction": instr})
            d.attrs["macros_image_convention"] = "opengl"
            g = d.create_group("demo_0")
            g.attrs["num_samples"] = 10
            g.create_dataset("actions", data=rng.uniform(-1, 1, (10, 7)))
            o = g.create_group("obs")
            for key in ("agentview_rgb", "eye_in_hand_rgb"):
                o.create_dataset(key, data=rng.integers(0, 256, (10, S, S, 3), dtype=np.uint8))
            o.create_dataset("ee_pos", data=rng.normal(size=(10, 3)))
            o.create_dataset("ee_ori", data=rng.normal(size=(10, 3)))
            o.create_dataset("gripper_states", data=rng.normal(size=(10, 2)))
    from prevla_training.train_policy import main

    out = tmp_path / "policy"
    common = ["--data", str(tmp_path / "*.hdf5"), "--out", str(out), "--steps", "3", "--batch-size", "2",
              "--num-threads", "1", "--d-model", "32", "--n-layers", "1", "--horizon", "4"]
    with pytest.raises(ValueError, match="image_size"):
        main(common)  # default 128 px model vs 32 px demos
    metrics = main(common + ["--image-size", str(S)])
    assert metrics["step"] == 3
    model, _ = load_checkpoint(str(out / "last.pt"))
    assert {"pick", "bowl", "open", "drawer"} <= set(model.cfg.vocab)


def test_live_proprio_matches_the_demo_reader_definition():
    from prevla_training.demos_read import proprio_from_observation

    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        obs = SimpleNamespace(eef_pos=rng.normal(size=3), eef_quat_xyzw=q, gripper_qpos=rng.normal(size=2))
        np.testing.assert_allclose(proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos),
                                   proprio_from_observation(obs), atol=1e-6)
