"""Before / after comparison of two evaluations: pairs by (task, init, cycle), per task and overall."""
from __future__ import annotations

import pytest

from prevla_training.rl.compare import compare, format_table


def _result(policy: str, successes: dict) -> dict:
    eps = [dict(task_id=t, init_state=i, cycle=0, arm="policy", success=s, steps=100 if s else 220)
           for (t, i), s in successes.items()]
    return {"policy": policy, "episodes": eps + [dict(task_id=0, init_state=0, cycle=0, arm="random", success=True,
                                                      steps=1)]}


def test_pairs_per_task_and_overall():
    before = _result("zoo", {(5, 0): False, (5, 1): False, (7, 0): True, (7, 1): True})
    after = _result("rl", {(5, 0): True, (5, 1): False, (7, 0): True, (7, 1): False, (9, 0): True})
    out = compare(before, after)
    assert set(out["tasks"]) == {"5", "7", "all"}  # task 9 has no pair
    t5, t7, a = out["tasks"]["5"], out["tasks"]["7"], out["tasks"]["all"]
    assert (t5["before"], t5["after"], t5["diff"], t5["a_only"], t5["b_only"]) == (0.0, 0.5, 0.5, 1, 0)
    assert (t7["diff"], t7["b_only"]) == (-0.5, 1)
    assert a["episodes"] == 4 and a["diff"] == 0.0 and a["p_value"] == 1.0
    assert "| all | 4 |" in format_table(out)


def test_no_shared_episodes_is_an_error():
    with pytest.raises(ValueError, match="share no"):
        compare(_result("a", {(0, 0): True}), _result("b", {(1, 0): True}))


def test_learning_curve_windows_count_the_episodes_of_each_window():
    from prevla_training.rl.curve import windows

    recs = [dict(version=v, env_steps=100 * v, wall_s=10.0 * v, episodes=2 * v, successes=s)
            for v, s in ((1, 0), (2, 1), (3, 3), (4, 4))]
    w = windows(recs, 2)
    assert [(x["update"], x["episodes"], x["success"]) for x in w] == [(2, 4, 0.25), (4, 4, 0.75)]
