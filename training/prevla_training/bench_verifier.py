"""Verifier latency on this machine: scoring K = 1, 4, 8, 16 candidates of one observation.

    python -m prevla_training.bench_verifier [--checkpoint zoo:NAME|FILE] [--threads 1,2] \
        [--iters 200] [--out outputs/bench/verifier_latency.json]      (make bench-verifier)

Per K and torch thread count, torch eager, fp32, batch of one observation (the robot's case):

* ``decision``: what ``verifier_node`` runs per candidate set: encode the observation ONCE
  (two 128x128 cameras, area-downsampled inside the model, instruction, proprio) and score K;
* ``naive``: the baseline in the same run: the observation re-encoded for every candidate
  (K forward passes of one candidate each), i.e. no shared encoding;
* ``encode`` / ``score``: the two parts of ``decision``.

Inputs are real-shaped (uint8 128x128 images, a LIBERO instruction, 8-D proprio, chunks in
[-1, 1]); timings are wall-clock per call after warm-up, p50 / p99 in ms. Prints a markdown
table and writes JSON (machine, torch version, every number).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from prevla_training.cli_args import write_report

KS = (1, 4, 8, 16)


def _time(fn, iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ms.append(1000 * (time.perf_counter() - t0))
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(np.mean(ms))}


def bench(checkpoint: str = "", threads: tuple[int, ...] = (1, 2), iters: int = 200, warmup: int = 20,
          image_side: int = 128, seed: int = 0) -> dict:
    """Time every (threads, K) cell; returns the JSON-ready result."""
    from prevla_models import zoo
    from prevla_models.verifier import load_checkpoint

    path = zoo.resolve(checkpoint, "verifier")
    model, extra = load_checkpoint(path)
    model.eval()
    c = model.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (1, c.cameras, image_side, image_side, 3), generator=g, dtype=torch.uint8)
    proprio = torch.randn(1, c.proprio_dim, generator=g)
    words = c.vocab[: min(len(c.vocab), 12)]
    instruction = [" ".join(words) or "pick up the bowl"]
    tokens = model.tokenize(instruction)
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for k in KS:
            actions = torch.rand(1, k, c.horizon, c.action_dim, generator=g) * 2 - 1
            with torch.inference_mode():
                enc = model.encode_observation(images, proprio, tokens)
                cells = {
                    "decision": _time(lambda: model.score(model.encode_observation(images, proprio, tokens), actions), iters, warmup),
                    "encode": _time(lambda: model.encode_observation(images, proprio, tokens), iters, warmup),
                    "score": _time(lambda: model.score(enc, actions), iters, warmup),
                    "naive": _time(lambda: [model.score(model.encode_observation(images, proprio, tokens), actions[:, i:i + 1])
                                            for i in range(k)], max(20, iters // 4), max(5, warmup // 4)),
                }
            rows.append(dict(threads=n_threads, k=k, **{f"{name}_{q}": v[q] for name, v in cells.items() for q in ("p50", "p99")},
                             speedup_vs_naive=cells["naive"]["p50"] / cells["decision"]["p50"]))
    return dict(checkpoint=path, verifier_id=extra.get("verifier_id"), params=model.num_parameters(),
                image_side=image_side, model_image_size=c.image_size, iters=iters,
                machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                             torch=torch.__version__, python=platform.python_version()),
                rows=rows)


def table(result: dict) -> str:
    """Markdown table of a :func:`bench` result."""
    lines = [f"verifier `{result['verifier_id']}` ({result['params']:,} params), torch {result['machine']['torch']} eager fp32, "
             f"{result['machine']['cores']} cores, {result['image_side']}px cameras", "",
             "| threads | K | decision p50 / p99 ms | encode p50 ms | score K p50 ms | naive (re-encode per candidate) p50 ms | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['threads']} | {r['k']} | {r['decision_p50']:.2f} / {r['decision_p99']:.2f} | {r['encode_p50']:.2f} | "
                     f"{r['score_p50']:.2f} | {r['naive_p50']:.2f} | {r['speedup_vs_naive']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_verifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="", help="'' = zoo default verifier, zoo:NAME or a file")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--iters", type=int, default=200, help="timed calls per cell")
    p.add_argument("--out", default="outputs/bench/verifier_latency.json", help="JSON output")
    a = p.parse_args(argv)
    result = bench(a.checkpoint, tuple(int(t) for t in a.threads.split(",")), a.iters)
    write_report(a.out, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
