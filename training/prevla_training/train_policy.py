"""Train the prevla VLA (``prevla_models.vla``) on LIBERO demonstrations by flow matching.

    python -m prevla_training.train_policy --data 'outputs/demos/libero_spatial/*.hdf5' \
        --out outputs/policy --steps 20000 --batch-size 32 [--resume]

Works against the DemoDataset interface (``__len__``, ``sample(i, horizon)``, ``instructions``),
so any object with it can be passed to :func:`train_policy`. Batches for step ``s`` are drawn
with a generator seeded by ``(seed, s)`` and the flow-matching noise stream is checkpointed, which
makes resuming from ``last.pt`` exact (the loop is ``prevla_training.loop.fit``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prevla_models.vla import VLA, VLAConfig, build_vocab, load_checkpoint, save_checkpoint
from prevla_training.cli_args import add_config_args, build_config
from prevla_training.learner import Learner
from prevla_training.loop import Panel, TrainLoopConfig, fit, resume_from

GRIPPER_DIM = 6  # LIBERO gripper command is already +-1: never normalised


@dataclass
class TrainPolicyConfig(TrainLoopConfig):
    """Configuration of :func:`train_policy` (optimisation fields: ``TrainLoopConfig``)."""

    data: str = field(default="outputs/demos/libero_spatial/*.hdf5", metadata={"help": "Glob of demo HDF5 files."})
    out_dir: str = field(default="outputs/policy", metadata={"help": "Checkpoints, metrics.jsonl, loss.png."})
    ckpt_interval: int = field(default=1000, metadata={"help": "Steps between checkpoints (and last.pt)."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1' ..."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    cache_data: bool = field(default=True, metadata={"help": "Hold all demos in RAM (fast random access; ~10 MB per LIBERO demo)."})
    stats_samples: int = field(default=2000, metadata={"help": "Samples used for normalisation statistics."})
    model: VLAConfig = field(default_factory=VLAConfig, metadata={"help": "Model config (vocab is filled from data)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, dict):
            self.model = VLAConfig(**self.model)
        for name in ("ckpt_interval", "stats_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainPolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_workers) < 0:
            raise ValueError(f"TrainPolicyConfig.num_workers must be >= 0, got {self.num_workers}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"TrainPolicyConfig.device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")


class ChunkDataset(Dataset):
    """Torch view of a DemoDataset-like object: one (observation, action chunk) per index."""

    def __init__(self, demos, horizon: int) -> None:
        self.demos, self.horizon = demos, horizon

    def __len__(self) -> int:
        return len(self.demos)

    def __getitem__(self, i: int) -> dict:
        s = self.demos.sample(int(i), self.horizon)
        mask = s.get("action_mask")
        return {
            "images": torch.from_numpy(np.stack([s["agentview"], s["wrist"]])),
            "proprio": torch.as_tensor(s["proprio"], dtype=torch.float32),
            "instructions": str(s["instruction"]),
            "actions": torch.as_tensor(s["actions"], dtype=torch.float32),
            "action_mask": torch.ones(self.horizon, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool),
        }


class StepBatchSampler(Sampler):
    """Index batches for steps start..steps-1; step s is drawn from a generator seeded (seed, s)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start, steps

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.steps):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()


def normalization_stats(data: ChunkDataset, n: int, seed: int) -> dict:
    """Mean/std of valid actions and of proprio over up to ``n`` random samples."""
    idx = np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False)
    acts, props = [], []
    for i in idx:
        s = data[int(i)]
        acts.append(s["actions"][s["action_mask"]])
        props.append(s["proprio"])
    a, p = torch.cat(acts), torch.stack(props)
    a_mean, a_std = a.mean(0), a.std(0, unbiased=False)
    a_mean[GRIPPER_DIM], a_std[GRIPPER_DIM] = 0.0, 1.0
    return {"action_mean": a_mean, "action_std": a_std, "proprio_mean": p.mean(0), "proprio_std": p.std(0, unbiased=False)}


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: shift each image of (B, C, S, S, 3) by up to ``max_shift`` pixels
    in x and y (edge pixels replicated), independently per sample and camera."""
    if max_shift <= 0:
        return images
    b, c, s = images.shape[:3]
    x = images.reshape(b * c, s, s, 3).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    off = torch.randint(0, 2 * max_shift + 1, (b * c, 2), generator=generator).tolist()
    out = torch.stack([x[i, :, dy:dy + s, dx:dx + s] for i, (dy, dx) in enumerate(off)])
    return out.permute(0, 2, 3, 1).to(images.dtype).reshape(images.shape)


def open_demos(pattern: str):
    """Open the demo files matching ``pattern`` with the project's DemoDataset reader."""
    from prevla_training.demos import DemoDataset  # imported lazily: written alongside this module

    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no demo files match {pattern!r}")
    return DemoDataset(paths)


def step_batches(data: ChunkDataset, cfg: TrainPolicyConfig, start: int, device: torch.device):
    """The batches of steps start..end (augmented, on ``device``).

    The DataLoader is opened here, eagerly: opening one draws a number from torch's global
    generator, and that draw must come before a resumed run restores its saved streams.
    """
    loader = iter(DataLoader(data, batch_sampler=StepBatchSampler(len(data), cfg.batch_size, cfg.seed, start, cfg.end),
                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda"))

    def batches():
        for step, batch in enumerate(loader, start):
            aug = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 17)  # exact on resume
            batch["images"] = random_shift(batch["images"], cfg.aug_shift, aug)
            yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    return batches()


def train_policy(cfg: TrainPolicyConfig, demos=None) -> dict:
    """Train (or resume) a VLA; returns the final metrics. ``demos`` overrides ``cfg.data``."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cpu":
        cfg.use_cpu_threads()
    demos = open_demos(cfg.data) if demos is None else demos
    if cfg.cache_data and hasattr(demos, "cache_in_memory"):
        t_cache = time.perf_counter()
        size = demos.cache_in_memory()
        print(f"cached {getattr(demos, 'num_demos', '?')} demos ({size / 2**30:.2f} GiB) in RAM "
              f"in {time.perf_counter() - t_cache:.0f} s")
    last_path = os.path.join(cfg.out_dir, "last.pt")
    torch.manual_seed(cfg.seed)

    model, state, start = resume_from(last_path, cfg.resume, load_checkpoint)
    if model is None:
        mcfg = VLAConfig(**{**asdict(cfg.model), "vocab": build_vocab(demos.instructions)})
        model = VLA(mcfg)
    data = ChunkDataset(demos, model.cfg.horizon)
    shape = tuple(data[0]["images"].shape)
    s = model.cfg.image_size
    if len(shape) != 4 or shape != (model.cfg.cameras, shape[1], shape[1], 3) or shape[1] % s:
        raise ValueError(f"demo images are {shape} (cameras, H, W, 3) but the model expects square images "
                         f"whose side is a multiple of image_size={s}; set --image-size / VLAConfig.image_size")
    if state is None:
        model.set_normalization(**normalization_stats(data, cfg.stats_samples, cfg.seed))
    model.to(device).train()
    batches = step_batches(data, cfg, start, device)
    noise = torch.Generator(device=device).manual_seed(cfg.seed)  # flow-matching noise and times
    learner = Learner(cfg, model, generators={"noise_rng": noise})
    if state is not None:
        learner.load_state_dict(state)

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        loss = model.loss(batch, generator=noise)
        return loss, {"loss": loss.item()}

    def save(step: int, train_state: dict) -> None:
        save_checkpoint(os.path.join(cfg.out_dir, f"step_{step:07d}.pt"), model, {"step": step, "policy_id": "vla"})
        save_checkpoint(last_path, model, {"step": step, "policy_id": "vla", "train_state": train_state})

    out = fit(learner, batches, loss_fn, save, cfg.out_dir, ckpt_interval=cfg.ckpt_interval, desc="train_policy",
              png="loss.png", panels=[Panel("flow-matching loss", ("loss",), log=True)])
    return {**out["train"], "params": model.num_parameters(), "out_dir": cfg.out_dir}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(p, TrainPolicyConfig, skip=("cache_data",), rename={"out_dir": "out"})
    m = VLAConfig()
    p.add_argument("--image-size", type=int, default=m.image_size, help="camera image side of the demos")
    p.add_argument("--horizon", type=int, default=m.horizon, help="actions per chunk")
    p.add_argument("--d-model", type=int, default=m.d_model)
    p.add_argument("--n-layers", type=int, default=m.n_layers)
    p.add_argument("--no-cache-data", action="store_true", help="read demos from disk per sample")
    args = vars(p.parse_args(argv))
    model = VLAConfig(**{k: args.pop(k) for k in ("image_size", "horizon", "d_model", "n_layers")})
    cache_data = not args.pop("no_cache_data")
    cfg = build_config(p, TrainPolicyConfig, {**args, "cache_data": cache_data, "model": model})
    metrics = train_policy(cfg)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
