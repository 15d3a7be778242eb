"""The critic-vs-Monte-Carlo comparison against hand-computed values (no simulator)."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_training.critic_check import compare, format_table


def _decision(actions_seed: int, label) -> dict:
    return dict(actions=np.random.default_rng(actions_seed).random((3, 8, 7)), label=np.asarray(label, float))


def test_compare_by_hand():
    mc = {(0, 10, 1): _decision(1, [[1, 1], [0, 0], [1, 0]]),   # MC success 1, 0, 0.5
          (0, 10, 5): _decision(2, [[0, 0], [1, 1], [0, 1]]),   # 0, 1, 0.5
          (1, 10, 1): _decision(3, [[1, 1], [1, 1], [1, 1]])}   # replayed differently below: excluded
    value = {(0, 10, 1): _decision(1, [0.9, 0.1, 0.5]),           # same order as MC: Spearman 1, picks 0
             (0, 10, 5): _decision(2, [0.2, 0.3, 0.8]),           # picks candidate 2 (MC 0.5)
             (1, 10, 1): _decision(4, [0.1, 0.2, 0.3]),
             (2, 10, 1): _decision(5, [0.1, 0.2, 0.3])}           # no MC twin
    r = compare(mc, value)
    assert (r["decisions"], r["shared"], r["mismatched"]) == (2, 3, 1)
    # within-decision Spearman: 1.0 and corr([.2, .3, .8], [0, 1, .5]) by ranks (1,2,3) vs (1,3,2) = 0.5
    assert r["spearman_within"] == pytest.approx(0.75)
    assert r["critic"][0] == pytest.approx((1.0 + 0.5) / 2)
    assert r["policy"][0] == pytest.approx(0.5) and r["random"][0] == pytest.approx(0.5)
    assert r["gain_critic_vs_policy"][0] == pytest.approx(0.25)
    # cross-fitted oracle: decision 1 picks candidate 0 on either held-out continuation (1);
    # decision 2: candidate 1 by both (1)
    assert r["oracle"][0] == pytest.approx(1.0)
    assert "| `x` | 2 (1) | 0.75 |" in format_table(dict(mc="m", critics={"x": r}))


def test_no_replayed_decision_is_an_error():
    mc = {(0, 10, 1): _decision(1, [[1, 1], [0, 0], [1, 0]])}
    with pytest.raises(ValueError, match="replays identically"):
        compare(mc, {(0, 10, 1): _decision(9, [0.1, 0.2, 0.3])})
