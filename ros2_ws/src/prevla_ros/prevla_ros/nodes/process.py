"""A node process's ``main()``: init, spin, clean shutdown; config errors exit 2 (a supervisor
does not restart those: :data:`prevla_ros.runtime.supervisor.CONFIG_ERROR_EXIT`).

A managed (lifecycle) node starts ``unconfigured``, as ``ros2 launch``'s lifecycle handlers
and ``ros2 lifecycle set`` expect; with ``--autostart`` on its command line (before
``--ros-args``) it configures and activates itself once built, which is how
``prevla up --processes`` starts it: a respawned process comes back active on its own, with
no one having to notice the restart and drive it again. A failed configure leaves the
process up, unconfigured, saying why (:mod:`prevla_ros.nodes.lifecycle`).

SIGINT and SIGTERM (Ctrl-C, ``prevla up``'s or launch's shutdown) are a stop request that the
spin loop polls between two callbacks: rclpy's own handlers would raise ``KeyboardInterrupt``
anywhere, mid-callback or inside a simulator's destructor, and leave half-freed resources and a
traceback behind. While the node is being built a signal interrupts at once.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from prevla_ros.nodes.lifecycle import bring_up
from prevla_ros.runtime.supervisor import CONFIG_ERROR_EXIT, StopSignals, die_with_parent


#: Command-line flag (before ``--ros-args``): configure and activate a managed node at once.
AUTOSTART_FLAG = "--autostart"


def split_autostart(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without :data:`AUTOSTART_FLAG` (looked for before ``--ros-args``), and whether
    it was there."""
    end = args.index("--ros-args") if "--ros-args" in args else len(args)
    autostart = AUTOSTART_FLAG in args[:end]
    return [a for i, a in enumerate(args) if not (i < end and a == AUTOSTART_FLAG)], autostart


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """``main()`` body shared by every node: init, spin, clean shutdown; config errors exit 2;
    ``--autostart`` brings a managed node to active."""
    args, autostart = split_autostart(list(sys.argv if args is None else args))
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.path.expanduser("~"), ".ros", "log"))
    die_with_parent()  # started by `prevla up --processes`: never outlive it
    try:
        with StopSignals() as stop, rclpy.init(args=args,
                                               signal_handler_options=SignalHandlerOptions.NO):
            try:
                with stop.interruptible():
                    node = factory()
            except ValueError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                return CONFIG_ERROR_EXIT
            if autostart and isinstance(node, LifecycleNode):
                bring_up(node)  # a failure is logged; the node stays up to be fixed
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                while not stop.received and rclpy.ok():
                    executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                pass
            finally:
                executor.remove_node(node)
                node.destroy_node()
                executor.shutdown()
    except KeyboardInterrupt:
        pass
    return 0
