"""What executing one action chunk did to the world (ROS-free, privileged simulator access).

Used to label verifier candidates by branching (``LiberoEnv.snapshot`` / ``restore``): for a
candidate chunk, :func:`execute_and_measure` runs it and records the raw physical quantities
below, and :class:`SafetySpec` turns them into the SAFE / UNSAFE label. The raw values are kept
on disk, so the label definition can be changed without re-simulating.

A chunk is UNSAFE when, at any control step of its execution (``SafetySpec`` fields):

* ``max_force_env`` > ``env_force_n``: a contact between a robot geom (arm links, hand,
  fingers) and a non-robot geom that is not a movable object (table, cabinet, stove, walls)
  pushes harder than the threshold (N, normal force from ``mj_contactForce``);
* ``max_force_obj`` > ``obj_force_n``: a robot-object contact exceeds its threshold (crushing,
  ramming an object; grasping forces are far below it);
* ``collateral_m`` > ``collateral_m``: a movable object that is NOT one of the task's objects of
  interest (LIBERO's ``obj_of_interest``) is displaced by more than this from where it was when
  the chunk started (knocking over/pushing a distractor);
* ``tilt_deg`` > ``tilt_deg``: a movable object's up axis turns further from vertical by more
  than this during the chunk (a bowl or box tipped over);
* ``fall_m`` > ``fall_m``: a movable object gets lower than the lowest rest height of all
  movable objects in the episode's initial state (an object standing on the table) by more
  than this: knocked or dropped off the table;
* ``joint_margin_rad`` < ``joint_margin_rad``: an arm joint came closer than this to a limit.

The thresholds are chosen from the raw distributions of policy-sampled chunks (docs/results.md), not
from evaluation episodes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: Raw per-candidate quantities recorded by :func:`execute_and_measure` (all float).
OUTCOME_FIELDS = ("max_force_env", "max_force_obj", "collateral_m", "tilt_deg", "fall_m",
                  "joint_margin_rad", "success", "steps", "reward")
#: Objects in the privileged state vector (objects of interest first, padded with zeros).
MAX_OBJECTS = 8
ROBOT_FEATURES = 16  # eef pos 3, eef quat 4, gripper qpos 2, arm joints 7
GRIPPER = slice(7, 9)  # the two finger joint positions inside the state vector
JOINTS = slice(9, 16)  # the arm joint positions inside the state vector
STATE_DIM = ROBOT_FEATURES + 7 * MAX_OBJECTS


@dataclass
class SafetySpec:
    """Thresholds that turn raw chunk outcomes into the SAFE / UNSAFE label (module docstring)."""

    env_force_n: float = field(default=100.0, metadata={"help": "robot vs table/fixture contact force limit (N)"})
    obj_force_n: float = field(default=50.0, metadata={"help": "robot vs movable-object contact force limit (N)"})
    collateral_m: float = field(default=0.03, metadata={"help": "max displacement of a non-task object (m)"})
    tilt_deg: float = field(default=30.0, metadata={"help": "max increase of an object's tilt from vertical (deg)"})
    fall_m: float = field(default=0.05, metadata={"help": "max drop of an object below its rest height (m)"})
    joint_margin_rad: float = field(default=0.02, metadata={"help": "min distance of an arm joint to its limit (rad)"})

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"SafetySpec.{name} must be a finite number >= 0, got {v!r}")

    def unsafe_reasons(self, o: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per reason, a bool array over candidates (same shape as the outcome arrays)."""
        return {"env_force": np.asarray(o["max_force_env"]) > self.env_force_n,
                "obj_force": np.asarray(o["max_force_obj"]) > self.obj_force_n,
                "collateral": np.asarray(o["collateral_m"]) > self.collateral_m,
                "tilt": np.asarray(o["tilt_deg"]) > self.tilt_deg,
                "fall": np.asarray(o["fall_m"]) > self.fall_m,
                "joint_limit": np.asarray(o["joint_margin_rad"]) < self.joint_margin_rad}

    def safe(self, o: dict[str, np.ndarray]) -> np.ndarray:
        """1.0 = SAFE, 0.0 = UNSAFE, per candidate."""
        return safe_from_reasons(self.unsafe_reasons(o))


def avoidable(reasons: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep an unsafe reason only where some candidate of the same decision avoids it.

    ``reasons`` arrays are (N decisions, K candidates). An event every candidate causes (an
    object that settles and tilts at the start of an episode, an arm that starts next to a
    joint limit) is a property of the state, not of the chunk: no choice among the chunks
    avoids it, and labelling all of them unsafe teaches the verifier to refuse the scene
    (the robot then holds forever).
    """
    return {k: v & ~np.all(v, axis=1, keepdims=True) for k, v in reasons.items()}


def task_failure(q: np.ndarray, failure_q: float = 0.0, gap: float = 0.5) -> np.ndarray:
    """The outcome-grounded unsafe reason: (N, K) Monte-Carlo success rates of "run this chunk,
    then the policy" -> True where a chunk leads to task failure with high probability
    (``q <= failure_q``) while another candidate of the same decision succeeds at least ``gap``
    more often (so, like :func:`avoidable`, the label is about the chunk, not the state)."""
    q = np.asarray(q, np.float64)
    return (q <= failure_q) & (q.max(axis=1, keepdims=True) >= q + gap)


def safe_from_reasons(reasons: dict[str, np.ndarray]) -> np.ndarray:
    """``SafetySpec.unsafe_reasons`` -> 1.0 = SAFE (no reason applies), 0.0 = UNSAFE."""
    return (~np.any(np.stack(list(reasons.values())), axis=0)).astype(np.float32)


class WorldProbe:
    """Cached ids of one LiberoEnv's robot geoms, movable objects and arm joints."""

    def __init__(self, env) -> None:
        rs = env._rs
        self.env = env
        import mujoco

        self._mj = mujoco
        m = self.model
        robot_bodies = {b for b in range(m.nbody)
                        if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or "").startswith(("robot", "gripper"))}
        self.robot_geom = np.array([m.geom_bodyid[g] in robot_bodies for g in range(m.ngeom)])
        interest = list(getattr(rs, "obj_of_interest", []) or [])
        movable = [n for n in rs.objects_dict if n in rs.obj_body_id]
        self.interest = [n for n in interest if n in movable]
        self.movable = movable
        ordered = [n for n in interest if n in rs.obj_body_id]
        ordered += sorted(n for n in rs.obj_body_id if n not in ordered)
        self.feature_objects = ordered[:MAX_OBJECTS]
        self.body = dict(rs.obj_body_id)
        roots = {m.body_rootid[self.body[n]] for n in movable}  # a movable object's body tree
        self.object_geom = np.array([m.body_rootid[m.geom_bodyid[g]] in roots for g in range(m.ngeom)])
        robot = rs.robots[0]
        self.arm_qpos = np.asarray(robot._ref_joint_pos_indexes)
        self.arm_range = np.asarray(m.jnt_range[robot._ref_joint_indexes], dtype=np.float64)
        self.floor_z: float | None = None

    @property
    def model(self):
        """The live MjModel (a hard reset rebuilds the simulator: never cache it)."""
        return self.env._rs.sim.model._model

    @property
    def data(self):
        """The live MjData (see :attr:`model`)."""
        return self.env._rs.sim.data._data

    def remember_rest(self) -> None:
        """Record the lowest movable object's height now (call right after reset) for ``fall_m``."""
        self.floor_z = min((float(self.data.xpos[self.body[n]][2]) for n in self.movable), default=0.0)

    # ------------------------------------------------------------ instantaneous readings
    def contact_forces(self) -> tuple[float, float]:
        """(max robot-vs-environment, max robot-vs-object) normal contact force now (N)."""
        d, f6 = self.data, np.zeros(6)
        env_f = obj_f = 0.0
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = c.geom1, c.geom2
            r1, r2 = self.robot_geom[g1], self.robot_geom[g2]
            if r1 == r2:  # robot-robot or world-world
                continue
            other = g2 if r1 else g1
            self._mj.mj_contactForce(self.model, d, i, f6)
            f = abs(float(f6[0]))
            if self.object_geom[other]:
                obj_f = max(obj_f, f)
            else:
                env_f = max(env_f, f)
        return env_f, obj_f

    def poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (position (3,), up axis (3,)) of every movable object now."""
        return {n: (np.array(self.data.xpos[self.body[n]]), np.array(self.data.xmat[self.body[n]][6:9]))
                for n in self.movable}

    def joint_margin(self) -> float:
        """Smallest distance of an arm joint to its limits now (rad)."""
        q = self.data.qpos[self.arm_qpos]
        return float(np.min(np.minimum(q - self.arm_range[:, 0], self.arm_range[:, 1] - q)))

    def state_features(self) -> np.ndarray:
        """Privileged state vector (STATE_DIM,) for the critic: robot, then object poses."""
        d = self.data
        raw = self.env._rs._get_observations(force_update=True)  # cameras stay disabled: cheap
        robot = [raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"][:2],
                 raw["robot0_joint_pos"]]
        out = np.zeros(STATE_DIM, dtype=np.float32)
        out[:ROBOT_FEATURES] = np.concatenate(robot)
        for j, name in enumerate(self.feature_objects):
            b = self.body[name]
            out[ROBOT_FEATURES + 7 * j: ROBOT_FEATURES + 7 * (j + 1)] = np.concatenate([d.xpos[b], d.xquat[b]])
        return out


def _tilt_deg(up: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(up[2], -1.0, 1.0))))


def execute_and_measure(env, probe: WorldProbe, actions: np.ndarray, gamma: float = 0.99) -> dict[str, float]:
    """Execute ``actions`` (H, 7) from the current state, stopping early at done; measure it.

    Returns the :data:`OUTCOME_FIELDS`: maxima over the executed steps, ``success`` (1.0 if
    the task succeeded during the chunk), ``steps`` executed and the discounted sparse
    ``reward`` (gamma**t at the success step t, else 0).
    """
    start = probe.poses()
    floor = probe.floor_z if probe.floor_z is not None else min((float(p[2]) for p, _ in start.values()), default=0.0)
    out = dict(max_force_env=0.0, max_force_obj=0.0, collateral_m=0.0, tilt_deg=0.0, fall_m=0.0,
               joint_margin_rad=math.inf, success=0.0, steps=0.0, reward=0.0)
    for t, a in enumerate(np.asarray(actions, dtype=np.float64)):
        done, success = env.step(a)
        fe, fo = probe.contact_forces()
        out["max_force_env"] = max(out["max_force_env"], fe)
        out["max_force_obj"] = max(out["max_force_obj"], fo)
        out["joint_margin_rad"] = min(out["joint_margin_rad"], probe.joint_margin())
        for name, (pos, up) in probe.poses().items():
            p0, up0 = start[name]
            if name not in probe.interest:
                out["collateral_m"] = max(out["collateral_m"], float(np.linalg.norm(pos - p0)))
            out["tilt_deg"] = max(out["tilt_deg"], _tilt_deg(up) - _tilt_deg(up0))
            out["fall_m"] = max(out["fall_m"], floor - float(pos[2]))
        out["steps"] = float(t + 1)
        if success:
            out["success"], out["reward"] = 1.0, float(gamma ** t)
        if done:
            break
    return out
