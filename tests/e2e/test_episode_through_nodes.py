"""End to end: a LIBERO-Spatial episode executed through sim, policy and verifier nodes over
real rclpy, and the `prevla demo` command a new user runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rclpy.parameter import Parameter

from prevla_ros.nodes.monitor import EpisodeMonitor
from prevla_ros.nodes.policy_node import PolicyNode
from prevla_ros.nodes.sim_node import SimNode
from prevla_ros.nodes.verifier_node import VerifierNode

pytestmark = [pytest.mark.ros, pytest.mark.libero]


def test_expert_episode_succeeds_through_the_nodes(ros, tmp_path):
    monitor = ros.add(EpisodeMonitor(tmp_path, expected_episodes=1, context=ros.context))
    ros.add(VerifierNode(context=ros.context))
    policy = ros.add(PolicyNode(context=ros.context))
    ros.add(SimNode(context=ros.context, parameter_overrides=[
        Parameter("control_rate_hz", value=0.0), Parameter("episodes", value=1)]))
    assert ros.wait_for(lambda: monitor.finished, timeout_s=240)
    episode = monitor.episodes[0]
    assert episode["success"], episode
    assert 0 < episode["steps"] < 220
    assert episode["decisions"] >= episode["steps"] // 8  # one verdict per executed chunk
    assert episode["holds"] == 0
    assert policy._stats["holds"] == 0 and policy._stats["last_error"] == ""
    assert (tmp_path / "frames" / "ep001_first.png").exists()
    assert (tmp_path / "frames" / "ep001_last.png").exists()
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == episode["decisions"]


@pytest.mark.parametrize("mode", [[], ["--processes"]], ids=["composed", "processes"])
def test_prevla_demo_command(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, "-m", "prevla_ros.cli", "demo", "--episodes", "1",
         "--control-rate-hz", "0", "--out", str(tmp_path), "--timeout-s", "240"] + mode,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "success 1/1" in result.stdout
    [run_dir] = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["successes"] == 1
    assert summary["per_episode"][0]["steps"] > 0
