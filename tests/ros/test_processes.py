"""Nodes as separate OS processes over Fast DDS, and startup config errors."""
from __future__ import annotations

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
                             "--ros-args", "-p", "hold_horizon:=3"])
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
