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
    prevla train-verifier ...                 train the verifier (+ ablations table)
    prevla export MODEL --to onnx|tensorrt    export a model (parity-checked) into the zoo
    prevla params [--write]                   check / regenerate the parameter docs and YAML

The graph runs composed in one process (one rclpy executor, the default: lowest latency)
or, with ``--processes``, as one OS process per node talking over Fast DDS.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    """The three nodes (four with ``--world-model``), composed in this process or started as
    child processes."""

    def __init__(self, args: argparse.Namespace) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.args = args
        self.processes: list[subprocess.Popen] = []
        rclpy.init(args=_ros_args(args))
        self.executor = SingleThreadedExecutor()
        self.nodes = []
        overrides = _overrides(args)
        if args.processes:
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
            node = cls(parameter_overrides=params)
            self.nodes.append(node)
            self.executor.add_node(node)

    def _start_processes(self, overrides: dict[str, dict[str, object]]) -> None:
        names = NODES + (("world_model_node",) if getattr(self.args, "world_model", False) else ())
        for name in names:
            cmd = [sys.executable, "-m", f"prevla_ros.nodes.{name}"] + _ros_args(self.args)
            for key, value in overrides[name].items():
                cmd += ["-p", f"{key}:={_param_literal(value)}"]
            self.processes.append(subprocess.Popen(cmd))

    def add(self, node) -> None:
        self.nodes.append(node)
        self.executor.add_node(node)

    def spin_until(self, done, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                return False
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"node process exited with code {dead[0].returncode}")
            self.executor.spin_once(timeout_sec=0.1)
        return True

    def shutdown(self) -> None:
        import rclpy

        for p in self.processes:  # SIGINT first, as ros2 launch does: a clean rclpy shutdown
            p.send_signal(signal.SIGINT)
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _param_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cmd_up(args: argparse.Namespace) -> int:
    graph = Graph(args)
    try:
        graph.spin_until(lambda: False)
    except KeyboardInterrupt:
        pass
    finally:
        graph.shutdown()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prevla_ros.nodes.monitor import EpisodeMonitor

    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    graph = Graph(args)
    monitor = EpisodeMonitor(out, expected_episodes=args.episodes)
    graph.add(monitor)
    try:
        finished = graph.spin_until(lambda: monitor.finished, timeout_s=args.timeout_s)
    except KeyboardInterrupt:
        finished = False
    finally:
        graph.shutdown()
    summary = monitor.summary(wall_s=time.monotonic() - started, finished=finished)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(monitor.table())
    print(f"success {summary['successes']}/{summary['episodes']} in {summary['wall_s']:.1f} s; "
          f"outputs in {out}/ (summary.json, episodes.jsonl, verdicts.jsonl, frames/*.png)")
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
    "train-verifier": ("prevla_training.train_verifier", "train the verifier on labelled candidates"),
    "train-world-model": ("prevla_training.train_world_model", "train the world model on demos and policy rollouts"),
    "export": ("prevla_training.export", "export a model to ONNX / TensorRT, parity-checked, into the zoo"),
    "params": ("prevla_ros.params_doc", "regenerate docs/parameters.md and the params YAML from the configs"),
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
    from prevla_ros.runtime.settings import settings

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
                   help="one OS process per node instead of one composed process")


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
    for verb, (_, text) in DELEGATED.items():
        sub.add_parser(verb, help=f"{text} (see --help there)")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
