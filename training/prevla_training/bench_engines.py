"""Inference backends on this machine: torch eager vs ONNX Runtime (vs TensorRT / torch.compile).

    python -m prevla_training.bench_engines [--threads 1,2] [--iters 200] [--ks 1,4,8,16] \
        [--backends torch,onnxruntime,tensorrt,torch_compile] [--out outputs/bench/engines.json]

For each backend that runs here and each thread count (torch: ``torch.set_num_threads``; ONNX
Runtime: the session's intra-op threads), one observation at a time (the robot's case):

* ``verifier``: scoring K = 1, 4, 8, 16 candidate chunks (one graph call: encode + score K);
* ``vla``: the policy's K-sample forward (the ``noise`` input with K rows, full flow integration)
  at K = 8, 16.

Inputs are the zoo's recorded LIBERO observations (:func:`prevla_training.export.recorded_feeds`),
cycled. Wall-clock per call after warm-up: p50 / p99 / mean ms, throughput (candidates/s =
K / mean s) and speed-up = torch eager fp32 p50 / backend p50 for the same (threads, model, K).
Backends are timed in alternating blocks so load drift hits all of them alike. Backends that
cannot run here (TensorRT without a GPU, ORT GPU providers missing, torch.compile on CPU unless
named) are listed under ``skipped`` with the reason. Prints a markdown table, writes JSON and .md.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from prevla_training.cli_args import write_report

KS = (1, 4, 8, 16)
POLICY_KS = (8, 16)
BACKENDS = ("torch", "onnxruntime", "tensorrt", "torch_compile")
QS = ("p50", "p99", "mean")


def machine_info(device: str) -> dict:
    """CPU model, cores, GPU and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                device=device, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    for lib in ("onnxruntime", "tensorrt"):
        try:
            info[lib] = __import__(lib).__version__
        except Exception:  # missing, or a stub wheel raising at import
            info[lib] = None
    return info


def load_runner(kind: str, backend: str, device: str, threads: int):
    """A runner of the zoo's default ``kind`` model on exactly ``backend`` (a named backend
    never falls back: it loads or raises)."""
    from prevla_ros.runtime.engines import EngineError, EngineUnavailable, load_model

    if backend == "torch_compile":
        from prevla_models.graphs import TorchRunner

        return TorchRunner.from_checkpoint(load_model(kind, "", "torch", device).path, device, compile=True)
    try:
        return load_model(kind, "", backend, device, threads).runner
    except EngineError as e:
        if backend == "tensorrt" and not device.startswith("cuda"):
            raise EngineUnavailable(f"needs a CUDA GPU (device {device}); {e}") from e
        raise


def time_blocks(fns: dict[str, Callable[[], object]], iters: int, warmup: int, block: int = 20) -> dict[str, dict]:
    """p50 / p99 / mean ms of each fn, timed in alternating blocks of ``block`` calls (each block
    starts with one untimed call: the previous backend's thread pool may still be spinning)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ms: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(v) < iters for v in ms.values()):
        for name, fn in fns.items():
            if len(ms[name]) < iters:
                fn()
            for _ in range(min(block, iters - len(ms[name]))):
                t0 = time.perf_counter()
                fn()
                ms[name].append(1000 * (time.perf_counter() - t0))
    return {name: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "mean": float(np.mean(v))}
            for name, v in ms.items()}


def _cycler(runner, feeds: list[dict[str, np.ndarray]]) -> Callable[[], object]:
    it = itertools.cycle(feeds)
    return lambda: runner(next(it))


def bench(threads: tuple[int, ...] = (1, 2), iters: int = 200, ks: tuple[int, ...] = KS,
          policy_ks: tuple[int, ...] = POLICY_KS, backends: tuple[str, ...] | None = None,
          device: str = "auto", warmup: int = 20) -> dict:
    """Time every (threads, model, K, backend) cell; returns the JSON-ready result.

    ``backends=None``: torch, onnxruntime, tensorrt, plus torch_compile on a GPU. torch eager is
    always timed (the baseline). The torch thread count is restored on return.
    """
    from prevla_ros.runtime.engines import EngineError, EngineUnavailable, resolve_device
    from prevla_training.export import recorded_feeds

    device = resolve_device(device)
    gpu = device.startswith("cuda")
    wanted = tuple(backends) if backends else BACKENDS
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {BACKENDS}")
    skipped: list[dict] = []

    def skip(backend: str, model: str, reason: str) -> None:
        entry = dict(backend=backend, model=model, reason=reason)
        if entry not in skipped:
            skipped.append(entry)

    run = ["torch"] + [b for b in wanted if b != "torch"]
    if "torch_compile" in run and not gpu and not backends:
        run.remove("torch_compile")
        for kind in ("verifier", "vla"):
            skip("torch_compile", kind, "CPU: compiling takes minutes and rarely pays off here; "
                                        "name it in --backends to time it")
    cache: dict[tuple, object] = {}
    rows: list[dict] = []
    old_threads = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            for kind, kks in (("verifier", ks), ("vla", policy_ks)):
                runners = {}
                for b in run:
                    key = (kind, b, n if b == "onnxruntime" else 0)
                    try:
                        if key not in cache:
                            cache[key] = load_runner(kind, b, device, n)
                        runners[b] = cache[key]
                    except (EngineUnavailable, EngineError, ImportError, FileNotFoundError, ValueError,
                            RuntimeError) as e:
                        skip(b, kind, f"{type(e).__name__}: {e}")
                for k in kks:
                    fns = {}
                    for b, r in runners.items():
                        fn = _cycler(r, recorded_feeds(r.meta, k))
                        try:
                            fn()  # the first call compiles / builds (torch_compile, TensorRT profiles)
                            fns[b] = fn
                        except Exception as e:  # an engine that cannot take this K, a compiler missing, ...
                            skip(b, kind, f"K={k}: {type(e).__name__}: {str(e)[:300]}")
                    for b, t in time_blocks(fns, iters, warmup).items():
                        rows.append(dict(model=kind, backend=b, threads=n, k=k, device=device,
                                         providers=getattr(runners[b], "providers", None),
                                         **{f"{q}_ms": t[q] for q in QS}, candidates_per_s=k / (t["mean"] / 1000)))
    finally:
        torch.set_num_threads(old_threads)
    base = {(r["threads"], r["model"], r["k"]): r["p50_ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        ref = base.get((r["threads"], r["model"], r["k"]))
        r["speedup_vs_torch"] = ref / r["p50_ms"] if ref else None
    return dict(machine=machine_info(device), device=device, iters=iters, warmup=warmup, threads=list(threads),
                ks=list(ks), policy_ks=list(policy_ks), backends=run, rows=rows, skipped=skipped,
                summary=summary(rows))


def summary(rows: list[dict], ks: tuple[int, ...] = (8, 16), target: float = 1.5) -> dict:
    """Verifier ONNX Runtime / torch eager speed-up (p50) at K = 8, 16 (else every K timed) per thread count."""
    timed = sorted({r["k"] for r in rows if r["model"] == "verifier"})
    ks = tuple(k for k in ks if k in timed) or tuple(timed)
    cells = {f"threads={r['threads']}": {} for r in rows}
    for r in rows:
        if r["model"] == "verifier" and r["backend"] == "onnxruntime" and r["k"] in ks and r["speedup_vs_torch"]:
            cells[f"threads={r['threads']}"][f"K={r['k']}"] = round(r["speedup_vs_torch"], 3)
    values = [v for c in cells.values() for v in c.values()]
    return dict(verifier_ort_vs_torch=cells, min=min(values) if values else None, target=target,
                meets_target=bool(values) and min(values) >= target)


def table(result: dict) -> str:
    """Markdown table of a :func:`bench` result."""
    m = result["machine"]
    libs = ", ".join(f"{lib} {m[lib]}" for lib in ("torch", "onnxruntime", "tensorrt") if m.get(lib))
    lines = [f"{m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; {libs}; device {result['device']}, "
             f"{result['iters']} calls per cell, one observation, recorded LIBERO inputs", "",
             "| model | backend | threads | K | p50 ms | p99 ms | mean ms | candidates/s | speed-up vs torch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: (r["model"] != "verifier", r["threads"], r["k"])):
        up = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        lines.append(f"| {r['model']} | {r['backend']} | {r['threads']} | {r['k']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['mean_ms']:.2f} | {r['candidates_per_s']:,.0f} | {up} |")
    s = result["summary"]
    cells = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.2f}x" for k, v in c.items())
                      for t, c in s["verifier_ort_vs_torch"].items() if c)
    verdict = "n/a" if s["min"] is None else "meets" if s["meets_target"] else "misses"
    lines += ["", f"Verifier ONNX Runtime vs torch eager (p50): {cells or 'n/a'} -> {verdict} the {s['target']}x target."]
    if result["skipped"]:
        lines += ["", "Skipped:"] + [f"- {e['backend']} ({e['model']}): {e['reason']}" for e in result["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma list of torch / ORT thread counts")
    p.add_argument("--iters", type=int, default=200, help="timed calls per cell")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per cell")
    p.add_argument("--ks", default="1,4,8,16", help="verifier candidate counts")
    p.add_argument("--policy-ks", default="8,16", help="VLA samples per forward")
    p.add_argument("--backends", default="", help=f"comma list of {','.join(BACKENDS)} ('' = all that fit here)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--out", default="outputs/bench/engines.json", help="JSON output (.md written beside it)")
    a = p.parse_args(argv)
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    result = bench(ints(a.threads), a.iters, ints(a.ks), ints(a.policy_ks),
                   tuple(b for b in a.backends.split(",") if b) or None, a.device, a.warmup)
    write_report(a.out, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
