"""sim_node: a LIBERO task as a ROS 2 robot.

Publishes (at each decision point, all with one stamp): ``agentview/image_raw``,
``wrist/image_raw`` (sensor_msgs/Image rgb8, upright), ``joint_states``, ``eef_pose``
(PoseStamped), ``sim_state`` (privileged object poses); latched ``instruction`` (String) and
``episode_status`` (prevla_interfaces/EpisodeStatus); ``/diagnostics`` (a WARN when more than
one node publishes on ``action_chunk``: :class:`~prevla_ros.nodes.diagnostics.PublisherWatch`).
Subscribes: ``action_chunk`` (prevla_interfaces/ActionChunk), executed one action per
control step; cameras are rendered only when the next observation is due.

An invalid chunk (wrong shape or dimension, NaN, stale stamp) is logged and answered with a
hold (zero motion, gripper unchanged) followed by a fresh observation. A chunk over the input
limits (``limit_chunk_length``, ``limit_rate_hz``) is dropped before it is read, counted and
logged at most every few seconds.
"""
from __future__ import annotations

import time

from geometry_msgs.msg import PoseStamped
from prevla_interfaces.msg import ActionChunk as ActionChunkMsg
from prevla_interfaces.msg import EpisodeStatus, SimState
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from prevla_ros import conversions as conv
from prevla_ros.nodes.diagnostics import OK, Diagnostics, guarded
from prevla_ros.nodes.params import (LATCHED_QOS, STATUS_QOS, STREAM_QOS, declare_config,
                                      on_config_change)
from prevla_ros.nodes.process import run_node
from prevla_ros.runtime.chunks import ActionChunkBroker, chunk_problem, hold_chunk
from prevla_ros.runtime import limits
from prevla_ros.runtime.configs import SimNodeConfig
from prevla_ros.runtime.types import ACTION_DIM
from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig, num_init_states

TASK_FIELDS = ("suite", "task_id", "init_state", "image_size", "max_steps")


def env_config(config: SimNodeConfig) -> LiberoEnvConfig:
    return LiberoEnvConfig(suite=config.suite, task_id=config.task_id,
                           init_state=config.init_state, image_size=config.image_size,
                           max_steps=config.max_steps)


class SimNode(Node):
    """Steps a LIBERO environment with the action chunks it receives."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_node", **kwargs)
        self.config = declare_config(self, SimNodeConfig)
        self.health, self.guard = guarded(self, self.config)
        self.env = LiberoEnv(env_config(self.config))  # ValueError names a bad task field
        self.broker = ActionChunkBroker(self.config.execute_steps)
        self.episode = 0
        self._init_state = self.config.init_state
        self._awaiting: int | None = None  # stamp of the observation awaiting a chunk
        self._obs_time = 0.0
        self._pending_config: SimNodeConfig | None = None
        self._finished = False
        self._stats = {"episodes": 0, "successes": 0, "invalid_chunks": 0, "stale_chunks": 0,
                       "timeouts_republished": 0}
        self._image_pubs = {c: self.create_publisher(Image, f"{c}/image_raw", STREAM_QOS)
                            for c in ("agentview", "wrist")}
        self._joint_pub = self.create_publisher(JointState, "joint_states", STREAM_QOS)
        self._eef_pub = self.create_publisher(PoseStamped, "eef_pose", STREAM_QOS)
        self._state_pub = self.create_publisher(SimState, "sim_state", STREAM_QOS)
        self._instruction_pub = self.create_publisher(String, "instruction", LATCHED_QOS)
        self._status_pub = self.create_publisher(EpisodeStatus, "episode_status", STATUS_QOS)
        self.create_subscription(ActionChunkMsg, "action_chunk", self._on_chunk, STREAM_QOS)
        on_config_change(self, lambda: self._pending_config or self.config, self._on_new_config)
        rate = self.config.control_rate_hz
        if rate > 0:
            self.create_timer(1.0 / rate, self._tick)
        self.create_timer(0.5, self._watchdog)
        self.diagnostics = Diagnostics(self, self._diagnostics, self.health, self.guard)
        self.diagnostics.watch("action_chunk")  # anyone on the domain could move the robot
        self._start_timer = self.create_timer(self.config.start_delay_s, self._first_episode)

    # --- episodes -------------------------------------------------------------------------
    def _first_episode(self) -> None:
        self._start_timer.cancel()
        self._start_episode()

    def _start_episode(self) -> None:
        if self._pending_config is not None:
            self._switch_task(self._pending_config)
        self.episode += 1
        self.broker.clear()
        self.env.reset(self._init_state)
        self._instruction_pub.publish(String(data=self.env.instruction))
        self.get_logger().info(f"episode {self.episode}: {self.config.suite} task "
                               f"{self.config.task_id} init {self._init_state}: "
                               f"'{self.env.instruction}'")
        self._publish_observation()

    def _switch_task(self, config: SimNodeConfig) -> None:
        new_env = LiberoEnv(env_config(config))  # built before the old one goes
        self.env.close()
        self.env, self.config, self._pending_config = new_env, config, None
        self._init_state = config.init_state

    def _finish_episode(self, success: bool, state: str, detail: str = "") -> None:
        self._awaiting = None
        self.broker.clear()
        self._stats["episodes"] += 1
        self._stats["successes"] += int(success)
        self._publish_status(state, done=True, success=success, detail=detail)
        self.get_logger().info(f"episode {self.episode} {state} after {self.env.step_count} "
                               f"steps")
        more = self.config.episodes == 0 or self.episode < self.config.episodes
        if more or self._pending_config is not None:
            self._init_state = (self._init_state + 1) % num_init_states(self.config.suite,
                                                                         self.config.task_id)
            self._start_episode()
        else:
            self._finished = True

    def _on_new_config(self, old: SimNodeConfig, new: SimNodeConfig) -> str | None:
        if any(getattr(old, f) != getattr(new, f) for f in TASK_FIELDS):
            try:
                env_config(new)  # validates suite / task id / init state before accepting
            except ValueError as exc:
                return f"{exc} (still running {old.suite} task {old.task_id})"
            self._pending_config = new  # applied at the start of the next episode
            if self._finished:
                self._finished = False
                self.episode = 0
                self._start_episode()
            return None
        self.config = new
        return None

    # --- observation / execution ----------------------------------------------------------
    def _publish_observation(self) -> None:
        stamp = self.get_clock().now().nanoseconds
        self._publish_status("running")  # first: consumers learn the task before they act
        obs = self.env.observe(stamp)
        for camera, pub in self._image_pubs.items():
            if camera in obs.images:
                pub.publish(conv.image_to_msg(obs.images[camera], stamp, f"{camera}_camera"))
        self._joint_pub.publish(conv.joint_state_to_msg(obs.joint_positions, obs.gripper_qpos,
                                                        stamp))
        self._eef_pub.publish(conv.eef_to_msg(obs.eef_pos, obs.eef_quat_xyzw, stamp))
        if self.config.publish_privileged and obs.objects is not None:
            self._state_pub.publish(conv.sim_state_to_msg(obs.objects, stamp))
        self._awaiting, self._obs_time = stamp, time.monotonic()

    def _on_chunk(self, msg: ActionChunkMsg) -> None:
        if not self.guard.admit("action_chunk", msg, limits.chunk_problem):
            return  # over a limit: dropped before it is read (counted, logged)
        stamp = conv.from_time(msg.header.stamp)
        if self._awaiting is None or stamp != self._awaiting:
            self._stats["stale_chunks"] += 1
            self.get_logger().warning(f"ignoring chunk for stamp {stamp}: not the observation "
                                      f"awaiting an answer ({self._awaiting})",
                                      throttle_duration_sec=limits.LOG_EVERY_S)
            return
        try:
            chunk = conv.msg_to_chunk(msg, expected_dim=ACTION_DIM)
            problem = chunk_problem(chunk.actions, ACTION_DIM, self.config.max_abs_action)
            if problem:
                raise ValueError(problem)
        except ValueError as exc:
            self._stats["invalid_chunks"] += 1
            self.health.error(f"invalid chunk from '{msg.source}': {exc}; holding")
            chunk = hold_chunk(self.config.hold_steps, self.broker.last_gripper, stamp)
        self._awaiting = None
        self.broker.load(chunk)
        if self.config.control_rate_hz == 0:
            while self.broker.remaining and self._step():
                pass

    def _tick(self) -> None:
        if self.broker.remaining:
            self._step()

    def _step(self) -> bool:
        """Execute one action; return False when the chunk or the episode is over."""
        action = self.broker.next_action()
        try:
            done, success = self.env.step(action)
        except Exception as exc:  # a simulator fault ends the episode, not the node
            self.health.error(f"simulator step failed: {exc}")
            self._finish_episode(False, "error", str(exc))
            return False
        if done or success:
            self._finish_episode(success, "success" if success else "timeout")
            return False
        if self.broker.remaining == 0:
            self._publish_observation()
            return False
        return True

    def _watchdog(self) -> None:
        if self._awaiting is not None and (
                time.monotonic() - self._obs_time > self.config.chunk_timeout_s):
            self._stats["timeouts_republished"] += 1
            self.get_logger().warning(f"no action chunk for {self.config.chunk_timeout_s:.1f} s;"
                                      " re-publishing the observation under a new stamp")
            self._publish_observation()

    # --- status ---------------------------------------------------------------------------
    def _publish_status(self, state: str, done: bool = False, success: bool = False,
                        detail: str = "") -> None:
        msg = EpisodeStatus(suite=self.config.suite, task_id=self.config.task_id,
                            init_state=self._init_state, episode=self.episode,
                            step=self.env.step_count, max_steps=self.env.max_steps,
                            instruction=self.env.instruction, state=state, done=done,
                            success=success, detail=detail)
        msg.header = conv.header(self.get_clock().now().nanoseconds)
        self._status_pub.publish(msg)

    def _diagnostics(self):
        values = dict(self._stats, episode=self.episode, step=self.env.step_count)
        return OK, "all episodes finished" if self._finished else "running", values

    def destroy_node(self) -> None:
        env = getattr(self, "env", None)  # None: stopped while the environment was being built
        if env is not None:
            env.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
