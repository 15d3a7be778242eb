"""A node process's ``main()``: init, spin, clean shutdown; config errors exit 2."""
from __future__ import annotations

import os
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """``main()`` body shared by every node: init, spin, clean shutdown; config errors exit 2."""
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.path.expanduser("~"), ".ros", "log"))
    try:
        with rclpy.init(args=args):
            try:
                node = factory()
            except ValueError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                return 2
            try:
                rclpy.spin(node)
            except RuntimeError:
                # A signal can shut the context down while spin() builds its wait set;
                # rclpy then raises RCLError (a RuntimeError) instead of the usual exception.
                if rclpy.ok():
                    raise
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0
