"""Scripted, privileged, closed-loop pick-and-place expert for LIBERO (ROS-free).

The expert reads the task's BDDL goal (``(On obj target)`` / ``(In obj region)``) and, at every
call, decides from the *current* observation alone what to do next: approach above the grasp
point, descend, close, lift, carry above the target, descend, open, retreat. The phase is
recovered from state ("is the object in hand?" = fingers partly closed around it, "is it
placed?" = object resting on/in the target), so chunks perturbed by noise are recovered from.

Within a chunk the expert predicts its own end-effector motion with a simple first-order
model of the OSC_POSE controller (each step covers ``TRACK`` of the commanded delta), so an
H-step chunk follows the waypoints instead of repeating one action H times.

Bowls are grasped at the rim (the Panda's 8 cm stroke cannot span a 10.7 cm bowl), with the
fingers closing radially across the wall. Other objects are grasped at their box centre with
the fingers closing across the narrowest horizontal side.

Two fixes for the OSC arm's habit of jamming with a straight elbow far from its base: the hand
pitches forward with reach (``TILT_GAIN``), and a hand that did not move over a whole chunk
while its target is far backs off up and towards the robot for one chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_CLOSE, GRIPPER_OPEN, Observation

POS_SCALE = 0.05  # metres per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit action
TRACK = 0.22  # fraction of a commanded delta covered per 20 Hz step (measured: 1.1 cm at 1.0)
TILT_GAIN = 3.0  # rad of forward finger pitch per metre of reach beyond x = 0
MAX_TILT = 0.45  # rad
OPEN_GAP = 0.075  # finger gap (m) of a fully open Panda gripper is ~0.0775
#: Straight-down gripper orientation with yaw 0 (what LIBERO starts from): fingers close along y.
R_DOWN = np.diag([1.0, -1.0, -1.0])

#: Local (body-frame) collision bounding boxes (lo, hi) per object category, measured from
#: LIBERO's models; used when the expert is built without a simulator (``expert_for_task``).
DEFAULT_EXTENTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "akita_black_bowl": ((-0.0538, -0.0539, 0.0016), (0.0534, 0.0531, 0.0521)),
    "cookies": ((-0.031, -0.0413, -0.0094), (0.031, 0.0413, 0.0094)),
    "glazed_rim_porcelain_ramekin": ((-0.0447, -0.0444, 0.0007), (0.0447, 0.0447, 0.0427)),
    "plate": ((-0.068, -0.0684, -0.0025), (0.0696, 0.0691, 0.0164)),
    "wooden_cabinet": ((-0.1234, -0.1093, 0.0046), (0.1312, 0.1117, 0.223)),
    "flat_stove": ((-0.052, -0.095, -0.02), (0.245, 0.095, 0.05)),
    "alphabet_soup": ((-0.0313, -0.0386, -0.0349), (0.0311, 0.0376, 0.0275)),
    "basket": ((-0.0841, -0.0785, 0.0042), (0.0854, 0.0788, 0.1457)),
    "salad_dressing": ((-0.0273, -0.0727, -0.018), (0.0254, 0.0729, 0.0176)),
    "cream_cheese": ((-0.0406, -0.0213, -0.0089), (0.0406, 0.0213, 0.0089)),
    "milk": ((-0.0264, -0.0697, -0.0262), (0.0266, 0.0614, 0.0262)),
    "tomato_sauce": ((-0.0312, -0.0386, -0.0341), (0.031, 0.0376, 0.0275)),
    "butter": ((-0.0381, -0.0198, -0.0087), (0.0381, 0.0198, 0.0087)),
    "orange_juice": ((-0.0266, -0.0697, -0.0262), (0.0264, 0.0614, 0.0262)),
    "ketchup": ((-0.0277, -0.0724, -0.0176), (0.0286, 0.0732, 0.0191)),
    "bbq_sauce": ((-0.0235, -0.0146, -0.0546), (0.0235, 0.0146, 0.0525)),
    "chocolate_pudding": ((-0.0406, -0.0232, -0.0131), (0.0396, 0.0232, 0.0143)),
}
_FALLBACK_EXTENT = ((-0.03, -0.03, -0.03), (0.03, 0.03, 0.03))


def category(name: str) -> str:
    """``akita_black_bowl_1`` -> ``akita_black_bowl`` (LIBERO instance names end in _<n>)."""
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() and head else name


def quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / max(np.linalg.norm(q), 1e-12)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotvec_from_mat(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (robust near 0 and pi)."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    if angle > math.pi - 1e-3:  # axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(r) + 1.0) / 2.0, 0.0))
        i = int(np.argmax(axis))
        axis = (r[:, i] + r[i, :]) / 2.0
        axis /= max(np.linalg.norm(axis), 1e-12)
        return axis * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle))
    return axis * angle


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def wrap_half_pi(yaw: float) -> float:
    """Gripper yaw modulo pi (a parallel gripper is symmetric), wrapped into [-pi/2, pi/2)."""
    return (yaw + math.pi / 2) % math.pi - math.pi / 2


def gripper_yaw(r_eef: np.ndarray) -> float:
    """Yaw of the finger closing axis (hand y axis); 0 = LIBERO's start orientation."""
    c = r_eef[:, 1]
    return wrap_half_pi(math.atan2(c[0], -c[1]))


@dataclass
class Goal:
    """One pick-and-place subgoal from the BDDL goal: put ``obj`` on/in ``target``."""

    predicate: str  # "on" | "in"
    obj: str
    target: str  # an object name or a region like basket_1_contain_region


def parse_goal(bddl_path: str) -> list[Goal]:
    """Pick-and-place subgoals of a LIBERO BDDL file (On/In predicates, in file order)."""
    from libero.libero.envs import bddl_utils

    problem = bddl_utils.robosuite_parse_problem(bddl_path)
    goals = [Goal(p[0].lower(), p[1], p[2]) for p in problem["goal_state"]
             if len(p) == 3 and p[0].lower() in ("on", "in")]
    if not goals:
        raise ValueError(f"no On/In goal predicate in {bddl_path}: {problem['goal_state']}")
    return goals


@dataclass
class _Body:
    """World-frame geometry of one object, derived from its pose and local box."""

    center: np.ndarray
    top: float
    bottom: float
    rot: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    pos: np.ndarray

    def distance(self, p: np.ndarray) -> float:
        """Distance from world point ``p`` to the object's box (0 inside)."""
        local = self.rot.T @ (p - self.pos)
        return float(np.linalg.norm(np.maximum(0.0, np.maximum(self.lo - local, local - self.hi))))


@dataclass
class ScriptedExpert:
    """Closed-loop privileged pick-and-place expert producing OSC_POSE action chunks.

    Args:
        goals: subgoals (usually one) parsed from the BDDL goal.
        extents: category or instance name -> local collision box (lo, hi).
    """

    goals: list[Goal]
    extents: dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_EXTENTS))
    kp: float = 2.5  # position gain: action = kp * error / POS_SCALE
    kr: float = 1.5  # rotation gain
    _last_gap: float | None = field(default=None, init=False, repr=False)
    _pick_bottom: float | None = field(default=None, init=False, repr=False)
    _rim_memory: tuple | None = field(default=None, init=False, repr=False)
    _last_eef: np.ndarray | None = field(default=None, init=False, repr=False)
    _stuck: int = field(default=0, init=False, repr=False)

    def reset(self) -> None:
        """Forget per-episode memory (only hints; every decision is re-derived from state)."""
        self._last_gap = None
        self._pick_bottom = None
        self._rim_memory = None
        self._last_eef = None
        self._stuck = 0

    # ------------------------------------------------------------------ geometry helpers
    def _body(self, obs: Observation, name: str) -> _Body:
        if name not in obs.objects:
            raise ValueError(f"the observation's sim_state has no {name!r} (has {sorted(obs.objects)[:8]})")
        pose = obs.objects[name]
        lo, hi = self.extents.get(name) or self.extents.get(category(name)) or _FALLBACK_EXTENT
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        rot = quat_xyzw_to_mat(pose.quat_xyzw)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])]) @ rot.T + pose.pos
        return _Body(center=pose.pos + rot @ ((lo + hi) / 2), top=float(corners[:, 2].max()),
                     bottom=float(corners[:, 2].min()), rot=rot, lo=lo, hi=hi, pos=pose.pos)

    def _target_name(self, obs: Observation, target: str) -> str:
        if target in obs.objects:
            return target
        # Regions (basket_1_contain_region) belong to the longest object name prefixing them.
        parents = [n for n in obs.objects if target.startswith(n + "_")]
        if not parents:
            raise ValueError(f"goal target {target!r} matches no object in the observation")
        return max(parents, key=len)

    def _grasp(self, obs: Observation, name: str, body: _Body) -> tuple[np.ndarray, float]:
        """Grasp point (world) and gripper yaw for object ``name``."""
        yaw_now = gripper_yaw(quat_xyzw_to_mat(obs.eef_quat_xyzw))
        if "bowl" in category(name):
            return self._rim_grasp(obs, name, body, yaw_now)
        # Close across the narrowest horizontal side of the box.
        best_axis, best_w = np.array([0.0, 1.0]), 1e9
        for i in range(3):
            h = body.rot[:2, i]
            if np.linalg.norm(h) > 0.7 and (body.hi[i] - body.lo[i]) < best_w:
                best_w, best_axis = body.hi[i] - body.lo[i], h / np.linalg.norm(h)
        yaw = wrap_half_pi(math.atan2(best_axis[0], -best_axis[1]))
        height = body.top - body.bottom
        z = max(body.center[2], body.top - 0.03, body.bottom + 0.012) if height > 0.04 else \
            max(body.bottom + 0.008, body.center[2] - 0.005)
        return np.array([body.center[0], body.center[1], z]), yaw

    def _rim_grasp(self, obs: Observation, name: str, body: _Body,
                   yaw_now: float) -> tuple[np.ndarray, float]:
        """Rim point of a bowl (in its own frame, so tilted bowls work) and the matching yaw.

        Candidates every 45 degrees around the rim are scored by clearance from other objects
        that stand as high as the fingers reach, by reach (rims at x > 0 need a stretched arm
        that cannot get low; very near rims fold the arm against its joint limits) and by
        wrist rotation.
        """
        radius = 0.5 * float(min(body.hi[0] - body.lo[0], body.hi[1] - body.lo[1]))
        r_grasp = radius - 0.008  # fingers straddle the wall just inside the outer rim
        mem = self._rim_memory
        # Keep the rim chosen earlier while the bowl has not moved: re-choosing every call
        # between near-equal rims makes the arm oscillate.
        keep = mem is not None and mem[0] == name and np.linalg.norm(mem[1] - body.center[:2]) < 0.04
        others = []
        cab_axes = []
        for o in obs.objects:
            if o == name:
                continue
            ob = self._body(obs, o)
            local = ob.rot.T @ (body.center - ob.pos)
            inside = bool(np.all(local[:2] > ob.lo[:2]) and np.all(local[:2] < ob.hi[:2]))
            if category(o) in ("wooden_cabinet", "white_cabinet", "wooden_two_layer_shelf"):
                if inside:  # in a drawer: its side walls (cabinet x) are farther than front/back
                    cab_axes.append(ob.rot[:2, 0] / max(np.linalg.norm(ob.rot[:2, 0]), 1e-9))
                continue
            if category(o) == "flat_stove" or (inside and ob.top < body.bottom + 0.02):
                continue  # the support under the bowl is no obstacle
            if ob.top > body.top - 0.05:
                others.append((ob.center[:2], 0.5 * float(np.max(ob.hi[:2] - ob.lo[:2]))))
        best, best_score, best_k = None, -1e9, 0
        for k in range(8):
            if keep and k != mem[2]:
                continue
            th = k * math.pi / 4
            rim = body.pos + body.rot @ np.array([r_grasp * math.cos(th), r_grasp * math.sin(th),
                                                  body.hi[2]])
            d = (body.rot @ np.array([math.cos(th), math.sin(th), 0.0]))[:2]
            d /= max(np.linalg.norm(d), 1e-9)
            yaw = wrap_half_pi(math.atan2(d[0], -d[1]))  # fingers close along d
            clearance = min([np.linalg.norm(rim[:2] - c) - r for c, r in others] + [0.12])
            # reach: far rims (x > 0) need a stretched arm that cannot get low enough
            reach = 3.0 * max(0.0, float(rim[0])) + 1.0 * max(0.0, -0.2 - float(rim[0]))
            score = (min(clearance, 0.06) - reach
                     - 0.02 * abs(wrap_half_pi(yaw - yaw_now))
                     + sum(0.1 * abs(float(d @ ax)) for ax in cab_axes))
            if score > best_score:
                best, best_score, best_k = (np.array([rim[0], rim[1], rim[2] - 0.016]), yaw), score, k
        if not keep:
            self._rim_memory = (name, body.center[:2].copy(), best_k)
        return best

    # ------------------------------------------------------------------ decision
    def _plan(self, obs: Observation) -> tuple[list[tuple], float]:
        """Waypoints [(pos, gripper, tol, hold_steps)] and the yaw to hold, from state only."""
        eef = np.asarray(obs.eef_pos, float)
        gap = float(obs.gripper_qpos[0] - obs.gripper_qpos[1])
        last_gap, self._last_gap = self._last_gap, gap
        goal = next((g for g in self.goals if not self._placed(obs, g)), None)
        yaw_now = gripper_yaw(quat_xyzw_to_mat(obs.eef_quat_xyzw))
        if goal is None:  # everything placed: open and back off upwards (to a bounded height)
            last = self._body(obs, self._target_name(obs, self.goals[-1].target))
            up = np.array([eef[0], eef[1], max(eef[2], last.top + 0.2)])
            return [(up, GRIPPER_OPEN, 0.01, 0)], yaw_now
        obj = self._body(obs, goal.obj)
        tgt_name = self._target_name(obs, goal.target)
        tgt = self._body(obs, tgt_name)
        closed_on_something = 0.0025 < gap < OPEN_GAP - 0.008
        near = obj.distance(eef) < 0.02
        settled = last_gap is not None and abs(gap - last_gap) < 0.0015
        lifted = self._pick_bottom is not None and obj.bottom > self._pick_bottom + 0.01
        held = closed_on_something and near and (settled or lifted)
        if held:
            if self._pick_bottom is None:
                self._pick_bottom = obj.bottom
            below = eef[2] - obj.bottom  # eef height above the object's lowest point
            place_xy = tgt.center[:2] + (eef[:2] - obj.center[:2])
            # Carry with the object's bottom above the target and anything in between.
            carry_bottom = max(tgt.top, self._pick_bottom) + 0.05
            for n in obs.objects:
                if n in (goal.obj,) or category(n) == "flat_stove":
                    continue
                b = self._body(obs, n)
                if _seg_dist(b.center[:2], obj.center[:2], tgt.center[:2]) < 0.09:
                    carry_bottom = max(carry_bottom, b.top + 0.03)
            carry_z = carry_bottom + below
            release_z = tgt.top + 0.012 + below
            if goal.predicate == "in":
                release_z = tgt.top + 0.02 + below
            xy_err = np.linalg.norm(place_xy - eef[:2])
            wps: list[tuple] = []
            # Hysteresis: once over the target, small xy errors (a swinging bowl) are corrected
            # while descending instead of climbing back to the carry height.
            lowering = eef[2] < carry_z - 0.02 and xy_err < 0.04
            if xy_err > 0.015 and not lowering:
                if eef[2] < carry_z - 0.02:
                    wps.append((np.array([eef[0], eef[1], carry_z]), GRIPPER_CLOSE, 0.02, 0))
                wps.append((np.array([place_xy[0], place_xy[1], carry_z]), GRIPPER_CLOSE, 0.01, 0))
            release = np.array([place_xy[0], place_xy[1], release_z])
            # Open only when the *observed* hand is at the release point: opening on the
            # chunk's own motion prediction throws the object when the arm lags behind.
            if xy_err < 0.015 and abs(eef[2] - release_z) < 0.012:
                return [(release, GRIPPER_OPEN, 1.0, 8)], yaw_now
            wps.append((release, GRIPPER_CLOSE, 0.008, 0))
            return wps, yaw_now
        # Not holding it: (re)grasp.
        self._pick_bottom = None
        grasp, yaw = self._grasp(obs, goal.obj, obj)
        pre = grasp + np.array([0, 0, 0.07])
        xy_err = float(np.linalg.norm(grasp[:2] - eef[:2]))
        at_grasp = xy_err < 0.014 and abs(eef[2] - grasp[2]) < 0.012
        yaw_err = abs(wrap_half_pi(yaw - yaw_now))
        if (at_grasp and yaw_err < 0.15) or (closed_on_something and near and not settled
                                              and xy_err < 0.03):
            # at the grasp pose, or fingers still closing around the object: keep closing
            return [(eef, GRIPPER_CLOSE, 1.0, 10)], yaw_now
        wps = []
        if gap < OPEN_GAP - 0.01:  # partly closed on nothing: open while backing off a little
            wps.append((eef + np.array([0, 0, 0.02]), GRIPPER_OPEN, 1.0, 4))
        # small xy errors near the grasp height are fixed in place: climbing back to the
        # pre-grasp pose wastes the episode and drifts the arm towards its reach limit
        if xy_err > 0.03 or yaw_err > 0.15:
            if eef[2] < pre[2] - 0.03:  # low and off target: go up first (avoid sweeping objects)
                wps.append((np.array([eef[0], eef[1], pre[2]]), GRIPPER_OPEN, 0.02, 0))
            wps.append((pre, GRIPPER_OPEN, 0.012, 0))
        wps.append((grasp, GRIPPER_OPEN, 0.008, 0))  # closing is decided on observed state
        return wps, yaw

    def phase(self, obs: Observation) -> str:
        """Where the task stands, from the privileged state alone (no memory is read or
        written): ``approach`` (hand away from the object), ``grasp`` (hand at the object, not
        holding it), ``carry`` (holding it away from the target), ``place`` (holding it over or
        near the target, or every goal already placed)."""
        goal = next((g for g in self.goals if not self._placed(obs, g)), None)
        if goal is None:
            return "place"
        eef = np.asarray(obs.eef_pos, float)
        obj = self._body(obs, goal.obj)
        gap = float(obs.gripper_qpos[0] - obs.gripper_qpos[1])
        if 0.0025 < gap < OPEN_GAP - 0.008 and obj.distance(eef) < 0.02:
            tgt = self._body(obs, self._target_name(obs, goal.target))
            return "place" if np.linalg.norm(obj.center[:2] - tgt.center[:2]) < 0.05 else "carry"
        return "grasp" if obj.distance(eef) < 0.05 else "approach"

    def _placed(self, obs: Observation, goal: Goal) -> bool:
        """Object resting on / inside the target and not in the hand (approximate, from poses)."""
        obj = self._body(obs, goal.obj)
        tgt = self._body(obs, self._target_name(obs, goal.target))
        half = 0.5 * float(np.min(tgt.hi[:2] - tgt.lo[:2]))
        inside_xy = np.linalg.norm(obj.center[:2] - tgt.center[:2]) < max(half - 0.01, 0.02)
        gap = float(obs.gripper_qpos[0] - obs.gripper_qpos[1])
        open_hand = gap > OPEN_GAP - 0.01 or obj.distance(np.asarray(obs.eef_pos)) > 0.03
        if goal.predicate == "on":
            # strict: an off-centre bowl may rest on the plate's rim and not count as On, so
            # re-grasp and re-place it rather than retreat
            centred = np.linalg.norm(obj.center[:2] - tgt.center[:2]) < 0.03
            return bool(centred and abs(obj.bottom - tgt.top) < 0.03 and open_hand)
        return bool(inside_xy and tgt.bottom < obj.center[2] < tgt.top and open_hand)

    # ------------------------------------------------------------------ actions
    def act_chunk(self, obs: Observation, horizon: int) -> np.ndarray:
        """(horizon, 7) float32 OSC_POSE actions in [-1, 1] (gripper -1 open / +1 close)."""
        if obs.objects is None:
            raise ValueError("ScriptedExpert needs privileged object poses (obs.objects)")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        wps, yaw = self._plan(obs)
        eef = np.asarray(obs.eef_pos, float)
        # Stuck detection: the OSC arm can jam (stretched elbow at its joint limit, fingers on
        # a rim). If the hand did not move over a whole chunk although its target is far,
        # back off up and towards the robot for one chunk, then re-plan.
        far = wps[0][3] == 0 and np.linalg.norm(wps[0][0] - eef) > 0.02
        moved = self._last_eef is None or np.linalg.norm(eef - self._last_eef) > 0.004
        self._stuck = self._stuck + 1 if (far and not moved) else 0
        self._last_eef = eef.copy()
        if self._stuck >= 2:
            self._stuck = 0
            wps = [(eef + np.array([-0.04, 0.0, 0.06]), wps[0][1], 0.01, 0)] + wps
        r_cur = quat_xyzw_to_mat(obs.eef_quat_xyzw)
        # yaw and yaw + pi give the same finger axis but different hand poses: take the one
        # nearest the current hand yaw, or the wrist would spin half a turn (and hit its limit).
        hand_yaw = math.atan2(r_cur[1, 0], r_cur[0, 0])
        yaw = hand_yaw + wrap_half_pi(yaw - hand_yaw)
        # Far out (x > 0) a vertical hand cannot get low: the elbow straightens against its
        # limit (joint 4 -> -0.07) and the arm jams. Pitch the fingers forward (wrist back
        # towards the robot) with the reach of the next waypoint or the hand.
        reach_x = max(float(wps[0][0][0]), float(eef[0]))
        pitch = float(np.clip(TILT_GAIN * reach_x, 0.0, MAX_TILT))
        r_des = rot_y(-pitch) @ rot_z(yaw) @ R_DOWN
        pos = np.asarray(obs.eef_pos, float).copy()
        rot_err = rotvec_from_mat(r_des @ r_cur.T)
        out = np.zeros((horizon, ACTION_DIM), dtype=np.float32)
        i, held_for = 0, 0
        for t in range(horizon):
            target, grip, tol, hold = wps[i]
            err = target - pos
            if hold == 0 and np.linalg.norm(err) < tol and i + 1 < len(wps):
                i += 1
                target, grip, tol, hold = wps[i]
                err = target - pos
            a_pos = self.kp * err / POS_SCALE
            n = np.linalg.norm(a_pos)
            if n > 1.0:
                a_pos /= n
            a_rot = np.clip(self.kr * rot_err / ROT_SCALE, -1.0, 1.0)
            out[t, :3], out[t, 3:6], out[t, 6] = a_pos, a_rot, grip
            # first-order prediction of where this step takes the arm
            pos = pos + TRACK * a_pos * POS_SCALE
            rot_err = rot_err - TRACK * a_rot * ROT_SCALE
            if hold > 0:
                held_for += 1
                if held_for >= hold and i + 1 < len(wps):
                    i, held_for = i + 1, 0
        return out


#: The decision phases of :meth:`ScriptedExpert.phase`, in task order.
PHASES = ("approach", "grasp", "carry", "place")


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point p to segment ab (2-D)."""
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def expert_for_env(env) -> ScriptedExpert:
    """Expert for a ``LiberoEnv``'s task, with object boxes measured from its MuJoCo model."""
    extents = dict(DEFAULT_EXTENTS)
    extents.update(env.object_extents())
    return ScriptedExpert(parse_goal(env.bddl_path), extents)


def expert_for_task(suite: str, task_id: int) -> ScriptedExpert:
    """Expert for (suite, task_id) without a simulator (tabulated object boxes)."""
    from prevla_sim.libero_env import task_bddl_path

    return ScriptedExpert(parse_goal(task_bddl_path(suite, task_id)))
