"""Topology-aware weight replication: D-VLA's control plane from the learner to the servers.

Weights are a ``dict[str, numpy.ndarray]`` plus an int version. A consumer is any actor with
``set_weights(weights_or_ref, version)`` and ``node_id() -> str`` (its Ray node id).

``mode="topology"`` (the default): :class:`WeightDistributor` groups the consumers by node and
starts one :class:`NodeReplica` per node, pinned there (hard node affinity, ``num_cpus=0``).
:meth:`WeightDistributor.push` does ONE ``ray.put`` and hands the ref (boxed in a list, so
Ray does not fetch it before the method runs) to every replica. A replica on another node
fetches the object once, puts it again into its own node's object store and calls
``set_weights.remote(local_ref, version)`` on its node's consumers: the payload crosses each
remote node boundary once, the fan-out stays inside the node. A replica on the learner's node
forwards the learner's ref as is. ``mode="naive"`` is the baseline: the caller sends the dict
by value to every consumer (Ray serialises it into the caller's object store once per call and
every consumer off the caller's node pulls its own copy).

Ordering: ``push`` refuses a version that does not increase; a replica skips a push older than
one it has already seen and abandons a fetch that a newer push overtook, so it never submits
an older version after a newer one. An async consumer may still run two calls out of order;
it should ignore a version older than the one it holds (the inference servers do).

Non-blocking: ``push`` returns the acknowledgement refs (``ray.get`` them to wait); only the
``ray.put`` copy runs in the caller. :meth:`WeightDistributor.report` waits for the last push
and returns a :class:`PushReport`.

Bytes crossing node boundaries -- how they are measured. Ray counts them itself
(``object_manager_bytes{Type="Received"}`` in the raylet) but exposes that counter only
through its metrics pipeline (dashboard agent + Prometheus: ``ray[default]``, not installed
here); the raylet's ``debug_state.txt`` has chunk counts, not bytes, and a simulated cluster's
nodes overwrite one shared file; the node stats RPC needs grpcio. So:

* ``bytes_crossing`` is ACCOUNTING, in both modes: the object's size in the store times the
  fetches by a process on another node than the object's creator (topology: each replica off
  the caller's node that fetched; naive: each consumer off the caller's node).
* ``bytes_crossing_measured`` (topology only) is read back from Ray's object directory:
  ``ray.experimental.get_object_locations`` lists the nodes holding a copy of each object the
  push created, and every copy beyond the first was pulled across a node boundary. The tests
  check it equals the accounting. Naive mode's objects are Ray's implicit argument copies,
  with no ref to ask about (``None``). A copy evicted under memory pressure before
  :meth:`WeightDistributor.report` reads it is missed.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

Weights = dict[str, np.ndarray]
MODES = ("topology", "naive")


class NodeReplica:
    """One per node: fetch a pushed ref once, re-put it locally, fan out to the node's consumers."""

    def __init__(self, consumers: list) -> None:
        self._consumers = list(consumers)
        self._node = ray.get_runtime_context().get_node_id()
        self._latest = -1  # the newest version seen: older pushes are skipped or abandoned

    def node_id(self) -> str:
        return self._node

    async def push(self, box: list, version: int, source_node: str, payload_bytes: int) -> dict:
        out = dict(node_id=self._node, version=version, status="stale", crossed_bytes=0, copies=[])
        if version <= self._latest:
            return out
        self._latest = version
        local = box[0]
        if source_node != self._node:
            weights = await box[0]  # the one cross-node pull of this push for this node
            out["crossed_bytes"] = payload_bytes
            if version != self._latest:  # a newer push arrived while this one was fetched
                out["status"] = "superseded"
                return out
            local = ray.put(weights)
            del weights
            out["copies"] = [local]
        acks = [c.set_weights.remote(local, version) for c in self._consumers]
        await asyncio.gather(*acks)
        out["status"] = "applied"
        return out


@dataclass
class PushReport:
    version: int
    mode: str
    payload_bytes: int  # the weights' size in the object store
    enqueue_s: float  # how long push() held the caller
    wall_s: float  # push() to the last acknowledgement seen by report()
    bytes_crossing: int  # accounting (module docstring)
    bytes_crossing_measured: int | None  # object directory, topology mode only
    statuses: dict  # node id (topology) or consumer index (naive) -> status


@dataclass
class _Push:
    version: int
    t0: float
    enqueue_s: float
    payload_bytes: int
    source_ref: Any
    acks: list


class WeightDistributor:
    """Push versioned weights to consumer actors, one copy per node (module docstring)."""

    def __init__(self, consumers: list, mode: str = "topology", timeout_s: float = 120.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not consumers:
            raise ValueError("consumers must be a non-empty list of actor handles")
        self.mode, self.consumers = mode, list(consumers)
        self.node = ray.get_runtime_context().get_node_id()
        self.consumer_nodes: list[str] = ray.get([c.node_id.remote() for c in self.consumers],
                                                 timeout=timeout_s)
        self.groups: dict[str, list] = {}
        for c, n in zip(self.consumers, self.consumer_nodes):
            self.groups.setdefault(n, []).append(c)
        self.replicas: dict[str, Any] = {}
        if mode == "topology":
            remote = _replica_class()
            for n, group in self.groups.items():
                strategy = NodeAffinitySchedulingStrategy(node_id=n, soft=False)
                self.replicas[n] = remote.options(scheduling_strategy=strategy).remote(group)
            placed = ray.get([r.node_id.remote() for r in self.replicas.values()],
                             timeout=timeout_s)
            if placed != list(self.replicas):
                raise RuntimeError(f"replicas landed on {placed}, wanted {list(self.replicas)}")
        self.version = -1
        self._last: _Push | None = None

    def push(self, weights: Weights, version: int) -> list:
        """Send ``weights`` as ``version`` (must increase); returns the acknowledgement refs."""
        if not isinstance(weights, dict) or \
                not all(isinstance(v, np.ndarray) for v in weights.values()):
            raise ValueError("weights must be a dict[str, numpy.ndarray]")
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
            raise ValueError(f"version must be an int, got {version!r}")
        version = int(version)
        if version <= self.version:
            raise ValueError(f"version must increase: got {version}, last pushed {self.version}")
        t0 = time.perf_counter()
        ref = None
        if self.mode == "topology":
            ref = ray.put(weights)
            size = _object_size(ref)
            acks = [r.push.remote([ref], version, self.node, size) for r in self.replicas.values()]
        else:
            size = serialized_size(weights)
            acks = [c.set_weights.remote(weights, version) for c in self.consumers]
        self.version = version
        self._last = _Push(version, t0, time.perf_counter() - t0, size, ref, acks)
        return acks

    def report(self, timeout_s: float = 120.0) -> PushReport:
        """Wait for the last push and account for it (bytes crossing, wall time)."""
        if self._last is None:
            raise RuntimeError("report() before any push()")
        p = self._last
        results = ray.get(p.acks, timeout=timeout_s)
        wall = time.perf_counter() - p.t0
        if self.mode == "naive":
            off = sum(n != self.node for n in self.consumer_nodes)
            statuses = {i: "applied" for i in range(len(results))}
            return PushReport(p.version, self.mode, p.payload_bytes, p.enqueue_s, wall,
                              off * p.payload_bytes, None, statuses)
        crossing = sum(r["crossed_bytes"] for r in results)
        expected = {p.source_ref: 1 + sum(r["crossed_bytes"] > 0 for r in results)}
        expected.update({c: 1 for r in results for c in r["copies"]})
        measured = measured_crossing(expected, timeout_s=min(timeout_s, 5.0))
        statuses = {r["node_id"]: r["status"] for r in results}
        return PushReport(p.version, self.mode, p.payload_bytes, p.enqueue_s, wall, crossing,
                          measured, statuses)

    def close(self) -> None:
        for r in self.replicas.values():
            ray.kill(r)
        self.replicas.clear()
        self._last = None


@functools.cache
def _replica_class():
    return ray.remote(num_cpus=0)(NodeReplica)  # exported to the cluster once per process


def _locations(ref) -> dict | None:
    """{node_ids, object_size} of one object, from its owner. One ref per call: Ray 2.60's
    ``GetLocationFromOwner`` counts its per-owner batches while replies already arrive, so a
    query spanning two owners can fulfil its promise twice and abort the process (seen here:
    "Promise already satisfied"). No timeout: the source waits ``timeout_ms`` as microseconds;
    a dead owner fails the RPC, which still answers."""
    return ray.experimental.get_object_locations([ref]).get(ref)


def _object_size(ref) -> int:
    loc = _locations(ref)
    if loc is None:
        raise RuntimeError("Ray could not locate the object just put (its owner is this process)")
    return int(loc["object_size"])


def serialized_size(weights: Weights) -> int:
    """Bytes ``weights`` take in the object store (Ray's serialiser; sum of nbytes if absent)."""
    try:
        ctx = ray._private.worker.global_worker.get_serialization_context()
        s = ctx.serialize(weights)
        return int(s.total_bytes + len(s.metadata or b""))
    except Exception:  # pragma: no cover -- a Ray without this private API
        return int(sum(v.nbytes for v in weights.values()))


def measured_crossing(expected: dict, timeout_s: float = 5.0) -> int:
    """Sum of size x (copies - 1) over the objects, from Ray's object directory. Location
    updates reach the owner asynchronously: poll until each object shows ``expected[ref]``
    copies or ``timeout_s`` passes, then count what is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        locs = {r: _locations(r) for r in expected}
        if all(v is not None and len(v["node_ids"]) >= expected[r] for r, v in locs.items()) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return int(sum(v["object_size"] * max(0, len(v["node_ids"]) - 1)
                   for v in locs.values() if v is not None))


def make_weights(payload_bytes: int, tensors: int = 4, seed: int = 0) -> Weights:
    """A float32 payload of about ``payload_bytes`` split over ``tensors`` arrays."""
    if payload_bytes < 4 * tensors:
        raise ValueError(f"payload_bytes must be >= {4 * tensors}, got {payload_bytes}")
    rng = np.random.default_rng(seed)
    per = payload_bytes // (4 * tensors)
    return {f"w{i}": rng.standard_normal(per, dtype=np.float32) for i in range(tensors)}


def bench_replication(consumers: list, payload_bytes: int, pushes: int = 3,
                      modes: tuple[str, ...] = MODES, first_version: int = 1,
                      timeout_s: float = 120.0, weights: Weights | None = None) -> dict:
    """Per mode: bytes crossing node boundaries and wall time per push, on the running Ray.
    ``weights``: the payload to push (default: a synthetic one of ``payload_bytes``).

    The caller starts Ray (e.g. ``ray.cluster_utils.Cluster``) and the consumers: their
    placement gives the node and consumer count. Versions run from ``first_version`` on across
    the modes (consumers keep the newest); the result's ``next_version`` continues them."""
    if pushes < 1:
        raise ValueError(f"pushes must be >= 1, got {pushes}")
    weights = make_weights(payload_bytes) if weights is None else weights
    out: dict[str, Any] = {"payload_bytes": payload_bytes, "consumers": len(consumers),
                           "pushes": pushes}
    version = first_version
    for mode in modes:
        dist = WeightDistributor(consumers, mode=mode, timeout_s=timeout_s)
        out["nodes"] = len(dist.groups)
        reports = []
        try:
            for _ in range(pushes):
                dist.push(weights, version)
                reports.append(dist.report(timeout_s))
                version += 1
        finally:
            dist.close()
        measured = [r.bytes_crossing_measured for r in reports]
        out[mode] = {
            "object_bytes": reports[-1].payload_bytes,
            "bytes_crossing_per_push": float(np.mean([r.bytes_crossing for r in reports])),
            "bytes_crossing_measured_per_push":
                None if None in measured else float(np.mean(measured)),
            "push_wall_s": [r.wall_s for r in reports],
            "push_wall_s_mean": float(np.mean([r.wall_s for r in reports])),
            "enqueue_s_mean": float(np.mean([r.enqueue_s for r in reports])),
        }
    out["next_version"] = version
    return out
