"""What every prevla training job shares: the optimisation knobs (one base dataclass, validated
naming the field) and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field


@dataclass
class TrainLoopConfig:
    """Optimisation fields of a training job (subclasses add data, model and output fields)."""

    steps: int = field(default=20000, metadata={"help": "Total optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Samples per step."})
    lr: float = field(default=3e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps before the cosine decay."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final lr as a fraction of the peak."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm (0 = off)."})
    log_interval: int = field(default=10, metadata={"help": "Steps between metrics.jsonl lines."})
    seed: int = field(default=0, metadata={"help": "Seed of model init and batch sampling."})
    num_threads: int = field(default=0, metadata={"help": "CPU torch threads (0 = all cores, at most 8)."})
    aug_shift: int = field(default=8, metadata={"help": "Random-shift augmentation: max shift in input pixels (0 = off)."})
    resume: bool = field(default=False, metadata={"help": "Continue from out_dir/last.pt if it exists."})
    stop_at: int = field(default=0, metadata={"help": "Stop (with a checkpoint) at this step, e.g. for time-limited jobs; 0 = run to steps."})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("steps", "batch_size", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{owner}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_threads", "stop_at", "aug_shift"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{owner}.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"{owner}: need lr > 0, weight_decay >= 0, grad_clip >= 0, 0 <= min_lr_ratio <= 1")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak lr at ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        frac = (step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def resume_from(last_path: str, resume: bool, load_checkpoint):
    """(model, train_state, start step) from ``last_path`` when ``resume`` and it exists,
    else (None, None, 0). ValueError for a checkpoint without training state."""
    if not (resume and os.path.exists(last_path)):
        return None, None, 0
    model, extra = load_checkpoint(last_path)
    state = extra.get("train_state")
    if state is None:
        raise ValueError(f"{last_path} has no training state to resume from")
    return model, state, int(state["step"])
