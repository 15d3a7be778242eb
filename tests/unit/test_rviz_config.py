"""``launch/prevla.rviz`` shows what the graph publishes: every display's topic is published by a
node with a type the display takes, in the frame the markers are drawn in.

rviz2 is not installable here, so the config is read as the YAML rviz2 loads and checked
against the declared interfaces (``prevla_ros/graph_interfaces.py``), which
``tests/ros/test_sros2_policy.py`` checks against the running nodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from prevla_interfaces.msg import Verdict

from prevla_ros import conversions as conv
from prevla_ros.graph_interfaces import IMAGE, MARKER, MARKER_ARRAY, NODES, publishers_of
from prevla_ros.runtime.configs import NODE_CONFIGS
from prevla_ros.runtime.settings import settings

RVIZ = Path(__file__).resolve().parents[2] / "launch" / "prevla.rviz"
#: rviz_default_plugins display class -> the message types it subscribes to.
DISPLAY_TYPES = {"rviz_default_plugins/Image": {IMAGE},
                 "rviz_default_plugins/MarkerArray": {MARKER_ARRAY},
                 "rviz_default_plugins/Marker": {MARKER}}
#: Displays without a topic.
TOPICLESS = {"rviz_default_plugins/Grid"}
#: What the view must show: (display class, topic, the node that publishes it).
REQUIRED = {("rviz_default_plugins/Image", "/agentview/image_raw", "sim_node"),
            ("rviz_default_plugins/Image", "/wrist/image_raw", "sim_node"),
            ("rviz_default_plugins/Image", "/imagined/image_raw", "world_model_node"),
            ("rviz_default_plugins/MarkerArray", "/approved_path", "verifier_node"),
            ("rviz_default_plugins/MarkerArray", "/imagined_path", "world_model_node"),
            ("rviz_default_plugins/Marker", "/verdict_text", "verifier_node")}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(RVIZ.read_text())


def _displays(displays: list[dict]) -> list[dict]:
    """Every display, those inside display groups too."""
    out = []
    for d in displays:
        out.append(d)
        out += _displays(d.get("Displays", []))
    return out


def _topic_displays(config: dict) -> list[dict]:
    return [d for d in _displays(config["Visualization Manager"]["Displays"]) if "Topic" in d]


def test_the_file_has_rviz2s_sections(config):
    assert {"Panels", "Visualization Manager", "Window Geometry"} <= set(config)
    manager = config["Visualization Manager"]
    assert {"Displays", "Global Options", "Views", "Tools"} <= set(manager)
    assert manager["Views"]["Current"]["Class"].startswith("rviz_default_plugins/")
    assert all(p["Class"].startswith("rviz_common/") for p in config["Panels"])


def test_every_display_is_known_and_named_once(config):
    displays = _displays(config["Visualization Manager"]["Displays"])
    for d in displays:
        assert d["Class"] in DISPLAY_TYPES or d["Class"] in TOPICLESS, d["Class"]
        assert ("Topic" in d) == (d["Class"] in DISPLAY_TYPES), d["Name"]
    names = [d["Name"] for d in displays]
    assert len(names) == len(set(names)), "rviz keys docked panels by display name"
    sync = next(p for p in config["Panels"] if p["Class"] == "rviz_common/Time")["SyncSource"]
    assert sync in names


def test_every_topic_is_published_with_a_type_the_display_takes(config):
    for d in _topic_displays(config):
        topic = d["Topic"]["Value"]
        assert topic.startswith("/"), f"{d['Name']}: absolute names, whatever rviz's namespace"
        publishers = publishers_of(topic)
        assert publishers, f"{d['Name']}: no node publishes {topic}"
        for node, types in publishers.items():
            assert types <= DISPLAY_TYPES[d["Class"]], (
                f"{d['Name']}: {node} publishes {topic} as {types}, {d['Class']} takes "
                f"{DISPLAY_TYPES[d['Class']]}")


def test_the_view_shows_cameras_imagination_paths_and_verdict(config):
    shown = {(d["Class"], d["Topic"]["Value"]) for d in _topic_displays(config)}
    for cls, topic, node in REQUIRED:
        assert (cls, topic) in shown, f"no {cls} display of {topic}"
        assert node in publishers_of(topic), f"{node} does not publish {topic}"
    assert all(d["Enabled"] for d in _topic_displays(config))


def test_subscriptions_match_any_publisher_qos(config):
    """Volatile subscribers match volatile and transient-local publishers alike; every
    prevla publisher shown is reliable, which both reliability settings match."""
    for d in _topic_displays(config):
        qos = d["Topic"]
        assert qos.get("Durability Policy", "Volatile") == "Volatile", d["Name"]
        assert qos.get("Reliability Policy", "Reliable") in ("Reliable", "Best Effort")
        assert int(qos.get("Depth", 5)) >= 1


def test_markers_are_drawn_in_the_fixed_frame(config):
    """The fixed frame is the frame every marker is drawn in, so rviz needs no TF."""
    fixed = config["Visualization Manager"]["Global Options"]["Fixed Frame"]
    for node in ("verifier_node", "world_model_node"):
        assert settings(NODE_CONFIGS[node])["marker_frame"].default == fixed, node
    path = conv.path_markers(np.zeros((2, 3)), 0, "approved_path", (0.0, 1.0, 0.0, 1.0))
    assert {m.header.frame_id for m in path.markers} == {fixed}
    text = conv.verdict_text_marker(Verdict(outcome="hold", accepted_index=-1), "p")
    assert text.header.frame_id == fixed and text.type == text.TEXT_VIEW_FACING


def test_the_table_knows_every_node_the_view_needs():
    assert {"sim_node", "verifier_node", "world_model_node"} <= set(NODES)
