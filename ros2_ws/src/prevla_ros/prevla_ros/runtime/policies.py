"""Policies that meet the ``Policy`` contract (ROS-free): the learned VLA and a remote policy
server by kind (:func:`build_policy`), and the stand-in for one that failed to load.

The simulator's privileged scripted expert is a policy too, but it needs the simulator's
object poses, so it lives with the simulator (:mod:`prevla_sim.expert_policy`, whose
``build_policy`` takes every kind, the expert's included).
"""
from __future__ import annotations

import numpy as np

from prevla_ros.runtime.types import Observation


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


def build_policy(kind: str, horizon: int, seed: int = 0, checkpoint: str = "",
                 remote_url: str = "", remote_timeout_s: float | None = None,
                 backend: str = "auto", device: str = "cpu", allow_unverified: bool = False):
    """A learned or remote policy by kind.

    Args:
        kind: "vla" (``checkpoint``: a file, ``zoo:NAME`` or ``""`` for the zoo's default
            VLA, sha256-checked against its record, refused when it has none that matches unless
            ``allow_unverified``; run on ``backend`` / ``device`` through the engines,
            :mod:`prevla_ros.runtime.engines`) or "remote" (``remote_url``).
        horizon: actions per chunk (the VLA's comes from its checkpoint).
        seed: sampling seed.
        remote_timeout_s: connect and reply timeout of a remote policy (None: its defaults).

    Raises:
        FileNotFoundError / ValueError / EngineError: a VLA model that is missing, unusable
            on every backend, or unverified (its sha256 matches no record).
    """
    if kind == "remote":
        from prevla_ros.runtime.remote_policy import RemotePolicyConfig, WebsocketPolicy

        timeouts = ({} if remote_timeout_s is None else
                    {"connect_timeout_s": remote_timeout_s, "request_timeout_s": remote_timeout_s})
        return WebsocketPolicy(RemotePolicyConfig(url=remote_url, horizon=horizon, **timeouts))
    if kind == "vla":
        from prevla_models.vla_policy import VLAPolicy  # torch: only when a VLA is asked for
        from prevla_ros.runtime.engines import load_model

        return VLAPolicy(load_model("vla", checkpoint, backend, device,
                                    allow_unverified=allow_unverified).runner, seed=seed)
    raise ValueError(f"unknown policy kind {kind!r}; expected vla or remote (the simulator's "
                     "scripted_expert: prevla_sim.expert_policy.build_policy)")
