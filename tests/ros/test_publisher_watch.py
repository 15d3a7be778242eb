"""Who publishes the command topics, over real rclpy: anyone on the DDS domain can publish on
``candidates`` or ``action_chunk``, so the nodes that take them watch their publishers and
warn on /diagnostics when more than one appears (:class:`PublisherWatch`)."""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from prevla_interfaces.msg import ActionChunk, CandidateSet, Verdict
from rclpy.parameter import Parameter

from prevla_ros.nodes.diagnostics import PublisherWatch
from prevla_ros.nodes.params import STREAM_QOS
from prevla_ros.nodes.verifier_node import VerifierNode
from tests.ros.fake_robot import candidate_set

pytestmark = pytest.mark.ros

H = 8


def test_a_second_publisher_on_candidates_is_a_warning_naming_both_nodes(ros, capfd):
    ros.add(VerifierNode(context=ros.context, parameter_overrides=[
        Parameter("verifier", value="passthrough")]))
    policy = ros.node("policy_stand_in")
    probe = ros.node("probe")
    diag, verdicts = [], []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.extend(
        s for s in m.status if s.name == "prevla: verifier_node"), 10)
    probe.create_subscription(Verdict, "verdict", verdicts.append, STREAM_QOS)
    candidates = policy.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    assert ros.wait_for(lambda: candidates.get_subscription_count() > 0)
    candidates.publish(candidate_set([np.full((H, 7), 0.1, np.float32)], 10))
    assert ros.wait_for(lambda: verdicts)

    def newest(since: int = 0):
        seen = len(diag)
        assert ros.wait_for(lambda: len(diag) > max(seen, since), timeout_s=5)
        s = diag[-1]
        return s.level, s.message, {kv.key: kv.value for kv in s.values}

    level, message, values = newest()
    assert level == DiagnosticStatus.OK and values["publishers_candidates"] == "1", message

    # Someone else on the domain starts publishing candidates: WARN, naming both nodes.
    capfd.readouterr()
    intruder = ros.node("intruder")
    extra = intruder.create_publisher(CandidateSet, "candidates", STREAM_QOS)
    assert ros.wait_for(lambda: newest()[2]["publishers_candidates"] == "2", timeout_s=10)
    level, message, values = newest()
    assert level == DiagnosticStatus.WARN, message
    assert "2 publishers on candidates" in message
    assert "/intruder" in message and "/policy_stand_in" in message
    ros.spin_for(2.2)  # more diagnostics cycles: still one log line for this change
    warnings = [line for line in capfd.readouterr().err.splitlines()
                if "publishers on candidates" in line]
    assert len(warnings) == 1, warnings

    # It goes away: OK again.
    intruder.destroy_publisher(extra)
    assert ros.wait_for(lambda: newest()[2]["publishers_candidates"] == "1", timeout_s=10)
    level, message, _ = newest()
    assert level == DiagnosticStatus.OK and "publishers" not in message, message


def test_the_watch_counts_every_publisher_and_logs_each_change_at_most_every_few_seconds(ros):
    watcher = ros.node("watcher")
    now = [0.0]
    lines: list[str] = []

    class Log:  # the node's logger, recorded
        def warning(self, line):
            lines.append(line)

        info = warning

    watch = PublisherWatch(watcher, "action_chunk", log_every_s=5.0, clock=lambda: now[0])
    watcher.get_logger = Log
    assert watch.check() is None and watch.publishers == []
    nodes = {name: ros.node(name) for name in ("verifier_a", "verifier_b", "verifier_c")}
    pubs = {name: n.create_publisher(ActionChunk, "action_chunk", STREAM_QOS)
            for name, n in nodes.items()}

    def seen(n: int) -> bool:
        return len(watcher.get_publishers_info_by_topic("action_chunk")) == n

    assert ros.wait_for(lambda: seen(3))
    warning = watch.check()
    assert watch.publishers == ["/verifier_a", "/verifier_b", "/verifier_c"]
    assert warning.startswith("3 publishers on action_chunk (expected 1)") and len(lines) == 1
    assert "/verifier_a, /verifier_b, /verifier_c" in warning
    assert watch.key == "publishers_action_chunk"
    nodes["verifier_c"].destroy_publisher(pubs.pop("verifier_c"))  # a change, too soon to log
    assert ros.wait_for(lambda: seen(2))
    now[0] = 1.0
    assert watch.check().startswith("2 publishers") and len(lines) == 1
    now[0] = 6.0  # the next check after the interval logs the current state
    watch.check()
    assert len(lines) == 2 and "2 publishers" in lines[-1]
    nodes["verifier_b"].destroy_publisher(pubs.pop("verifier_b"))
    assert ros.wait_for(lambda: seen(1))
    now[0] = 12.0
    assert watch.check() is None and watch.publishers == ["/verifier_a"]
    assert len(lines) == 3 and "back to 1 publisher(s)" in lines[-1]
    now[0] = 20.0
    assert watch.check() is None and len(lines) == 3  # nothing new: nothing logged
