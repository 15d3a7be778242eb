"""Statistics of closed-loop results: success intervals and the paired arm comparison."""
from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the discordant pairs (A won / B won); under
    'the arms succeed equally often' each discordant pair is a fair coin, so
    p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2 * tail))


def episodes_by_key(episodes: list[dict], arm: str) -> dict[tuple, dict]:
    """``arm``'s episodes by their pairing key (task, init state, seed cycle): an episode of one
    arm and the same key's episode of another ran the same init state with the same seeds."""
    return {(e["task_id"], e["init_state"], e.get("cycle", 0)): e for e in episodes if e["arm"] == arm}


def paired_comparison(a: list[bool], b: list[bool], steps_a: list[int] | None = None,
                      steps_b: list[int] | None = None, z: float = 1.96) -> dict:
    """Arm A vs arm B over the same episodes (pair i: same task, init state and seed).

    Returns the success difference A - B with a 95% interval (normal approximation of the mean
    paired difference, whose variance counts only the discordant pairs), the discordant
    counts (A only / B only), the exact McNemar p-value and, with steps, the mean paired
    difference in episode steps.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired arms need the same non-empty episodes, got {a.shape} and {b.shape}")
    d = a.astype(float) - b.astype(float)
    n = len(d)
    half = z * (d.std(ddof=1) / math.sqrt(n) if n > 1 else 1.0)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    out = dict(pairs=n, diff=float(d.mean()), diff_ci95=[float(d.mean() - half), float(d.mean() + half)],
               a_only=only_a, b_only=only_b, p_value=mcnemar_exact_p(only_a, only_b))
    if steps_a is not None and steps_b is not None:
        out["steps_diff"] = float(np.mean(np.subtract(steps_a, steps_b, dtype=float)))
    return out
