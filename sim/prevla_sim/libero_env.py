"""LIBERO environment adapter (ROS-free).

Wraps LIBERO's ``OffScreenRenderEnv`` so that

* ``step()`` runs physics only: LIBERO's own ``env.step`` renders both cameras on every control
  step (~200 ms on a CPU), an order of magnitude more than the physics. The robosuite camera
  observables are kept *disabled* while stepping and enabled only inside ``observe()``.
* ``observe()`` returns a typed ``Observation`` with upright images (robosuite renders them
  upside down; public LIBERO evaluations rotate 180 degrees, and so do we, here and only here;
  see ``observe`` for the left-right mirror this implies).
* one control step is still ~17 ms of physics on a 2-core CPU (25 substeps, each with two
  ``mj_forward`` and the OSC controller); two 128x128 camera renders add ~130 ms.
* planar reflections are off by default (``reflections=False``): on a CPU (Mesa llvmpipe) they
  cost ~100 ms per observation (235 -> 130 ms) and change the agent view by < 1/255 on average
  (the table's mirror sheen). Set ``reflections=True`` for LIBERO's exact renderer, e.g. for a
  policy trained on the official datasets.
* episodes start from LIBERO's official init states and settle like LIBERO's evaluations.
* an episode is a function of (suite, task, init state) alone: LIBERO places *fixtures*
  (cabinet, stove, ...) with numpy's global RNG at every reset, and an init state holds only
  the MuJoCo state, not those placements. ``reset`` seeds that draw from the episode's
  identity (``fixture_seed``) and puts the caller's global RNG back, so an episode replays
  bit-identically in any process, whatever ran before it.
* every reset is a hard reset (the model and render context are rebuilt); what it frees is
  handed back to the OS (``release_freed_heap``), or a long-running process grows by ~9 MB
  per episode.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from prevla_ros.runtime.types import ACTION_DIM, GRIPPER_OPEN, ObjectPose, Observation

# LIBERO reads its path config from LIBERO_CONFIG_PATH; some forks prompt on first import
# without one, so point it at a project-controlled temp dir before LIBERO is ever imported.
if not os.environ.get("LIBERO_CONFIG_PATH"):
    os.environ["LIBERO_CONFIG_PATH"] = os.path.join(tempfile.gettempdir(), "prevla_libero_cfg")
os.makedirs(os.environ["LIBERO_CONFIG_PATH"], exist_ok=True)
os.environ.setdefault("MUJOCO_GL", "egl")

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
#: Episode budgets used by the public LIBERO evaluations (OpenVLA / openpi scripts).
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                   "libero_10": 520, "libero_90": 400}
#: robosuite observable names of the two cameras -> prevla camera names.
_CAMERA_OBS = {"agentview_image": "agentview", "robot0_eye_in_hand_image": "wrist"}
#: Zero motion with the gripper open: what LIBERO evaluations send while objects settle.
_SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, GRIPPER_OPEN], dtype=np.float64)


@functools.lru_cache(maxsize=None)
def _benchmark(suite: str):
    if suite not in SUITES:
        raise ValueError(f"suite: unknown LIBERO suite {suite!r}; expected one of {SUITES}")
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints its task order
        return benchmark.get_benchmark_dict()[suite]()


def suite_num_tasks(suite: str) -> int:
    """Number of tasks in a LIBERO suite (ValueError for an unknown suite)."""
    return int(_benchmark(suite).n_tasks)


def suite_instructions(suite: str) -> list[str]:
    """Language instructions of a suite's tasks, in task-id order."""
    return [t.language for t in _benchmark(suite).tasks]


def task_bddl_path(suite: str, task_id: int) -> str:
    """Absolute path of the BDDL file of (suite, task_id) (ValueError for a task not in the suite)."""
    from libero.libero import get_libero_path

    n = suite_num_tasks(suite)
    if not 0 <= int(task_id) < n:
        raise ValueError(f"task_id: {task_id} out of range for {suite} ({n} tasks)")
    task = _benchmark(suite).get_task(int(task_id))
    return os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)


@functools.lru_cache(maxsize=64)
def _init_states(suite: str, task_id: int) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        states = _benchmark(suite).get_task_init_states(task_id)
    return np.asarray(states)


def num_init_states(suite: str, task_id: int) -> int:
    """Number of official init states of (suite, task_id) (50 for the standard suites)."""
    return int(_init_states(suite, task_id).shape[0])


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None where the C library has none: musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def release_freed_heap() -> bool:
    """Return the memory the C allocator holds free to the OS; whether it could (glibc).

    Every LIBERO reset is a hard reset: robosuite frees the MuJoCo model, its data and the
    offscreen render context (an EGL context, whose llvmpipe threads go with it) and builds
    them anew. glibc can keep what was freed in its per-thread arenas instead of returning it:
    in sim_node RSS grew by ~9 MB per episode while the memory in use stayed the same
    (malloc in use 468 MB throughout, free-but-held 474 -> 663 MB and RSS 2026 -> 2280 MB over
    12 episodes; with this call after each reset RSS stayed at ~1655 MB). ``malloc_trim(0)``
    hands the free pages of every arena back (5-150 ms here, against ~2 s for the reset).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def fixture_seed(suite: str, task_id: int, init_state: int) -> int:
    """Seed of LIBERO's fixture placement draw for one episode (see the module docstring)."""
    return zlib.crc32(f"{suite}/{int(task_id)}/{int(init_state)}".encode())


@dataclass
class LiberoEnvConfig:
    """Which LIBERO task to build and how to run it."""

    suite: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    task_id: int = 0  # task index in the suite, 0 <= task_id < suite_num_tasks(suite)
    init_state: int = 0  # index into LIBERO's official init states of the task (default for reset())
    image_size: int = 128  # square camera resolution in pixels (both cameras)
    render: bool = True  # False: physics only, observe() returns no images (fast, for expert eval)
    max_steps: int = 0  # episode budget in control steps; 0 -> the suite default (SUITE_MAX_STEPS)
    settle_steps: int = 10  # zero-action steps after reset so objects settle (LIBERO evals do this)
    reflections: bool = False  # render planar reflections like LIBERO (+~100 ms per observe on CPU)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"suite: unknown LIBERO suite {self.suite!r}; expected one of {SUITES}")
        n = suite_num_tasks(self.suite)
        if not isinstance(self.task_id, (int, np.integer)) or not 0 <= self.task_id < n:
            raise ValueError(f"task_id: {self.task_id!r} out of range for {self.suite} ({n} tasks)")
        m = num_init_states(self.suite, int(self.task_id))
        if not isinstance(self.init_state, (int, np.integer)) or not 0 <= self.init_state < m:
            raise ValueError(f"init_state: {self.init_state!r} out of range (task has {m})")
        if not isinstance(self.image_size, (int, np.integer)) or not 8 <= self.image_size <= 2048:
            raise ValueError(f"image_size: {self.image_size!r} must be an int in [8, 2048]")
        if not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 0:
            raise ValueError(f"max_steps: {self.max_steps!r} must be an int >= 0")
        if not isinstance(self.settle_steps, (int, np.integer)) or self.settle_steps < 0:
            raise ValueError(f"settle_steps: {self.settle_steps!r} must be an int >= 0")


#: MuJoCo state components a branch must restore for a bit-identical replay:
#: mjSTATE_INTEGRATION (= 16383 in MuJoCo 3.x), everything mj_step reads, warm start and
#: controls included. A literal so this module imports without mujoco.
_FULL_STATE = 16383


def _wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.array([q[1], q[2], q[3], q[0]], dtype=np.float64)


class LiberoEnv:
    """One LIBERO task, stepped without rendering and observed on demand.

    Attributes:
        instruction: the task's language instruction.
        task_name: LIBERO's task name.
        max_steps: control-step budget of an episode.
        step_count: control steps since the last reset (settle steps not counted).
        bddl_path: the task's BDDL file.
    """

    def __init__(self, cfg: LiberoEnvConfig) -> None:
        self.cfg = cfg
        task = _benchmark(cfg.suite).get_task(cfg.task_id)
        self.task_name: str = task.name
        self.instruction: str = task.language
        self.bddl_path = task_bddl_path(cfg.suite, cfg.task_id)
        self.max_steps: int = cfg.max_steps or SUITE_MAX_STEPS[cfg.suite]
        self.step_count = 0
        self._init_states = _init_states(cfg.suite, cfg.task_id)
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv

        # ignore_done + a huge horizon: the episode budget is ours (max_steps), and robosuite
        # raises on steps past its own horizon.
        kwargs = dict(bddl_file_name=self.bddl_path, camera_heights=cfg.image_size,
                      camera_widths=cfg.image_size, ignore_done=True, horizon=10**9)
        if cfg.render:
            self._env = OffScreenRenderEnv(**kwargs)
        else:
            # No camera observables and no offscreen GL context at all: pure physics.
            self._env = ControlEnv(has_renderer=False, has_offscreen_renderer=False,
                                   use_camera_obs=False, **kwargs)
        self._closed = False
        self._last_success = False
        self.reset(cfg.init_state)

    # ------------------------------------------------------------------ internals
    @property
    def _rs(self):
        """The underlying robosuite (LIBERO problem) environment."""
        return self._env.env

    def _set_cameras(self, enabled: bool) -> None:
        obs = self._rs._observables
        for name in _CAMERA_OBS:
            if name in obs:
                self._rs.modify_observable(name, "enabled", enabled)

    # ------------------------------------------------------------------ API
    def reset(self, init_state: int | None = None) -> None:
        """Reset to an official init state (default: cfg.init_state) and let objects settle."""
        idx = self.cfg.init_state if init_state is None else int(init_state)
        if not 0 <= idx < len(self._init_states):
            raise ValueError(f"init_state: {idx} out of range (task has {len(self._init_states)})")
        rng_state = np.random.get_state()
        np.random.seed(fixture_seed(self.cfg.suite, self.cfg.task_id, idx))
        try:
            self._env.reset()  # hard reset rebuilds the observables, cameras enabled again
        finally:
            np.random.set_state(rng_state)
        release_freed_heap()  # what the hard reset freed (see the function)
        self._set_cameras(False)
        self._env.set_init_state(self._init_states[idx])
        for _ in range(self.cfg.settle_steps):
            self._env.step(_SETTLE_ACTION)
        self.step_count = 0
        self._last_success = bool(self._env.check_success())

    def step(self, action: np.ndarray) -> tuple[bool, bool]:
        """Apply one OSC_POSE action (7,) for one control step; no rendering.

        Returns:
            (done, success): done when the task succeeded or the step budget is used up.
        """
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action: expected shape ({ACTION_DIM},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action: contains non-finite values {a}")
        _, _, success, _ = self._env.step(a)  # LIBERO's step returns done = _check_success()
        self.step_count += 1
        self._last_success = bool(success)
        return self._last_success or self.step_count >= self.max_steps, self._last_success

    def observe(self, stamp_ns: int = 0) -> Observation:
        """Observe the current state; renders the two cameras now (if cfg.render)."""
        if self.cfg.render:
            self._set_cameras(True)
            ctx = getattr(self._rs.sim, "_render_context_offscreen", None)
            if ctx is not None:  # rebuilt by every hard reset
                import mujoco

                ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(bool(self.cfg.reflections))
            try:
                raw = self._rs._get_observations(force_update=True)
            finally:
                self._set_cameras(False)
            # robosuite renders in OpenGL convention (rows bottom-up). We rotate 180 degrees,
            # like public LIBERO evaluations (OpenVLA, openpi) and the preprocessing of the
            # LIBERO datasets, so policies trained on those see the same frames. Note that this
            # is the true camera view mirrored left-right (the true view is raw[::-1]): world
            # +y (the plate in Spatial) appears on the left of the agent view.
            images = {cam: np.ascontiguousarray(raw[key][::-1, ::-1]).astype(np.uint8)
                      for key, cam in _CAMERA_OBS.items()}
        else:
            raw = self._rs._get_observations(force_update=True)
            images = {}
        return Observation(
            images=images,
            joint_positions=np.array(raw["robot0_joint_pos"], dtype=np.float64),
            gripper_qpos=np.array(raw["robot0_gripper_qpos"], dtype=np.float64),
            eef_pos=np.array(raw["robot0_eef_pos"], dtype=np.float64),
            eef_quat_xyzw=np.array(raw["robot0_eef_quat"], dtype=np.float64),  # robosuite: xyzw
            instruction=self.instruction,
            stamp_ns=int(stamp_ns),
            objects=self.object_poses(),
        )

    def object_poses(self) -> dict[str, ObjectPose]:
        """Privileged world poses of every object and fixture of the task (body frames)."""
        data = self._rs.sim.data
        out: dict[str, ObjectPose] = {}
        for name, bid in self._rs.obj_body_id.items():
            out[name] = ObjectPose(pos=np.array(data.body_xpos[bid], dtype=np.float64),
                                   quat_xyzw=_wxyz_to_xyzw(data.body_xquat[bid]))
        return out

    def object_extents(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per object/fixture: (lo, hi) box of its collision geoms in its body frame (metres).

        Privileged geometry for the scripted expert (grasp heights, bowl radii).
        """
        m, d = self._rs.sim.model._model, self._rs.sim.data._data
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
        for name, bid in self._rs.obj_body_id.items():
            bodies = {bid}
            for b in range(bid + 1, m.nbody):  # children follow their parent in MuJoCo's order
                if m.body_parentid[b] in bodies:
                    bodies.add(b)
            rb, pb = d.xmat[bid].reshape(3, 3), d.xpos[bid]
            pts = []
            for g in range(m.ngeom):
                if m.geom_bodyid[g] in bodies and (m.geom_contype[g] or m.geom_conaffinity[g]):
                    c, h = m.geom_aabb[g][:3], m.geom_aabb[g][3:]
                    world = d.geom_xpos[g] + (c + signs * h) @ d.geom_xmat[g].reshape(3, 3).T
                    pts.append((world - pb) @ rb)
            if pts:
                p = np.concatenate(pts)
                out[name] = (p.min(0), p.max(0))
        return out

    def check_success(self) -> bool:
        """Whether the task's BDDL goal holds now."""
        return bool(self._env.check_success())

    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state (time, qpos, qvel) for branching."""
        return np.array(self._env.get_sim_state(), dtype=np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state()`` (recomputes derived quantities, no render)."""
        s = np.asarray(state, dtype=np.float64)
        ref = self._env.get_sim_state()
        if s.shape != ref.shape:
            raise ValueError(f"state: expected shape {ref.shape}, got {s.shape}")
        self._env.set_state(s)
        self._rs.sim.forward()

    def snapshot(self) -> dict:
        """Everything ``step()`` depends on, for branching: restore it with :meth:`restore`.

        ``get_state()`` (time, qpos, qvel) is not enough for a bit-identical replay: MuJoCo's
        full state also holds the solver warm start, controls and applied forces (saved here
        with ``mj_getState(mjSTATE_INTEGRATION)``), and robosuite's gripper integrates its command
        (``gripper.current_action`` moves by ``speed * sign(action)`` per step), so a branch
        restored without it closes the fingers differently. The OSC arm controller has no
        memory across control steps (delta goals are set from the current pose every step).
        """
        import mujoco

        sim = self._rs.sim
        full = np.empty(mujoco.mj_stateSize(sim.model._model, _FULL_STATE))
        mujoco.mj_getState(sim.model._model, sim.data._data, full, _FULL_STATE)
        return {"sim": self.get_state(), "mj_full": full, "step_count": self.step_count,
                "last_success": self._last_success, "timestep": self._rs.timestep,
                "cur_time": self._rs.cur_time,
                "grippers": [np.array(r.gripper.current_action, dtype=np.float64)
                             for r in self._rs.robots]}

    def restore(self, snap: dict) -> None:
        """Return exactly to a :meth:`snapshot` (same physics, gripper and step counters)."""
        import mujoco

        sim = self._rs.sim
        mujoco.mj_setState(sim.model._model, sim.data._data, snap["mj_full"], _FULL_STATE)
        sim.forward()
        for robot, g in zip(self._rs.robots, snap["grippers"]):
            robot.gripper.current_action = np.array(g, dtype=np.float64)
        self.step_count = int(snap["step_count"])
        self._last_success = bool(snap["last_success"])
        self._rs.timestep, self._rs.cur_time = snap["timestep"], snap["cur_time"]

    def close(self) -> None:
        """Free the simulator and its GL context (call explicitly; EGL complains at exit)."""
        if not self._closed:
            self._closed = True
            self._env.close()

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
