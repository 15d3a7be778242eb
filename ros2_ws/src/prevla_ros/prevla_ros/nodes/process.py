"""A node process's ``main()``: init, spin, clean shutdown; config errors exit 2 (a supervisor
does not restart those: :data:`prevla_ros.runtime.supervisor.CONFIG_ERROR_EXIT`).

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
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from prevla_ros.runtime.supervisor import CONFIG_ERROR_EXIT, StopSignals, die_with_parent


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """``main()`` body shared by every node: init, spin, clean shutdown; config errors exit 2."""
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
