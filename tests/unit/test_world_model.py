"""World model: shapes, determinism, validation, checkpoints, the loss's masks, a tiny training
run and (with the zoo checkpoint) imagination that beats copying the current frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prevla_models.world_model import WorldModel, WorldModelConfig, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(WorldModelConfig(frame_size=16, width=8, latent_channels=8, hidden=16, horizon=4)).eval()


def inputs(b: int = 2, side: int = 32, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, side, side, 3), generator=g, dtype=torch.uint8), torch.randn(b, 8, generator=g),
            torch.rand(b, n, 4, 7, generator=g) * 2 - 1)


def test_imagine_shapes_and_determinism():
    m = tiny()
    frames, proprio, chunks = inputs()
    out = m.imagine(frames, proprio, chunks)
    assert out.shape == (2, 12, 16, 16, 3) and out.dtype == torch.uint8
    assert torch.equal(out, m.imagine(frames, proprio, chunks))
    ends = m.imagine(frames, proprio, chunks, every=4)
    assert ends.shape == (2, 3, 16, 16, 3) and torch.equal(ends, out[:, 3::4])
    # Untrained = "nothing moves": every imagined frame is the (downsampled) current frame.
    current = m.to_input(frames).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert (out.int() - current[:, None].int()).abs().max() <= 2
    # Rows do not leak into each other.
    assert torch.equal(m.imagine(frames[:1], proprio[:1], chunks[:1]), out[:1])


@pytest.mark.parametrize("kwargs, match", [
    ({"frame_size": 12}, "frame_size"), ({"width": 0}, "width"), ({"motion_weight": -1.0}, "motion_weight"),
    ({"horizon": True}, "horizon")])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldModelConfig(**kwargs)


def test_bad_inputs_raise_clear_errors():
    m = tiny()
    frames, proprio, chunks = inputs()
    with pytest.raises(ValueError, match="multiple of 16"):
        m.imagine(frames[:, :24, :24], proprio, chunks)
    with pytest.raises(ValueError, match="uint8"):
        m.imagine(frames.float(), proprio, chunks)
    with pytest.raises(ValueError, match="proprio"):
        m.imagine(frames, proprio[:, :5], chunks)
    with pytest.raises(ValueError, match=r"chunks must be \(B=2, N, 4, 7\)"):
        m.imagine(frames, proprio, chunks[..., :6])
    with pytest.raises(ValueError, match="NaN"):
        m.imagine(frames, proprio, torch.full_like(chunks, float("nan")))


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = tiny()
    save_checkpoint(str(tmp_path / "wm.pt"), m, {"world_model_id": "tiny"})
    loaded, extra = load_checkpoint(str(tmp_path / "wm.pt"))
    assert extra["world_model_id"] == "tiny"
    frames, proprio, chunks = inputs()
    assert torch.equal(loaded.imagine(frames, proprio, chunks), m.imagine(frames, proprio, chunks))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a valid prevla world_model checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))


def test_loss_uses_only_supervised_steps_and_learns():
    m = tiny().train()
    frames, proprio, chunks = inputs(b=4, n=2)
    actions = chunks.reshape(4, 8, 7)
    targets = torch.randint(0, 256, (4, 8, 16, 16, 3), dtype=torch.uint8)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 3] = mask[:, 7] = True
    batch = {"frames": frames, "proprio": proprio, "actions": actions, "targets": targets, "target_mask": mask}
    loss, parts = m.loss(batch)
    garbage = dict(batch, targets=torch.where(mask[..., None, None, None], targets, torch.zeros_like(targets)))
    assert m.loss(garbage)[0].item() == pytest.approx(loss.item())  # unsupervised steps do not count
    with pytest.raises(ValueError, match="no supervised frame"):
        m.loss(dict(batch, target_mask=torch.zeros_like(mask)))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(30):
        loss, _ = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_zoo_checkpoint_imagines_closer_to_the_real_next_frames_than_copying():
    from prevla_models import zoo

    try:
        model, _ = load_checkpoint(zoo.resolve("", "world_model"))
    except FileNotFoundError as e:
        pytest.fail(f"the zoo must ship a default world model: {e}")
    data = np.load(zoo.zoo_dir() / "world_model_libero_spatial_heldout.npz")
    imagined = model.imagine(torch.from_numpy(data["frames"]), torch.from_numpy(data["proprio"]),
                             torch.from_numpy(data["chunks"]), every=model.cfg.horizon).float() / 255
    real, start = torch.from_numpy(data["real"]).float() / 255, torch.from_numpy(data["frames"]).float()[:, None] / 255
    mse, copy = (imagined - real).pow(2).mean().item(), (start - real).pow(2).mean().item()
    assert mse < copy, f"imagined MSE {mse:.5f} is not below copying the current frame ({copy:.5f})"


def _demo_file(path, demos: int = 3, n: int = 40, side: int = 32) -> None:
    """A LIBERO-layout demo file written by hand (raw images upside down, as LIBERO stores them)."""
    import json

    import h5py

    rng = np.random.default_rng(len(str(path)))
    with h5py.File(path, "w") as f:
        d = f.create_group("data")
        d.attrs["problem_info"] = json.dumps({"language_instruction": "pick up the bowl"})
        d.attrs["macros_image_convention"] = "opengl"
        for i in range(demos):
            g = d.create_group(f"demo_{i}")
            g.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
            o = g.create_group("obs")
            frames = np.zeros((n, side, side, 3), np.uint8)
            for t in range(n):  # a bright square that moves with time
                frames[t, 4 + t % 20: 10 + t % 20, 8:14] = 220
            o.create_dataset("agentview_rgb", data=frames)
            o.create_dataset("eye_in_hand_rgb", data=frames)
            for key, dim in (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2)):
                o.create_dataset(key, data=rng.normal(size=(n, dim)))


def _rollout_file(path, task: int, init: int, n: int = 6, side: int = 32) -> None:
    """A ``prevla label-candidates`` episode file (the fields the world model reads)."""
    import h5py

    rng = np.random.default_rng(init)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["task_id"], f.attrs["init_state"] = task, init
        f.create_dataset("images", data=rng.integers(0, 256, (n, 2, side, side, 3), dtype=np.uint8))
        f.create_dataset("proprio", data=rng.normal(size=(n, 8)).astype(np.float32))
        f.create_dataset("actions", data=rng.uniform(-1, 1, (n, 8, 8, 7)).astype(np.float32))
        f.create_dataset("step", data=np.arange(n, dtype=np.int32) * 8)


def _training_kwargs(tmp_path, out: str = "out") -> dict:
    """Demo and rollout files in ``tmp_path`` and a tiny TrainWorldModelConfig writing to ``out``."""
    if not (tmp_path / "demos").is_dir():
        (tmp_path / "demos").mkdir()
        for name in ("a", "b"):
            _demo_file(tmp_path / "demos" / f"{name}_demo.hdf5")
        for task, init in ((0, 10), (0, 11), (1, 10), (1, 11)):
            _rollout_file(tmp_path / "rollouts" / f"task{task:02d}" / f"init{init}.hdf5", task, init)
    return dict(demos=str(tmp_path / "demos"), rollouts=str(tmp_path / "rollouts"), out=str(tmp_path / out),
                frame_size=16, steps=6, batch_size=4, eval_interval=3, log_interval=1, warmup_steps=1,
                demos_per_task=3, holdout_demos=1, holdout_inits=1, num_threads=1)


def test_training_runs_evaluates_checkpoints_and_resumes(tmp_path):
    import json

    from prevla_training.train_world_model import TrainWorldModelConfig, train_world_model

    kw = _training_kwargs(tmp_path)
    train_world_model(TrainWorldModelConfig(**kw, stop_at=3))
    assert load_checkpoint(str(tmp_path / "out" / "last.pt"))[1]["train_state"]["step"] == 3
    final = train_world_model(TrainWorldModelConfig(**kw, resume=True))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # resumed at 4, not restarted
    assert {"mse_chunk1", "copy_mse_chunk1", "mse_chunk2"} <= set(final) and final["params"] > 0
    for name in ("curves.png", "metrics.json", "heldout.npz"):
        assert (tmp_path / "out" / name).is_file()
    with pytest.raises(ValueError, match="give demos and/or rollouts"):
        TrainWorldModelConfig(demos="", rollouts="")


def test_training_resumes_exactly(tmp_path):
    """6 steps straight == 3 + resume + 3, bit for bit: the batch sampler's stream is checkpointed."""
    from prevla_training.train_world_model import TrainWorldModelConfig, train_world_model

    train_world_model(TrainWorldModelConfig(**_training_kwargs(tmp_path, "straight")))
    split = _training_kwargs(tmp_path, "split")
    train_world_model(TrainWorldModelConfig(**split, stop_at=3))
    train_world_model(TrainWorldModelConfig(**split, resume=True))
    a, _ = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b, extra = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert extra["train_state"]["step"] == 6
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
