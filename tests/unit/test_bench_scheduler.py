"""``prevla_training.bench_scheduler``: a tiny run of the overlap benchmark on the zoo's models."""
from __future__ import annotations

import json

import numpy as np
import torch

from prevla_training import bench_scheduler


def test_recorded_observations_round_trip_the_policy_proprio():
    from prevla_models.geometry import proprio_from_state

    obs = bench_scheduler.recorded_observations()
    assert len(obs) == 8 and obs[0].images["agentview"].shape == (128, 128, 3)
    from prevla_models import zoo
    from prevla_training.export import RECORDED

    data = np.load(zoo.zoo_dir() / RECORDED)
    for o, p in zip(obs, data["proprio"]):
        np.testing.assert_allclose(proprio_from_state(o.eef_pos, o.eef_quat_xyzw, o.gripper_qpos),
                                   p[:8], atol=1e-4)


def test_both_settings_spend_every_round_and_the_table_names_them():
    before = torch.get_num_threads()
    result = bench_scheduler.bench(k=2, rounds=2, decisions=2, threads=1)
    assert torch.get_num_threads() == before
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"sequential", "overlap"}
    for r in rows.values():
        assert r["decisions"] == 2 and 0 < r["p50_ms"] <= r["p90_ms"]
        assert r["dropped_samples"] == 0  # every round rejected: nothing sampled ahead is wasted
    assert rows["sequential"]["speedup_p50"] == 1.0
    assert "overlap" in bench_scheduler.table(result)
    json.dumps(result)
