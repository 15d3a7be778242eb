"""policy_node: observations in, K candidate action chunks out. A managed (lifecycle) node.

Lifecycle (:class:`~prevla_ros.nodes.lifecycle.ManagedNode`): *configure* builds the policy
(loads, checks and warms up the VLA; an unusable model fails the transition, naming the file
and why), *activate* subscribes the inputs and lets ``candidates`` out, *deactivate*
unsubscribes and stops publishing (the model stays loaded; ``sample_candidates`` is refused),
*cleanup* frees the model. ``/diagnostics`` reports the state in every state.

Subscribes (while active): ``agentview/image_raw``, ``wrist/image_raw`` (sensor_msgs/Image),
``joint_states``, ``eef_pose`` (PoseStamped), ``sim_state`` (privileged, for the scripted
expert), ``instruction`` (String, latched), ``episode_status`` (latched).
Publishes: ``candidates`` (prevla_interfaces/CandidateSet), ``/diagnostics``.
Serves: ``sample_candidates`` (prevla_interfaces/SampleCandidates) to resample the latest
observation (more candidates, another temperature); ``~/swap_model``
(prevla_interfaces/SwapModel) to hot-swap the VLA between two observations, as a change of
the ``checkpoint``, ``backend`` or ``device`` parameter does
(:class:`~prevla_ros.nodes.model_swap.ModelSwapper`; configured nodes only); the standard
lifecycle services (``~/change_state``, ``~/get_state``, ...).

A malformed input (wrong image encoding or size, bad joint state, ...) is logged and answered
with a one-candidate *hold* set for that observation, so the robot holds and re-observes. A
message over the input limits (image side, instruction length, rate, a stamp from the future;
:class:`~prevla_ros.runtime.limits.InputLimits`) or a request for more than ``limit_k``
candidates is rejected before it is read, counted and logged at most every few seconds.
"""
from __future__ import annotations

from functools import partial

from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from prevla_interfaces.msg import EpisodeStatus
from prevla_interfaces.srv import SampleCandidates

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import OK, WARN, Diagnostics, guarded
from prevla_ros.nodes.lifecycle import ManagedNode
from prevla_ros.nodes.model_swap import ModelSwapper
from prevla_ros.nodes.observation_topics import subscribe_parts
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS, declare_config
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime.chunks import HOLD_SOURCE, hold_chunk
from prevla_ros.runtime.configs import PolicyNodeConfig
from prevla_ros.runtime.engines import LoadedModel, ModelSlot
from prevla_ros.runtime.limits import k_problem, status_problem
from prevla_ros.runtime.observation import PART_NAMES, ObservationAssembler
from prevla_ros.runtime.types import (GRIPPER_OPEN, ActionChunk, CandidateSet, Observation,
                                      Policy)
from prevla_sim.expert_policy import ScriptedExpertPolicy, build_policy

#: What a policy raises for a task or an observation it cannot serve: the node answers with a
#: hold and stays up. ValueError and RuntimeError are the Policy contract; the scripted expert
#: (LIBERO underneath) also raises KeyError for a goal object missing from sim_state and
#: IndexError for a task id past its suite's end (episode_status), both sent by a peer.
POLICY_ERRORS = (ValueError, RuntimeError, KeyError, IndexError)


def make_policy(config: PolicyNodeConfig, log,
                models: ModelSwapper) -> tuple[Policy, tuple[str, ...]]:
    """The configured policy and the observation parts it needs; the VLA is loaded through
    the node's model swapper (RuntimeError naming the file when it cannot be loaded)."""
    images_and_state = ("agentview", "wrist", "joints", "eef")
    if config.policy == "remote":
        log.info(f"remote policy at {config.remote_url} (connects on the first observation)")
        return build_policy("remote", config.horizon, remote_url=config.remote_url,
                            remote_timeout_s=config.remote_timeout_s), images_and_state
    if config.policy == "vla":
        return models.load(), images_and_state
    policy = build_policy("scripted_expert", config.horizon, config.noise_std, config.seed)
    return policy, images_and_state + ("objects",)


class PolicyNode(ManagedNode):
    """Samples candidate chunks for each complete observation (while active)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("policy_node", **kwargs)
        self.config = declare_config(self, PolicyNodeConfig)  # ValueError names a bad field
        self.health, self.guard = guarded(self, self.config)
        self.models = ModelSwapper(self, ModelSlot("vla", self._build_vla), self._install,
                                   None if self.config.policy == "vla" else
                                   f"policy is {self.config.policy}: it runs no VLA model")
        self.policy: Policy | None = None  # built by configure
        self.assembler: ObservationAssembler | None = None
        self._parts: tuple[str, ...] = ()
        self._stats = {"observations": 0, "candidate_sets": 0, "holds": 0,
                       "resample_requests": 0}
        self._forget()
        self._pub = self.create_lifecycle_publisher(CandidateSetMsg, "candidates", STREAM_QOS)
        self.create_service(SampleCandidates, "sample_candidates", self._on_sample_request)
        self.diagnostics = Diagnostics(self, self.lifecycle_status(self._diagnostics),
                                       self.health, self.guard)

    # --- lifecycle ------------------------------------------------------------------------
    def load(self) -> None:
        self.policy, self._parts = make_policy(self.config, self.get_logger(), self.models)
        self.drop_work()
        self.get_logger().info(f"policy '{self.policy.policy_id}', K={self.config.num_candidates}"
                               f", H={self.config.horizon}")

    def subscribe_inputs(self) -> None:
        size = self.config.image_size  # 0: any size
        image = partial(conv.msg_to_image, expected_hw=(size, size) if size else None)
        subscribe_parts(self, PART_NAMES, self._add, {"agentview": image, "wrist": image},
                        instruction=self.assembler, guard=self.guard)
        self.create_subscription(EpisodeStatus, "episode_status", self._on_status, STATUS_QOS)

    def drop_work(self) -> None:
        """Parts and observations in flight are forgotten (the latched instruction comes
        again with the next activation)."""
        self._deferred = None
        self.assembler = ObservationAssembler(self._parts,
                                              jump_back_s=self.config.limits.stamp_jump_back_s)

    def unload(self) -> None:
        self.models.unload()
        self.policy, self.assembler = None, None
        self._forget()

    def _forget(self) -> None:
        """The per-episode state, as at startup."""
        self._last_obs: Observation | None = None
        self._held_stamps: set[int] = set()
        self._last_gripper = GRIPPER_OPEN
        self._deferred: Observation | None = None
        self._episode: tuple[str, int, int] | None = None

    def _build_vla(self, loaded: LoadedModel) -> Policy:
        from prevla_models.vla_policy import VLAPolicy  # torch: only for policy vla

        return VLAPolicy(loaded.runner, seed=self.config.seed)

    def _install(self, policy: Policy) -> None:
        """A swapped-in VLA (called between two observations)."""
        self.policy = policy

    # --- inputs ---------------------------------------------------------------------------
    def _add(self, stamp_ns: int, part: str, convert) -> None:
        try:
            value = convert()
        except ValueError as exc:
            self._hold(stamp_ns, f"malformed {part}: {exc}")
            return
        obs = self.assembler.add(stamp_ns, part, value)
        if obs is not None:
            self._on_observation(obs)

    def _on_status(self, msg: EpisodeStatus) -> None:
        if not self.guard.admit("episode_status", msg, status_problem):
            return
        episode = (msg.suite, int(msg.task_id), int(msg.episode))
        if episode != self._episode and not msg.done:
            self._episode = episode
            self.assembler.restart()  # a new episode may restart the stamps (sim time)
            try:
                if isinstance(self.policy, ScriptedExpertPolicy):  # needs the task's goal
                    self.policy.set_task(msg.suite, int(msg.task_id))
                else:
                    self.policy.reset()
            except POLICY_ERRORS as exc:
                self.health.error(f"cannot set task {msg.suite}/{msg.task_id}: "
                                  f"{type(exc).__name__}: {exc}")
            if self._deferred is not None:
                obs, self._deferred = self._deferred, None
                self._on_observation(obs)

    # --- outputs --------------------------------------------------------------------------
    def _sample(self, obs: Observation, k: int, temperature: float, round_: int) -> CandidateSet:
        chunks = self.policy.sample(obs, k, temperature)
        seeds = list(getattr(self.policy, "last_seeds", []))
        return CandidateSet(
            chunks=[ActionChunk(c, self.policy.policy_id, obs.stamp_ns) for c in chunks],
            temperatures=[temperature] * k, seeds=seeds, policy_id=self.policy.policy_id,
            stamp_ns=obs.stamp_ns, round=round_)

    def _on_observation(self, obs: Observation) -> None:
        if not getattr(self.policy, "ready", True):
            # Topics are not ordered across each other: the episode status naming the task
            # may arrive just after the first observation. Answer it once the task is known.
            self._deferred = obs
            return
        self._stats["observations"] += 1
        self._last_obs = obs
        try:
            cs = self._sample(obs, self.config.num_candidates, self.config.temperature, 0)
        except POLICY_ERRORS as exc:
            self._hold(obs.stamp_ns, f"policy failed: {type(exc).__name__}: {exc}")
            return
        self._last_gripper = float(cs.chunks[0].actions[-1, -1])
        self._pub.publish(conv.candidates_to_msg(cs))
        self._stats["candidate_sets"] += 1

    def _on_sample_request(self, request, response):
        if not self.is_active:  # answered, so the caller does not wait for its timeout
            response.ok, response.reason = False, f"policy_node is {self.lifecycle_state}"
            return response
        self._stats["resample_requests"] += 1
        obs = self._last_obs
        stamp = conv.from_time(request.observation_stamp)
        if not self.guard.admit("sample_candidates", int(request.k), k_problem):
            response.ok, response.reason = False, (
                f"refused: k={request.k} > limit_k {self.config.limits.limit_k}, or requests "
                "above limit_rate_hz")
            return response
        if obs is None or obs.stamp_ns != stamp:
            response.ok, response.reason = False, "no observation with that stamp (stale request)"
            return response
        try:
            cs = self._sample(obs, max(1, int(request.k)), float(request.temperature),
                              int(request.round))
        except POLICY_ERRORS as exc:
            response.ok, response.reason = False, f"policy failed: {type(exc).__name__}: {exc}"
            return response
        response.ok, response.candidates = True, conv.candidates_to_msg(cs)
        return response

    def _hold(self, stamp_ns: int, reason: str) -> None:
        """Log the problem and answer this observation with a single hold candidate."""
        self.health.error(reason)
        if stamp_ns in self._held_stamps:
            return  # one hold per observation, however many of its parts were bad
        self._held_stamps = {s for s in self._held_stamps if s >= stamp_ns - 60_000_000_000}
        self._held_stamps.add(stamp_ns)
        # Gripper: repeat the last command proposed, so a held object stays held.
        chunk = hold_chunk(self.config.horizon, self._last_gripper, stamp_ns)
        self._pub.publish(conv.candidates_to_msg(CandidateSet(
            chunks=[chunk], temperatures=[0.0], seeds=[0], policy_id=HOLD_SOURCE,
            stamp_ns=stamp_ns)))
        self._stats["holds"] += 1

    def _diagnostics(self):
        values = {**self._stats, **self.models.values()}
        if self._stats["candidate_sets"] == 0:
            return WARN, "waiting for a complete observation", values
        return OK, "sampling", values


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
