"""Assembly of one Observation from parts that arrive separately, in any order."""
from __future__ import annotations

import numpy as np
import pytest

from prevla_ros.runtime.observation import (PART_NAMES, ObservationAssembler, ObservationIntake,
                                             ObservationWait, RecentObservations)
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


# --- messages that wait for the observation they answer -------------------------------------
class Waiting:
    """An ObservationWait over an intake, releasing into a list, on a fake clock."""

    def __init__(self, in_order: bool = False) -> None:
        self.now, self.released, self.errors = 0.0, [], []
        self.wait = ObservationWait(
            ObservationIntake(keep=4), lambda stamp, msg: self.released.append(
                (msg, self.wait.intake.get(stamp) is not None)),
            self.errors.append, wait_s=1.0, in_order=in_order, clock=lambda: self.now)

    def observe(self, stamp: int, names=("agentview", "wrist", "joints", "eef")) -> None:
        parts = _parts(stamp)
        for name in names:
            self.wait.add(stamp, name, lambda v=parts[name]: v)


def test_a_message_waits_for_its_observation_before_or_between_its_parts():
    w = Waiting()
    w.observe(1)
    w.wait.offer(1, "set 1")  # its observation is in: released at once, with it
    w.wait.offer(2, "set 2")  # no part of stamp 2 yet, and it is newer: waits
    w.observe(3, ("wrist",))
    w.wait.offer(3, "set 3")  # some parts in: waits
    assert w.released == [("set 1", True)] and len(w.wait) == 2
    w.observe(2)
    assert w.released[1:] == [("set 2", True)] and w.wait.observations == 2
    w.observe(3, ("agentview", "joints", "eef"))
    assert w.released[2:] == [("set 3", True)] and len(w.wait) == 0


def _malformed():
    raise ValueError("bad encoding")


def test_a_message_whose_observation_cannot_come_is_released_without_it():
    w = Waiting()
    w.observe(5)
    w.wait.offer(4, "older")  # older than every part received: never coming
    w.wait.offer(6, "lost")
    w.wait.offer(8, "newer observation")
    w.observe(7)  # a newer observation completed: stamp 6 never will
    assert w.released == [("older", False), ("lost", False)] and len(w.wait) == 1
    w.wait.add(8, "wrist", _malformed)
    assert w.released[2:] == [("newer observation", False)]
    assert w.errors == ["observation 8: malformed wrist: bad encoding (not stored)"]
    w.wait.offer(8, "after the malformed part")  # never coming: at once
    assert w.released[3:] == [("after the malformed part", False)]


def test_a_held_message_is_released_after_wait_s():
    w = Waiting()
    w.wait.offer(10, "a")
    w.now = 0.6
    w.wait.offer(11, "b")
    w.now = 1.1
    w.wait.expire()
    assert w.released == [("a", False)]
    w.now = 1.7
    w.wait.expire()
    assert w.released == [("a", False), ("b", False)]


def test_in_order_a_newer_message_releases_the_held_one_first_and_wait_false_never_holds():
    w = Waiting(in_order=True)
    w.wait.offer(10, "a")
    w.wait.offer(11, "b")
    assert w.released == [("a", False)] and len(w.wait) == 1
    w.wait.offer(12, "c", wait=False)
    assert w.released == [("a", False), ("b", False), ("c", False)] and len(w.wait) == 0


# --- stamps going backwards: late parts vs a clock that jumped back --------------------------
S = 1_000_000_000  # one second in ns


def _complete(asm: ObservationAssembler, stamp: int):
    p, obs = _parts(stamp), None
    for name in asm.required:
        obs = asm.add(stamp, name, p[name])
    return obs


def test_a_clock_jump_back_restarts_the_monotonic_check_instead_of_stalling():
    asm = ObservationAssembler(jump_back_s=5.0)
    assert _complete(asm, 100 * S).stamp_ns == 100 * S
    # Late: older than the newest handed out by less than jump_back_s -> ignored, as before.
    assert _complete(asm, 97 * S) is None and asm.time_jumps == 0
    # Older by more: the clock jumped back (sim restart, replay) -> served, and the stream
    # goes on from there instead of dropping every observation until the clock catches up.
    assert _complete(asm, 2 * S).stamp_ns == 2 * S and asm.time_jumps == 1
    assert _complete(asm, 3 * S).stamp_ns == 3 * S
    assert _complete(asm, 2 * S + 1) is None  # late again, within the tolerance


def test_restart_takes_any_stamp_next_and_keeps_pending_parts():
    asm = ObservationAssembler(jump_back_s=5.0)
    _complete(asm, 10 * S)
    asm.add(11 * S, "agentview", _parts(11)["agentview"])  # in flight
    asm.restart()  # a new episode
    assert _complete(asm, 9 * S).stamp_ns == 9 * S
    assert asm.time_jumps == 0


def test_after_a_jump_back_the_intake_keeps_the_new_observations():
    intake = ObservationIntake(keep=3, jump_back_s=5.0)

    def observe(stamp):
        p = _parts(stamp)
        for name in ("agentview", "wrist", "joints", "eef"):
            intake.add(stamp, name, lambda v=p[name]: v)

    for t in (100, 101, 102):
        observe(t * S)
    assert intake.newest_part == 102 * S
    observe(1 * S)  # the clock jumped back by ~100 s
    assert intake.get(1 * S) is not None and intake.newest_part == 1 * S
    observe(2 * S)
    assert intake.get(2 * S) is not None and intake.get(1 * S) is not None
    assert intake.coming(3 * S)  # a message for the next stamp waits for its observation
