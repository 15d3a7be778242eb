"""Train the Pre-VLA verifier on branched, labelled candidates (``prevla label-candidates``).

    prevla train-verifier --data outputs/candidates/libero_spatial --out outputs/verifier/full \
        --steps 3000 [--variant full|bce|no_calib|mean_pool] [--resume]
    prevla train-verifier --table outputs/verifier/*/metrics.json   # the ablation table

Episodes are split into train / held-out per task (``val_fraction``, seeded), never decisions
of one episode on both sides. Labels: safety from ``SafetySpec`` over the recorded outcomes,
advantages from the cross-fitted critic (``prevla_training.critic``), divided by their train
standard deviation (stored as ``adv_scale``). With ``prevla branch`` data, ``--labels mc`` takes
the advantages from the Monte-Carlo Q of the continuations and ``--labels value`` from the
critic-bootstrapped Q (``value/q``, ``--value-model``): Q minus the decision's mean, plus the
``task_failure`` unsafe reason on that Q. Batches for step s are drawn with a generator
seeded by (seed, s), so ``--resume`` from ``last.pt`` continues exactly (the optimisation loop is
``prevla_training.loop.fit``). Outputs in ``--out``: ``metrics.jsonl`` (train losses; the
periodic held-out metrics as ``val_*`` in the rows of their steps), ``curves.png``, ``last.pt``,
``verifier.pt`` (final weights + metrics) and ``metrics.json`` (data, class balance, critic
quality, held-out metrics, time).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from prevla_models.verifier import Verifier, VerifierConfig, build_vocab, load_checkpoint, save_checkpoint
from prevla_sim.outcomes import SafetySpec, avoidable, safe_from_reasons, task_failure
from prevla_training.cli_args import add_config_args, build_config
from prevla_training.critic import (CandidateData, cross_fitted_advantages, load_candidates, mc_q,
                                    split_episodes, value_q, with_gamma)
from prevla_training.learner import Learner, param_groups
from prevla_training.loop import Panel, TrainLoopConfig, fit, resume_from
from prevla_training.train_policy import random_shift
from prevla_training.verifier_metrics import all_metrics, selection_q, within_set_spearman

#: Ablations: overrides of the model config (the objective's knobs live there).
VARIANTS = {"full": {}, "bce": {"focal_gamma": 0.0, "focal_alpha": 0.5},
            "no_calib": {"calib_weight": 0.0}, "mean_pool": {"pooling": "mean"}}


@dataclass
class TrainVerifierConfig(TrainLoopConfig):
    """Configuration of :func:`train_verifier` (optimisation fields: ``TrainLoopConfig``)."""

    steps: int = field(default=2000, metadata={"help": "Total optimizer steps."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps before the cosine decay."})
    log_interval: int = field(default=50, metadata={"help": "Steps between training-loss lines in metrics.jsonl."})
    batch_size: int = field(default=32, metadata={"help": "Decisions per step (each with its K candidates)."})
    data: str = field(default="outputs/candidates/libero_spatial", metadata={"help": "label-candidates output dir"})
    out_dir: str = field(default="outputs/verifier/full", metadata={"help": "checkpoints, metrics, curves"})
    variant: str = field(default="full", metadata={"help": "full | bce | no_calib | mean_pool (ablations)"})
    eval_interval: int = field(default=500, metadata={"help": "steps between held-out evaluations (and last.pt)"})
    val_fraction: float = field(default=0.2, metadata={"help": "held-out fraction of each task's episodes"})
    threshold_lr: float = field(default=0.02, metadata={"help": "peak lr of the threshold logit (one scalar)"})
    critic_folds: int = field(default=5, metadata={"help": "cross-fitting folds of the critic"})
    labels: str = field(default="critic", metadata={
        "help": "advantage source: critic (label-candidates data: cross-fitted critic) | mc (prevla branch "
                "data: Monte-Carlo Q of each candidate minus its decision's mean, + the task_failure reason) "
                "| value (prevla branch --value-model data: the same with the bootstrapped Q value/q)"})
    failure_q: float = field(default=0.0, metadata={
        "help": "mc / value labels: a candidate whose Q is at most this is unsafe (task_failure) ..."})
    init_from: str = field(default="", metadata={
        "help": "start from this verifier's weights (zoo:NAME, 'zoo:default' or a file; its architecture "
                "and input normalisation) instead of a fresh model: transfer to a small label set"})
    failure_gap: float = field(default=0.5, metadata={
        "help": "... when another candidate of its decision succeeds at least this much more often"})
    unavoidable_unsafe: bool = field(default=False, metadata={
        "help": "also label unsafe the events every candidate of a decision causes (state, not chunk)"})
    gamma: float = field(default=0.0, metadata={
        "help": "per-step discount of the advantage labels; 0 = the labelling run's (1 = success probability)"})
    safety: SafetySpec = field(default_factory=SafetySpec, metadata={"help": "unsafe-label thresholds"})
    model: VerifierConfig = field(default_factory=lambda: VerifierConfig(dropout=0.1), metadata={"help": "model config"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.safety, dict):
            self.safety = SafetySpec(**self.safety)
        if isinstance(self.model, dict):
            self.model = VerifierConfig(**self.model)
        if self.init_from and self.variant != "full":
            raise ValueError("TrainVerifierConfig.init_from: a pretrained model keeps its architecture and "
                             f"objective; train variant {self.variant!r} from scratch")
        if self.labels not in ("critic", "mc", "value"):
            raise ValueError(f"TrainVerifierConfig.labels must be 'critic', 'mc' or 'value', got {self.labels!r}")
        if not (0 <= self.failure_q < 1 and 0 < self.failure_gap <= 1):
            raise ValueError("TrainVerifierConfig.failure_q must be in [0, 1) and failure_gap in (0, 1]")
        if self.variant not in VARIANTS:
            raise ValueError(f"TrainVerifierConfig.variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        for name in ("eval_interval", "critic_folds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainVerifierConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.gamma == 0 or 0 < self.gamma <= 1):
            raise ValueError(f"TrainVerifierConfig.gamma must be 0 (the labels') or in (0, 1], got {self.gamma}")
        if not self.threshold_lr > 0:
            raise ValueError(f"TrainVerifierConfig.threshold_lr must be > 0, got {self.threshold_lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"TrainVerifierConfig.val_fraction must be in (0, 1), got {self.val_fraction}")


def make_labels(cfg: TrainVerifierConfig, data: CandidateData, train_eps: np.ndarray) -> dict:
    """Safety labels, normalised advantages, and the report on both (class balance, critic)."""
    if cfg.gamma:
        data = with_gamma(data, cfg.gamma)
    reasons = cfg.safety.unsafe_reasons(data.outcome)
    if not cfg.unavoidable_unsafe:
        reasons = avoidable(reasons)
    n_tasks = int(max(e["task_id"] for e in data.episodes)) + 1
    adv, critic_report = cross_fitted_advantages(data, cfg.critic_folds, n_tasks, cfg.seed)
    if cfg.labels in ("mc", "value"):
        q = mc_q(data) if cfg.labels == "mc" else value_q(data)
        reasons["task_failure"] = task_failure(q, cfg.failure_q, cfg.failure_gap)
        q_adv = q - q.mean(1, keepdims=True)
        if cfg.labels == "mc":
            m = data.mc_success.shape[-1]
            critic_report = dict(source="mc", continuations=int(m), q_mean=float(q.mean()),
                                 label_noise_sd=float(np.sqrt((q * (1 - q) / m).mean())),
                                 critic_vs_mc_spearman_within_set=within_set_spearman(adv, q_adv),
                                 critic=critic_report)
        else:
            mc = mc_q(data) if data.mc_success is not None else None
            vs_mc = None if mc is None else within_set_spearman(q_adv, mc - mc.mean(1, keepdims=True))
            critic_report = dict(source="value", q_mean=float(q.mean()), q_min=float(q.min()), q_max=float(q.max()),
                                 critic_vs_value_spearman_within_set=within_set_spearman(adv, q_adv),
                                 value_vs_mc_spearman_within_set=vs_mc, critic=critic_report)
        adv = q_adv
    safe = safe_from_reasons(reasons)
    train_rows = np.isin(data.episode, train_eps)
    scale = float(adv[train_rows].std()) or 1.0
    by_source = {f"source_{s}": float(1 - safe[:, i].mean()) for i, s in enumerate(data.source.tolist())}
    balance = dict(candidates=int(safe.size), unsafe=int((safe == 0).sum()),
                   unsafe_rate=float((safe == 0).mean()),
                   by_reason={k: int(v.sum()) for k, v in reasons.items()}, unsafe_rate_by_source=by_source)
    return dict(safe=safe, advantage=adv / scale, adv_scale=scale, critic=critic_report, balance=balance)


def verifier_proprio(data: CandidateData, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 15): the policy's 8-D proprio + the 7 arm joint positions (from the state)."""
    from prevla_models.geometry import with_joints
    from prevla_sim.outcomes import JOINTS

    return with_joints(data.proprio[rows], data.state[rows][:, JOINTS])


def model_inputs(data: CandidateData, rows: np.ndarray) -> dict:
    """Decisions ``rows`` -> the verifier's inputs: images, proprio, instructions, actions."""
    return {"images": torch.from_numpy(data.images[rows]), "proprio": torch.from_numpy(verifier_proprio(data, rows)),
            "instructions": [data.instructions[i] for i in rows], "actions": torch.from_numpy(data.actions[rows])}


def make_batch(data: CandidateData, labels: dict, rows: np.ndarray) -> dict:
    """Decisions ``rows`` -> the dict ``Verifier.loss`` takes (inputs + labels)."""
    return {**model_inputs(data, rows), "safe": torch.from_numpy(labels["safe"][rows]),
            "advantage": torch.from_numpy(labels["advantage"][rows])}


@torch.no_grad()
def predict(model: Verifier, data: CandidateData, rows: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(P(safe), predicted advantage), each (len(rows), K)."""
    model.eval()
    ps, adv = [], []
    for i in range(0, len(rows), batch):
        x = model_inputs(data, rows[i:i + batch])
        out = model(x["images"], x["proprio"], x["instructions"], x["actions"])
        ps.append(torch.sigmoid(out["safety_logit"]).numpy())
        adv.append(out["advantage"].numpy())
    return np.concatenate(ps), np.concatenate(adv)


def evaluate(model: Verifier, data: CandidateData, labels: dict, rows: np.ndarray) -> dict:
    """Held-out metrics (``verifier_metrics.all_metrics``) of ``model`` on decisions ``rows``,
    and with branch data the Monte-Carlo success of what each selection rule picks."""
    p, a = predict(model, data, rows)
    out = all_metrics(p, a, model.threshold, labels["safe"][rows], labels["advantage"][rows])
    if data.mc_success is not None:
        out.update(selection_q(p, a, model.threshold, mc_q(data)[rows]))
    return out


#: The curves PNG: training losses, the threshold, held-out metrics.
PANELS = (Panel("training losses", ("focal", "advantage", "calib"), log=True),
          Panel("threshold tau (P(safe))", ("threshold",)),
          Panel("held-out", ("val_auroc_unsafe", "val_auprc_unsafe", "val_spearman_advantage", "val_win_rate")))


def train_verifier(cfg: TrainVerifierConfig, data: CandidateData | None = None) -> dict:
    """Train (or resume) one verifier variant; returns the metrics.json content."""
    t_all = time.perf_counter()
    cfg.use_cpu_threads()
    data = load_candidates(cfg.data) if data is None else data
    train_eps, val_eps = split_episodes(data, cfg.val_fraction, cfg.seed)
    t_lab = time.perf_counter()
    labels = make_labels(cfg, data, train_eps)
    label_s = time.perf_counter() - t_lab
    train_rows, val_rows = np.where(np.isin(data.episode, train_eps))[0], np.where(np.isin(data.episode, val_eps))[0]
    last_path = os.path.join(cfg.out_dir, "last.pt")
    torch.manual_seed(cfg.seed)
    model, state, start = resume_from(last_path, cfg.resume, load_checkpoint)
    if model is None and cfg.init_from:
        from prevla_models import zoo

        model, _ = load_checkpoint(zoo.resolve("" if cfg.init_from == "zoo:default" else cfg.init_from, "verifier"))
        unknown = sorted(set(build_vocab(sorted(set(data.instructions)))) - set(model.cfg.vocab))
        if unknown:
            raise ValueError(f"init_from: {cfg.init_from} does not know the words {unknown[:5]}")
    if model is None:
        k = data.actions.shape[1:]
        mcfg = VerifierConfig(**{**asdict(cfg.model), **VARIANTS[cfg.variant], "horizon": int(k[1]), "proprio_dim": 15,
                                 "action_dim": int(k[2]), "vocab": build_vocab(sorted(set(data.instructions)))})
        model = Verifier(mcfg)
        p = verifier_proprio(data, train_rows)
        model.set_normalization(p.mean(0), p.std(0))
    # The threshold is one calibration scalar: its own lr (threshold_lr), so it can travel
    # several logits in a short run; never decayed (decay would pull tau towards 0.5).
    own = {"threshold_logit": {"weight_decay": 0.0, "lr": cfg.threshold_lr}}
    learner = Learner(cfg, model, param_groups(model, cfg.weight_decay, own=own))
    if state is not None:
        learner.load_state_dict(state)
    extra_base = {"verifier_id": f"verifier_{cfg.variant}", "adv_scale": labels["adv_scale"],
                  "safety_spec": asdict(cfg.safety), "variant": cfg.variant}

    def batches():
        for step in range(start, cfg.end):  # step s: generators seeded by (seed, s), exact on resume
            g = np.random.default_rng([cfg.seed, step])
            batch = make_batch(data, labels, g.choice(train_rows, cfg.batch_size, replace=len(train_rows) < cfg.batch_size))
            batch["images"] = random_shift(batch["images"], cfg.aug_shift, torch.Generator().manual_seed(cfg.seed * 7919 + step))
            yield batch

    def save(step: int, train_state: dict) -> None:
        save_checkpoint(last_path, model, {**extra_base, "step": step, "train_state": train_state})

    t_train = time.perf_counter()
    val = fit(learner, batches(), model.loss, save, cfg.out_dir, panels=PANELS,
              evaluate=lambda step: evaluate(model, data, labels, val_rows), eval_interval=cfg.eval_interval,
              desc=f"verifier {cfg.variant}")["val"]
    train_s = time.perf_counter() - t_train
    if val is None:  # resumed at the end: no step ran, so nothing was evaluated yet
        val = evaluate(model, data, labels, val_rows)
    train_m = evaluate(model, data, labels, train_rows[:: max(1, len(train_rows) // 1000)])
    result = dict(config=asdict(cfg), variant=cfg.variant, params=model.num_parameters(),
                  data=dict(episodes=len(data.episodes), train_episodes=len(train_eps), val_episodes=len(val_eps),
                            decisions=len(data), train_decisions=len(train_rows), val_decisions=len(val_rows),
                            candidates_per_decision=int(data.actions.shape[1]),
                            episode_success_rate=float(np.mean([e["success"] for e in data.episodes]))),
                  class_balance=labels["balance"], critic=labels["critic"], adv_scale=labels["adv_scale"],
                  val=val, train_subset=train_m, steps=cfg.end, label_s=round(label_s, 1), train_s=round(train_s, 1),
                  wall_s=round(time.perf_counter() - t_all, 1))
    save_checkpoint(os.path.join(cfg.out_dir, "verifier.pt"), model, {**extra_base, "step": cfg.end, "metrics": val})
    with open(os.path.join(cfg.out_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(ablation_table([result]))
    return result


def _fmt(v, pct: bool = False) -> str:
    return "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")


def ablation_table(results: list[dict]) -> str:
    """Markdown: one row per variant with the held-out metrics."""
    lines = ["| variant | labels | AUROC unsafe | AUPRC unsafe | ECE | tau | unsafe recall @tau | false rejects @tau "
             "| Spearman adv | top-vs-random win | pick unsafe (random) | MC success: policy / gate / rank / best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        v = r["val"]
        q = (" / ".join(_fmt(v[k], True) for k in ("q_policy", "q_gate", "q_rank", "q_best"))
             if "q_policy" in v else "-")
        name = r["variant"] + (f" from {r['config']['init_from']}" if r["config"].get("init_from") else "")
        lines.append(f"| {name} | {r['config'].get('labels', 'critic')} | {_fmt(v['auroc_unsafe'])} | "
                     f"{_fmt(v['auprc_unsafe'])} | {_fmt(v['ece'])} | "
                     f"{_fmt(v['threshold'])} | {_fmt(v['unsafe_recall'], True)} | {_fmt(v['false_reject_rate'], True)} | "
                     f"{_fmt(v['spearman_advantage'])} | {_fmt(v['win_rate'], True)} | "
                     f"{_fmt(v['pick_unsafe'], True)} ({_fmt(v['random_unsafe'], True)}) | {q} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``prevla train-verifier``."""
    p = argparse.ArgumentParser(prog="prevla train-verifier", description=__doc__.split("\n\n")[0])
    add_config_args(p, TrainVerifierConfig, rename={"out_dir": "out"})
    p.add_argument("--table", nargs="+", metavar="METRICS_JSON", help="print the ablation table of these runs and exit")
    args = vars(p.parse_args(argv))
    table = args.pop("table")
    if table:
        print(ablation_table([json.load(open(x)) for x in table]))
        return 0
    train_verifier(build_config(p, TrainVerifierConfig, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
