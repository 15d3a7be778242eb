"""verifier_node: candidate sets in; the approved action chunk, a verdict and rviz markers out.

Subscribes: ``candidates`` (prevla_interfaces/CandidateSet), ``eef_pose`` (PoseStamped); with
``verifier: model`` also ``agentview/image_raw``, ``wrist/image_raw`` (sensor_msgs/Image),
``joint_states`` and ``instruction`` (String, latched), assembled into observations by stamp.
Publishes: ``action_chunk`` (ActionChunk), ``verdict`` (Verdict), ``approved_path``
(visualization_msgs/MarkerArray), ``/diagnostics``.

With ``verifier: model`` a candidate set is scored against the observation whose stamp its
header carries (the policy node answers each observation under its stamp). A set whose
observation is still arriving (some of its parts are in, or none yet of a stamp that new)
waits for it, up to ``OBSERVATION_WAIT_S``: topics are not ordered across each other. A set
whose observation is unknown (older stamp) or malformed gets a hold. A
verifier model that cannot be loaded is logged once and every decision is a hold that
says why; the node stays up.

The model runs on ``backend`` / ``device`` (fallback chain tensorrt -> onnxruntime -> torch,
:mod:`prevla_ros.runtime.engines`) and is hot-swapped, between two candidate sets, by the
``~/swap_model`` service (prevla_interfaces/SwapModel) or a change of ``checkpoint``,
``backend`` or ``device`` (:class:`~prevla_ros.nodes.model_swap.ModelSwapper`).

Resampling (``verifier: model``, ``resample: true``): when no candidate of a set passes tau,
the node asks policy_node's ``sample_candidates`` service (prevla_interfaces/SampleCandidates)
for more candidates of the same observation, hotter each round, and decides again, by the
scheduler's rules (:class:`~prevla_ros.runtime.scheduler.Resampling`, the loop
:meth:`Scheduler.run` drives in closed-loop evaluation). The calls are asynchronous: the node
keeps taking messages while it waits. A late answer (``resample_timeout_s``, or the rest of
``max_ms``), a refused or malformed one, or no service at all ends the resampling with the
scheduler's fallback (the safest candidate seen if safe enough, else a hold), logged in one
line; a newer candidate set ends it too, so verdicts keep the order of their sets. With
``overlap`` (preemptive resampling, :meth:`Scheduler.run`'s rule) a resampled set that arrives
makes the node request the round after it before scoring it, so the policy samples while the
verifier scores; that request's deadline runs from when it was sent. When the set decides,
the request ahead is dropped (its answer, if any, is ignored) and its k is counted in
``dropped_samples`` (/diagnostics). Only the answer to the one request awaited is ever added,
so no round is added twice.

Mode ``imagine``: the verifier gates imagination, not execution. Each candidate set is
answered with the gated subset on ``imagine_candidates`` (CandidateSet, same stamp and
policy id; empty when nothing passes): the candidates with P(safe) >= ``imagine_threshold``
(0: tau), highest predicted advantage first, at most ``imagine_max_candidates``
(:meth:`Scheduler.gate`), plus a Verdict with ``MODE_IMAGINE`` whose ``accepted_index`` is the
first forwarded candidate. Nothing is resampled, and neither ``action_chunk`` nor
``approved_path`` is published: world_model_node (``source: imagine_candidates``) rolls the
forwarded candidates out.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import CandidateSet as CandidateSetMsg
from prevla_interfaces.msg import Verdict
from prevla_interfaces.srv import SampleCandidates
from rclpy.node import Node
from rclpy.task import Future
from rclpy.timer import Timer
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import ERROR, OK, WARN, Diagnostics
from prevla_ros.nodes.model_swap import ModelSwapper
from prevla_ros.nodes.params import LATCHED_QOS, STREAM_QOS, declare_config
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime.chunks import chunk_problem
from prevla_ros.runtime.configs import VerifierNodeConfig
from prevla_ros.runtime.engines import LoadedModel, ModelSlot
from prevla_ros.runtime.observation import ObservationIntake
from prevla_ros.runtime.scheduler import (OUTCOME_HOLD, Decision, Resampling, Scheduler,
                                          UnavailableScorer)
from prevla_ros.runtime.types import CAMERAS, GRIPPER_OPEN, Observation, Scorer

APPROVED_RGBA = (0.1, 0.9, 0.2, 1.0)
HOLD_RGBA = (0.9, 0.2, 0.1, 1.0)
#: Complete observations (and malformed stamps) remembered for matching candidate sets.
KEEP_OBSERVATIONS = 8
#: Longest wait for the rest of a candidate set's observation before answering with a hold.
OBSERVATION_WAIT_S = 1.0


@dataclass
class _Request:
    """One ``sample_candidates`` request sent to policy_node."""

    future: Future
    k: int  # candidates asked for
    sent: float  # perf_counter when it went out
    timeout_s: float  # its deadline after ``sent``: resample_timeout_s or the rest of max_ms


@dataclass
class _Pending:
    """A decision waiting for policy_node's answer to one ``sample_candidates`` request."""

    msg: CandidateSetMsg  # the policy's first set: stamp and policy id
    resampling: Resampling
    request: _Request | None = None  # the one whose answer is the next round
    timer: Timer | None = None  # the request's deadline
    failure: str = ""  # why the resampling stopped early, if it did


def build_scorer(loaded: LoadedModel) -> Scorer:
    """The scheduler's scorer over a loaded verifier (any backend)."""
    from prevla_models.verifier_scorer import VerifierScorer  # only for verifier: model

    model_id = loaded.runner.meta["model_id"]
    # A checkpoint saved without an id is reported by its file name.
    return VerifierScorer(loaded.runner, Path(loaded.path).stem if model_id == "verifier" else None)


class VerifierNode(Node):
    """Runs the scheduler on every candidate set and publishes what it approved."""

    def __init__(self, **kwargs) -> None:
        super().__init__("verifier_node", **kwargs)
        self.config = c = declare_config(self, VerifierNodeConfig)
        self.scheduler = Scheduler(c.scheduler)
        self.models = ModelSwapper(self, ModelSlot("verifier", build_scorer), self._install,
                                   None if c.scheduler.verifier == "model" else
                                   f"verifier is {c.scheduler.verifier}: it runs no model")
        if c.scheduler.verifier == "model":
            self.scheduler.scorer = self.models.load(UnavailableScorer)
        self.intake = ObservationIntake(keep=KEEP_OBSERVATIONS)
        self._waiting: tuple[CandidateSetMsg, float] | None = None  # set, monotonic arrival
        self._eef: np.ndarray | None = None
        self._last_gripper = GRIPPER_OPEN
        self._pending: _Pending | None = None  # at most one decision awaits the policy
        self._sampler = (self.create_client(SampleCandidates, "sample_candidates")
                         if c.scheduler.verifier == "model" and c.resample and c.scheduler.mode == "execute"
                         else None)  # imagine mode never resamples: it gates, nothing waits
        self._stats = {"decisions": 0, "holds": 0, "rejected_candidates": 0,
                       "resample_requests": 0, "forwarded_candidates": 0, "resample_failures": 0,
                       "dropped_samples": 0, "last_resample_ms": 0.0,
                       "last_verify_ms": 0.0, "last_outcome": "", "observations": 0,
                       "threshold": round(self.scheduler.threshold, 4),
                       "imagine_threshold": round(self.scheduler.imagine_threshold, 4),
                       "last_p_safe_max": float("nan")}
        self._chunk_pub = self.create_publisher(ActionChunkMsg, "action_chunk", STREAM_QOS)
        self._imagine_pub = (self.create_publisher(CandidateSetMsg, "imagine_candidates",
                                                   STREAM_QOS) if c.scheduler.mode == "imagine" else None)
        self._verdict_pub = self.create_publisher(Verdict, "verdict", STREAM_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, "approved_path", 5)
        self.create_subscription(CandidateSetMsg, "candidates", self._on_candidates, STREAM_QOS)
        self.create_subscription(PoseStamped, "eef_pose", lambda m: self._add(
            m.header.stamp, "eef", lambda: conv.msg_to_pose(m.pose)), STREAM_QOS)
        if c.scheduler.verifier == "model":  # the verifier sees what the policy saw
            for camera in CAMERAS:
                self.create_subscription(Image, f"{camera}/image_raw", lambda m, cam=camera:
                                         self._add(m.header.stamp, cam,
                                                   lambda: conv.msg_to_image(m)), STREAM_QOS)
            self.create_subscription(JointState, "joint_states", lambda m: self._add(
                m.header.stamp, "joints", lambda: conv.msg_to_joint_state(m)), STREAM_QOS)
            self.create_subscription(String, "instruction", self._on_instruction, LATCHED_QOS)
            self.create_timer(OBSERVATION_WAIT_S / 4, self._check_waiting)
        Diagnostics(self, self._diagnostics)
        self.get_logger().info(f"verifier '{self.scheduler.verifier_id}' ({c.scheduler.verifier}) in "
                               f"{c.scheduler.mode} mode, tau={self.scheduler.threshold:.3f}")

    def _install(self, scorer: Scorer) -> None:
        """A swapped-in verifier (called between two candidate sets)."""
        self.scheduler.scorer = scorer
        self._stats["threshold"] = round(self.scheduler.threshold, 4)
        self._stats["imagine_threshold"] = round(self.scheduler.imagine_threshold, 4)

    # --- inputs ---------------------------------------------------------------------------
    def _add(self, stamp, part: str, convert) -> None:
        stamp_ns = conv.from_time(stamp)
        try:
            value, obs = self.intake.add(stamp_ns, part, convert, assemble=self.config.scheduler.verifier == "model")
        except ValueError as exc:
            self.get_logger().error(str(exc))
            if self._waiting is not None and self._waiting_stamp() == stamp_ns:
                self._decide_waiting()
            return
        if part == "eef":
            self._eef = value[0]
        if obs is not None:
            self._on_observation(obs)

    def _on_instruction(self, msg: String) -> None:
        self.intake.assembler.instruction = msg.data

    def _on_observation(self, obs: Observation) -> None:
        self._stats["observations"] += 1
        if self._waiting is not None and self._waiting_stamp() <= obs.stamp_ns:
            self._decide_waiting()  # its own observation, or a newer one (then it holds)

    def _on_candidates(self, msg: CandidateSetMsg) -> None:
        if self._waiting is not None:  # a newer set: answer the older one now
            self._decide_waiting()
        if self._observation_coming(conv.from_time(msg.header.stamp)):
            self._waiting = (msg, time.monotonic())
            return
        self._decide(msg)

    def _observation_coming(self, stamp_ns: int) -> bool:
        """Parts of this stamp's observation are in, or none yet of a stamp this new."""
        return (self.config.scheduler.verifier == "model" and getattr(self.scheduler.scorer, "available", True)
                and self.intake.coming(stamp_ns))

    def _waiting_stamp(self) -> int:
        return conv.from_time(self._waiting[0].header.stamp)

    def _decide_waiting(self) -> None:
        msg, self._waiting = self._waiting[0], None
        self._decide(msg)

    def _check_waiting(self) -> None:
        if self._waiting is not None and time.monotonic() - self._waiting[1] > OBSERVATION_WAIT_S:
            self._decide_waiting()

    # --- decision -------------------------------------------------------------------------
    def _decide(self, msg: CandidateSetMsg) -> None:
        stamp = conv.from_time(msg.header.stamp)
        if self._pending is not None:  # verdicts keep the order of their candidate sets
            self._stop_pending(f"superseded by the candidate set of stamp {stamp}")
        obs = self.intake.get(stamp)
        candidates = conv.msg_to_candidate_arrays(msg)
        if self.config.scheduler.mode == "imagine":
            forwarded, decision = self.scheduler.gate(candidates, obs, stamp, self._last_gripper,
                                                      msg.policy_id)
            self._publish_gated(msg, forwarded, decision)
            return
        if self._sampler is None:
            self._publish(msg, self.scheduler.decide(
                candidates, stamp_ns=stamp, last_gripper=self._last_gripper,
                source=msg.policy_id, observation=obs), self.scheduler.verifier_id)
            return
        temperature = float(msg.temperatures[0]) if len(msg.temperatures) else 1.0
        if not (math.isfinite(temperature) and temperature >= 0):
            temperature = 1.0
        resampling = self.scheduler.start(obs, max(1, len(candidates)), temperature, stamp,
                                          self._last_gripper, msg.policy_id)
        resampling.add(candidates)
        self._resample(_Pending(msg, resampling))

    # --- resampling over sample_candidates ------------------------------------------------
    def _resample(self, p: _Pending) -> None:
        """Ask for the scheduler's next round, or publish its decision when it has made one."""
        request = p.resampling.next_request()
        if request is None:
            self._finish(p)
            return
        sent = self._send(p, *request, p.resampling.rounds)
        if sent is None:
            self._fail(p, "policy_node's sample_candidates service is not available")
            return
        self._await(p, sent)

    def _send(self, p: _Pending, k: int, temperature: float, round_: int) -> _Request | None:
        """Send one request for round ``round_`` (None: no service); its answer goes to
        :meth:`_on_sampled`, which adds it only if it is the request awaited then."""
        if not self._sampler.service_is_ready():
            return None
        budget_s = p.resampling.remaining_ms() / 1e3
        r = _Request(self._sampler.call_async(SampleCandidates.Request(
            observation_stamp=p.msg.header.stamp, k=int(k), temperature=float(temperature),
            round=round_)), int(k), time.perf_counter(),
            max(1e-3, min(self.config.resample_timeout_s, budget_s)))
        self._stats["resample_requests"] += 1
        r.future.add_done_callback(lambda _: self._on_sampled(p, r))
        return r

    def _await(self, p: _Pending, r: _Request) -> None:
        """Wait for ``r``'s answer (the next round) until its deadline, counted from its send."""
        p.request, self._pending = r, p
        left_s = r.timeout_s - (time.perf_counter() - r.sent)
        p.timer = self.create_timer(max(1e-3, left_s), lambda: self._on_timeout(p, r))

    def _on_sampled(self, p: _Pending, r: _Request) -> None:
        if self._pending is not p or p.request is not r:
            return  # timed out, superseded or dropped meanwhile: never a second answer
        self._end_wait(p)
        self._stats["last_resample_ms"] = round((time.perf_counter() - r.sent) * 1e3, 3)
        try:
            response = r.future.result()
        except Exception as exc:  # noqa: BLE001 -- whatever broke, fall back and stay up
            self._fail(p, f"sample_candidates failed: {exc}")
            return
        stamp = conv.from_time(p.msg.header.stamp)
        if not response.ok:
            self._fail(p, f"policy_node could not resample: {response.reason}")
            return
        got = conv.from_time(response.candidates.header.stamp)
        candidates = conv.msg_to_candidate_arrays(response.candidates)
        cfg = self.scheduler.config
        problems = [chunk_problem(c, cfg.action_dim, cfg.max_abs_action) for c in candidates]
        if got != stamp:
            self._fail(p, f"sample_candidates answered for stamp {got}, not {stamp}")
        elif not candidates or all(problems):
            self._fail(p, "malformed candidates from sample_candidates: " + (
                "; ".join(sorted(set(problems))) if problems else "none"))
        else:
            self._add_round(p, candidates)

    def _add_round(self, p: _Pending, candidates: list[np.ndarray]) -> None:
        """Decide on a resampled round. With ``overlap`` the round after it is requested
        first (as :meth:`Scheduler.run` does), and dropped if this round decides."""
        request = p.resampling.speculative_request()  # None without overlap
        # its round: after the one about to be added
        ahead = self._send(p, *request, p.resampling.rounds + 1) if request is not None else None
        p.resampling.add(candidates)
        if ahead is None:
            self._resample(p)
        elif p.resampling.done:  # not needed: a late answer is never delivered
            self._sampler.remove_pending_request(ahead.future)
            p.resampling.drop(ahead.k)
            self._finish(p)
        else:
            self._await(p, ahead)

    def _on_timeout(self, p: _Pending, r: _Request) -> None:
        if self._pending is not p or p.request is not r:
            return
        self._end_wait(p)
        self._sampler.remove_pending_request(r.future)  # a late answer is dropped
        budget = ("the rest of the max_ms budget"
                  if r.timeout_s < self.config.resample_timeout_s else "resample_timeout_s")
        self._fail(p, f"no answer from sample_candidates within {r.timeout_s:.3f} s ({budget})")

    def _stop_pending(self, why: str) -> None:
        p = self._pending
        self._sampler.remove_pending_request(p.request.future)  # its answer is never delivered
        self._end_wait(p)
        self._fail(p, why)

    def _end_wait(self, p: _Pending) -> None:
        self._pending, p.request = None, None
        if p.timer is not None:
            self.destroy_timer(p.timer)
            p.timer = None

    def _fail(self, p: _Pending, why: str) -> None:
        """Stop resampling: the scheduler's fallback decides."""
        p.failure = why
        self._stats["resample_failures"] += 1
        p.resampling.stop(why)
        self._finish(p)

    def _finish(self, p: _Pending) -> None:
        decision = p.resampling.finish()
        if p.failure and decision.outcome != OUTCOME_HOLD:  # a hold is logged when published
            self.get_logger().warning(
                f"stamp {conv.from_time(p.msg.header.stamp)}, {decision.outcome}: "
                f"{decision.reason}")
        self._publish(p.msg, decision, p.resampling.verifier_id)

    # --- outputs --------------------------------------------------------------------------
    def _publish_gated(self, msg: CandidateSetMsg, forwarded: list[int],
                       decision: Decision) -> None:
        """Imagine mode: the forwarded candidates for the world model, and the verdict."""
        stamp = conv.from_time(msg.header.stamp)
        for index, why in decision.rejected.items():
            self.get_logger().error(f"candidate #{index} from '{msg.policy_id}' rejected: {why}")
        if not forwarded:
            self.get_logger().warning(f"stamp {stamp}: nothing forwarded to the world model: "
                                      f"{decision.reason}")
            self._stats["holds"] += 1

        def pick(values):  # per-candidate metadata, when the policy sent it for every one
            return [values[i] for i in forwarded] if len(values) == len(msg.candidates) else []

        self._imagine_pub.publish(CandidateSetMsg(
            header=msg.header, candidates=[msg.candidates[i] for i in forwarded],
            temperatures=pick(msg.temperatures), seeds=pick(msg.seeds),
            policy_id=msg.policy_id, round=msg.round))
        self._verdict_pub.publish(conv.decision_to_verdict(
            decision, stamp, self.config.scheduler.mode, self.scheduler.verifier_id))
        self._count(decision)
        self._stats["forwarded_candidates"] += len(forwarded)

    def _publish(self, msg: CandidateSetMsg, decision: Decision, verifier_id: str) -> None:
        stamp = conv.from_time(msg.header.stamp)
        obs = self.intake.get(stamp)
        if obs is None and stamp in self.intake.malformed and decision.outcome == OUTCOME_HOLD:
            decision.reason += f" ({self.intake.malformed[stamp]})"
        for index, why in decision.rejected.items():
            self.get_logger().error(f"candidate #{index} from '{msg.policy_id}' rejected: {why}")
        if decision.outcome == OUTCOME_HOLD:
            self.get_logger().warning(f"publishing hold chunk: {decision.reason}")
            self._stats["holds"] += 1
        self._last_gripper = float(decision.chunk.actions[-1, -1])
        self._chunk_pub.publish(conv.chunk_to_msg(decision.chunk))
        self._verdict_pub.publish(conv.decision_to_verdict(
            decision, stamp, self.config.scheduler.mode, verifier_id))
        if self._eef is not None:
            rgba = HOLD_RGBA if decision.outcome == OUTCOME_HOLD else APPROVED_RGBA
            self._marker_pub.publish(conv.path_markers(
                conv.chunk_path(self._eef, decision.chunk.actions), stamp, "approved_path",
                rgba, self.config.marker_frame))
        self._count(decision)

    def _count(self, decision: Decision) -> None:
        scored = decision.scored()
        if len(scored):
            self._stats["last_p_safe_max"] = round(float(decision.safety_probs[scored].max()), 4)
        self._stats["decisions"] += 1
        self._stats["rejected_candidates"] += len(decision.rejected)
        self._stats["dropped_samples"] += decision.dropped_samples
        self._stats["last_verify_ms"] = round(decision.verify_ms, 3)
        self._stats["last_outcome"] = decision.outcome

    def _diagnostics(self):
        scorer = self.scheduler.scorer
        values = {**self._stats, **self.models.values()}
        if scorer is not None and not getattr(scorer, "available", True):
            return ERROR, f"verifier unavailable: {scorer.reason}", values
        if self._stats["decisions"] == 0:
            return WARN, "waiting for candidates", values
        level = ERROR if self._stats["last_outcome"] == OUTCOME_HOLD else OK
        return level, f"last decision: {self._stats['last_outcome']}", values


def main(args: list[str] | None = None) -> int:
    return run_node(VerifierNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
