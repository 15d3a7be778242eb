"""The rollout ring: its logic in plain Python, then backpressure and lag drops on a real Ray."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest

from prevla_training.rl.ring import Ring


def test_fifo_whole_items_until_min_n():
    r = Ring(capacity=10, max_lag=1)
    for i, n in enumerate((3, 2, 4)):
        assert r.add(f"t{i}", version=0, n=n)
    assert r.occupancy == 9 and not r.fits(2) and r.fits(1)
    assert r.take(4) == ["t0", "t1"]  # whole items, oldest first, until >= 4 decisions
    assert r.occupancy == 4
    assert r.take(1) == ["t2"] and r.take(1) == []
    s = r.stats()
    assert (s["puts"], s["gets"], s["put_decisions"], s["got_decisions"]) == (3, 3, 9, 9)
    assert s["max_occupancy"] == 9 and s["occupancy"] == 0 and s["items"] == 0


def test_stale_items_dropped_and_counted():
    r = Ring(capacity=20, max_lag=1)
    r.add("v0", 0, 3)
    r.add("v1", 1, 2)
    r.add("v2", 2, 4)
    assert r.set_version(2) == 3  # v0 < 2 - 1: dropped
    assert r.stats()["dropped_stale_items"] == 1 and r.stats()["dropped_stale_decisions"] == 3
    assert r.occupancy == 6
    assert r.add("late", 0, 5) is False  # stale on arrival: counted, not stored
    assert r.set_version(1) == 0 and r.version == 2  # the learner's version never goes back
    r.version = 3  # as if set_version(3) raced with a take: take drops what it sees
    assert r.take(1) == ["v2"]
    s = r.stats()
    assert (s["dropped_stale_items"], s["dropped_stale_decisions"]) == (3, 10)
    assert s["occupancy"] == 0


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="capacity"):
        Ring(capacity=0, max_lag=1)
    with pytest.raises(ValueError, match="max_lag"):
        Ring(capacity=4, max_lag=-1)
    r = Ring(capacity=4, max_lag=1)
    with pytest.raises(ValueError, match="n=5 decisions exceeds the ring capacity 4"):
        r.add("huge", 0, 5)
    with pytest.raises(ValueError, match="n must be"):
        r.add("empty", 0, 0)
    with pytest.raises(ValueError, match="version"):
        r.add("x", 1.5, 1)
    import numpy as np

    assert r.add("np", np.int64(0), np.int32(2))  # numpy integers are fine
    assert r.stats()["puts"] == 1


# ----- on a real local Ray -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="rlr", dir="/tmp")  # short: Ray's socket paths are limited
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_TMPDIR", tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
        try:
            yield ray
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def test_put_blocks_when_full_and_resumes_after_get(ray_local):
    ray = ray_local
    from prevla_training.rl.ring import RolloutRing

    ring = RolloutRing.remote(capacity=4, max_lag=2)
    ray.get(ring.put.remote("a", 0, 3))
    blocked = ring.put.remote("b", 0, 3)  # 3 + 3 > 4: the producer waits
    ready, _ = ray.wait([blocked], timeout=0.5)
    assert not ready
    with pytest.raises(ray.exceptions.RayTaskError, match="exceeds the ring capacity"):
        ray.get(ring.put.remote("huge", 0, 5))
    assert ray.get(ring.get.remote(1, 5.0)) == ["a"]  # makes room, wakes the producer
    ray.get(blocked, timeout=10)
    s = ray.get(ring.stats.remote())
    assert s["blocked_puts"] == 1 and s["blocked_s"] >= 0.4
    assert s["occupancy"] == 3 and s["max_occupancy"] == 3
    t0 = time.monotonic()  # not enough decisions: returns what is there at the timeout
    assert ray.get(ring.get.remote(4, 0.3)) == ["b"]
    assert time.monotonic() - t0 >= 0.3
    assert ray.get(ring.get.remote(1, 0.1)) == []
    ray.kill(ring)


def test_stale_items_dropped_on_a_real_actor(ray_local):
    ray = ray_local
    from prevla_training.rl.ring import RolloutRing

    ring = RolloutRing.options(num_cpus=0).remote(capacity=8, max_lag=1)
    ray.get([ring.put.remote(f"v{v}", v, 2) for v in (0, 1, 2)])
    waiting = ring.put.remote("v1-late", 1, 4)  # 6 + 4 > 8: waits ...
    assert not ray.wait([waiting], timeout=0.3)[0]
    assert ray.get(ring.set_version.remote(3)) == 4  # ... v0 and v1 go (4 decisions) ...
    ray.get(waiting, timeout=10)  # ... and the waiting put, stale by now, is dropped, not stored
    s = ray.get(ring.stats.remote())
    assert (s["dropped_stale_items"], s["dropped_stale_decisions"]) == (3, 8)
    assert ray.get(ring.get.remote(1, 1.0)) == ["v2"]
    assert ray.get(ring.stats.remote())["occupancy"] == 0
    ray.kill(ring)
