"""Nodes as separate OS processes over Fast DDS, and startup config errors. A managed node's
process starts unconfigured (what launch's lifecycle handlers expect) unless ``--autostart``
(what ``prevla up --processes`` passes)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from prevla_interfaces.msg import ActionChunk, CandidateSet, Verdict

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.runtime.types import ActionChunk as Chunk
from prevla_ros.runtime.types import CandidateSet as Candidates

pytestmark = pytest.mark.ros


def test_verifier_node_in_its_own_process(ros):
    proc = subprocess.Popen([sys.executable, "-m", "prevla_ros.nodes.verifier_node",
                             "--autostart", "--ros-args", "-p", "hold_horizon:=3"])
    try:
        probe = ros.node("probe")
        chunks, verdicts = [], []
        probe.create_subscription(ActionChunk, "action_chunk", chunks.append, STREAM_QOS)
        probe.create_subscription(Verdict, "verdict", verdicts.append, STREAM_QOS)
        pub = probe.create_publisher(CandidateSet, "candidates", STREAM_QOS)
        assert ros.wait_for(lambda: pub.get_subscription_count() > 0, timeout_s=30)
        nan = np.full((4, 7), np.nan, np.float32)
        pub.publish(conv.candidates_to_msg(Candidates(chunks=[Chunk(nan, "p", 99)],
                                                      policy_id="p", stamp_ns=99)))
        assert ros.wait_for(lambda: verdicts and chunks, timeout_s=15)
        assert verdicts[0].outcome == "hold"
        assert chunks[0].horizon == 3  # the -p override reached the other process
        assert proc.poll() is None  # still alive after bad input
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("node,arg,field", [
    ("verifier_node", "mode:=fly", "mode"),
    ("policy_node", "num_candidates:=0", "num_candidates"),
])
def test_bad_parameter_exits_with_message_naming_the_field(node, arg, field):
    result = subprocess.run([sys.executable, "-m", f"prevla_ros.nodes.{node}", "--ros-args",
                             "-p", arg], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and field in result.stderr


def test_a_managed_node_process_starts_unconfigured_and_is_driven_over_its_services(ros):
    from tests.ros.test_lifecycle import LifecycleClient

    proc = subprocess.Popen([sys.executable, "-m", "prevla_ros.nodes.verifier_node",
                             "--ros-args", "-p", "verifier:=passthrough"])
    try:
        probe = ros.node("probe")
        verdicts = []
        probe.create_subscription(Verdict, "verdict", verdicts.append, STREAM_QOS)
        pub = probe.create_publisher(CandidateSet, "candidates", STREAM_QOS)
        assert ros.wait_for(lambda: probe.count_publishers("/verifier_node/transition_event"),
                            timeout_s=30)
        lc = LifecycleClient(ros, "verifier_node")
        assert lc.state() == "unconfigured" and pub.get_subscription_count() == 0
        assert lc.set("configure") and lc.set("activate") and lc.state() == "active"
        assert ros.wait_for(lambda: pub.get_subscription_count() > 0, timeout_s=15)
        ok = np.zeros((8, 7), np.float32)
        pub.publish(conv.candidates_to_msg(Candidates(chunks=[Chunk(ok, "p", 7)],
                                                      policy_id="p", stamp_ns=7)))
        assert ros.wait_for(lambda: verdicts, timeout_s=15)
        assert verdicts[0].outcome == "accepted"
        assert lc.set("shutdown") and lc.state() == "finalized"
        assert proc.poll() is None  # finalized, the process idles until it is stopped
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_prevla_lifecycle_drives_a_node_process_like_ros2_lifecycle(ros):
    """``prevla lifecycle`` (``ros2 lifecycle`` for pip installs) over the standard services."""
    # its own name: a /verifier_node left in this domain by an earlier test would answer instead
    name = f"lifecycle_cli_verifier_{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "prevla_ros.nodes.verifier_node",
                             "--ros-args", "-r", f"__node:={name}", "-p", "verifier:=passthrough"])

    def lifecycle(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prevla_ros.nodes.lifecycle_client", *args],
                              capture_output=True, text=True, timeout=60)
    try:
        got = lifecycle("get", f"/{name}", "--timeout", "30")
        assert (got.returncode, got.stdout.strip()) == (0, "unconfigured [1]"), got.stderr
        listed = lifecycle("list", name)
        assert "- configure [1]" in listed.stdout and "Goal: configuring" in listed.stdout
        refused = lifecycle("set", f"/{name}", "activate")  # not available unconfigured
        assert refused.returncode == 2 and "available: configure" in refused.stderr
        for transition in ("configure", "activate"):
            done = lifecycle("set", f"/{name}", transition)
            assert done.returncode == 0 and "successful" in done.stdout, done.stderr
        assert lifecycle("get", f"/{name}").stdout.strip() == "active [3]"
        missing = lifecycle("get", "/no_such_node", "--timeout", "1")
        assert missing.returncode == 2 and "no such service" in missing.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
