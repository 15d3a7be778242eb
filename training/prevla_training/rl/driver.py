"""``prevla rl``: D-VLA — the four lanes as Ray actors, asynchronous or in lock-step.

    prevla rl [--config run.yaml] [--mode async|sync] [--runners 2] [--steps 100] [--address auto] ...

Roles (RLlib's module / runner / learner split), all Ray actors started from one
:class:`~prevla_training.rl.config.RLConfig`:

    EnvRunner x R  --observations-->  InferenceServer x S  (batched flow-chain sampling)
         |  trajectories (data plane: object store, never through the weights' path)
         v
    RolloutRing (fixed capacity in decisions; a full ring blocks runners: backpressure)
         |
         v
    RLLearner (PPO + GAE; static pool) --weights (control plane)--> WeightDistributor
                                             -> one NodeReplica per node -> local servers

*async*: runners run continuously; the learner updates as soon as ``batch_size`` decisions are
buffered and pushes weights without waiting; decisions more than ``max_lag`` versions old are
dropped (counted). *sync*: the same actors on the same placement in lock-step — runners collect
a batch with frozen weights, then the learner updates, then the push completes, then again.

A local Ray is started with ``include_dashboard=False`` and its own temp dir unless
``--address`` names a cluster. Writes ``out_dir``: ``metrics.jsonl`` (one line per update),
``last.pt`` (a servable VLA checkpoint with the critic, noise and optimiser: ``--resume``),
``summary.json``. A runner that dies is replaced and the run goes on; a dead learner, server or
ring stops the run with the error, after what was written so far is flushed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from prevla_training.rl.config import RLConfig


def start_ray(address: str, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=os.path.join(tempfile.gettempdir(), "prevla_ray"))
    return True


class RunFailed(RuntimeError):
    """A run cannot go on (a learner, server or ring actor died, or a runner's loop failed)."""


def describe_failure(exc: Exception) -> str:
    """One line naming the actor that failed, from a Ray error."""
    text = f"{exc}\n{getattr(exc, 'cause', '')}"
    cls = next((w for w in ("RLLearner", "InferenceServer", "RingActor", "NodeReplica", "EnvRunner")
                if f"class_name: {w}" in text or f"{w}." in text), "an actor")
    last = [line.strip() for line in text.splitlines() if "Error" in line]
    return f"{cls} failed: {last[-1] if last else type(exc).__name__}"[:300]


def env_tasks(cfg: RLConfig) -> dict[int, int]:
    """task -> how many environments step it (:meth:`RLConfig.env_task`)."""
    envs = [cfg.env_task(r, i) for r in range(cfg.runners) for i in range(cfg.envs_per_runner)]
    return {t: envs.count(t) for t in cfg.task_ids}


#: TrainLoopConfig fields an RL run has no use for (no flags for them).
UNUSED = ("aug_shift", "num_threads", "stop_at")


class Run:
    """The actors of one run and the driver's loop over them."""

    def __init__(self, cfg: RLConfig, replication: str = "topology") -> None:
        import ray

        from prevla_training.rl.actors import InferenceServer, RLLearner
        from prevla_training.rl.ring import RolloutRing
        from prevla_training.rl.rollout import EnvRunner

        self.cfg = c = cfg
        self.cfg_dict = asdict(c)
        need = c.runners * c.runner_cpus + c.servers * c.server_cpus + c.learner_cpus
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have + 1e-9:  # Ray would wait for resources forever
            raise RunFailed(f"the actors reserve {need:g} CPUs (runners x runner_cpus + servers x server_cpus + "
                            f"learner_cpus) but the Ray cluster has {have:g}: lower runner_cpus or runners")
        self.ring = RolloutRing.options(num_cpus=0).remote(c.ring_capacity, c.lag_limit)
        self.learner = ray.remote(RLLearner).options(num_cpus=c.learner_cpus, num_gpus=c.learner_gpus).remote(c, self.ring)
        self.servers = [ray.remote(InferenceServer).options(num_cpus=c.server_cpus, num_gpus=c.server_gpus,
                                                            max_concurrency=1000).remote(c, s)
                        for s in range(c.servers)]
        self._runner_cls = ray.remote(EnvRunner).options(num_cpus=c.runner_cpus, max_concurrency=4)
        self.out = Path(c.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if c.resume and (self.out / "last.pt").exists():
            ray.get(self.learner.restore.remote(str(self.out / "last.pt")))
        ray.get(self.learner.attach.remote(self.servers, replication))
        self.runners = [self._new_runner(i) for i in range(c.runners)]
        self.restarts = 0
        shares = env_tasks(c)
        if len(set(shares.values())) > 1:
            print(f"prevla rl: environments per task {shares}: runners x envs_per_runner is not a multiple of "
                  f"the {len(shares)} tasks, so they are not sampled equally", flush=True)

    def _new_runner(self, i: int):
        return self._runner_cls.remote(self.cfg, i, self.servers[i % len(self.servers)], self.ring)

    def _log(self, rec: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _checkpoint(self) -> None:
        import ray

        ray.get(self.learner.save.remote(str(self.out / "last.pt"), {"rl_config": self.cfg_dict}))

    def _replace_dead(self, refs: dict) -> None:
        """Replace a runner whose process died; the run goes on. A runner whose loop *raised*
        (e.g. its inference server is gone) stops the run: :class:`RunFailed`."""
        import ray

        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            i = refs.pop(ref)
            try:
                ray.get(ref)
                continue  # finished normally (sync mode)
            except ray.exceptions.RayTaskError as exc:  # the runner is alive and its loop failed
                raise RunFailed(f"runner {i} stopped: {describe_failure(exc)}") from exc
            except ray.exceptions.RayActorError as exc:
                if self.restarts >= self.cfg.runner_restarts:
                    raise RunFailed(f"runner {i} died and {self.restarts} runners were replaced already "
                                    f"(runner_restarts): {describe_failure(exc)}") from exc
                print(f"prevla rl: runner {i} died ({type(exc).__name__}); starting a new one", flush=True)
            self.restarts += 1
            self.runners[i] = self._new_runner(i)
            refs[self.runners[i].run.remote(0)] = i

    def train(self) -> dict:
        import ray

        c = self.cfg
        t0 = time.time()
        start_version = ray.get(self.learner.stats.remote())["version"]
        per_runner = math.ceil(c.batch_size / c.runners)
        refs = {r.run.remote(0): i for i, r in enumerate(self.runners)} if c.mode == "async" else {}
        stats: dict = {}
        done = False
        try:
            while stats.get("version", start_version) < c.steps:
                if c.mode == "sync":  # every runner collects with frozen weights, then learn
                    ray.get([r.run.remote(per_runner) for r in self.runners])
                    stats = ray.get(self.learner.update.remote(wait_push=True, fill=False))
                else:
                    pending = self.learner.update.remote()
                    while not ray.wait([pending], timeout=2.0)[0]:
                        self._replace_dead(refs)  # a runner lost while the learner waits for data
                    stats = ray.get(pending)
                    self._replace_dead(refs)
                stats["wall_s"] = time.time() - t0
                stats["runner_restarts"] = self.restarts
                self._log(stats)
                print(f"update {stats['version']}: steps {stats['env_steps']} success {stats['success_rate']:.2f} "
                      f"kl {stats.get('approx_kl', float('nan')):.4f} dropped {stats['dropped_stale']} "
                      f"({stats['wall_s']:.0f} s)", flush=True)
                if stats["version"] % c.checkpoint_every == 0:
                    self._checkpoint()
                if c.env_steps and stats["env_steps"] >= c.env_steps:
                    break
                if c.minutes and stats["wall_s"] >= 60 * c.minutes:
                    break
            done = True
        except ray.exceptions.RayError as exc:  # learner, server or ring gone: stop, say which
            raise RunFailed(describe_failure(exc)) from exc
        finally:
            if not done:
                print(f"prevla rl: stopping; metrics so far in {self.out / 'metrics.jsonl'}, last checkpoint "
                      f"{self.out / 'last.pt'}", flush=True)
            for r in self.runners:
                try:
                    r.stop.remote()
                except Exception:  # noqa: BLE001 - a dead runner needs no stop
                    pass
        self._checkpoint()
        return self.summary(time.time() - t0)

    def summary(self, wall_s: float) -> dict:
        import ray

        runner_stats = []
        for r in self.runners:
            try:
                runner_stats.append(ray.get(r.stats.remote(), timeout=60))
            except Exception as exc:  # noqa: BLE001 - report, do not hide
                runner_stats.append({"error": repr(exc)})
        learner = ray.get(self.learner.stats.remote())
        ring = ray.get(self.ring.stats.remote())
        servers = ray.get([s.stats.remote() for s in self.servers])
        env_steps = sum(s.get("env_steps", 0) for s in runner_stats)
        out = dict(mode=self.cfg.mode, wall_s=wall_s, env_steps=env_steps, env_steps_per_s=env_steps / wall_s,
                   learner_decisions_per_s=learner["decisions"] / wall_s, runner_restarts=self.restarts,
                   learner={k: v for k, v in learner.items() if k not in ("push_times", "episodes")}, ring=ring,
                   servers=[{k: v for k, v in s.items() if k not in ("arrivals", "swap_log", "request_log")} for s in servers],
                   runners=[{k: v for k, v in s.items() if k != "timeline"} for s in runner_stats],
                   config=self.cfg_dict)
        (self.out / "summary.json").write_text(json.dumps(out, indent=1))
        self.raw = dict(timelines=[s.get("timeline", []) for s in runner_stats], push_times=learner["push_times"],
                        arrivals=[s["arrivals"] for s in servers], swap_logs=[s["swap_log"] for s in servers],
                        request_logs=[s["request_log"] for s in servers],
                        episodes=learner["episodes"])
        return out

    def shutdown(self) -> None:
        """Kill this run's actors (the Ray cluster stays up)."""
        import ray

        for actor in [*self.runners, *self.servers, self.learner, self.ring]:
            ray.kill(actor)


def parse_args(argv: list[str] | None = None) -> tuple[RLConfig, str]:
    """``--config FILE.yaml`` (flat setting names) then ``--flags`` over it -> (config, replication).
    A bad or unknown setting exits 2 naming it."""
    import yaml

    from prevla_training.cli_args import add_config_args, build_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(prog="prevla rl", description=__doc__.split("\n\n")[0], parents=[pre])
    add_config_args(p, RLConfig, skip=UNUSED)
    p.add_argument("--replication", choices=("topology", "naive"), default="topology",
                   help="weight distribution: one copy per node + local fan-out, or one per actor")
    args = vars(p.parse_args(argv))
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        if not isinstance(values, dict):
            p.error(f"--config {known.config}: expected a mapping of setting names to values")
        given = {a.dest for a in p._actions if any(o in (argv or []) for o in a.option_strings)}
        args.update({k: v for k, v in values.items() if k not in given})  # flags win over the file
    args.pop("config")
    replication = args.pop("replication")
    return build_config(p, RLConfig, args), replication


def main(argv: list[str] | None = None) -> int:
    cfg, replication = parse_args(argv)
    started = start_ray(cfg.address)
    try:
        summary = Run(cfg, replication).train()
    except RunFailed as exc:
        print(f"prevla rl: {exc}", flush=True)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    print(json.dumps({k: summary[k] for k in ("mode", "wall_s", "env_steps", "env_steps_per_s",
                                              "learner_decisions_per_s", "runner_restarts")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
