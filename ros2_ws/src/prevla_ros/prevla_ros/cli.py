"""``prevla`` command line: run the node graph without ``ros2 launch``.

    prevla up     [graph options]             run sim + policy + verifier (+ world model
                                              with --world-model) until Ctrl-C
    prevla demo   [graph options] [--out DIR] run N episodes, print success/steps, save outputs
    prevla expert-eval ...                    scripted-expert success rates (no ROS)
    prevla record-demos ...                   expert demonstrations as LIBERO-format HDF5
    prevla train-policy ...                   train the small VLA on recorded demonstrations
    prevla label-candidates ...               label verifier candidates by branching in LIBERO
    prevla branch ...                         outcome labels: branch K candidates, policy to the end
    prevla ceiling ...                        what any chunk selector could gain (from branch)
    prevla rl ...                             D-VLA: fine-tune the VLA with async PPO on Ray
    prevla train-verifier ...                 train the verifier (+ ablations table)
    prevla export MODEL --to onnx|tensorrt    export a model (parity-checked) into the zoo
    prevla params [--write]                   check / regenerate the parameter docs and YAML
    prevla record [--out DIR] [--topics a,b]  record the running graph into an MCAP bag
    prevla inspect BAG [--export-frames DIR]  a bag's topics, counts, rates; frames as PNGs
    prevla security [--write]                 check / regenerate the SROS2 access-control policy
    prevla lifecycle get|list|set NODE [T]    a managed node's state / transitions (ros2 lifecycle)

The graph runs composed in one process (one rclpy executor, the default: lowest latency)
or, with ``--processes``, as one OS process per node talking over Fast DDS, supervised: a node
that dies is restarted with backoff (``--respawn...`` flags, :mod:`prevla_ros.runtime.supervisor`).
SIGINT and SIGTERM stop either graph cleanly (exit 0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from prevla_ros.runtime.settings import settings

NODES = ("sim_node", "policy_node", "verifier_node")


#: The node parameters ``prevla up`` / ``prevla demo`` also take as ``--flags`` (their help
#: and type come from the node's config; unset flags keep the params file's value).
GRAPH_FLAGS = {"sim_node": ("suite", "task_id", "init_state", "episodes", "control_rate_hz"),
               "policy_node": ("policy", "checkpoint", "num_candidates", "noise_std"),
               "verifier_node": ("verifier",), "world_model_node": ()}


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Command-line options as per-node parameter overrides (None = keep the default)."""
    values = vars(args)
    return {node: {k: values[k] for k in names if values.get(k) is not None}
            for node, names in GRAPH_FLAGS.items()}


def _ros_args(args: argparse.Namespace) -> list[str]:
    ros_args = ["--ros-args"]
    if args.params_file:
        ros_args += ["--params-file", str(args.params_file)]
    return ros_args


class Graph:
    """The three nodes (four with ``--world-model``), composed in this process or, with
    ``--processes``, started as supervised child processes (:mod:`prevla_ros.runtime.supervisor`:
    a node that dies is restarted with backoff; one given up on raises ``GraphFailed``).

    Policy, verifier and world model are managed (lifecycle) nodes, driven to active: composed,
    :meth:`add` configures and activates each in-process (``bring_up``); as processes, each is
    started with ``--autostart`` and does it itself, so a respawned one comes back active with
    no one driving it. A node whose configure fails stays up, unconfigured, saying why (log
    and /diagnostics); the rest of the graph runs on (nothing it does not approve moves)."""

    #: The managed nodes (sim_node is a plain node: it is the robot).
    MANAGED = ("policy_node", "verifier_node", "world_model_node")

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.supervisor = None
        self.executor = None
        self.nodes = []

    def start(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        # SIGINT/SIGTERM are StopSignals' (the caller's): rclpy's own handlers would shut the
        # context down under the executor (ExternalShutdownException) before the children stop.
        rclpy.init(args=_ros_args(self.args), signal_handler_options=SignalHandlerOptions.NO)
        self.executor = SingleThreadedExecutor()
        overrides = _overrides(self.args)
        if self.args.processes:
            self._start_processes(overrides)
        else:
            self._compose(overrides)

    def _compose(self, overrides: dict[str, dict[str, object]]) -> None:
        from rclpy.parameter import Parameter

        from prevla_ros.nodes.policy_node import PolicyNode
        from prevla_ros.nodes.sim_node import SimNode
        from prevla_ros.nodes.verifier_node import VerifierNode

        # Policy and verifier first so they are listening when the sim publishes.
        classes = [("verifier_node", VerifierNode), ("policy_node", PolicyNode),
                   ("sim_node", SimNode)]
        if getattr(self.args, "world_model", False):
            from prevla_ros.nodes.world_model_node import WorldModelNode

            classes.insert(0, ("world_model_node", WorldModelNode))
        for name, cls in classes:
            params = [Parameter(k, value=v) for k, v in overrides[name].items()]
            self.add(cls(parameter_overrides=params))

    def _start_processes(self, overrides: dict[str, dict[str, object]]) -> None:
        from prevla_ros.runtime.supervisor import NodeSpec, Supervisor
        from prevla_ros.security import enclave_path

        names = NODES + (("world_model_node",) if getattr(self.args, "world_model", False) else ())
        specs = []
        for name in names:
            cmd = [sys.executable, "-m", f"prevla_ros.nodes.{name}"]
            cmd += ["--autostart"] if name in self.MANAGED else []
            # Each process its own SROS2 enclave (launch/sros2/prevla_policy.xml): used only
            # when the environment enables security (ROS_SECURITY_ENABLE, _KEYSTORE).
            cmd += _ros_args(self.args) + ["--enclave", enclave_path(name)]
            for key, value in overrides[name].items():
                cmd += ["-p", f"{key}:={_param_literal(value)}"]
            specs.append(NodeSpec(name, cmd))
        _log_to_stderr("prevla.supervisor")
        self.supervisor = Supervisor(specs, self.args.supervisor)
        self.supervisor.start()

    def add(self, node) -> None:
        """Spin ``node`` here; a managed node is configured and activated first."""
        from rclpy.lifecycle import LifecycleNode

        from prevla_ros.nodes.lifecycle import bring_up

        if isinstance(node, LifecycleNode):
            bring_up(node)  # a failure is logged by the node, which stays up
        self.nodes.append(node)
        self.executor.add_node(node)

    def spin_until(self, done, stop, timeout_s: float | None = None) -> bool:
        """Spin until ``done()``, a stop signal (``stop.received``) or ``timeout_s``; whether
        ``done()``. Raises ``GraphFailed`` when a node process is given up on."""
        from rclpy.executors import ExternalShutdownException

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done() and not stop.received:
            if deadline is not None and time.monotonic() > deadline:
                return False
            if self.supervisor is not None:
                self.supervisor.poll()
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:  # the context was shut down: a stop, not a crash
                break
        return bool(done())

    def shutdown(self) -> None:
        """Stop the node processes (SIGINT, SIGTERM, SIGKILL), then the composed nodes."""
        import rclpy

        if self.supervisor is not None:
            self.supervisor.stop()
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        if self.executor is not None:
            self.executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()


def _log_to_stderr(name: str) -> None:
    """One line per record on stderr, in the nodes' format (``[WARN] [time] [supervisor]: ...``)."""
    import logging

    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "[%(levelname)s] [%(created).9f] [" + name.rsplit(".", 1)[-1] + "]: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _param_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_graph(args: argparse.Namespace, done=lambda: False, add=None,
              timeout_s: float | None = None) -> tuple[bool, int]:
    """Start the graph, spin until ``done()`` / SIGINT / SIGTERM / ``timeout_s``, shut it down.
    Returns (``done()``, exit code): 0, or 1 when a node process was given up on (the
    supervisor's log line names it). ``add(graph)`` adds in-process nodes (a monitor)."""
    from prevla_ros.runtime.supervisor import GraphFailed, StopSignals

    graph, finished, rc = Graph(args), False, 0
    try:
        with StopSignals() as stop:
            try:
                with stop.interruptible():  # a signal while nodes are built interrupts it
                    graph.start()
                    if add is not None:
                        add(graph)
                finished = graph.spin_until(done, stop, timeout_s)
            except GraphFailed:
                rc = 1
            finally:
                graph.shutdown()
    except KeyboardInterrupt:
        pass
    return finished, rc


def cmd_up(args: argparse.Namespace) -> int:
    return run_graph(args)[1]


def cmd_demo(args: argparse.Namespace) -> int:
    from prevla_ros.nodes.monitor import EpisodeMonitor

    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    monitors = []

    def add_monitor(graph: Graph) -> None:
        monitors.append(EpisodeMonitor(out, expected_episodes=args.episodes,
                                       videos=not getattr(args, "no_video", False)))
        graph.add(monitors[0])
        if getattr(args, "record", False):  # one bag of the run (prevla_ros.nodes.recorder)
            from prevla_ros.nodes.recorder import RecordConfig, Recorder
            graph.add(Recorder(RecordConfig(out=str(out / "bag"), max_mb=args.record_max_mb)))

    finished, rc = run_graph(args, lambda: monitors[0].finished, add_monitor, args.timeout_s)
    if not monitors:  # stopped before the graph was up
        return 1
    monitor = monitors[0]
    summary = monitor.summary(wall_s=time.monotonic() - started, finished=finished)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(monitor.table())
    print(f"success {summary['successes']}/{summary['episodes']} in {summary['wall_s']:.1f} s; "
          f"outputs in {out}/ (summary.json, episodes.jsonl, verdicts.jsonl, frames/*.png"
          + (", videos/ep*.mp4 per episode)" if monitor.videos else ")"))
    if rc:
        return rc
    if not finished:
        print(f"demo did not finish within {args.timeout_s} s", file=sys.stderr)
        return 1
    return 0


#: Verbs handled by their own module's ``main(argv)`` and argparse (ROS-free jobs).
DELEGATED = {
    "expert-eval": ("prevla_training.expert_eval", "scripted-expert success rates"),
    "record-demos": ("prevla_training.demos", "record expert demonstrations"),
    "train-policy": ("prevla_training.train_policy", "train the VLA on demonstrations"),
    "eval": ("prevla_training.evaluate", "closed-loop policy success rates"),
    "label-candidates": ("prevla_training.candidates", "label verifier candidates by branching in LIBERO"),
    "branch": ("prevla_training.branching", "outcome labels: branch K candidates, then the policy to the end"),
    "ceiling": ("prevla_training.ceiling", "what any chunk selector could gain, from branch outputs"),
    "rl": ("prevla_training.rl.driver", "D-VLA: asynchronous distributed RL of the VLA on Ray"),
    "train-verifier": ("prevla_training.train_verifier", "train the verifier on labelled candidates"),
    "train-world-model": ("prevla_training.train_world_model", "train the world model on demos and policy rollouts"),
    "export": ("prevla_training.export", "export a model to ONNX / TensorRT, parity-checked, into the zoo"),
    "params": ("prevla_ros.params_doc", "regenerate docs/parameters.md and the params YAML from the configs"),
    "security": ("prevla_ros.security", "check / regenerate the SROS2 policy launch/sros2/prevla_policy.xml"),
    "record": ("prevla_ros.nodes.recorder", "record the running graph's topics into an MCAP bag"),
    "inspect": ("prevla_ros.runtime.bag_reader", "a bag's topics, counts, rates; export frames as PNGs"),
    "lifecycle": ("prevla_ros.nodes.lifecycle_client", "get / list / set a managed node's lifecycle state (ros2 lifecycle)"),
}


def run_delegated(verb: str, argv: list[str]) -> int:
    """Run ``verb``'s module main; a returned dict (final metrics) or None counts as success."""
    import importlib

    rc = importlib.import_module(DELEGATED[verb][0]).main(argv)
    return rc if isinstance(rc, int) else 0


def _graph_options(p: argparse.ArgumentParser, default_episodes: int | None) -> None:
    p.add_argument("--params-file", type=Path, default=None,
                   help="ROS 2 params YAML (e.g. launch/prevla.params.yaml)")
    from prevla_ros.runtime.configs import NODE_CONFIGS

    for node, names in GRAPH_FLAGS.items():
        known = settings(NODE_CONFIGS[node])
        for name in names:
            s = known[name]
            default = default_episodes if name == "episodes" else None
            p.add_argument("--" + name.replace("_", "-"), type=s.type, default=default,
                           help=f"{node}: {s.help} (default {default if default is not None else s.default!r})")
    p.add_argument("--world-model", action="store_true",
                   help="also run world_model_node (imagined frames for rviz; its parameters "
                        "come from --params-file)")
    p.add_argument("--processes", action="store_true",
                   help="one OS process per node instead of one composed process, supervised: "
                        "a node that dies is restarted (the flags below)")
    from prevla_ros.runtime.supervisor import SupervisorConfig

    for s in settings(SupervisorConfig).values():
        flag = "--" + s.name.replace("_", "-")
        text = f"--processes: {s.help} (default {s.default!r})"
        if s.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, type=s.type, default=None, help=text)


def _supervisor_config(args: argparse.Namespace):
    """The ``--respawn...`` flags as a :class:`SupervisorConfig` (ValueError names a bad one)."""
    from prevla_ros.runtime.settings import build
    from prevla_ros.runtime.supervisor import SupervisorConfig

    values = vars(args)
    return build(SupervisorConfig, {name: values[name] for name in settings(SupervisorConfig)
                                    if values.get(name) is not None})


def up_args(argv: list[str]) -> argparse.Namespace:
    """``prevla up``'s options parsed from ``argv``, ready for :func:`run_graph` (for scripts
    that run the graph, e.g. ``prevla_training.bench_soak``); a bad option exits 2."""
    parser = argparse.ArgumentParser(prog="prevla up")
    _graph_options(parser, None)
    args = parser.parse_args(argv)
    try:
        args.supervisor = _supervisor_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("MUJOCO_GL", "egl")
    if argv[:1] and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="prevla", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the node graph until Ctrl-C")
    _graph_options(up, None)
    demo = sub.add_parser("demo", help="run LIBERO episodes through the nodes and report")
    _graph_options(demo, 2)
    demo.add_argument("--out", default="outputs/demo", help="output directory")
    demo.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long")
    demo.add_argument("--no-video", action="store_true",
                      help="write no per-episode video (videos/ep<N>.mp4: the agent view at each "
                           "decision with the verdict, and the imagined frames with --world-model)")
    demo.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                      help="record every topic into <out>/bag (an MCAP bag: prevla inspect)")
    from prevla_ros.runtime.bag_writer import megabytes

    demo.add_argument("--record-max-mb", type=megabytes, default=1024.0,
                      help="size cap of the recording (MB); recording stops there")
    for verb, (_, text) in DELEGATED.items():
        sub.add_parser(verb, help=f"{text} (see --help there)")
    args = parser.parse_args(argv)
    try:
        args.supervisor = _supervisor_config(args)
    except ValueError as exc:  # a bad flag stops here, naming the setting
        parser.error(str(exc))
    return {"up": cmd_up, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
