"""``RLConfig``: every setting of a D-VLA run, declared once (YAML file + ``--flags``).

The optimisation fields come from :class:`~prevla_training.loop.TrainLoopConfig` (``steps`` =
learner updates, ``batch_size`` = decisions per update, lr / warm-up / clipping / seed /
resume); PPO's and the flow noise's own knobs are composed sections.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prevla_models.flow_rl import FlowNoiseConfig
from prevla_ros.runtime.settings import section
from prevla_training.loop import TrainLoopConfig
from prevla_training.rl.ppo import PPOConfig

MODES = ("async", "sync")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class RLConfig(TrainLoopConfig):
    """A D-VLA run: what to train, on which tasks, with how many actors, for how long."""

    steps: int = _f(100, "Learner updates (each one PPO pass over batch_size decisions).")
    batch_size: int = _f(64, "Decisions (chunks) per learner update.")
    lr: float = _f(5e-6, "Peak lr of the policy (flow head, encoder, step noise).")
    value_lr: float = _f(1e-3, "Peak lr of the critic's head.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear warm-up updates.")
    log_interval: int = _f(1, "Updates between metrics.jsonl lines.")
    policy: str = _f("zoo:vla_libero_spatial", "VLA to fine-tune: zoo:NAME or a checkpoint path.")
    suite: str = _f("libero_spatial", "LIBERO suite.")
    tasks: str = _f("0-9", "Task ids, e.g. '0-9' or '2,5,7'.")
    init_start: int = _f(10, "First LIBERO init state used for training (0-9 are kept for evaluation).")
    init_count: int = _f(40, "Init states per task, from init_start.")
    max_steps: int = _f(0, "Episode budget in control steps (0 = the suite's).")
    mode: str = _f("async", "async (four lanes overlap) or sync (the lock-step baseline).")
    runners: int = _f(1, "Environment runner actors.")
    envs_per_runner: int = _f(2, "LIBERO environments each runner steps (interleaved with inference).")
    servers: int = _f(1, "Inference server actors (runners are spread over them).")
    runner_cpus: float = _f(1.0, "CPUs reserved per runner (a LIBERO runner renders on one core).")
    server_cpus: float = _f(0.5, "CPUs reserved per inference server.")
    learner_cpus: float = _f(0.5, "CPUs reserved for the learner.")
    learner_gpus: float = _f(0.0, "GPUs for the learner (0 = CPU).")
    server_gpus: float = _f(0.0, "GPUs per inference server (0 = CPU).")
    server_max_batch: int = _f(16, "Most observations an inference server samples in one batch.")
    server_wait_ms: float = _f(2.0, "How long a server waits to fill a batch after its first request.")
    ring_capacity: int = _f(512, "Rollout ring capacity in decisions (runners block when it is full).")
    max_lag: int = _f(2, "Most versions a decision may trail the learner; older ones are dropped and counted.")
    temperature: float = _f(1.0, "Start-noise temperature of the flow chain.")
    critic_only: bool = _f(False, "Policy evaluation: train only the critic, on the Monte-Carlo discounted "
                                  "return of every episode; the policy stays the loaded one, so no decision "
                                  "is stale (a label source for the verifier).")
    env_steps: int = _f(0, "Stop after this many environment steps (0 = after `steps` updates).")
    minutes: float = _f(0.0, "Stop after this much wall-clock time (0 = no time limit).")
    runner_restarts: int = _f(5, "Runners that may die and be replaced in one run before it stops.")
    checkpoint_every: int = _f(10, "Updates between checkpoints (and at the end).")
    out_dir: str = _f("outputs/rl/run", "Run directory: metrics.jsonl, checkpoints, summary.")
    address: str = _f("", "Ray cluster address ('' = start a local Ray, 'auto' = the running one).")
    ppo: PPOConfig = section(PPOConfig, "PPO + GAE settings")
    flow: FlowNoiseConfig = section(FlowNoiseConfig, "Flow-noise exploration and critic")

    def __post_init__(self) -> None:
        super().__post_init__()
        from prevla_training.evaluate import parse_tasks

        if self.mode not in MODES:
            raise ValueError(f"RLConfig.mode must be one of {MODES}, got {self.mode!r}")
        parse_tasks(self.tasks)
        for name in ("runners", "envs_per_runner", "servers", "server_max_batch", "ring_capacity",
                     "checkpoint_every", "init_count"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RLConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("init_start", "max_steps", "max_lag", "env_steps", "runner_restarts"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.critic_only and (self.ppo.advantage != "gae" or self.flow.value_trains_encoder):
            raise ValueError("RLConfig.critic_only trains the critic alone: it needs ppo.advantage 'gae' (every "
                             "episode) and flow.value_trains_encoder off (the encoder is the policy's)")
        if self.init_start < 10:
            raise ValueError(f"RLConfig.init_start must be >= 10 (init states 0-9 are for evaluation only), "
                             f"got {self.init_start}")
        for name in ("runner_cpus", "server_cpus", "learner_cpus", "learner_gpus", "server_gpus",
                     "server_wait_ms", "value_lr", "temperature", "minutes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def task_ids(self) -> list[int]:
        from prevla_training.evaluate import parse_tasks

        return parse_tasks(self.tasks)

    @property
    def lag_limit(self) -> int:
        """Versions a decision may trail the learner before it is dropped: ``max_lag``, or no limit
        with ``critic_only`` (the policy that sampled it never changes)."""
        return 2**31 if self.critic_only else self.max_lag

    def env_task(self, runner: int, env: int) -> int:
        """The task environment ``env`` of runner ``runner`` steps: the tasks dealt round-robin."""
        tasks = self.task_ids
        return tasks[(runner * self.envs_per_runner + env) % len(tasks)]
