"""Success rate of the scripted LIBERO expert: a thin wrapper over ``sim.evaluate``.

    prevla expert-eval --suite libero_spatial --episodes-per-task 10 --workers 2 \
        --out outputs/expert_spatial.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluate_expert(suite: str, task_ids: list[int] | None, episodes_per_task: int, workers: int,
                    out_json: str | Path | None, noise_std: float = 0.0, horizon: int = 8,
                    init_start: int = 0, seed: int = 0) -> dict:
    """Scripted-expert summary in the historic JSON layout (written to ``out_json`` if set).

    ``mean_steps`` averages all episodes (as before); ``mean_steps_success`` only successes.
    """
    from prevla_training.evaluate import EvalConfig, evaluate

    result = evaluate(EvalConfig(suite=suite, task_ids=list(task_ids or []),
                                 episodes_per_task=episodes_per_task, init_start=init_start,
                                 policy="scripted_expert", arms=("policy",), num_candidates=1,
                                 horizon=horizon, noise_std=noise_std, seed=seed,
                                 workers=workers))
    keys = ("task_id", "instruction", "episodes", "successes", "success_rate", "mean_steps",
            "mean_steps_success", "ci95")
    summary = dict(suite=suite, episodes_per_task=episodes_per_task, init_start=init_start,
                   noise_std=noise_std, horizon=horizon, seed=seed, workers=workers,
                   success_rate=result["success_rate"]["policy"],
                   wall_time_s=result["wall_time_s"],
                   tasks=[{k: t[k] for k in keys} for t in result["tasks"]],
                   episodes=result["episodes"])
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Success rate of the scripted LIBERO expert.")
    p.add_argument("--suite", default="libero_spatial", help="LIBERO suite")
    p.add_argument("--task-ids", type=int, nargs="*", default=None, help="tasks (default: all)")
    p.add_argument("--episodes-per-task", type=int, default=10, help="init states per task")
    p.add_argument("--init-start", type=int, default=0, help="first official init state")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--horizon", type=int, default=8, help="actions per chunk")
    p.add_argument("--noise-std", type=float, default=0.0,
                   help="Gaussian noise std on the 6 motion dims of every action")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    evaluate_expert(a.suite, a.task_ids, a.episodes_per_task, a.workers, a.out,
                    noise_std=a.noise_std, horizon=a.horizon, init_start=a.init_start, seed=a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
