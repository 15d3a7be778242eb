"""Held-out metrics of the verifier (numpy only; unit-tested against hand-computed values).

* ``auroc`` / ``auprc``: of the UNSAFE class (score = 1 - P(safe), positive = unsafe);
  AUROC is the Mann-Whitney probability with ties counted half, AUPRC the average precision.
* ``ece``: expected calibration error of P(safe) in equal-width bins.
* ``spearman``: rank correlation of predicted vs. target advantage (ties get average ranks).
* ``ranking``: per decision, the candidate the verifier would pick (highest predicted
  advantage among those with P(safe) >= tau; the highest P(safe) when none passes) against a
  uniformly random candidate of the same set, judged by the TRUE outcome (safe beats unsafe,
  then the higher true advantage): ``win_rate`` = P(pick better) + 1/2 P(tie), 0.5 = chance.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, spearmanr


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a random positive > score of a random negative), ties half; None if one class."""
    s, y = np.asarray(scores, float).ravel(), np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision: sum over positives of precision at their rank (ties broken pessimistically)."""
    s, y = np.asarray(scores, float).ravel(), np.asarray(positive, bool).ravel()
    if y.sum() == 0:
        return None
    order = np.lexsort((y, -s))  # descending score; among ties negatives first (pessimistic)
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum_b |B_b|/n * |mean(labels_b) - mean(probs_b)|."""
    p, y = np.asarray(probs, float).ravel(), np.asarray(labels, float).ravel()
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    return float(err)


def spearman(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Spearman rank correlation (None when either side is constant)."""
    a, b = np.asarray(pred, float).ravel(), np.asarray(target, float).ravel()
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(spearmanr(a, b).statistic)


def pick(p_safe: np.ndarray, advantage: np.ndarray, tau: float) -> np.ndarray:
    """(N,) index per decision: best predicted advantage among P(safe) >= tau, else best P(safe)."""
    ok = p_safe >= tau
    best_adv = np.argmax(np.where(ok, advantage, -np.inf), axis=1)
    return np.where(ok.any(axis=1), best_adv, np.argmax(p_safe, axis=1))


def ranking(p_safe: np.ndarray, advantage: np.ndarray, tau: float, true_safe: np.ndarray,
            true_adv: np.ndarray) -> dict[str, float]:
    """Pick-vs-random quality over (N, K) candidate sets (module docstring)."""
    n = len(p_safe)
    i = pick(p_safe, advantage, tau)
    rows = np.arange(n)
    key = np.where(true_safe > 0.5, 1e6, 0.0) + true_adv  # lexicographic: safety, then advantage
    top = key[rows, i][:, None]
    win = ((top > key).mean(1) + 0.5 * (top == key).mean(1)).mean()
    best = key.max(1, keepdims=True)
    oracle = ((best > key).mean(1) + 0.5 * (best == key).mean(1)).mean()
    return dict(win_rate=float(win), oracle_win_rate=float(oracle),
                pick_true_adv=float(true_adv[rows, i].mean()), random_true_adv=float(true_adv.mean()),
                best_true_adv=float(true_adv.max(1).mean()),
                pick_unsafe=float(1 - true_safe[rows, i].mean()), random_unsafe=float(1 - true_safe.mean()))


def selection_q(p_safe: np.ndarray, advantage: np.ndarray, tau: float, q: np.ndarray) -> dict[str, float]:
    """Mean Monte-Carlo success (``q``, (N, K)) of the candidate each rule would execute: the
    policy's own (0), a random one, the verifier as a gate (the first candidate with P(safe) >=
    tau, else the most likely safe), the verifier ranking by advantage (:func:`pick`), and the
    in-sample best. The offline estimate of one decision's closed-loop gain."""
    rows = np.arange(len(q))
    ok = p_safe >= tau
    gate = np.where(ok.any(1), np.argmax(ok, axis=1), np.argmax(p_safe, axis=1))
    return dict(q_policy=float(q[:, 0].mean()), q_random=float(q.mean()), q_gate=float(q[rows, gate].mean()),
                q_rank=float(q[rows, pick(p_safe, advantage, tau)].mean()), q_best=float(q.max(1).mean()))


def classification(p_safe: np.ndarray, true_safe: np.ndarray, tau: float) -> dict[str, float | None]:
    """Accept/reject quality at the threshold: unsafe recall, false-reject rate, balanced accuracy."""
    accept, safe = np.asarray(p_safe).ravel() >= tau, np.asarray(true_safe).ravel() > 0.5
    recall = float((~accept & ~safe).sum() / (~safe).sum()) if (~safe).any() else None
    false_reject = float((~accept & safe).sum() / safe.sum()) if safe.any() else None
    bal = None if recall is None or false_reject is None else 0.5 * (recall + 1 - false_reject)
    return dict(unsafe_recall=recall, false_reject_rate=false_reject, balanced_accuracy=bal)


def all_metrics(p_safe: np.ndarray, advantage: np.ndarray, tau: float, true_safe: np.ndarray,
                true_adv: np.ndarray) -> dict:
    """Every held-out metric of the module docstring, for (N, K) arrays."""
    unsafe = true_safe <= 0.5
    return dict(auroc_unsafe=auroc(1 - p_safe, unsafe), auprc_unsafe=auprc(1 - p_safe, unsafe),
                unsafe_rate=float(unsafe.mean()), ece=ece(p_safe, true_safe),
                spearman_advantage=spearman(advantage, true_adv),
                spearman_advantage_within_set=within_set_spearman(advantage, true_adv),
                threshold=float(tau), **classification(p_safe, true_safe, tau),
                **ranking(p_safe, advantage, tau, true_safe, true_adv))


def within_set_spearman(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Mean over decisions of the Spearman correlation among that decision's K candidates."""
    vals = [spearman(p, t) for p, t in zip(pred, target)]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None
