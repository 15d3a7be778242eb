"""The environment lane: an ``EnvRunner`` steps several real LIBERO environments on one core.

Each environment alternates between "waiting for a chunk" and "being stepped". The runner
sends an environment's observation to its inference server and, while that request is in
flight, steps whichever other environment already has its chunk (``ray.wait`` on the pending
requests): environment stepping and inference overlap inside one runner as well as across
runners. A finished episode is one trajectory (numpy arrays, one row per decision) and goes
to the rollout ring (the data plane); ``ring.put`` blocking is the backpressure.

A trajectory row records what the learner needs and nothing it could get wrong later: the
observation (both cameras, proprio), the instruction, the whole flow chain, its behaviour
log-probability, the critic's value, the policy version that sampled it, the reward (1 on the
decision that completed the task) and the done flag. Its ``group`` names the episodes played
from the same init state in a row (``advantage: rloo``; one episode per group otherwise).
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np

from prevla_training.rl.config import RLConfig


def assemble(rows: list[dict], meta: dict) -> dict:
    """One trajectory (dict of stacked arrays + ``meta``) from its decision rows."""
    out = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    out.update(meta, n=len(rows))
    return out


class EnvRunner:
    """Steps ``envs_per_runner`` LIBERO environments, asks ``server`` for chunks, puts finished
    trajectories into ``ring``. ``run`` is the lane's loop; ``stop`` / ``stats`` may be called
    while it runs (the actor is threaded)."""

    def __init__(self, cfg: RLConfig, runner_id: int, server, ring) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import torch

        torch.set_num_threads(1)
        from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig, num_init_states

        self.cfg = cfg
        self.id, self.server, self.ring = runner_id, server, ring
        self.image_size = 0  # what the policy reads: asked from the server when run() starts
        c = self.cfg
        self.rng = np.random.default_rng([c.seed, runner_id])
        self.envs = []
        for i in range(c.envs_per_runner):
            task = c.env_task(runner_id, i)
            n_init = num_init_states(c.suite, task)
            if c.init_start >= n_init:
                raise ValueError(f"init_start {c.init_start}: task {task} has only {n_init} init states")
            self.envs.append(LiberoEnv(LiberoEnvConfig(suite=c.suite, task_id=task, init_state=c.init_start,
                                                       max_steps=c.max_steps)))
        self.inits = [range(c.init_start, min(c.init_start + c.init_count, num_init_states(c.suite, e.cfg.task_id)))
                      for e in self.envs]
        self._stop = threading.Event()
        self._group: dict[int, tuple[int, str, int]] = {}  # env -> (init state, group id, episodes left)
        self.counters = dict(env_steps=0, decisions=0, episodes=0, successes=0, put_blocked_s=0.0,
                             infer_wait_s=0.0)
        self.timeline: list[tuple[float, int]] = []  # (wall time, env steps so far) per decision

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        return {"runner": self.id, **self.counters, "timeline": list(self.timeline)}

    def _request(self, i: int):
        from prevla_models.encoder import observation_tensors

        env = self.envs[i]
        obs = env.observe()
        images, proprio = observation_tensors(obs, self.image_size)
        self._obs[i] = (images[0].numpy(), proprio[0].numpy().astype(np.float32))
        return self.server.act.remote(self._obs[i][0], self._obs[i][1], env.instruction)

    def _start(self, i: int) -> None:
        """Reset environment ``i``: a new init state, or (``advantage: rloo``) the same one until
        its group of ``group_size`` episodes is complete."""
        init, group, left = self._group.get(i, (0, "", 0))
        if left <= 0 or self.cfg.ppo.advantage != "rloo":
            init, group, left = int(self.rng.choice(self.inits[i])), f"{self.id}.{uuid.uuid4().hex[:12]}", \
                self.cfg.ppo.group_size
        self._group[i] = (init, group, left - 1)
        self.envs[i].reset(init)
        self._rows[i], self._meta[i] = [], dict(task_id=self.envs[i].cfg.task_id, init_state=init, group=group,
                                                runner=self.id, t_start=time.time())

    def run(self, min_decisions: int = 0) -> dict:
        """Run until ``stop()`` (``min_decisions`` = 0), or start episodes until this call has
        made ``min_decisions`` decisions and finish them (the sync baseline). Returns :meth:`stats`."""
        import ray

        from prevla_ros.runtime.chunks import chunk_problem, hold_chunk

        self._stop.clear()
        self.image_size = self.image_size or int(ray.get(self.server.image_size.remote()))
        first = self.counters["decisions"]

        def more() -> bool:
            if not min_decisions:
                return not self._stop.is_set()
            return self.counters["decisions"] - first < min_decisions

        self._rows, self._meta, self._obs = {}, {}, {}
        pending: dict = {}
        for i in range(len(self.envs)):
            if more():
                self._start(i)
                pending[self._request(i)] = i
        while pending:
            t0 = time.perf_counter()
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            self.counters["infer_wait_s"] += time.perf_counter() - t0
            i = pending.pop(ref)
            out = ray.get(ref)
            env, images, proprio = self.envs[i], *self._obs[i]
            chunk = out["chunk"]
            if chunk_problem(chunk) is not None:  # never expected from a clipped chain; hold
                chunk = hold_chunk(len(chunk)).actions
            done = success = False
            for a in chunk:
                done, success = env.step(a)
                self.counters["env_steps"] += 1
                if done:
                    break
            self.counters["decisions"] += 1
            self.timeline.append((time.time(), self.counters["env_steps"]))
            self._rows[i].append(dict(images=images, proprio=proprio, chain=out["chain"],
                                      logp=np.float32(out["logp"]), value=np.float32(out["value"]),
                                      version=np.int64(out["version"]), reward=np.float32(success),
                                      done=np.float32(done)))
            if not done:
                pending[self._request(i)] = i
                continue
            traj = assemble(self._rows[i], {**self._meta[i], "instruction": env.instruction,
                                            "success": bool(success), "steps": env.step_count,
                                            "t_end": time.time()})
            t0 = time.perf_counter()
            ray.get(self.ring.put.remote(traj, int(traj["version"].min()), traj["n"]))
            self.counters["put_blocked_s"] += time.perf_counter() - t0
            self.counters["episodes"] += 1
            self.counters["successes"] += int(success)
            if more():
                self._start(i)
                pending[self._request(i)] = i
        return self.stats()

    def close(self) -> None:
        for env in self.envs:
            env.close()
