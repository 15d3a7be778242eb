"""What every prevla training job shares: the optimisation knobs (one base dataclass, validated
naming the field), the warm-up + cosine learning-rate schedule, resuming, and :func:`fit`, the
supervised loop (metrics.jsonl, evaluations, checkpoints, the curves PNG) over a
``prevla_training.learner.Learner``.

A job supplies its model, an iterable of batches (one per step, from the learner's step on) and
a loss function ``batch -> (loss, {name: float})``; everything else is here, once.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from prevla_training.learner import Learner, rng_preserved


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

    @property
    def end(self) -> int:
        """The step this invocation trains to: ``stop_at`` when set (capped at ``steps``)."""
        return min(self.stop_at or self.steps, self.steps)

    def use_cpu_threads(self) -> None:
        """Set torch's CPU threads: ``num_threads``, or all cores up to 8 (more only adds contention)."""
        torch.set_num_threads(self.num_threads or min(os.cpu_count() or 1, 8))


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


class Panel(NamedTuple):
    """One plot of the curves PNG: ``keys`` of metrics.jsonl rows (``val_*``: evaluations)."""

    title: str
    keys: tuple[str, ...]
    log: bool = False


def plot_curves(metrics_path: str, png_path: str, panels: Sequence[Panel]) -> None:
    """Draw ``panels`` side by side from the rows of ``metrics_path`` (a key missing from a row is
    skipped there; ``None`` values are gaps)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 1.7, 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key in panel.keys:
            points = [(r["step"], np.nan if r[key] is None else r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), "o-" if key.startswith("val_") else "-", label=key)
        if panel.log:
            ax.set_yscale("log")
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
        ax.set_title(panel.title), ax.set_xlabel("step"), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(png_path, dpi=100), plt.close(fig)


def fit(learner: Learner, batches: Iterable, loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
        save: Callable[[int, dict], None], out_dir: str, *, panels: Sequence[Panel], png: str = "curves.png",
        evaluate: Callable[[int], dict] | None = None, eval_interval: int = 0, ckpt_interval: int = 0,
        desc: str = "train") -> dict:
    """Train from ``learner.step_count`` to ``cfg.end``; returns ``{"train": last row, "val": last
    evaluation or None}``.

    ``batches`` yields the batch of each step from the learner's step on (drawn lazily, so a
    sampler's state saved at step s is the state before batch s). ``metrics.jsonl`` in
    ``out_dir`` (emptied on a fresh start, appended on resume) gets a row every ``log_interval``
    steps, at evaluations and at the end: the step, the loss parts averaged since the previous
    row, the gradient norm and lr of the last step, steps/s, and ``val_<key>`` of an evaluation
    at that step. ``evaluate(step)`` runs every ``eval_interval`` steps and at the end, with the
    global random streams preserved; ``save(step, train_state)`` writes the checkpoint(s) after
    each evaluation, every ``ckpt_interval`` steps and at the end.
    """
    from tqdm import tqdm

    cfg, model = learner.cfg, learner.model
    start, end = learner.step_count, cfg.end
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if start == 0:
        open(metrics_path, "w").close()
    row, val, window, t0 = {"step": start}, None, [], time.perf_counter()
    with open(metrics_path, "a") as log, tqdm(total=cfg.steps, initial=start, desc=desc) as bar:
        for step, batch in zip(range(start, end), batches):  # range first: no batch drawn past end
            model.train()
            with learner.autocast():
                loss, parts = loss_fn(batch)
            grad_norm = learner.step(loss)
            window.append(parts)
            bar.update(1), bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            done, dt = step + 1, time.perf_counter() - t0
            evaluated = evaluate is not None and (done == end or bool(eval_interval) and done % eval_interval == 0)
            if evaluated:
                with rng_preserved():
                    val = evaluate(done)
            if evaluated or done == end or done % cfg.log_interval == 0:
                row = {"step": done, **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                       "grad_norm": grad_norm, "lr": learner.lr, "steps_per_s": len(window) / dt}
                row.update({f"val_{k}": v for k, v in (val.items() if evaluated else ())})
                log.write(json.dumps(row) + "\n"), log.flush()
                window, t0 = [], time.perf_counter()
            if evaluated or done == end or (ckpt_interval and done % ckpt_interval == 0):
                save(done, learner.state_dict())
    if os.path.getsize(metrics_path):
        plot_curves(metrics_path, os.path.join(out_dir, png), panels)
    return {"train": row, "val": val}
