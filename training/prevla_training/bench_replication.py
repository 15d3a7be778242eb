"""D-VLA's weight replication: topology-aware push against the naive push, same cluster, one run.

    python -m prevla_training.bench_replication [--nodes 3] [--consumers-per-node 2] [--pushes 5] \
        [--out outputs/bench/replication.json]

A simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``: ``--nodes`` raylets on this
machine, each with its own object store, node ``k`` carrying the custom resource ``nodek``)
holds ``--consumers-per-node`` consumer actors per node, pinned with that resource and
``num_cpus=0``. The driver (the learner's seat) runs on the head node. The payload is what the
D-VLA learner pushes after every update: ``state_numpy`` of the zoo VLA wrapped as a
:class:`~prevla_models.flow_rl.FlowActorCritic` (``load_actor_critic(RLConfig())``).

:func:`prevla_training.rl.replication.bench_replication` pushes it ``--pushes`` times per mode
(``topology``: one ``ray.put``, one cross-node pull per remote node, fan-out inside the node;
``naive``: the dict sent by value to every consumer) after ``--warmup`` unrecorded pushes per
mode, with the real weights as its payload, so the measurement code is the tested one.
Measured per mode, per push:

* bytes crossing node boundaries: accounted (object size x fetches by a process off the
  object's node) and, topology mode only, measured from Ray's object directory (copies beyond
  the first; naive mode's implicit argument copies have no ref to ask about);
* push wall time, from ``push()`` to the last consumer's acknowledgement;
* enqueue time, how long ``push()`` held the caller (the learner's cost).

Prints the table, writes JSON + .md. Reported, never asserted; naive is the baseline (ratios
naive / topology). Expected bytes: topology (nodes - 1) x payload, naive (nodes - 1) x
consumers-per-node x payload. All processes share this machine's cores and memory: wall times
show the protocol's overheads, not a network's bandwidth.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from prevla_training.cli_args import write_report

MODES = ("topology", "naive")


class Consumer:
    """The minimal consumer (``ray.remote(num_cpus=0)`` in :func:`run`): takes every push."""

    def __init__(self) -> None:
        self.version, self.calls, self.bytes = -1, 0, 0

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def set_weights(self, weights, version: int) -> int:
        import ray

        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        self.calls += 1
        self.bytes = int(sum(v.nbytes for v in weights.values()))
        self.version = max(self.version, int(version))
        return self.version

    def state(self) -> dict:
        return dict(version=self.version, calls=self.calls, bytes=self.bytes)


def real_weights(policy: str) -> dict:
    """What the D-VLA learner pushes: the FlowActorCritic's weights as numpy arrays."""
    from prevla_training.rl.actors import load_actor_critic, state_numpy
    from prevla_training.rl.config import RLConfig

    model, _ = load_actor_critic(RLConfig(policy=policy))
    return state_numpy(model)


def run(nodes: int, per_node: int, pushes: int, warmup: int, policy: str) -> dict:
    """Start the cluster and consumers, benchmark both modes, tear everything down."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    from prevla_training.rl import replication

    weights = real_weights(policy)
    payload = int(sum(v.nbytes for v in weights.values()))
    tmp = tempfile.mkdtemp(prefix="rpb", dir="/tmp")  # short: Ray's socket paths are limited
    os.environ["RAY_TMPDIR"] = tmp  # Ray's default temp dir is $RAY_TMPDIR/ray: the same one
    temp_dir, cluster, t0 = os.path.join(tmp, "ray"), None, time.perf_counter()
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=1, resources={"node0": 1}, include_dashboard=False, temp_dir=temp_dir))
        for i in range(1, nodes):
            cluster.add_node(num_cpus=1, resources={f"node{i}": 1}, temp_dir=temp_dir)
        ray.init(address=cluster.address, log_to_driver=False, _temp_dir=temp_dir)
        remote = ray.remote(num_cpus=0)(Consumer)
        consumers = [remote.options(resources={f"node{i}": 0.1}).remote()
                     for i in range(nodes) for _ in range(per_node)]
        placed = ray.get([c.node_id.remote() for c in consumers], timeout=120)
        startup_s = time.perf_counter() - t0
        version = 1
        if warmup:
            version = replication.bench_replication(consumers, payload, pushes=warmup, first_version=version,
                                                    weights=weights)["next_version"]
        out = replication.bench_replication(consumers, payload, pushes=pushes, first_version=version,
                                            weights=weights)
        states = ray.get([c.state.remote() for c in consumers])
        out.update(distinct_nodes=len(set(placed)), consumer_states=states, startup_s=startup_s,
                   driver_node=ray.get_runtime_context().get_node_id(), consumer_nodes=placed)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    out.update(arrays=len(weights), payload_bytes=payload, policy=policy, warmup=warmup,
               consumers_per_node=per_node, ratios=ratios(out))
    return out


def ratios(result: dict) -> dict:
    """naive / topology of bytes crossing (accounted) and of push and enqueue time."""
    t, n = result.get("topology"), result.get("naive")
    if not t or not n:
        return {}

    def r(key):
        return n[key] / t[key] if t[key] else None

    return {"bytes crossing": r("bytes_crossing_per_push"), "push wall s": r("push_wall_s_mean"),
            "enqueue s": r("enqueue_s_mean")}


def _mb(x) -> str:
    return "n/a" if x is None else f"{x / 1e6:.2f}"


def format_table(result: dict) -> str:
    rows = [f"Payload: {result.get('arrays', '?')} arrays, {_mb(result['payload_bytes'])} MB; "
            f"{result['nodes']} nodes x {result.get('consumers_per_node', '?')} consumers, "
            f"{result['pushes']} pushes per mode.", "",
            "| mode | object MB | MB crossing nodes / push (accounted) | (measured) | push wall s | enqueue s |",
            "|---|---|---|---|---|---|"]
    for mode in MODES:
        m = result.get(mode)
        if m:
            rows.append(f"| {mode} | {_mb(m['object_bytes'])} | {_mb(m['bytes_crossing_per_push'])} "
                        f"| {_mb(m['bytes_crossing_measured_per_push'])} | {m['push_wall_s_mean']:.4f} "
                        f"| {m['enqueue_s_mean']:.4f} |")
    if result.get("ratios"):
        rows += ["", "| naive / topology | ratio |", "|---|---|"]
        rows += [f"| {k} | {v:.2f}x |" if v is not None else f"| {k} | n/a |" for k, v in result["ratios"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_replication", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="simulated Ray nodes (the driver is on node 0)")
    p.add_argument("--consumers-per-node", type=int, default=2, help="consumer actors pinned on each node")
    p.add_argument("--pushes", type=int, default=5, help="recorded pushes per mode")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded pushes per mode first")
    p.add_argument("--policy", default="zoo:vla_libero_spatial", help="VLA whose weights are pushed")
    p.add_argument("--out", default="outputs/bench/replication.json")
    a = p.parse_args(argv)
    if a.nodes < 2 or a.consumers_per_node < 1 or a.pushes < 1 or a.warmup < 0:
        p.error("need --nodes >= 2, --consumers-per-node >= 1, --pushes >= 1, --warmup >= 0")
    result = run(a.nodes, a.consumers_per_node, a.pushes, a.warmup, a.policy)
    write_report(a.out, result, format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
