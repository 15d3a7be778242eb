"""verifier_node: candidate sets in; the approved action chunk, a verdict and rviz markers out.

A managed (lifecycle) node (:class:`~prevla_ros.nodes.lifecycle.ManagedNode`): *configure*
loads, checks and warms up the verifier model (an unusable one fails the transition, naming
the file and why: the node stays unconfigured and nothing is approved), *activate* subscribes
the inputs and lets the outputs out, *deactivate* unsubscribes, ends a pending resampling with
its fallback and stops publishing (the model stays loaded), *cleanup* frees the model.
``/diagnostics`` reports the state in every state, and warns when more than one node publishes
on ``candidates`` (:class:`~prevla_ros.nodes.diagnostics.PublisherWatch`).

Subscribes (while active): ``candidates`` (prevla_interfaces/CandidateSet), ``eef_pose``
(PoseStamped); with ``verifier: model`` also ``agentview/image_raw``, ``wrist/image_raw``
(sensor_msgs/Image), ``joint_states`` and ``instruction`` (String, latched), assembled into
observations by stamp.
Publishes: ``action_chunk`` (ActionChunk), ``verdict`` (Verdict), ``verdict_text``
(visualization_msgs/Marker: the verdict as text above the end effector, for rviz),
``approved_path`` (visualization_msgs/MarkerArray), ``/diagnostics``.

With ``verifier: model`` a set is scored against the observation its stamp names; a set
whose observation is still arriving waits for it up to ``OBSERVATION_WAIT_S``
(:class:`~prevla_ros.runtime.observation.ObservationWait`); one whose observation is unknown
or malformed, or a verifier model that cannot be loaded, gets a hold that says why. A set or
part over the input limits (:class:`~prevla_ros.runtime.limits.InputLimits`) is dropped before
it is read, counted and logged at most every few seconds; the node stays up.

The model runs on ``backend`` / ``device`` (fallback chain tensorrt -> onnxruntime -> torch)
and is hot-swapped between two candidate sets by ``~/swap_model`` (prevla_interfaces/SwapModel)
or a change of ``checkpoint``, ``backend`` or ``device``
(:class:`~prevla_ros.nodes.model_swap.ModelSwapper`).

Resampling (``verifier: model``, ``resample: true``): when no candidate passes tau, the node
asks policy_node's ``sample_candidates`` service for more candidates of the same observation
and decides again, asynchronously; a late, refused or malformed answer, no service, or a newer
set ends it with the scheduler's fallback (whose verdict names the candidate executed); with
``overlap`` the next round is requested while one is scored. The rules are
:class:`~prevla_ros.runtime.resampling_driver.ResamplingDriver`'s; this node wires it up.

Mode ``imagine``: each set is answered on ``imagine_candidates`` (same stamp and policy id;
empty when nothing passes) with the candidates whose P(safe) >= ``imagine_threshold`` (0: tau),
best predicted advantage first, at most ``imagine_max_candidates`` (:meth:`Scheduler.gate`),
plus a ``MODE_IMAGINE`` Verdict whose ``accepted_index`` is the first forwarded one. Nothing is
resampled, executed or drawn: world_model_node (``source: imagine_candidates``) rolls them out.
"""
from __future__ import annotations

import math
from pathlib import Path

from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from prevla_interfaces.msg import Verdict
from prevla_interfaces.srv import SampleCandidates
from rclpy.task import Future
from visualization_msgs.msg import Marker, MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import OK, WARN, Diagnostics, guarded
from prevla_ros.nodes.lifecycle import ManagedNode
from prevla_ros.nodes.model_swap import ModelSwapper
from prevla_ros.nodes.observation_topics import subscribe_parts
from prevla_ros.nodes.params import STREAM_QOS, declare_config
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime.configs import VerifierNodeConfig
from prevla_ros.runtime.engines import LoadedModel, ModelSlot
from prevla_ros.runtime.limits import InputLimits, candidate_set_problem, summary
from prevla_ros.runtime.observation import OBSERVATION_WAIT_S, ObservationIntake, ObservationWait
from prevla_ros.runtime.resampling_driver import Answer, ResamplingDriver, SamplingFailed
from prevla_ros.runtime.scheduler import OUTCOME_HOLD, Decision, Scheduler
from prevla_ros.runtime.types import GRIPPER_OPEN, Scorer

APPROVED_RGBA = (0.1, 0.9, 0.2, 1.0)
HOLD_RGBA = (0.9, 0.2, 0.1, 1.0)
#: Complete observations (and malformed stamps) remembered for matching candidate sets.
KEEP_OBSERVATIONS = 8


def build_scorer(loaded: LoadedModel) -> Scorer:
    """The scheduler's scorer over a loaded verifier (any backend)."""
    from prevla_models.verifier_scorer import VerifierScorer  # only for verifier: model

    model_id = loaded.runner.meta["model_id"]
    # A checkpoint saved without an id is reported by its file name.
    return VerifierScorer(loaded.runner, Path(loaded.path).stem if model_id == "verifier" else None)


class VerifierNode(ManagedNode):
    """Runs the scheduler on every candidate set and publishes what it approved (while
    active)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("verifier_node", **kwargs)
        self.config = c = declare_config(self, VerifierNodeConfig)  # ValueError names a field
        self.health, self.guard = guarded(self, c)
        self._model = c.scheduler.verifier == "model"
        self.scheduler = Scheduler(c.scheduler)
        self.models = ModelSwapper(self, ModelSlot("verifier", build_scorer), self._install,
                                   None if self._model else
                                   f"verifier is {c.scheduler.verifier}: it runs no model")
        self._stats = {**dict.fromkeys(("decisions", "holds", "rejected_candidates",
                                        "forwarded_candidates", "dropped_samples",
                                        "resample_requests", "resample_failures"), 0),
                       "last_resample_ms": 0.0, "last_verify_ms": 0.0, "last_outcome": "",
                       "last_p_safe_max": float("nan")}
        self.intake: ObservationIntake | None = None  # built by configure
        self.waiting: ObservationWait | None = None
        self._eef, self._last_gripper = None, GRIPPER_OPEN
        self._sampler = self.resampler = None  # imagine mode never resamples: it gates
        if self._model and c.resample and c.scheduler.mode == "execute":
            self._sampler = self.create_client(SampleCandidates, "sample_candidates")
            self.resampler = ResamplingDriver(
                c.scheduler, self._send, self._sampler.remove_pending_request, self.create_timer,
                self.destroy_timer, self._publish, c.resample_timeout_s,
                warn=self.get_logger().warning, stats=self._stats, name="sample_candidates")
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunkMsg, "action_chunk",
                                                          STREAM_QOS)
        self._imagine_pub = (
            self.create_lifecycle_publisher(CandidateSetMsg, "imagine_candidates", STREAM_QOS)
            if c.scheduler.mode == "imagine" else None)
        self._verdict_pub = self.create_lifecycle_publisher(Verdict, "verdict", STREAM_QOS)
        self._marker_pub = self.create_lifecycle_publisher(MarkerArray, "approved_path", 5)
        self._text_pub = self.create_lifecycle_publisher(Marker, "verdict_text", 5)
        self.diagnostics = Diagnostics(self, self.lifecycle_status(self._diagnostics),
                                       self.health, self.guard)
        self.diagnostics.watch("candidates")  # anyone on the domain could propose chunks

    # --- lifecycle ------------------------------------------------------------------------
    def load(self) -> None:
        c = self.config
        self._install(self.models.load() if self._model else None)  # + thresholds
        self.drop_work()
        self.get_logger().info(f"verifier '{self.scheduler.verifier_id}' ({c.scheduler.verifier})"
                               f" in {c.scheduler.mode} mode, tau={self.scheduler.threshold:.3f}")

    def subscribe_inputs(self) -> None:
        self.create_subscription(CandidateSetMsg, "candidates", self._on_candidates, STREAM_QOS)
        # the model verifier sees what the policy saw; any verifier draws paths from the eef
        subscribe_parts(self, self.intake.assembler.required if self._model else ("eef",),
                        self.waiting.add, {"eef": self._pose},
                        instruction=self.intake.assembler if self._model else None,
                        guard=self.guard)
        if self._model:
            self.create_timer(OBSERVATION_WAIT_S / 4, self.waiting.expire)

    def drop_work(self) -> None:
        """A pending resampling ends with its fallback (published while the outputs are still
        live: its robot gets an answer); held sets and stored observations are dropped."""
        if self.resampler is not None:
            self.resampler.stop("the node is being deactivated")
        self.intake = ObservationIntake(keep=KEEP_OBSERVATIONS,
                                        jump_back_s=self.config.limits.stamp_jump_back_s)
        # verdicts keep the order of their candidate sets: a newer set answers a waiting one
        self.waiting = ObservationWait(self.intake, self._decide, self.health.error,
                                       in_order=True, assemble=self._model)

    def unload(self) -> None:
        self.models.unload()
        self.scheduler.scorer = None
        self.intake = self.waiting = None
        self._eef, self._last_gripper = None, GRIPPER_OPEN

    def _install(self, scorer: Scorer | None) -> None:
        """The verifier at startup, or a swapped-in one (called between two candidate sets)."""
        self.scheduler.scorer = scorer
        self._stats["threshold"] = round(self.scheduler.threshold, 4)
        self._stats["imagine_threshold"] = round(self.scheduler.imagine_threshold, 4)

    # --- inputs ---------------------------------------------------------------------------
    def _pose(self, msg: PoseStamped):
        """The end effector's pose; its position is where approved paths are drawn from."""
        pose = conv.msg_to_pose(msg.pose)
        self._eef = pose[0]
        return pose

    def _on_candidates(self, msg: CandidateSetMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        if not self.guard.admit("candidates", msg, candidate_set_problem, stamp):
            return  # over a limit: dropped before any candidate is read (counted, logged)
        scores = (self.config.scheduler.verifier == "model"  # else no observation is needed
                  and getattr(self.scheduler.scorer, "available", True))
        self.waiting.offer(stamp, msg, wait=scores)

    # --- decision -------------------------------------------------------------------------
    def _decide(self, stamp: int, msg: CandidateSetMsg) -> None:
        if self.resampler is not None:  # verdicts keep the order of their candidate sets
            self.resampler.stop(f"superseded by the candidate set of stamp {stamp}")
        obs = self.intake.get(stamp)
        candidates = conv.msg_to_candidate_arrays(msg)
        if self.config.scheduler.mode == "imagine":
            self._publish_gated(msg, *self.scheduler.gate(
                candidates, obs, stamp, self._last_gripper, msg.policy_id))
        elif self.resampler is None:
            self._publish(msg, self.scheduler.decide(
                candidates, stamp_ns=stamp, last_gripper=self._last_gripper,
                source=msg.policy_id, observation=obs), self.scheduler.verifier_id)
        else:
            t = float(msg.temperatures[0]) if len(msg.temperatures) else 1.0
            resampling = self.scheduler.start(
                obs, max(1, len(candidates)), t if math.isfinite(t) and t >= 0 else 1.0, stamp,
                self._last_gripper, msg.policy_id)
            self.resampler.start(resampling, candidates, stamp, msg)

    def _send(self, stamp_ns: int, k: int, temperature: float, round_: int) -> Future:
        """One ``sample_candidates`` request; its answer goes to the resampler."""
        if not self._sampler.service_is_ready():
            raise SamplingFailed("policy_node's sample_candidates service is not available")
        future = self._sampler.call_async(SampleCandidates.Request(
            observation_stamp=conv.to_time(stamp_ns), k=k, temperature=temperature,
            round=round_))
        future.add_done_callback(lambda f: self.resampler.answered(
            f, lambda: _read(f, self.config.limits)))
        return future

    # --- outputs --------------------------------------------------------------------------
    def _publish_gated(self, msg: CandidateSetMsg, forwarded: list[int],
                       decision: Decision) -> None:
        """Imagine mode: the forwarded candidates for the world model, and the verdict."""
        def pick(values):  # per-candidate metadata, when the policy sent it for every one
            return [values[i] for i in forwarded] if len(values) == len(msg.candidates) else []

        self._imagine_pub.publish(CandidateSetMsg(
            header=msg.header, candidates=[msg.candidates[i] for i in forwarded],
            temperatures=pick(msg.temperatures), seeds=pick(msg.seeds),
            policy_id=msg.policy_id, round=msg.round))
        self._stats["forwarded_candidates"] += len(forwarded)
        self._verdict(msg, decision, self.scheduler.verifier_id,
                      "nothing forwarded to the world model")

    def _publish(self, msg: CandidateSetMsg, decision: Decision, verifier_id: str) -> None:
        """Execute mode: the chunk to run, the verdict and the approved path."""
        stamp = conv.from_time(msg.header.stamp)
        if (decision.outcome == OUTCOME_HOLD and self.intake.get(stamp) is None
                and stamp in self.intake.malformed):
            decision.reason += f" ({self.intake.malformed[stamp]})"
        self._last_gripper = float(decision.chunk.actions[-1, -1])
        self._chunk_pub.publish(conv.chunk_to_msg(decision.chunk))
        self._verdict(msg, decision, verifier_id, "publishing hold chunk")
        if self._eef is not None:
            rgba = HOLD_RGBA if decision.outcome == OUTCOME_HOLD else APPROVED_RGBA
            self._marker_pub.publish(conv.path_markers(
                conv.chunk_path(self._eef, decision.chunk.actions), stamp, "approved_path",
                rgba, self.config.marker_frame))

    def _verdict(self, msg: CandidateSetMsg, decision: Decision, verifier_id: str,
                 hold: str) -> None:
        """Both modes: the verdict, its log lines (``hold`` says what a hold means) and counts."""
        stamp, s = conv.from_time(msg.header.stamp), self._stats
        if decision.rejected:  # one line per set, however many were rejected
            self.health.error(f"stamp {stamp}: {len(decision.rejected)} candidate(s) from "
                        f"'{msg.policy_id}' rejected: {summary(decision.rejected)}")
        if decision.outcome == OUTCOME_HOLD:
            self.get_logger().warning(f"stamp {stamp}: {hold}: {decision.reason}")
            s["holds"] += 1
        verdict = conv.decision_to_verdict(decision, stamp, self.config.scheduler.mode,
                                           verifier_id)
        self._verdict_pub.publish(verdict)
        self._text_pub.publish(conv.verdict_text_marker(verdict, msg.policy_id,
                                                        self.config.marker_frame, self._eef))
        scored = decision.scored()
        if len(scored):
            s["last_p_safe_max"] = round(float(decision.safety_probs[scored].max()), 4)
        s["decisions"] += 1
        s["rejected_candidates"] += len(decision.rejected)
        s["dropped_samples"] += decision.dropped_samples
        s["last_verify_ms"] = round(decision.verify_ms, 3)
        s["last_outcome"] = decision.outcome

    def _diagnostics(self):
        values = {**self._stats, **self.models.values(),
                  "observations": self.waiting.observations if self.waiting else 0}
        if self._stats["decisions"] == 0:
            return WARN, "waiting for candidates", values
        # a hold is a safe outcome, not a fault: errors come from the health window
        level = WARN if self._stats["last_outcome"] == OUTCOME_HOLD else OK
        return level, f"last decision: {self._stats['last_outcome']}", values


def _read(future: Future, limits: InputLimits) -> Answer:
    """A ``sample_candidates`` answer: (the stamp it answers, its candidates); one over the
    limits is a failed round (counted in ``resample_failures``), never read."""
    response = future.result()
    if not response.ok:
        raise SamplingFailed(f"policy_node could not resample: {response.reason}")
    if problem := candidate_set_problem(response.candidates, limits):
        raise SamplingFailed(f"policy_node's answer is over the limits: {problem}")
    return (conv.from_time(response.candidates.header.stamp),
            conv.msg_to_candidate_arrays(response.candidates))


def main(args: list[str] | None = None) -> int:
    return run_node(VerifierNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
