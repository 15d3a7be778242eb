"""Weight replication on a simulated 3-node Ray cluster, 2 consumers per node: every consumer
ends with the pushed version and identical weights; topology-aware replication crosses node
boundaries (nodes - 1) times per push, naive once per consumer off the driver's node; a consumer
never goes back in version."""
from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile

import pytest

ray = pytest.importorskip("ray")

from prevla_training.rl.replication import (  # noqa: E402
    WeightDistributor, bench_replication, make_weights)

NODES, PER_NODE = 3, 2
VERSIONS = itertools.count(1)  # consumers live for the module: versions keep increasing


def _digest(weights) -> str:
    h = hashlib.sha1()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].tobytes())
    return h.hexdigest()


@ray.remote(num_cpus=0)
class Consumer:
    """The minimal consumer: applies every call, records the versions in arrival order."""

    def __init__(self) -> None:
        self.versions: list[int] = []
        self.digest = ""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def set_weights(self, weights, version: int) -> int:
        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        self.versions.append(int(version))
        self.digest = _digest(weights)
        return int(version)

    def state(self) -> tuple[list[int], str]:
        return self.versions, self.digest


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rlc", dir="/tmp")  # short: Ray's socket paths are limited
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_TMPDIR", tmp)
        c = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=1, resources={"node0": 1}, include_dashboard=False))
        try:
            for i in range(1, NODES):
                c.add_node(num_cpus=1, resources={f"node{i}": 1})
            ray.init(address=c.address, log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def consumers(cluster):
    handles = [Consumer.options(resources={f"node{i}": 0.1}).remote()
               for i in range(NODES) for _ in range(PER_NODE)]
    nodes = ray.get([h.node_id.remote() for h in handles])
    assert len(set(nodes)) == NODES
    return handles


def _states(consumers):
    return ray.get([c.state.remote() for c in consumers])


@pytest.mark.parametrize("mode", ["topology", "naive"])
def test_every_consumer_gets_the_version_and_the_bytes_crossing(consumers, mode):
    dist = WeightDistributor(consumers, mode=mode)
    try:
        driver = ray.get_runtime_context().get_node_id()
        off_driver = sum(n != driver for n in dist.consumer_nodes)
        assert off_driver == (NODES - 1) * PER_NODE
        weights = make_weights(2_000_000, seed=next(VERSIONS))
        version = next(VERSIONS)
        ray.get(dist.push(weights, version), timeout=60)
        report = dist.report()
        assert report.version == version
        assert abs(report.payload_bytes - 2_000_000) < 4096  # the object, not the arrays' sum
        for versions, digest in _states(consumers):
            assert versions[-1] == version and digest == _digest(weights)
        if mode == "topology":
            assert len(dist.replicas) == NODES and set(dist.replicas) == set(dist.consumer_nodes)
            assert set(report.statuses.values()) == {"applied"}
            assert report.bytes_crossing == (NODES - 1) * report.payload_bytes
            assert report.bytes_crossing_measured == report.bytes_crossing  # Ray agrees
        else:
            assert report.bytes_crossing == off_driver * report.payload_bytes
            assert report.bytes_crossing_measured is None
        with pytest.raises(ValueError, match="version must increase"):
            dist.push(weights, version)
    finally:
        dist.close()


def test_a_newer_version_is_never_overwritten_by_an_older_one(consumers):
    dist = WeightDistributor(consumers, mode="topology")
    try:
        weights = make_weights(1_000_000)
        versions = [next(VERSIONS) for _ in range(5)]
        acks = [dist.push(weights, v) for v in versions]  # in flight together: later supersede
        report = dist.report()
        results = ray.get([a for batch in acks for a in batch], timeout=60)
        assert {r["status"] for r in results} <= {"applied", "superseded", "stale"}
        assert set(report.statuses.values()) == {"applied"}
        # a replica that sees an older version after a newer one skips it
        replica = next(iter(dist.replicas.values()))
        ref = ray.put(make_weights(1_000, seed=7))
        late = ray.get(replica.push.remote([ref], versions[0], dist.node, 0))
        assert late["status"] == "stale"
        for seen, digest in _states(consumers):
            assert seen == sorted(set(seen)), f"went back in version: {seen}"
            assert seen[-1] == versions[-1] and digest == _digest(weights)
    finally:
        dist.close()


def test_bench_replication(consumers):
    first = next(VERSIONS)
    out = bench_replication(consumers, payload_bytes=500_000, pushes=2, first_version=first)
    for _ in range(out["next_version"] - first - 1):
        next(VERSIONS)
    assert (out["nodes"], out["consumers"], out["pushes"]) == (NODES, NODES * PER_NODE, 2)
    topo, naive = out["topology"], out["naive"]
    assert topo["bytes_crossing_per_push"] == (NODES - 1) * topo["object_bytes"]
    assert topo["bytes_crossing_measured_per_push"] == topo["bytes_crossing_per_push"]
    assert naive["bytes_crossing_per_push"] == (NODES - 1) * PER_NODE * naive["object_bytes"]
    assert naive["bytes_crossing_measured_per_push"] is None
    assert all(t > 0 for m in (topo, naive) for t in m["push_wall_s"])
    assert _states(consumers)[0][0][-1] == out["next_version"] - 1
