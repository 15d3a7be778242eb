"""The shared learner (``prevla_training.learner``) and supervised loop (``loop.fit``): the
no-decay rule, the schedule, clipping, AMP only on CUDA, the metrics.jsonl rows, and exact resume
(N steps == N/2 + resume + N/2, every random stream included) on a tiny model."""
from __future__ import annotations

import io
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from prevla_training.learner import Learner, global_rng_state, param_groups, rng_preserved, set_global_rng_state
from prevla_training.loop import Panel, TrainLoopConfig, fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CFG = TrainLoopConfig(steps=8, lr=1e-2, warmup_steps=2, log_interval=2, grad_clip=0.5)


class Tiny(torch.nn.Module):
    """Every kind of parameter the no-decay rule sorts, and dropout (draws torch's global RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.word_emb = torch.nn.Embedding(5, 4)
        self.pos = torch.nn.Parameter(torch.zeros(3, 4))
        self.lin = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.drop = torch.nn.Dropout(0.3)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        h = self.word_emb(batch["ids"]) + self.pos
        out = self.scale * self.norm(self.drop(self.lin(h))).sum(-1)
        loss = (out - batch["y"]).pow(2).mean() * (1 + 0.1 * random.random() + 0.1 * np.random.rand())
        return loss, {"total": float(loss.detach()), "mse": float(loss.detach())}


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def sampled(rng: np.random.Generator, device: str = "cpu"):
    """An endless batch stream drawn from one numpy generator (its state must be checkpointed)."""
    while True:
        yield {"ids": torch.from_numpy(rng.integers(0, 5, (6, 3))).to(device),
               "y": torch.from_numpy(rng.normal(size=(6, 3))).float().to(device)}


def run(cfg: TrainLoopConfig, out, checkpoint: bytes | None, evaluate=None, device: str = "cpu") -> tuple[Tiny, bytes]:
    """Train ``cfg`` from ``checkpoint`` (None: fresh); returns the model and the last checkpoint
    saved, as bytes that load with ``weights_only=True`` as prevla's checkpoints are read."""
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = tiny().to(device)
    rng = np.random.default_rng(1)
    learner = Learner(cfg, model, generators={"sampler": rng})
    assert (learner.amp_dtype is not None) == (device == "cuda")  # mixed precision on CUDA only
    saved = io.BytesIO()

    def save(step: int, train_state: dict) -> None:
        saved.seek(0), saved.truncate()
        torch.save({"model": model.state_dict(), "train_state": train_state}, saved)

    if checkpoint is not None:
        state = load(checkpoint)
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["train_state"])
    fit(learner, sampled(rng, device), model.loss, save, str(out), panels=[Panel("loss", ("total",), log=True)],
        evaluate=evaluate, eval_interval=3)
    return model, saved.getvalue()


def load(checkpoint: bytes) -> dict:
    return torch.load(io.BytesIO(checkpoint), weights_only=True)


def test_exact_resume_restores_every_random_stream(tmp_path):
    straight, _ = run(CFG, tmp_path / "a", None)
    _, half = run(replace(CFG, stop_at=4), tmp_path / "b", None)
    assert load(half)["train_state"]["step"] == 4
    resumed, _ = run(CFG, tmp_path / "b", half)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]  # appended on resume, not restarted
    assert (tmp_path / "b" / "curves.png").stat().st_size > 0


def test_resume_without_the_saved_streams_differs(tmp_path):
    """The test above can fail: a train state stripped of its random streams resumes elsewhere."""
    straight, _ = run(CFG, tmp_path / "a", None)
    _, half = run(replace(CFG, stop_at=4), tmp_path / "b", None)
    for stream in ("torch_rng", "numpy_rng", "python_rng", "sampler"):
        state = load(half)
        del state["train_state"][stream]
        buf = io.BytesIO()
        torch.save(state, buf)
        resumed, _ = run(CFG, tmp_path / stream, buf.getvalue())
        assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(),
                                                         resumed.state_dict().values())), stream


def test_evaluations_are_logged_and_leave_the_random_streams_alone(tmp_path):
    def evaluate(step: int) -> dict:
        torch.rand(3), np.random.rand(), random.random()  # would shift the training draws
        return {"score": step / 10, "missing": None}

    plain, _ = run(CFG, tmp_path / "a", None)
    with_eval, saved = run(CFG, tmp_path / "b", None, evaluate=evaluate)
    for a, b in zip(plain.state_dict().values(), with_eval.state_dict().values()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 8]  # every log_interval, each evaluation, the end
    assert [r.get("val_score") for r in rows] == [None, 0.3, None, 0.6, 0.8] and rows[1]["val_missing"] is None
    assert {"total", "mse", "grad_norm", "lr", "steps_per_s"} <= set(rows[0]) and load(saved)["train_state"]["step"] == 8


def test_fresh_start_empties_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 99}\n')
    run(replace(CFG, steps=2), tmp_path, None)
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2]


def test_no_decay_rule_and_own_groups():
    model = tiny()
    groups = param_groups(model, 0.1, own={"scale": {"lr": 0.5, "weight_decay": 0.0}})
    names = {id(p): n for n, p in model.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in groups] == [
        ["lin.weight"], ["lin.bias", "norm.bias", "norm.weight", "pos", "word_emb.weight"], ["scale"]]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.0] and groups[2]["lr"] == 0.5
    only_decayed = param_groups(model, 0.1, no_decay=lambda n, p: False)
    assert len(only_decayed) == 1  # empty groups dropped
    with pytest.raises(ValueError, match="'nope'"):
        param_groups(model, 0.1, own={"nope": {}})


def test_step_follows_the_schedule_clips_and_uses_no_amp_on_cpu():
    model = tiny()
    own = {"scale": {"lr": 0.5}}
    learner = Learner(CFG, model, param_groups(model, CFG.weight_decay, own=own))
    assert learner.amp_dtype is None and not learner.scaler.is_enabled()
    with learner.autocast():
        assert not torch.is_autocast_enabled("cpu")
    for step in range(CFG.steps):
        assert learner.lr == pytest.approx(CFG.lr * CFG.lr_factor(step))
        assert learner.opt.param_groups[-1]["lr"] == pytest.approx(0.5 * CFG.lr_factor(step))
        loss = model.loss({"ids": torch.zeros(2, 3, dtype=torch.long), "y": torch.full((2, 3), 100.0)})[0]
        norm = learner.step(loss)
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        assert norm > CFG.grad_clip and float(clipped) == pytest.approx(CFG.grad_clip, rel=1e-4)
    assert learner.state_dict()["step"] == CFG.steps


def test_global_rng_state_round_trip():
    with rng_preserved():
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        state = global_rng_state()
        first = (torch.rand(2), np.random.rand(2), random.random())
        set_global_rng_state(state)
        again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_end_is_stop_at_capped_at_steps():
    assert TrainLoopConfig(steps=10, stop_at=4).end == 4
    assert TrainLoopConfig(steps=10, stop_at=40).end == 10 and TrainLoopConfig(steps=10).end == 10


@pytest.mark.gpu
def test_cuda_runs_in_mixed_precision_and_resumes_exactly(tmp_path):
    straight, _ = run(CFG, tmp_path / "a", None, device="cuda")
    _, half = run(replace(CFG, stop_at=4), tmp_path / "b", None, device="cuda")
    resumed, _ = run(CFG, tmp_path / "b", half, device="cuda")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
