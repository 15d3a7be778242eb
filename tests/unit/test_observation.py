"""Assembly of one Observation from parts that arrive separately, in any order."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.observation import PART_NAMES, ObservationAssembler, RecentObservations
from prevla_ros.runtime.types import ObjectPose


def _parts(stamp: int) -> dict[str, object]:
    """Every part of one observation, each carrying its stamp so mix-ups are visible."""
    image = np.full((8, 8, 3), stamp % 256, dtype=np.uint8)
    return {
        "agentview": image,
        "wrist": image + 1,
        "joints": (np.full(7, float(stamp)), np.full(2, 0.01 * stamp)),
        "eef": (np.array([stamp, 0.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0])),
        "objects": {"bowl": ObjectPose(np.array([0.1, 0.2, stamp]), np.array([0, 0, 0, 1.0]))},
    }


def test_out_of_order_parts_complete_one_observation():
    asm = ObservationAssembler()
    asm.instruction = "pick up the bowl"
    parts = _parts(10)
    assert asm.add(10, "eef", parts["eef"]) is None
    assert asm.add(10, "wrist", parts["wrist"]) is None
    assert asm.add(10, "joints", parts["joints"]) is None
    obs = asm.add(10, "agentview", parts["agentview"])
    assert obs is not None and obs.stamp_ns == 10
    assert obs.instruction == "pick up the bowl"
    assert sorted(obs.images) == ["agentview", "wrist"]
    np.testing.assert_array_equal(obs.images["wrist"], parts["wrist"])
    np.testing.assert_array_equal(obs.joint_positions, np.full(7, 10.0))
    np.testing.assert_array_equal(obs.gripper_qpos, np.full(2, 0.1))
    np.testing.assert_array_equal(obs.eef_pos, [10.0, 0.0, 1.0])
    assert obs.objects is None  # not required, never sent


def test_interleaved_stamps_each_get_their_own_parts():
    asm = ObservationAssembler()
    a, b = _parts(1), _parts(2)
    for name in ("agentview", "wrist", "joints"):
        assert asm.add(2, name, b[name]) is None
        assert asm.add(1, name, a[name]) is None
    first = asm.add(1, "eef", a["eef"])
    assert first is not None and first.stamp_ns == 1 and first.joint_positions[0] == 1.0
    second = asm.add(2, "eef", b["eef"])
    assert second is not None and second.stamp_ns == 2 and second.joint_positions[0] == 2.0


def test_late_parts_of_emitted_or_older_stamps_are_ignored():
    asm = ObservationAssembler()
    p = _parts(5)
    for name in ("agentview", "wrist", "joints", "eef"):
        obs = asm.add(5, name, p[name])
    assert obs is not None
    assert asm.add(5, "agentview", p["agentview"]) is None  # duplicate after emission
    old = _parts(3)
    for name in ("agentview", "wrist", "joints", "eef"):
        assert asm.add(3, name, old[name]) is None  # older than what was handed out
    assert asm._pending == {}  # nothing is kept for them


def test_completing_a_stamp_drops_older_incomplete_ones():
    asm = ObservationAssembler()
    asm.add(1, "agentview", _parts(1)["agentview"])  # stamp 1 never completes (lost parts)
    p = _parts(2)
    for name in ("agentview", "wrist", "joints", "eef"):
        obs = asm.add(2, name, p[name])
    assert obs is not None and obs.stamp_ns == 2
    assert asm.add(1, "wrist", _parts(1)["wrist"]) is None  # now older than emitted
    assert asm._pending == {}


def test_newer_stamps_evict_the_oldest_incomplete_one():
    asm = ObservationAssembler(max_pending=2)
    p1 = _parts(1)
    for name in ("agentview", "wrist", "joints"):
        asm.add(1, name, p1[name])  # stamp 1 misses only eef
    asm.add(2, "agentview", _parts(2)["agentview"])
    asm.add(3, "agentview", _parts(3)["agentview"])  # third pending stamp: 1 is evicted
    assert sorted(asm._pending) == [2, 3]
    assert asm.add(1, "eef", p1["eef"]) is None  # stamp 1 lost its earlier parts
    p3 = _parts(3)
    for name in ("wrist", "joints"):
        assert asm.add(3, name, p3[name]) is None
    obs = asm.add(3, "eef", p3["eef"])
    assert obs is not None and obs.stamp_ns == 3


def test_oldest_stamp_completing_while_pending_is_full_is_emitted():
    # The completing stamp is the oldest one pending: it must be emitted, not evicted.
    asm = ObservationAssembler(required=("joints",), max_pending=2)
    asm.add(5, "wrist", _parts(5)["wrist"])
    asm.add(6, "wrist", _parts(6)["wrist"])
    obs = asm.add(4, "joints", _parts(4)["joints"])
    assert obs is not None and obs.stamp_ns == 4
    assert sorted(asm._pending) == [5, 6]


def test_required_subset_with_privileged_objects():
    asm = ObservationAssembler(required=("joints", "eef", "objects"))
    p = _parts(3)
    asm.add(3, "agentview", p["agentview"])  # optional parts still go into the observation
    asm.add(3, "objects", p["objects"])
    assert asm.add(3, "eef", p["eef"]) is None
    obs = asm.add(3, "joints", p["joints"])
    assert obs is not None
    assert list(obs.images) == ["agentview"]
    assert obs.objects is not None and obs.objects["bowl"].pos[2] == 3.0


def test_only_images_required_fills_neutral_robot_state():
    asm = ObservationAssembler(required=("agentview",))
    obs = asm.add(1, "agentview", _parts(1)["agentview"])
    assert obs is not None
    assert obs.joint_positions.shape == (7,) and obs.gripper_qpos.shape == (2,)
    np.testing.assert_array_equal(obs.eef_quat_xyzw, [0.0, 0.0, 0.0, 1.0])


def test_unknown_parts_are_rejected():
    with pytest.raises(ValueError, match="unknown observation parts"):
        ObservationAssembler(required=("agentview", "depth"))
    asm = ObservationAssembler()
    with pytest.raises(ValueError, match="'depth'"):
        asm.add(1, "depth", None)
    with pytest.raises(ValueError, match="max_pending"):
        ObservationAssembler(max_pending=0)
    assert set(asm.required) <= set(PART_NAMES)


def test_is_pending_while_parts_are_missing():
    asm = ObservationAssembler()
    parts = _parts(5)
    assert not asm.is_pending(5)
    asm.add(5, "wrist", parts["wrist"])
    assert asm.is_pending(5)
    for name in ("agentview", "joints", "eef"):
        asm.add(5, name, parts[name])
    assert not asm.is_pending(5)


def test_recent_observations_keep_the_newest_by_stamp():
    recent = RecentObservations(capacity=3)
    for stamp in (4, 1, 3, 2, 5):  # arrival order is not stamp order
        recent.add(ObservationAssembler(required=("agentview",)).add(
            stamp, "agentview", _parts(stamp)["agentview"]))
    assert len(recent) == 3
    assert [recent.get(s) is not None for s in (1, 2, 3, 4, 5)] == [False, False, True, True, True]
    assert recent.get(4).stamp_ns == 4 and recent.get(4).images["agentview"][0, 0, 0] == 4
    with pytest.raises(ValueError, match="capacity"):
        RecentObservations(0)
