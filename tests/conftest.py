"""Shared test setup: isolate ROS 2 traffic and logs, point LIBERO at a private config.

Every pytest process gets its own DDS domain and localhost-only discovery, so parallel runs
(and other sessions on the machine) never see each other's topics.
"""
from __future__ import annotations

import os
import random
import signal
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="prevla-test-")
os.environ.setdefault("ROS_LOG_DIR", os.path.join(_TMP, "ros_log"))
os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 101))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LIBERO_CONFIG_PATH", os.path.join(_TMP, "libero_config"))
# A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and an ignored
# signal is inherited across exec: the children the tests start (supervised nodes, pool
# workers) would ignore Ctrl-C where on a terminal they would not. `prevla up` installs its own
# handlers (reset to default in its children); the tests get Python's default here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

try:  # the property-based tests (test_fuzz_*.py); hypothesis is a test dependency
    from hypothesis import HealthCheck
    from hypothesis import settings as _hypothesis
except ImportError:  # pragma: no cover -- a venv without the test extra
    _hypothesis = None
if _hypothesis is not None:
    # No example database (no failing example replayed from an earlier run: a run's result is
    # its own) and no deadline (a shared 2-core machine). Under CI the examples are
    # derandomized: the same ones every run, so a red CI reproduces; elsewhere each run explores
    # new ones. HYPOTHESIS_PROFILE picks either.
    # too_slow off too: example generation slows down when the cores are busy, not the code.
    slow = [HealthCheck.too_slow]
    _hypothesis.register_profile("ci", database=None, deadline=None, derandomize=True,
                                 print_blob=True, suppress_health_check=slow)
    _hypothesis.register_profile("dev", database=None, deadline=None, print_blob=True,
                                 suppress_health_check=slow)
    _hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                            "ci" if os.environ.get("CI") else "dev"))


class RosHarness:
    """A private rclpy context + executor; nodes added to it are spun by ``wait_for``.

    A managed (lifecycle) node added is configured and activated first, as ``prevla up`` does
    (``bring_up``); ``add(node, activate=False)`` leaves it unconfigured, to drive it by hand.
    """

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = []

    def add(self, node, activate: bool = True):
        from rclpy.lifecycle import LifecycleNode

        from prevla_ros.nodes.lifecycle import bring_up

        if activate and isinstance(node, LifecycleNode):
            bring_up(node)  # a failed configure stays unconfigured: the test checks why
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str):
        import rclpy

        return self.add(rclpy.create_node(name, context=self.context))

    def wait_for(self, condition, timeout_s: float = 10.0) -> bool:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(condition())

    def spin_for(self, seconds: float) -> None:
        self.wait_for(lambda: False, timeout_s=seconds)

    def close(self) -> None:
        import rclpy

        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def torch_one_thread():
    """Run torch on one thread: on a shared 2-core CPU oversubscription makes tiny models 10x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def ros():
    """Real rclpy: a fresh context and executor per test."""
    harness = RosHarness()
    yield harness
    harness.close()


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items) -> None:
    """``gpu`` tests skip, saying why, on a machine without a CUDA device."""
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
