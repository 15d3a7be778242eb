"""Policies that meet the ``Policy`` contract (ROS-free).

``ScriptedExpertPolicy`` is the privileged scripted LIBERO expert with Gaussian noise: the
data source for the learned VLA and the sampler the runtime uses until that VLA lands. It
reads simulator object poses, so it only runs against the simulator.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

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


class UnavailablePolicy:
    """Stands where a policy failed to load (missing or corrupt model file).

    Every ``sample`` raises ``RuntimeError`` with the load error, which the policy node turns
    into a logged hold for that observation: the robot holds, the node stays up and keeps
    saying why.
    """

    def __init__(self, policy_id: str, reason: str) -> None:
        self.policy_id = policy_id
        self.reason = reason

    def reset(self) -> None:
        pass

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        raise RuntimeError(self.reason)


def build_policy(kind: str, horizon: int, noise_std: float = 0.0, seed: int = 0,
                 checkpoint: str = "", remote_url: str = "",
                 remote_timeout_s: float | None = None, backend: str = "auto", device: str = "cpu"):
    """The one place a policy kind becomes a ``Policy`` (nodes and the evaluator use it).

    Args:
        kind: "scripted_expert", "vla" (``checkpoint``: a file, ``zoo:NAME`` or ``""`` for
            the zoo's default VLA, sha256-checked, run on ``backend`` / ``device`` through the
            engine fallback chain, :mod:`prevla_ros.runtime.engines`) or "remote" (``remote_url``).
        horizon: actions per chunk (the VLA's comes from its checkpoint).
        noise_std: candidate noise of the scripted expert.
        seed: sampling seed.
        remote_timeout_s: connect and reply timeout of a remote policy (None: its defaults).

    Raises:
        FileNotFoundError / ValueError / EngineError: a VLA model that is missing, unusable
            on every backend, or fails its zoo sha256 check.
    """
    if kind == "remote":
        from prevla_ros.runtime.remote_policy import RemotePolicyConfig, WebsocketPolicy

        timeouts = ({} if remote_timeout_s is None else
                    {"connect_timeout_s": remote_timeout_s, "request_timeout_s": remote_timeout_s})
        return WebsocketPolicy(RemotePolicyConfig(url=remote_url, horizon=horizon, **timeouts))
    if kind == "vla":
        from prevla_models.vla_policy import VLAPolicy  # torch: only when a VLA is asked for
        from prevla_ros.runtime.engines import load_model

        return VLAPolicy(load_model("vla", checkpoint, backend, device).runner, seed=seed)
    if kind == "scripted_expert":
        from prevla_ros.sim.expert import expert_for_task  # LIBERO: only when needed

        return ScriptedExpertPolicy(expert_for_task, horizon, noise_std, seed)
    raise ValueError(f"unknown policy kind {kind!r}; expected scripted_expert, vla or remote")
