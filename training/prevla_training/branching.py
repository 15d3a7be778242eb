"""Outcome-grounded labels: branch every candidate of a decision, then let the policy finish.

Along a closed-loop rollout of the learned VLA (the "policy alone" arm: it executes candidate
0 of its K samples), at every ``branch_every``-th decision (seeded offset per episode):

1. observe, record the privileged state s and the decision's phase (approach, grasp, carry,
   place: ``ScriptedExpert.phase``), sample the K candidates the runtime would see;
2. per candidate i: ``restore`` the decision, execute the chunk while measuring its physics
   (``prevla_sim.outcomes``), record the state s'_i, then ``continuations`` times: restore s'_i
   and run the policy (one sample per decision, its own seed per continuation) until success
   or the episode budget. The continuations' successes give the Monte-Carlo value
   Q(s, a_i) = P(task succeeds | run a_i, then the policy). With ``value_model`` (a VLA
   checkpoint of ``prevla rl`` carrying its critic, ``extra["rl"]``) s'_i is also observed
   (rendered) and the critic's V(s'_i) gives the cheaper bootstrapped estimate, batched over
   the K candidates (:class:`ValueBootstrap`; then ``continuations`` may be 0)::

       value/q_i = 1                      if the task succeeded during chunk a_i
                 = 0                      else if the chunk used up the episode budget (terminal)
                 = gamma_chunk * V(s'_i)  otherwise

   with gamma_chunk the RL run's per-decision discount (``extra["rl_config"]["ppo"]["gamma"]``,
   0.99 when absent): the one-step TD target of the critic's own training (reward 1 on the
   decision that completes the task, no bootstrap past a terminal), so on the RL policy
   value/q estimates gamma_chunk**(decisions to success - 1) with failure = 0. V is
   unbounded (a linear head), so value/q is too, within [0, 1] only approximately;
3. restore the decision (and the policy's noise generator) and go on with candidate 0, so the
   rollout is the same whether or not a decision was branched (resume-safe).

Output, one directory per task: ``<out>/task<TT>/init<II>.hdf5``, the ``label-candidates``
schema (``prevla_training.candidates``: images, proprio, state, step, actions, source,
next_state, outcome/*) restricted to the branched decisions, plus::

    mc/success   (N, K, M) uint8   did continuation j after candidate i succeed
    mc/end_step  (N, K, M) int32   control step at which it ended (success or budget)
    value/q      (N, K) float32    bootstrapped Q (step 2; with ``value_model`` only)
    value/v_next (N, K) float32    the critic's V(s'_i) (with ``value_model`` only)
    phase        (N,) int8         index into ``prevla_sim.expert.PHASES``
    decision     (N,) int32        index of the decision in the rollout
    attrs: + continuations, branch_every, num_candidates, decisions (of the rollout);
             with ``value_model``: value_model, value_sha256 (its file), value_rl_version,
             value_gamma (gamma_chunk)

With ``--continuations 0`` (value labels only) the ``mc/`` group is not written: such files load
with ``mc_success`` None and ``value_q`` set (``critic.load_candidates``), and ``prevla ceiling``
(which needs continuations) skips them.

Episodes run in parallel on local processes or a Ray cluster (``--ray-address``,
``prevla_training.jobs``). Each branched decision is written as soon as it is done (``init<II>.parts/dNN.npz``, temp
file + rename) and the episode file is assembled at the end, so an interrupted run loses at
most one decision. Labelling never uses init states 0-9 (the evaluation's).

    prevla branch --suite libero_spatial --episodes-per-task 2 --continuations 4 \
        --workers 2 --out outputs/branches/libero_spatial
    prevla branch --value-model outputs/rl/run/last.pt --continuations 0 ...   # value labels only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prevla_training.cli_args import add_config_args, parse_config
from prevla_training.demos import parse_tasks
from prevla_training.jobs import map_jobs

FIRST_LABEL_INIT = 10  # init states 0-9 are the evaluation's


@dataclass
class BranchConfig:
    """Configuration of :func:`branch_outcomes`."""

    suite: str = field(default="libero_spatial", metadata={"help": "LIBERO suite"})
    tasks: str = field(default="", metadata={"help": "'0-9', '0,3' or '' (all)"})
    episodes_per_task: int = field(default=2, metadata={"help": "rollouts per task"})
    first_init_state: int = field(default=FIRST_LABEL_INIT, metadata={
        "help": "first official init state (0-9 are the evaluation's: refused)"})
    out: str = field(default="outputs/branches/libero_spatial", metadata={"help": "output directory"})
    policy: str = field(default="", metadata={"help": "VLA checkpoint: '' = zoo default, zoo:NAME or a file"})
    backend: str = field(default="auto", metadata={"help": "VLA backend (auto | onnxruntime | torch ...)"})
    num_candidates: int = field(default=8, metadata={"help": "K policy samples per decision"})
    continuations: int = field(default=4, metadata={
        "help": "M policy continuations per candidate (0 only with value_model)"})
    value_model: str = field(default="", metadata={
        "help": "'' = off; a VLA checkpoint (file or zoo:NAME) carrying an RL critic: also label "
                "value/q = success ? 1 : gamma_chunk * V(s') per candidate (module docstring)"})
    branch_every: int = field(default=4, metadata={"help": "branch one decision in this many"})
    temperature: float = field(default=1.0, metadata={"help": "policy sampling temperature"})
    horizon: int = field(default=8, metadata={"help": "actions per chunk (the VLA's horizon)"})
    gamma: float = field(default=0.99, metadata={"help": "per-step discount of the chunk's success reward"})
    seed: int = field(default=0, metadata={"help": "seed of every sampling stream"})
    workers: int = field(default=2, metadata={"help": "processes (one episode each); 0 = in-process"})
    ray_address: str = field(default="", metadata={
        "help": "'' = local processes; 'local' = a local Ray cluster of --workers CPUs; "
                "'auto' or host:port = a running Ray cluster (one CPU per episode)"})

    def __post_init__(self) -> None:
        for name, lo in (("episodes_per_task", 1), ("num_candidates", 2), ("continuations", 0),
                         ("branch_every", 1), ("horizon", 1), ("workers", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"BranchConfig.{name} must be an int >= {lo}, got {v!r}")
        if self.continuations == 0 and not self.value_model:
            raise ValueError("BranchConfig.continuations must be >= 1 unless value_model is set "
                             "(0 continuations = value labels only)")
        if self.first_init_state < FIRST_LABEL_INIT:
            raise ValueError(f"BranchConfig.first_init_state must be >= {FIRST_LABEL_INIT}: init states "
                             f"0-9 are the evaluation's, got {self.first_init_state}")
        if not (self.temperature >= 0 and 0 < self.gamma <= 1):
            raise ValueError("BranchConfig: need temperature >= 0 and 0 < gamma <= 1")


def stream_seed(*key: int) -> int:
    """A 31-bit seed for one sampling stream, a pure function of its key."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0] & 0x7FFFFFFF)


def run_policy_to_end(env, policy, temperature: float) -> tuple[bool, int]:
    """Let the policy act (candidate 0 of one sample per decision) until done: (success, end step)."""
    done = success = env.check_success()
    while not done and env.step_count < env.max_steps:
        chunk = np.asarray(policy.sample(env.observe(), 1, temperature))[0]
        for a in chunk:
            done, success = env.step(a)
            if done:
                break
    return bool(success), int(env.step_count)


class ValueBootstrap:
    """The RL critic of a VLA checkpoint (``FlowActorCritic.value`` on the VLA's observation
    encoding) as a labeller: V of rendered observations, batched, on ``device``.

    Attributes: path, sha256 (of the file, verified before loading), rl_version, gamma (the
    RL run's per-chunk discount, 0.99 when the checkpoint does not record it), model.
    """

    def __init__(self, spec: str, device: str = "cpu") -> None:
        from prevla_models.flow_rl import FlowActorCritic, FlowNoiseConfig
        from prevla_models.vla import load_checkpoint
        from prevla_models.zoo import resolve_file

        ver = resolve_file(spec, "vla")
        vla, extra = load_checkpoint(ver.path, map_location=device)
        if "rl" not in extra:
            raise ValueError(f"value_model {spec!r} carries no RL critic (no extra['rl']): give a "
                             "checkpoint written by `prevla rl`")
        self.model = FlowActorCritic(vla, FlowNoiseConfig(**extra["rl"]["flow_noise"])).to(device).eval()
        self.model.load_rl_state(extra["rl"])
        ppo = (extra.get("rl_config") or {}).get("ppo") or {}
        self.spec, self.path, self.sha256, self.device = spec, ver.path, ver.sha256, device
        self.rl_version, self.gamma = int(extra.get("rl_version", 0)), float(ppo.get("gamma", 0.99))

    def attrs(self) -> dict:
        """What the episode file records of the critic (module docstring)."""
        return dict(value_model=self.spec, value_sha256=self.sha256, value_rl_version=self.rl_version,
                    value_gamma=self.gamma)

    def values(self, observations: list, instruction: str) -> np.ndarray:
        """V (len(observations),) float32 of observations of one task, in one batch."""
        import torch

        from prevla_models.encoder import observation_tensors

        size = int(self.model.vla.cfg.image_size)
        pairs = [observation_tensors(o, size) for o in observations]
        images = torch.cat([p[0] for p in pairs]).to(self.device)
        proprio = torch.cat([p[1] for p in pairs]).to(self.device)
        with torch.inference_mode():
            ctx, pad = self.model.encode(images, proprio, [instruction] * len(pairs))
            return self.model.value(ctx, pad).float().cpu().numpy()

    def q(self, v_next: np.ndarray, success: np.ndarray, terminal: np.ndarray) -> np.ndarray:
        """value/q of the module docstring: 1 on success, 0 at the budget, else gamma * V(s')."""
        return np.where(success > 0, 1.0, np.where(terminal, 0.0, self.gamma * v_next)).astype(np.float32)


def branch_decision(env, probe, policy, cands: np.ndarray, cfg: BranchConfig, key: tuple,
                    value: ValueBootstrap | None = None) -> dict:
    """Branch every candidate from the current state (module docstring, step 2); the env is
    left anywhere: the caller restores its snapshot."""
    from prevla_sim.outcomes import OUTCOME_FIELDS, STATE_DIM, execute_and_measure

    k, m = len(cands), cfg.continuations
    snap = env.snapshot()
    success = np.zeros((k, m), np.uint8)
    end = np.zeros((k, m), np.int32)
    nxt = np.zeros((k, STATE_DIM), np.float32)
    outcome = {f: np.zeros(k, np.float32) for f in OUTCOME_FIELDS}
    observed, terminal = [], np.zeros(k, bool)
    for i in range(k):
        env.restore(snap)
        res = execute_and_measure(env, probe, cands[i], cfg.gamma)
        nxt[i] = probe.state_features()
        for f in OUTCOME_FIELDS:
            outcome[f][i] = res[f]
        after = env.snapshot()  # before rendering: the continuations start from the same state either way
        if value is not None:
            observed.append(env.observe())
            terminal[i] = env.step_count >= env.max_steps
        for j in range(m):
            env.restore(after)
            policy.seed = stream_seed(*key, i, j)
            policy.reset()
            success[i, j], end[i, j] = run_policy_to_end(env, policy, cfg.temperature)
    out = {"actions": np.asarray(cands, np.float32), "next_state": nxt,
           **{f"outcome/{f}": v for f, v in outcome.items()}}
    if m:
        out.update(mc_success=success, mc_end_step=end)
    if value is not None:
        v_next = value.values(observed, env.instruction)
        out.update({"value/v_next": v_next.astype(np.float32),
                    "value/q": value.q(v_next, outcome["success"], terminal)})
    return out


def _save_part(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{k.replace("/", "__"): v for k, v in arrays.items()})
    os.replace(tmp, path)


def load_part(path: Path) -> dict:
    """One decision part (``init<II>.parts/dNN.npz``) as a dict of arrays (``outcome/<f>`` keys restored)."""
    with np.load(path) as z:
        return {k.replace("__", "/"): z[k] for k in z.files}


def branch_episode(env, probe, policy, expert, cfg: BranchConfig, task_id: int, init: int,
                   parts: Path, value: ValueBootstrap | None = None) -> dict:
    """Roll out one episode, branching the chosen decisions not yet in ``parts`` (with the
    critic ``value`` when given); returns the rollout's attrs (success, length, decisions,
    branched decision indices)."""
    from prevla_models.geometry import proprio_from_state
    from prevla_sim.expert import PHASES

    env.reset(init)
    probe.remember_rest()
    expert.reset()
    policy.seed = stream_seed(cfg.seed, task_id, init)
    policy.reset()
    offset = stream_seed(cfg.seed, task_id, init, 1) % cfg.branch_every
    done = success = False
    d, branched = 0, []
    while not done:
        obs = env.observe()
        cands = np.asarray(policy.sample(obs, cfg.num_candidates, cfg.temperature), np.float32)
        part = parts / f"d{d:02d}.npz"
        if d % cfg.branch_every == offset:
            branched.append(d)
            if not part.exists():
                snap, gen = env.snapshot(), policy._gen.get_state()
                arrays = branch_decision(env, probe, policy, cands, cfg, (cfg.seed, task_id, init, d), value)
                env.restore(snap)
                policy._gen.set_state(gen)
                arrays.update(images=np.stack([obs.images["agentview"], obs.images["wrist"]]),
                              proprio=proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos),
                              state=probe.state_features(), step=np.int32(env.step_count),
                              phase=np.int8(PHASES.index(expert.phase(obs))), decision=np.int32(d))
                _save_part(part, arrays)
        for a in cands[0]:
            done, success = env.step(a)
            if done:
                break
        d += 1
    return dict(success=bool(success), length=int(env.step_count), decisions=d, branched=branched)


def assemble(parts: Path, path: Path, attrs: dict) -> int:
    """Write the episode file from its decision parts (atomic); returns the decisions written."""
    import h5py

    rows = [load_part(parts / f"d{d:02d}.npz") for d in attrs["branched"]]
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        if rows:
            for key in rows[0]:
                arr = np.stack([r[key] for r in rows])
                name = {"mc_success": "mc/success", "mc_end_step": "mc/end_step"}.get(key, key)
                f.create_dataset(name, data=arr, **(dict(compression="lzf") if key == "images" else {}))
        f.create_dataset("source", data=np.zeros(attrs["num_candidates"], np.int8))
        for key, v in attrs.items():
            if key != "branched":
                f.attrs[key] = v
    os.replace(tmp, path)
    return len(rows)


def branch_task_episode(job: dict) -> dict:
    """Worker: one (task, init state) episode; skips a finished one (resume)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from prevla_models import zoo
    from prevla_models.checkpoints import sha256_file
    from prevla_sim.expert import expert_for_env
    from prevla_sim.expert_policy import build_policy
    from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig
    from prevla_sim.outcomes import WorldProbe

    cfg, t_id, init = BranchConfig(**job["cfg"]), job["task_id"], job["init"]
    path = Path(cfg.out) / f"task{t_id:02d}" / f"init{init:02d}.hdf5"
    if path.exists():
        return dict(task_id=t_id, init=init, new=False)
    torch.set_num_threads(job["threads"])
    parts = path.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = zoo.resolve(cfg.policy, "vla")
    policy = build_policy("vla", cfg.horizon, backend=cfg.backend, checkpoint=cfg.policy)
    value = ValueBootstrap(cfg.value_model) if cfg.value_model else None
    env = LiberoEnv(LiberoEnvConfig(suite=cfg.suite, task_id=t_id, init_state=init))
    try:
        rollout = branch_episode(env, WorldProbe(env), policy, expert_for_env(env), cfg, t_id, init, parts, value)
        if value is not None:
            rollout.update(value.attrs())
        attrs = dict(suite=cfg.suite, task_id=t_id, init_state=init, instruction=env.instruction,
                     policy_id=policy.policy_id, policy_sha256=sha256_file(ckpt), **rollout,
                     **{k: getattr(cfg, k) for k in ("temperature", "num_candidates", "continuations",
                                                     "branch_every", "gamma", "horizon", "seed", "backend")},
                     k_policy=cfg.num_candidates, noise_std=0.0)
        n = assemble(parts, path, attrs)
    finally:
        env.close()
    shutil.rmtree(parts, ignore_errors=True)
    return dict(task_id=t_id, init=init, new=True, success=rollout["success"], branched=n,
                wall_s=round(time.perf_counter() - t0, 1))


def branch_outcomes(cfg: BranchConfig) -> dict:
    """Every episode of ``cfg`` (parallel over episodes); writes ``<out>/summary.json``."""
    from tqdm import tqdm

    from prevla_sim.libero_env import num_init_states, suite_num_tasks

    task_ids = parse_tasks(cfg.tasks or None, suite_num_tasks(cfg.suite))
    jobs = []
    for e in range(cfg.episodes_per_task):  # round-robin over tasks: partial runs cover all
        for t in task_ids:
            init = cfg.first_init_state + e
            if init >= num_init_states(cfg.suite, t):
                raise ValueError(f"task {t}: init state {init} asked, the task has {num_init_states(cfg.suite, t)}")
            jobs.append(dict(cfg=asdict(cfg), task_id=t, init=init,
                             threads=max(1, (os.cpu_count() or 1) // max(1, cfg.workers))))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    with tqdm(total=len(jobs), desc=f"branch {cfg.suite}", unit="ep") as bar:
        for r in map_jobs(branch_task_episode, jobs, cfg.workers, cfg.ray_address):
            rows.append(r)
            bar.update(1)
    summary = dict(config=asdict(cfg), wall_time_s=round(time.perf_counter() - t0, 1),
                   episodes=sorted(rows, key=lambda r: (r["task_id"], r["init"])))
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """``prevla branch``."""
    p = argparse.ArgumentParser(prog="prevla branch", description=__doc__.split("\n\n")[0])
    add_config_args(p, BranchConfig)
    branch_outcomes(parse_config(p, BranchConfig, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
