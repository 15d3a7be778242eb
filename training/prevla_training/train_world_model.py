"""Train the world model on recorded rollouts: expert demonstrations and VLA rollouts.

    prevla train-world-model --demos outputs/demos/libero_spatial --rollouts outputs/candidates/libero_spatial \
        --out outputs/world_model [--steps 3000] [--resume]

Data (read once into RAM at the model's frame size, agent-view camera only):

* **demonstrations** (``prevla record-demos``, LIBERO layout): every step has a frame, so a
  sample is a frame, its proprio, the next ``seq_chunks * H`` actions and every frame after them;
* **policy rollouts** (``prevla label-candidates``: the VLA's own episodes, successes and
  failures, with the chunk it executed at each decision): a frame every chunk, so a sample is
  a decision's frame, the executed chunks of the next ``seq_chunks`` decisions and the frames
  at their ends (the other steps are unsupervised).

Held out: the last ``holdout_demos`` demonstrations of each task and the rollouts from the
highest ``holdout_inits`` init states. The held-out metric is the frame MSE at the end of
chunk 1 and chunk 2 against the *copy-the-current-frame* baseline (a world model that does not
beat it has learned nothing about actions). Progress, metrics.jsonl (held-out numbers as
``val_*``), curves.png, last.pt with exact resume (the batch sampler's stream included; the loop
is ``prevla_training.loop.fit``); ``metrics.json`` holds the final held-out numbers.
"""
from __future__ import annotations

import glob
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from prevla_models.geometry import area_downsample

from prevla_training.learner import Learner
from prevla_training.loop import Panel, TrainLoopConfig, fit, resume_from


@dataclass
class TrainWorldModelConfig(TrainLoopConfig):
    """What to train on and how (optimisation fields from ``TrainLoopConfig``)."""

    steps: int = field(default=3000, metadata={"help": "Total optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per step."})
    lr: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    demos: str = field(default="outputs/demos/libero_spatial", metadata={"help": "Directory of demo HDF5 files ('' = none)."})
    rollouts: str = field(default="outputs/candidates/libero_spatial", metadata={"help": "label-candidates directory ('' = none)."})
    out: str = field(default="outputs/world_model", metadata={"help": "Output directory."})
    demos_per_task: int = field(default=20, metadata={"help": "Demonstrations read per task file (RAM and time)."})
    holdout_demos: int = field(default=2, metadata={"help": "Last demos of each task held out."})
    holdout_inits: int = field(default=2, metadata={"help": "Rollouts of the highest init states held out."})
    seq_chunks: int = field(default=2, metadata={"help": "Chunks per training sequence."})
    decode_per_seq: int = field(default=4, metadata={"help": "Supervised demo frames decoded per sequence per step."})
    demo_fraction: float = field(default=0.5, metadata={"help": "Share of each batch from demonstrations."})
    eval_interval: int = field(default=500, metadata={"help": "Steps between held-out evaluations."})
    frame_size: int = field(default=64, metadata={"help": "World model frame side."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("demos_per_task", "seq_chunks", "decode_per_seq", "eval_interval", "frame_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainWorldModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.demo_fraction <= 1:
            raise ValueError(f"TrainWorldModelConfig.demo_fraction must be in [0, 1], got {self.demo_fraction}")
        if not (self.demos or self.rollouts):
            raise ValueError("TrainWorldModelConfig: give demos and/or rollouts")


def load_demos(root: str, per_task: int, size: int) -> list[dict]:
    """Agent-view frames (upright, ``size`` px), proprio (8) and actions of demonstrations."""
    from prevla_training.demos_read import DemoDataset, open_hdf5

    ds = DemoDataset(root)
    out, seen = [], {}
    for fi, key, n in ds._demos:
        if seen.get(fi, 0) >= per_task:
            continue
        seen[fi] = seen.get(fi, 0) + 1
        with open_hdf5(ds.files[fi]) as f:
            g = f["data"][key]
            frames = g["obs/agentview_rgb"][:]
            if ds._flip[fi]:
                frames = frames[:, ::-1, ::-1]
            proprio = np.concatenate([g["obs/ee_pos"][:], g["obs/ee_ori"][:], g["obs/gripper_states"][:]], 1)
            out.append({"task": fi, "frames": area_downsample(np.ascontiguousarray(frames), size),
                        "proprio": proprio.astype(np.float32), "actions": g["actions"][:].astype(np.float32)})
    return out


def load_rollouts(root: str, size: int) -> list[dict]:
    """Per episode: decision frames (agent view), proprio, the executed chunk, init state."""
    import h5py

    out = []
    for path in sorted(glob.glob(f"{root}/task*/init*.hdf5")):
        with h5py.File(path) as f:
            steps = f["step"][:]
            out.append({"task": int(f.attrs["task_id"]), "init": int(f.attrs["init_state"]),
                        "frames": area_downsample(f["images"][:, 0], size), "proprio": f["proprio"][:].astype(np.float32),
                        "actions": f["actions"][:, 0].astype(np.float32), "steps": steps})
    return out


class Sequences:
    """Samples training / held-out sequences from demos and rollouts (numpy, seeded)."""

    def __init__(self, demos: list[dict], rollouts: list[dict], cfg: TrainWorldModelConfig, horizon: int) -> None:
        self.cfg, self.h, self.t = cfg, horizon, cfg.seq_chunks * horizon
        self.demos = [d for d in demos if len(d["actions"]) > self.t]
        # Rollout starts: decisions followed by seq_chunks consecutive decisions (steps + H each).
        self.starts = [(e, i) for e, ep in enumerate(rollouts) for i in range(len(ep["steps"]) - cfg.seq_chunks)
                       if np.all(np.diff(ep["steps"][i:i + cfg.seq_chunks + 1]) == horizon)]
        self.rollouts = rollouts

    def demo(self, rng) -> dict:
        d = self.demos[rng.integers(len(self.demos))]
        t0 = rng.integers(len(d["actions"]) - self.t)
        mask = np.ones(self.t, bool)
        decode = np.zeros(self.t, bool)
        decode[rng.choice(self.t, min(self.cfg.decode_per_seq, self.t), replace=False)] = True
        decode[self.h - 1] = decode[-1] = True  # always the chunk ends
        return {"frames": d["frames"][t0], "proprio": d["proprio"][t0], "actions": d["actions"][t0:t0 + self.t],
                "targets": d["frames"][t0 + 1:t0 + 1 + self.t], "target_mask": mask, "decode": decode}

    def rollout(self, rng, start=None) -> dict:
        e, i = start or self.starts[rng.integers(len(self.starts))]
        ep, c = self.rollouts[e], self.cfg.seq_chunks
        targets = np.zeros((self.t, *ep["frames"].shape[1:]), np.uint8)
        mask = np.zeros(self.t, bool)
        for k in range(c):
            targets[(k + 1) * self.h - 1] = ep["frames"][i + k + 1]
            mask[(k + 1) * self.h - 1] = True
        return {"frames": ep["frames"][i], "proprio": ep["proprio"][i], "actions": ep["actions"][i:i + c].reshape(self.t, -1),
                "targets": targets, "target_mask": mask, "decode": mask.copy()}

    def batch(self, rng, n: int) -> dict[str, torch.Tensor]:
        n_demo = int(round(n * self.cfg.demo_fraction)) if self.demos and self.starts else (n if self.demos else 0)
        rows = [self.demo(rng) for _ in range(n_demo)] + [self.rollout(rng) for _ in range(n - n_demo)]
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}


def split(demos: list[dict], rollouts: list[dict], cfg: TrainWorldModelConfig):
    """(train demos, held-out demos, train rollouts, held-out rollouts)."""
    by_task: dict[int, list[int]] = {}
    for i, d in enumerate(demos):
        by_task.setdefault(d["task"], []).append(i)
    held = {i for ids in by_task.values() for i in ids[len(ids) - cfg.holdout_demos:]}
    inits = sorted({r["init"] for r in rollouts})
    held_inits = set(inits[len(inits) - cfg.holdout_inits:]) if cfg.holdout_inits else set()
    return ([d for i, d in enumerate(demos) if i not in held], [d for i, d in enumerate(demos) if i in held],
            [r for r in rollouts if r["init"] not in held_inits], [r for r in rollouts if r["init"] in held_inits])


def write_heldout(seqs: "Sequences", path: Path, n: int = 12, seed: int = 7) -> None:
    """A small held-out sample (half demos, half rollouts) for the checkpoint smoke test:
    start frames, proprio, the executed chunks and the real frames at each chunk's end."""
    rng = np.random.default_rng(seed)
    rows = [seqs.demo(rng) for _ in range(n // 2)] + [seqs.rollout(rng) for _ in range(n - n // 2)]
    h, c = seqs.h, seqs.cfg.seq_chunks
    np.savez_compressed(path, frames=np.stack([r["frames"] for r in rows]), proprio=np.stack([r["proprio"] for r in rows]),
                        chunks=np.stack([r["actions"].reshape(c, h, -1) for r in rows]),
                        real=np.stack([r["targets"][h - 1::h] for r in rows]))


@torch.no_grad()
def evaluate(model, seqs: Sequences, n: int = 64, seed: int = 123) -> dict:
    """Held-out frame MSE (pixels in [0, 1]) at the end of each chunk vs copying the current frame."""
    rng = np.random.default_rng(seed)
    model.eval()
    rows = [seqs.demo(rng) for _ in range(n // 2 if seqs.demos else 0)]
    rows += [seqs.rollout(rng) for _ in range(n - len(rows) if seqs.starts else 0)]
    b = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
    c = seqs.cfg.seq_chunks
    imagined = model.imagine(b["frames"], b["proprio"], b["actions"].reshape(len(rows), c, seqs.h, -1), every=seqs.h)
    cur = b["frames"].float() / 255  # the start frames, stored at the model's frame size
    out = {}
    for k in range(c):
        real = b["targets"][:, (k + 1) * seqs.h - 1].float() / 255
        out[f"mse_chunk{k + 1}"] = float((imagined[:, k].float() / 255 - real).pow(2).mean())
        out[f"copy_mse_chunk{k + 1}"] = float((cur - real).pow(2).mean())
    model.train()
    return out


#: The curves PNG: the training loss; held-out frame MSE, imagined vs copying the current frame.
PANELS = (Panel("training loss (L1 + MSE)", ("total",), log=True),
          Panel("held-out frame MSE", ("val_mse_chunk1", "val_copy_mse_chunk1", "val_mse_chunk2", "val_copy_mse_chunk2")))


def train_world_model(cfg: TrainWorldModelConfig) -> dict:
    """Train, evaluate on the held-out split, write checkpoints and curves; returns final metrics."""
    from prevla_models.world_model import WorldModel, WorldModelConfig, load_checkpoint, save_checkpoint

    cfg.use_cpu_threads()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.perf_counter()
    demos = load_demos(cfg.demos, cfg.demos_per_task, cfg.frame_size) if cfg.demos else []
    rollouts = load_rollouts(cfg.rollouts, cfg.frame_size) if cfg.rollouts else []
    d_tr, d_te, r_tr, r_te = split(demos, rollouts, cfg)
    model = WorldModel(WorldModelConfig(frame_size=cfg.frame_size))
    train, held = Sequences(d_tr, r_tr, cfg, model.cfg.horizon), Sequences(d_te, r_te, cfg, model.cfg.horizon)
    print(f"data: {len(d_tr)}+{len(d_te)} demos, {len(r_tr)}+{len(r_te)} rollouts ({len(train.starts)} train "
          f"rollout sequences), read in {time.perf_counter() - t_load:.0f} s", flush=True)
    prop = np.concatenate([d["proprio"] for d in d_tr] + [r["proprio"] for r in r_tr])
    model.set_normalization(prop.mean(0), prop.std(0))
    resumed, state, start = resume_from(str(out / "last.pt"), cfg.resume, load_checkpoint)
    if resumed is not None:
        model = resumed
    # One stream draws every batch; its state travels in the checkpoint (a train state written
    # before it did is resumed as it always was: reseeded with seed + start).
    rng = np.random.default_rng(cfg.seed + start)
    # Every parameter decayed and AdamW's default betas: how this job has always trained
    # (the zoo world model included); the shared no-decay rule would change its results.
    learner = Learner(cfg, model, [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}],
                      betas=(0.9, 0.999), generators={"sampler_rng": rng})
    if state:
        learner.load_state_dict(state)
    t0 = time.perf_counter()

    def save(step: int, train_state: dict) -> None:
        save_checkpoint(str(out / "last.pt"), model, {
            "train_state": train_state,
            "training": {"config": asdict(cfg), "wall_s": round(time.perf_counter() - t0, 1),
                         "demos": [len(d_tr), len(d_te)], "rollouts": [len(r_tr), len(r_te)]}})

    def held_out(step: int) -> dict:
        result = evaluate(model, held)
        print(f"step {step}/{cfg.steps} held-out {json.dumps(result)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return result

    batches = (train.batch(rng, cfg.batch_size) for _ in itertools.count())  # drawn lazily, one per step
    last = fit(learner, batches, model.loss, save, cfg.out, panels=PANELS, evaluate=held_out,
               eval_interval=cfg.eval_interval, desc="world model")["val"]
    if last is None:  # resumed at the end: no step ran, so nothing was evaluated yet
        last = evaluate(model, held)
    final = {**last, "params": model.num_parameters(), "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(final, indent=1))
    write_heldout(held, out / "heldout.npz")
    return final


def main(argv: list[str] | None = None) -> dict:
    import argparse

    from prevla_training.cli_args import add_config_args, parse_config

    p = argparse.ArgumentParser(prog="prevla train-world-model", description=__doc__.split("\n\n")[0])
    add_config_args(p, TrainWorldModelConfig)
    cfg = parse_config(p, TrainWorldModelConfig, argv)
    return train_world_model(cfg)


if __name__ == "__main__":
    main()
