"""map_jobs: the same results in-process, on a spawn pool and on a real local Ray cluster."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_training.ceiling import cross_fitted_oracle
from prevla_training.jobs import map_jobs

TABLES = [np.random.default_rng(i).integers(0, 2, (4, 3)) for i in range(6)]
EXPECTED = sorted(cross_fitted_oracle(t) for t in TABLES)


@pytest.mark.parametrize("workers", [0, 2])
def test_local_processes(workers):
    assert sorted(map_jobs(cross_fitted_oracle, TABLES, workers)) == EXPECTED


def test_ray_local_cluster(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import ray

    assert sorted(map_jobs(cross_fitted_oracle, TABLES, 2, ray_address="local")) == EXPECTED
    assert not ray.is_initialized()  # the cluster it started is shut down
