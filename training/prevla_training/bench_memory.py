"""D-VLA's learner memory: the static pool against a naive learner, same updates, one run.

    python -m prevla_training.bench_memory [--updates 5] [--batch 64] [--device auto] \
        [--out outputs/bench/memory.json]

Two arms of the same :class:`~prevla_training.rl.actors.RLLearner` (the zoo VLA as a
:class:`~prevla_models.flow_rl.FlowActorCritic`, built without Ray: ``ring=None``):

* ``static``: as D-VLA runs it. Weights, AdamW moments and gradient buffers are allocated once
  (:meth:`RLLearner.allocate_static_pool`) and gradients are zeroed in place
  (``grads_to_none=False``).
* ``naive``: the pool is never pre-allocated; gradients are set to ``None`` at every optimiser
  step (``grads_to_none=True``) and the AdamW state appears lazily at the first step.

Each arm runs in a fresh process (multiprocessing spawn) so its peak RSS is its own. It feeds
``RLLearner._ppo`` ``--updates`` times the same synthetic, correctly shaped batch: random uint8
images (B, cameras, S, S, 3), random proprio, flow chains (B, N+1, H, A) and their behaviour
log-probabilities from the model's own ``sample``, random advantages and returns, one
LIBERO-Spatial instruction. Measured per arm:

* peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; model loading included, alike in
  both arms) and RSS (``/proc/self/status`` VmRSS) before the first update and after each;
* tensors (re)allocated per update: every ``p.grad`` and every optimiser-state tensor is
  compared before and after the update; one counts when it is new, or its storage changed
  (``data_ptr()``), or the tensor object seen before is gone (a weak reference, so that an
  allocator handing back the same address is not mistaken for reuse, and nothing is kept
  alive). A tensor replaced at several optimiser steps of one update counts once;
* wall time per update, optimiser steps per update, and on CUDA
  ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``.

Prints the table, writes JSON + .md. Reported, never asserted; the naive arm is the baseline
(ratios naive / static).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import weakref

import numpy as np
import torch

from prevla_training.cli_args import write_report

ARMS = ("static", "naive")
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
MIB = 2.0 ** 20


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; 0 where absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def pool_tensors(learner) -> dict[str, torch.Tensor | None]:
    """Every gradient buffer and optimiser-state tensor of ``learner`` (an RLLearner), by name."""
    names = {id(p): n for n, p in learner.model.named_parameters()}
    out: dict[str, torch.Tensor | None] = {f"grad:{n}": p.grad for n, p in learner.model.named_parameters()
                                           if p.requires_grad}
    for p, state in learner.learner.opt.state.items():
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f"opt:{names.get(id(p), id(p))}:{k}"] = v
    return out


def snapshot(tensors: dict) -> dict:
    return {k: (weakref.ref(t), t.data_ptr()) for k, t in tensors.items() if t is not None}


def reallocated(before: dict, after: dict) -> dict[str, int]:
    """Tensors of ``after`` that are new or not the storage ``before`` saw, by kind."""
    n = {"grad": 0, "opt": 0}
    for k, t in after.items():
        if t is None:
            continue
        old = before.get(k)
        if old is None or old[0]() is not t or old[1] != t.data_ptr():
            n[k.split(":", 1)[0]] += 1
    return n


def synthetic_batch(model, batch: int, image_size: int, seed: int, device: str) -> dict:
    """A batch shaped as ``RLLearner._batch`` makes it, chains and logp from ``model.sample``."""
    c = model.vla.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, c.cameras, image_size, image_size, 3), dtype=torch.uint8, generator=g)
    proprio = torch.randn(batch, c.proprio_dim, generator=g)
    out = model.sample(images.to(device), proprio.to(device), [INSTRUCTION] * batch, k=1, generator=g)
    rng = np.random.default_rng(seed)
    return dict(images=images.numpy(), proprio=proprio.numpy(), instructions=[INSTRUCTION] * batch,
                chain=out["chain"][:, 0].float().cpu().numpy(), logp=out["logp"][:, 0].float().cpu().numpy(),
                adv=rng.standard_normal(batch).astype(np.float32), ret=rng.standard_normal(batch).astype(np.float32))


def run_arm(arm: str, updates: int = 5, batch: int = 64, image_size: int = 128, seed: int = 0,
            device: str = "cpu") -> dict:
    """One arm in this process (:func:`main` gives each a fresh one). Returns its measurements."""
    from prevla_training.rl.actors import RLLearner
    from prevla_training.rl.config import RLConfig

    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")

    class NaiveLearner(RLLearner):
        def allocate_static_pool(self) -> None:  # no pool: lazy AdamW state, grads set to None
            self.learner.grads_to_none = True

    cuda = device == "cuda"
    cfg = RLConfig(batch_size=batch, seed=seed, learner_gpus=1.0 if cuda else 0.0)
    learner = (RLLearner if arm == "static" else NaiveLearner)(cfg, ring=None)
    b = synthetic_batch(learner.model, batch, image_size, seed, learner.device)
    if cuda:
        torch.cuda.synchronize()
    rss0, rows = rss_bytes(), []
    for u in range(updates):
        before, steps0 = snapshot(pool_tensors(learner)), learner.learner.step_count
        t0 = time.perf_counter()
        stats = learner._ppo(b)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        learner.version += 1
        re = reallocated(before, pool_tensors(learner))
        del before
        rows.append(dict(update=u + 1, rss=rss_bytes(), seconds=dt, steps=learner.learner.step_count - steps0,
                         realloc_grad=re["grad"], realloc_opt=re["opt"], approx_kl=stats["approx_kl"],
                         cuda_allocated=torch.cuda.memory_allocated() if cuda else None))
    pool = [t for t in pool_tensors(learner).values() if t is not None]
    later = rows[1:]
    return dict(arm=arm, device=learner.device, updates=updates, batch=batch, image_size=image_size,
                grads_to_none=learner.learner.grads_to_none, rss_before_updates=rss0,
                # the kernel's high-water mark is synced lazily: never below an RSS we read
                peak_rss=max(peak_rss_bytes(), *(r["rss"] for r in rows)),
                rss_after=[r["rss"] for r in rows], rows=rows,
                pool_tensors=len(pool), pool_bytes=int(sum(t.numel() * t.element_size() for t in pool)),
                realloc_per_update=float(np.mean([r["realloc_grad"] + r["realloc_opt"] for r in later]))
                if later else None,
                realloc_first=rows[0]["realloc_grad"] + rows[0]["realloc_opt"] if rows else None,
                update_s=float(np.mean([r["seconds"] for r in later or rows])) if rows else None,
                cuda_max_allocated=torch.cuda.max_memory_allocated() if cuda else None,
                cuda_max_reserved=torch.cuda.max_memory_reserved() if cuda else None)


def _mib(x) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


def format_table(result: dict) -> str:
    rows = ["| arm | device | peak RSS MiB | RSS before / after last update MiB | pool tensors (MiB) "
            "| reallocated at update 1 | reallocated / update after 1st | update s | CUDA max alloc / reserved MiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        re = "-" if a["realloc_per_update"] is None else f"{a['realloc_per_update']:.1f}"
        upd = "-" if a["update_s"] is None else f"{a['update_s']:.2f}"
        last = a["rss_after"][-1] if a["rss_after"] else None
        rows.append(f"| {a['arm']} | {a['device']} | {_mib(a['peak_rss'])} | {_mib(a['rss_before_updates'])} / "
                    f"{_mib(last)} | {a['pool_tensors']} ({_mib(a['pool_bytes'])}) | {a['realloc_first']} | {re} "
                    f"| {upd} | {_mib(a['cuda_max_allocated'])} / {_mib(a['cuda_max_reserved'])} |")
    if result.get("ratios"):
        rows += ["", "| naive / static | ratio |", "|---|---|"]
        rows += [f"| {k} | {v:.3f}x |" if v is not None else f"| {k} | - |" for k, v in result["ratios"].items()]
    return "\n".join(rows)


def ratios(arms: list[dict]) -> dict:
    by = {a["arm"]: a for a in arms}
    if not set(ARMS) <= set(by):
        return {}
    s, n = by["static"], by["naive"]

    def r(key):
        return n[key] / s[key] if s.get(key) and n.get(key) is not None else None

    return {"peak RSS": r("peak_rss"), "update s": r("update_s"), "CUDA max allocated": r("cuda_max_allocated"),
            "CUDA max reserved": r("cuda_max_reserved")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=5, help="PPO updates per arm")
    p.add_argument("--batch", type=int, default=64, help="decisions per update (RLConfig.batch_size)")
    p.add_argument("--image-size", type=int, default=128, help="camera side S (a multiple of the VLA's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available")
    p.add_argument("--arms", default=",".join(ARMS), help="arms to run, in this order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/bench/memory.json")
    a = p.parse_args(argv)
    if a.updates < 1 or a.batch < 1:
        p.error("--updates and --batch must be >= 1")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    from prevla_training.bench_memory import run_arm as target  # importable by name in the child

    arms = []
    for arm in a.arms.split(","):
        with mp.get_context("spawn").Pool(1) as pool:  # a fresh process per arm: its own peak RSS
            arms.append(pool.apply(target, (arm, a.updates, a.batch, a.image_size, a.seed, device)))
        print(f"{arm}: peak RSS {_mib(arms[-1]['peak_rss'])} MiB", flush=True)
    result = dict(arms=arms, ratios=ratios(arms), updates=a.updates, batch=a.batch, image_size=a.image_size,
                  device=device, instruction=INSTRUCTION)
    write_report(a.out, result, format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
