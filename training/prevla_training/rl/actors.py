"""The inference lane and the gradient lane: ``InferenceServer`` and ``RLLearner``.

* ``InferenceServer`` (an async Ray actor) batches the observations of every runner that
  talks to it, samples one flow chain per observation (:class:`FlowActorCritic.sample`) in a
  worker thread so the event loop keeps accepting requests, and answers each request with its
  chain, chunk, behaviour log-probability, value and the policy version. New weights arrive on
  the control plane (``set_weights``) and are swapped in between two batches, never during one;
  a version older than the one serving is ignored.
* ``RLLearner`` pulls whole trajectories from the rollout ring (the data plane), drops decisions
  that trail its version by more than ``max_lag`` (counted), computes GAE with its current
  critic, runs PPO (:mod:`prevla_training.rl.ppo`) and hands the new weights to the
  topology-aware distributor (the control plane) without waiting for them to arrive. Its
  static pool — weights, AdamW moments, gradient buffers — is allocated once, before the first
  update (:meth:`RLLearner.allocate_static_pool`), and reused by every update.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import numpy as np
import torch

from prevla_training.rl.config import RLConfig
from prevla_training.rl.ppo import Groups, gae, ppo_loss, rloo

#: Swaps / requests an inference server remembers for the swap-cost measure (a 60 min run
#: makes ~20k requests).
LOG_SIZE = 50_000


def load_actor_critic(cfg: RLConfig, device: str = "cpu"):
    """The VLA named by ``cfg.policy`` (sha256-verified) wrapped as a :class:`FlowActorCritic`,
    plus the checkpoint's extra dict (an RL checkpoint's critic and noise are restored)."""
    from prevla_models.flow_rl import FlowActorCritic
    from prevla_models.vla import load_checkpoint
    from prevla_models.zoo import resolve

    vla, extra = load_checkpoint(resolve(cfg.policy, "vla"), map_location=device)
    model = FlowActorCritic(vla, cfg.flow).to(device)
    if "rl" in extra:
        model.load_rl_state(extra["rl"])
    return model, extra


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as numpy arrays (what travels on the control plane)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


class InferenceServer:
    """Batched chunk sampling for many runners (module docstring)."""

    def __init__(self, cfg: RLConfig, server_id: int = 0) -> None:
        self.cfg = cfg
        torch.set_num_threads(max(1, round(self.cfg.server_cpus)))
        self.device = "cuda" if self.cfg.server_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model, _ = load_actor_critic(self.cfg, self.device)
        self.model.eval()
        self.version, self._next = 0, None
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + server_id)
        self._queue: list = []
        self._wake: asyncio.Event | None = None
        self._loop_task = None
        self.counters = dict(requests=0, batches=0, weight_swaps=0, busy_s=0.0)
        self.arrivals: list[tuple[int, float]] = []  # (version, wall time) of each set_weights
        #: what weight swaps cost sampling: (wall start, s) of each swap, and (wall end, s) of
        #: each request as its runner saw it (queue + batch), the most recent ones
        self.swap_log: deque[tuple[float, float]] = deque(maxlen=LOG_SIZE)
        self.request_log: deque[tuple[float, float]] = deque(maxlen=LOG_SIZE)

    def image_size(self) -> int:
        return int(self.model.vla.cfg.image_size)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict:
        return {**self.counters, "version": self.version, "arrivals": list(self.arrivals),
                "swap_log": list(self.swap_log), "request_log": list(self.request_log)}

    async def set_weights(self, weights, version: int) -> int:
        """Queue ``weights`` (a dict of arrays, or an ObjectRef to one) for the next batch."""
        if hasattr(weights, "hex") and not isinstance(weights, dict):  # an ObjectRef
            weights = await weights
        self.arrivals.append((int(version), time.time()))
        if version > max(self.version, self._next[1] if self._next else -1):
            self._next = (weights, int(version))
        if not self._queue:  # idle: apply now
            self._swap()
        return self.version

    def _swap(self) -> None:
        """Apply the queued weights, if any (logged with the time it took)."""
        if self._next is None:
            return
        start, t0 = time.time(), time.perf_counter()
        weights, version = self._next
        self._next = None
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
        self.version = version
        self.counters["weight_swaps"] += 1
        self.swap_log.append((start, time.perf_counter() - t0))

    async def act(self, images: np.ndarray, proprio: np.ndarray, instruction: str) -> dict:
        """One observation -> {chain, chunk, logp, value, version} (batched with others)."""
        if self._wake is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve())
        t0 = time.perf_counter()
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((images, proprio, instruction, fut))
        self._wake.set()
        out = await fut
        self.request_log.append((time.time(), time.perf_counter() - t0))
        return out

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self.cfg.server_max_batch and self.cfg.server_wait_ms > 0:
                await asyncio.sleep(self.cfg.server_wait_ms / 1000)
            while self._queue:
                batch = self._queue[:self.cfg.server_max_batch]
                del self._queue[:len(batch)]
                self._swap()  # weights change between batches only
                try:
                    outs = await loop.run_in_executor(None, self._sample, batch)
                except Exception as exc:  # the requests fail, the server stays up
                    for *_, fut in batch:
                        fut.set_exception(exc)
                    continue
                for (*_, fut), out in zip(batch, outs):
                    fut.set_result(out)

    def _sample(self, batch: list) -> list[dict]:
        t0 = time.perf_counter()
        images = torch.from_numpy(np.stack([b[0] for b in batch])).to(self.device)
        proprio = torch.from_numpy(np.stack([b[1] for b in batch])).to(self.device)
        with torch.inference_mode():
            out = self.model.sample(images, proprio, [b[2] for b in batch], k=1,
                                    temperature=self.cfg.temperature, generator=self.gen)
        self.counters["requests"] += len(batch)
        self.counters["batches"] += 1
        self.counters["busy_s"] += time.perf_counter() - t0
        chain, chunks = out["chain"][:, 0].cpu().numpy(), out["chunks"][:, 0].cpu().numpy()
        logp, value = out["logp"][:, 0].cpu().numpy(), out["value"].cpu().numpy()
        return [dict(chain=chain[i], chunk=chunks[i], logp=float(logp[i]), value=float(value[i]),
                     version=self.version) for i in range(len(batch))]


#: Most decisions one update pulls, in batches, while it waits for whole informative groups.
MAX_FILL = 4


class RLLearner:
    """PPO on trajectories from the ring; pushes weights to the servers (module docstring)."""

    def __init__(self, cfg: RLConfig, ring) -> None:
        from prevla_training.learner import Learner, param_groups

        self.cfg = c = cfg
        torch.manual_seed(c.seed)
        torch.set_num_threads(max(1, round(c.learner_cpus)))
        self.device = "cuda" if c.learner_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model, extra = load_actor_critic(c, self.device)
        if c.critic_only:  # the policy's parameters get no gradient, so the optimiser never moves them
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("value_head."))
        critic = {f"value_head.{n}": {"lr": c.value_lr, "weight_decay": 0.0}
                  for n, _ in self.model.value_head.named_parameters()}
        self.learner = Learner(c, self.model, param_groups(self.model, c.weight_decay, own=critic))
        self.ring, self.dist = ring, None
        self.version = int(extra.get("rl_version", 0))
        self.counters = dict(updates=0, decisions=0, dropped_stale=0, env_steps=0,
                             successes=0, episodes=0, pushes=0, groups=0, groups_skipped=0)
        self.groups = Groups(c.ppo.group_size)  # rloo: trajectories waiting for their group
        self.push_times: list[tuple[float, float]] = []  # (start, end) of each push's enqueue
        self.episodes: list[tuple[float, int, bool, int]] = []  # (end wall time, steps, success, task) per episode
        self.allocate_static_pool()
        self._act_pool = torch.cuda.MemPool() if self.device == "cuda" and hasattr(torch.cuda, "MemPool") else None

    def allocate_static_pool(self) -> None:
        """Gradient buffers and AdamW moments, allocated once (zero step): every update reuses them."""
        self.learner.grads_to_none = False
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        for group in self.learner.opt.param_groups:
            for p in group["params"]:
                if not p.requires_grad:  # frozen (critic_only): no gradient, so no moments
                    continue
                st = self.learner.opt.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def activation_pool(self):
        """On a GPU: the dynamic pool, a CUDA memory pool of its own for the forward / backward
        activations, apart from the static pool's tensors. On a CPU: nothing."""
        if self._act_pool is None:
            return contextlib.nullcontext()
        return torch.cuda.use_mem_pool(self._act_pool)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def attach(self, servers: list, mode: str = "topology") -> int:
        """Connect the servers and push the current weights to them (blocks until they have them)."""
        import ray

        from prevla_training.rl.replication import WeightDistributor

        self.dist = WeightDistributor(servers, mode=mode)
        ray.get(self.dist.push(state_numpy(self.model), self.version))
        return self.version

    def stats(self) -> dict:
        return {**self.counters, "version": self.version, "push_times": list(self.push_times),
                "episodes": list(self.episodes)}

    def update(self, timeout_s: float = 600.0, wait_push: bool = False, fill: bool = True) -> dict:
        """Pull ``batch_size`` decisions, one PPO update, push the new weights. Returns stats.
        ``fill`` keeps pulling until ``batch_size`` decisions are ready to train on (not stale;
        with ``advantage: rloo``, in whole informative groups) or ``MAX_FILL`` batches were
        pulled, so a run whose groups all agree still returns and checks its stop conditions.
        The sync baseline passes False: its runners are stopped, so it trains on what is ready."""
        import ray

        c = self.cfg
        t0 = time.perf_counter()
        items = ray.get(self.ring.get.remote(c.batch_size, timeout_s))
        if not items:
            raise TimeoutError(f"RLLearner: no trajectory arrived in {timeout_s:.0f} s (are the runners alive?)")
        ready = self._accept(items)
        pulled = sum(int(t["n"]) for t in items)
        while fill and sum(int(t["n"]) for t, _, _ in ready) < c.batch_size and pulled < MAX_FILL * c.batch_size:
            more = ray.get(self.ring.get.remote(c.batch_size, timeout_s))
            if not more:
                raise TimeoutError(f"RLLearner: no trajectory arrived in {timeout_s:.0f} s (are the runners alive?)")
            items += more
            pulled += sum(int(t["n"]) for t in more)
            ready += self._accept(more)
        t_data = time.perf_counter() - t0
        batch = self._batch(ready)
        stats = self._ppo(batch) if batch else {}
        self.version += 1
        self.counters["updates"] += 1
        self.ring.set_version.remote(self.version)
        t1 = time.time()
        refs = self.dist.push(state_numpy(self.model), self.version) if self.dist else []
        self.push_times.append((t1, time.time()))
        self.counters["pushes"] += 1
        if wait_push:
            ray.get(refs)
        return {**stats, **self.counters, "version": self.version, "wait_data_s": t_data,
                "update_s": time.perf_counter() - t0, "success_rate": float(np.mean([t["success"] for t in items])),
                "episode_steps": float(np.mean([t["steps"] for t in items]))}

    def _accept(self, items: list[dict]) -> list[tuple[dict, np.ndarray, np.ndarray]]:
        """Count the episodes, drop decisions older than ``max_lag`` versions, and return the
        trajectories ready to train on with their advantages and returns: each fresh one (GAE
        with the current critic), or each member of a group just completed (rloo)."""
        c = self.cfg
        oldest = self.version - c.lag_limit
        ready = []
        for t in items:
            self.counters["episodes"] += 1
            self.counters["env_steps"] += int(t["steps"])
            self.counters["successes"] += int(t["success"])
            self.episodes.append((float(t["t_end"]), int(t["steps"]), bool(t["success"]), int(t["task_id"])))
            if int(t["version"].min()) < oldest:
                self.counters["dropped_stale"] += int(t["n"])
                continue
            if c.critic_only:  # the target is the Monte-Carlo return; no advantage is used
                ready.append((t, np.zeros(int(t["n"])), self._mc_return(t)))
                continue
            if c.ppo.advantage == "gae":
                with torch.no_grad():
                    ready.append((t, *gae(t["reward"], self._values(t), t["done"], 0.0, c.ppo.gamma, c.ppo.gae_lambda)))
                continue
            group = self.groups.add(t)
            if group is None:
                continue
            self.counters["groups"] += 1
            adv = rloo([float(m["success"]) for m in group])
            if not adv.any():  # all succeeded or all failed: no signal
                self.counters["groups_skipped"] += 1
                continue
            for m, a in zip(group, adv):
                ready.append((m, np.full(int(m["n"]), a), self._mc_return(m)))
        if c.ppo.advantage == "rloo":
            self.counters["dropped_stale"] += self.groups.drop_older_than(oldest)
        return ready

    def _batch(self, ready: list[tuple[dict, np.ndarray, np.ndarray]]) -> dict | None:
        """Concatenate the ready trajectories into one PPO batch."""
        if not ready:
            return None
        trajs = [t for t, _, _ in ready]
        cat = {k: np.concatenate([t[k] for t in trajs]) for k in ("images", "proprio", "chain", "logp")}
        cat["instructions"] = [t["instruction"] for t in trajs for _ in range(int(t["n"]))]
        cat["adv"] = np.concatenate([a for _, a, _ in ready])
        cat["ret"] = np.concatenate([r for _, _, r in ready])
        self.counters["decisions"] += len(cat["adv"])
        return cat

    def _mc_return(self, t: dict) -> np.ndarray:
        """The discounted Monte-Carlo return of each decision of a trajectory (GAE with lambda 1, V = 0)."""
        return gae(t["reward"], np.zeros(int(t["n"])), t["done"], 0.0, self.cfg.ppo.gamma, 1.0)[1]

    def _values(self, t: dict) -> np.ndarray:
        ctx, pad = self.model.encode(torch.from_numpy(t["images"]).to(self.device),
                                     torch.from_numpy(t["proprio"]).to(self.device),
                                     [t["instruction"]] * int(t["n"]))
        return self.model.value(ctx, pad).float().cpu().numpy()

    def _ppo(self, b: dict) -> dict:
        c, n = self.cfg, len(b["adv"])
        gen = np.random.default_rng([c.seed, self.version])
        logs: list[dict] = []
        for _ in range(c.ppo.epochs):
            for idx in np.array_split(gen.permutation(n), max(1, n // c.ppo.minibatch)):
                if c.critic_only:
                    loss, st = self._value_loss(b, idx)
                else:
                    loss, st = self._ppo_loss(b, idx)
                with self.activation_pool():
                    st["grad_norm"] = self.learner.step(loss)
                logs.append(st)
            if c.ppo.target_kl and logs[-1].get("approx_kl", 0.0) > c.ppo.target_kl:
                break
        out = {k: float(np.mean([s[k] for s in logs])) for k in logs[0]}
        out["sigma_mean"] = float(self.model.sigmas().detach().mean())
        return out

    def _ppo_loss(self, b: dict, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO loss (policy, critic, entropy) on one minibatch."""
        c, dev = self.cfg, self.device
        with self.activation_pool(), self.learner.autocast():
            ev = self.model.evaluate(torch.from_numpy(b["images"][idx]).to(dev),
                                     torch.from_numpy(b["proprio"][idx]).to(dev),
                                     [b["instructions"][i] for i in idx],
                                     torch.from_numpy(b["chain"][idx]).to(dev)[:, None])
            return ppo_loss(ev["logp"][:, 0].float(), torch.from_numpy(b["logp"][idx]).to(dev),
                            torch.from_numpy(b["adv"][idx]).float().to(dev), ev["value"].float(),
                            torch.from_numpy(b["ret"][idx]).float().to(dev), ev["entropy"], c.ppo)

    def _value_loss(self, b: dict, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """``critic_only``: the critic's regression loss on one minibatch (the encoder is frozen)."""
        dev = self.device
        with self.activation_pool(), self.learner.autocast():
            with torch.no_grad():
                ctx, pad = self.model.encode(torch.from_numpy(b["images"][idx]).to(dev),
                                             torch.from_numpy(b["proprio"][idx]).to(dev),
                                             [b["instructions"][i] for i in idx])
            vf = 0.5 * (self.model.value(ctx, pad).float() - torch.from_numpy(b["ret"][idx]).float().to(dev)).pow(2).mean()
        return vf, {"value_loss": vf.item()}

    def save(self, path: str, extra: dict | None = None) -> str:
        """A VLA checkpoint the runtime can serve (and export), plus the RL state to resume."""
        from prevla_models.vla import save_checkpoint

        save_checkpoint(path, self.model.vla, {"rl": self.model.rl_state(), "rl_version": self.version,
                                               "train_state": self.learner.state_dict(),
                                               "rl_counters": dict(self.counters), **(extra or {})})
        return path

    def restore(self, path: str) -> int:
        """Continue from :meth:`save`'s file (weights, critic, noise, optimiser, counters)."""
        from prevla_models.vla import load_checkpoint

        vla, extra = load_checkpoint(path)
        self.model.vla.load_state_dict(vla.state_dict())
        self.model.load_rl_state(extra["rl"])
        self.learner.load_state_dict(extra["train_state"])
        self.version = int(extra["rl_version"])
        self.counters.update(extra.get("rl_counters", {}))
        if self.ring is not None:
            self.ring.set_version.remote(self.version)
        return self.version
