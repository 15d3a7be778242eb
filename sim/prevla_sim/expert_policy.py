"""The privileged scripted LIBERO expert as a ``Policy`` (ROS-free), and the one place a
policy kind becomes a ``Policy`` for the nodes and the evaluator.

``ScriptedExpertPolicy`` is the scripted expert (:mod:`prevla_sim.expert`) with Gaussian
noise: the data source for the learned VLA and a reference sampler. It reads the simulator's
object poses, so it only runs against the simulator; that is why it lives here and not in the
robot-side runtime.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from prevla_ros.runtime import policies
from prevla_ros.runtime.types import ACTION_DIM, Observation


class ChunkExpert(Protocol):
    def reset(self) -> None: ...
    def act_chunk(self, obs: Observation, horizon: int) -> np.ndarray: ...


class ScriptedExpertPolicy:
    """K noisy copies of the scripted expert's chunk.

    Noise (std ``noise_std * temperature``) perturbs position and rotation actions only; the
    gripper command is kept, so candidates differ in where they move, not in whether they
    grasp. Candidate i uses its own seed (``last_seeds[i]``) so any candidate can be replayed.

    Args:
        expert_factory: builds the expert for (suite, task_id); called on every task change.
        horizon: actions per chunk.
        noise_std: base std of the Gaussian noise, in action units.
        seed: seed of the generator that draws per-candidate seeds.
    """

    policy_id = "scripted_expert"

    def __init__(self, expert_factory: Callable[[str, int], ChunkExpert], horizon: int = 8,
                 noise_std: float = 0.05, seed: int = 0) -> None:
        self._factory = expert_factory
        self.horizon = horizon
        self.noise_std = noise_std
        self._rng = np.random.default_rng(seed)
        self._expert: ChunkExpert | None = None
        self._task: tuple[str, int] | None = None
        self.last_seeds: list[int] = []
        # The expert is stateful (stuck detection, phases): asked again for the same
        # observation (a resampling round) it must not act twice. Its plan is kept per
        # observation and only the noise is drawn anew.
        self._planned: tuple[object, np.ndarray] | None = None

    @property
    def ready(self) -> bool:
        """False until ``set_task`` chose the task (the expert needs its goal)."""
        return self._expert is not None

    def set_task(self, suite: str, task_id: int) -> None:
        """Select the task whose goal the expert pursues (rebuilds the expert if it changed)."""
        if self._task != (suite, task_id):
            self._expert = self._factory(suite, task_id)
            self._task = (suite, task_id)
        else:
            self.reset()

    def reset(self) -> None:
        self._planned = None
        if self._expert is not None:
            self._expert.reset()

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        if self._expert is None:
            raise RuntimeError("scripted expert has no task yet (waiting for episode_status)")
        if obs.objects is None:
            raise ValueError("scripted expert needs privileged object poses (sim_state)")
        key = obs.stamp_ns or id(obs)  # the same observation: a resampling round
        if self._planned is not None and self._planned[0] == key:
            base = self._planned[1]
        else:
            base = np.asarray(self._expert.act_chunk(obs, self.horizon), dtype=np.float32)
            self._planned = (key, base)
        if base.shape != (self.horizon, ACTION_DIM):
            raise ValueError(f"expert returned {base.shape}, expected {(self.horizon, ACTION_DIM)}")
        self.last_seeds = [int(s) for s in self._rng.integers(0, 2**31 - 1, size=k)]
        chunks = np.repeat(base[None], k, axis=0)
        std = self.noise_std * temperature
        if std > 0:
            for i, s in enumerate(self.last_seeds):
                noise = np.random.default_rng(s).normal(0.0, std, size=(self.horizon, 6))
                chunks[i, :, :6] = np.clip(chunks[i, :, :6] + noise, -1.0, 1.0)
        return chunks


def build_policy(kind: str, horizon: int, noise_std: float = 0.0, seed: int = 0, **learned):
    """Any policy kind: "scripted_expert" (``noise_std``: its candidate noise) here, "vla" and
    "remote" by :func:`prevla_ros.runtime.policies.build_policy` (``learned``: its checkpoint,
    remote and backend arguments). Errors as there."""
    if kind == "scripted_expert":
        from prevla_sim.expert import expert_for_task  # LIBERO: only when needed

        return ScriptedExpertPolicy(expert_for_task, horizon, noise_std, seed)
    return policies.build_policy(kind, horizon, seed, **learned)
