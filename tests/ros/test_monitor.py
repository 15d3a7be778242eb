"""The demo's episode monitor over real rclpy: topics are not ordered across each other."""
from __future__ import annotations

import pytest
from prevla_interfaces.msg import EpisodeStatus, Verdict

from prevla_ros.nodes.monitor import EpisodeMonitor
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS

pytestmark = pytest.mark.ros


def test_a_verdict_that_arrives_before_its_episode_status_counts_in_that_episode(ros, tmp_path):
    monitor = ros.add(EpisodeMonitor(tmp_path, expected_episodes=1, videos=False,
                                     context=ros.context))
    peer = ros.node("peer")
    verdicts = peer.create_publisher(Verdict, "verdict", STREAM_QOS)
    status = peer.create_publisher(EpisodeStatus, "episode_status", STATUS_QOS)
    assert ros.wait_for(lambda: verdicts.get_subscription_count() > 0
                        and status.get_subscription_count() > 0, timeout_s=15)
    verdicts.publish(Verdict(outcome="hold", accepted_index=-1))  # before the status
    assert ros.wait_for(lambda: len(monitor.verdicts) == 1)
    status.publish(EpisodeStatus(suite="libero_spatial", episode=1, state="running"))
    assert ros.wait_for(lambda: monitor._current is not None)
    verdicts.publish(Verdict(outcome="accepted", accepted_index=0))
    assert ros.wait_for(lambda: len(monitor.verdicts) == 2)
    status.publish(EpisodeStatus(suite="libero_spatial", episode=1, state="success", done=True,
                                 success=True, step=16))
    assert ros.wait_for(lambda: monitor.finished)
    episode = monitor.episodes[0]
    assert (episode["decisions"], episode["holds"]) == (2, 1)
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == episode["decisions"]
