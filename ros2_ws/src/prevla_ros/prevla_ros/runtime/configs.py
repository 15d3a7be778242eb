"""One config dataclass per node (ROS-free). Every setting is a declared ROS parameter of its
node with the same name, default and description (:mod:`prevla_ros.runtime.settings`: sections
such as the verifier node's :class:`SchedulerConfig` are flattened; settings not marked
``runtime`` are read-only parameters); ``__post_init__`` rejects bad values with a
``ValueError`` naming the field, so a node fails at startup.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prevla_ros.runtime.controller import ControllerConfig
from prevla_ros.runtime.engines.loader import BACKENDS, DEVICES
from prevla_ros.runtime.health import HealthConfig
from prevla_ros.runtime.limits import InputLimits
from prevla_ros.runtime.scheduler_config import SchedulerConfig
from prevla_ros.runtime.settings import check, section, setting, settings

WM_SOURCES = ("approved", "candidates", "imagine_candidates")
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
POLICIES = ("scripted_expert", "vla", "remote")


def _model_help(kind: str, when: str) -> str:
    return (f"{kind} model ({when}): a file (.pt, .onnx, .engine), zoo:NAME from "
            f"models/zoo/manifest.yaml, or empty for the zoo's default {kind}; any file is "
            "sha256-checked against its record (see allow_unverified_models). A missing, corrupt "
            "or unverified file fails the node's configure transition with one log line: the node "
            "stays up unconfigured and publishes nothing, so the robot holds; set this and "
            "configure again. Changing checkpoint, backend or device while active hot-swaps the "
            "model (reverted if it fails)")


BACKEND_HELP = ("runtime backend of the model: " + ", ".join(BACKENDS) + "; auto walks the "
                "fallback chain tensorrt -> onnxruntime -> torch and logs each backend it skips "
                "and why; a named backend runs the model or the model is unusable (never a "
                "silent switch)")
DEVICE_HELP = ("device of the model: auto (cuda when a GPU is visible, else cpu), cpu, cuda or "
               "cuda:N")


def _limits(takes: str, *, hide: tuple[str, ...] = ()):
    """The node's :class:`InputLimits` section; ``hide``: the bounds of inputs it does not take."""
    return section(InputLimits, f"bounds of the inputs ({takes})", hidden=hide)


def _health():
    return section(HealthConfig, "how /diagnostics recovers after an error")


def _check_device(config, n: str) -> None:
    """The ``device`` field of every node that runs a model."""
    check(config.device in DEVICES or re.fullmatch(r"cuda:\d+", config.device) is not None, n,
          "device", f"must be one of {DEVICES} or cuda:N, got {config.device!r}")


def _check_engine(config, n: str) -> None:
    """The ``backend`` and ``device`` fields of the nodes that run a model on a backend."""
    check(config.backend in BACKENDS, n, "backend",
          f"must be one of {BACKENDS}, got {config.backend!r}")
    _check_device(config, n)


@dataclass
class ArtifactsConfig:
    """Which model files may serve (composed into every node that loads one): a file whose
    sha256 matches no record is refused unless opted in (:mod:`prevla_models.artifacts`)."""

    allow_unverified_models: bool = setting(
        "load a model file even when its sha256 matches no record (the zoo manifest, or the "
        "FILE.sha256 sidecar that prevla export, the zoo tools and training write): missing "
        "or different. false refuses it with one log line naming the file and both digests "
        "(configure fails, the node stays up unconfigured); true loads it and logs that it is "
        "unverified", False)

    def __post_init__(self) -> None:
        check(isinstance(self.allow_unverified_models, bool), type(self).__name__,
              "allow_unverified_models", f"must be true or false, got {self.allow_unverified_models!r}")


@dataclass
class SimNodeConfig:
    """Parameters of ``sim_node`` (LIBERO robot simulator). Task settings changed at run time
    apply from the next episode; the timers' settings are startup-only."""

    suite: str = setting("LIBERO suite: " + ", ".join(SUITES), "libero_spatial", runtime=True)
    task_id: int = setting("task index within the suite", 0, runtime=True)
    init_state: int = setting("index of LIBERO's official init state for the first episode", 0,
                              runtime=True)
    episodes: int = setting("episodes to run (init states init_state, init_state+1, ...); "
                          "0 runs forever", 1, runtime=True)
    image_size: int = setting("square camera resolution in pixels", 128, runtime=True)
    max_steps: int = setting("control steps before an episode times out; 0 = suite default", 0,
                             runtime=True)
    control_rate_hz: float = setting("control steps per second; 0 runs as fast as possible", 20.0)
    execute_steps: int = setting("actions executed from each chunk before the next decision; "
                               "0 = the whole chunk", 0)
    hold_steps: int = setting("zero-motion steps executed when an invalid chunk arrives", 1,
                              runtime=True)
    max_abs_action: float = setting("chunks with any absolute action value above this are "
                                  "invalid (the controller clips to 1; far more is a bug)", 10.0,
                                    runtime=True)
    chunk_timeout_s: float = setting("seconds without a chunk before the observation is "
                                   "re-published under a new stamp (lost message / dead peer)",
                                   10.0, runtime=True)
    publish_privileged: bool = setting("publish object poses on sim_state (needed by the "
                                     "scripted expert; a real robot has none)", True, runtime=True)
    start_delay_s: float = setting("seconds to wait after startup before the first observation "
                                 "(lets subscribers connect)", 0.5)
    limits: InputLimits = _limits("action_chunk", hide=(
        "limit_k", "limit_image_side", "limit_instruction_chars", "max_future_stamp_s",
        "stamp_jump_back_s"))
    health: HealthConfig = _health()

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(self.suite in SUITES, n, "suite", f"must be one of {SUITES}, got {self.suite!r}")
        check(self.task_id >= 0, n, "task_id", f"must be >= 0, got {self.task_id}")
        check(self.init_state >= 0, n, "init_state", f"must be >= 0, got {self.init_state}")
        check(self.episodes >= 0, n, "episodes", f"must be >= 0, got {self.episodes}")
        check(16 <= self.image_size <= 1024, n, "image_size",
               f"must be in [16, 1024], got {self.image_size}")
        check(self.max_steps >= 0, n, "max_steps", f"must be >= 0, got {self.max_steps}")
        check(self.control_rate_hz >= 0, n, "control_rate_hz",
               f"must be >= 0, got {self.control_rate_hz}")
        check(self.execute_steps >= 0, n, "execute_steps",
               f"must be >= 0, got {self.execute_steps}")
        check(self.hold_steps >= 1, n, "hold_steps", f"must be >= 1, got {self.hold_steps}")
        check(self.max_abs_action > 0, n, "max_abs_action",
               f"must be > 0, got {self.max_abs_action}")
        check(self.chunk_timeout_s > 0, n, "chunk_timeout_s",
               f"must be > 0, got {self.chunk_timeout_s}")
        check(self.start_delay_s >= 0, n, "start_delay_s",
               f"must be >= 0, got {self.start_delay_s}")


@dataclass
class PolicyNodeConfig:
    """Parameters of ``policy_node`` (samples candidate chunks from observations)."""

    policy: str = setting("policy to run: vla (the learned VLA in `checkpoint`), "
                        "scripted_expert (privileged scripted LIBERO expert + Gaussian noise) "
                        "or remote (a policy server at `remote_url`, openpi websocket protocol)",
                        "vla")
    checkpoint: str = setting(_model_help("VLA", "policy vla"), "",
                            runtime=True)
    backend: str = setting(BACKEND_HELP + " (policy vla)", "auto", runtime=True)
    device: str = setting(DEVICE_HELP + " (policy vla)", "auto", runtime=True)
    artifacts: ArtifactsConfig = section(ArtifactsConfig, "model file verification (policy vla)")
    remote_url: str = setting("policy server URL (policy remote); an unreachable server is "
                            "logged and answered with hold chunks", "ws://127.0.0.1:8000")
    remote_timeout_s: float = setting("longest wait for a policy server to connect or reply",
                                    5.0)
    num_candidates: int = setting("K, candidate chunks sampled per observation", 4)
    horizon: int = setting("H, actions per chunk", 8)
    noise_std: float = setting("std of the Gaussian noise added to the expert's position and "
                             "rotation actions (candidate diversity)", 0.05)
    temperature: float = setting("sampling temperature of the first round (scales noise)", 1.0)
    seed: int = setting("random seed of the sampler", 0)
    image_size: int = setting("expected camera resolution; other sizes are rejected "
                            "(0 accepts any)", 128)
    limits: InputLimits = _limits("observation parts, instruction, sample_candidates requests",
                                  hide=("limit_chunk_length",))
    health: HealthConfig = _health()

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(self.policy in POLICIES, n, "policy",
               f"must be one of {POLICIES}, got {self.policy!r}")
        _check_engine(self, n)
        check(self.remote_url.startswith(("ws://", "wss://")), n, "remote_url",
               f"must start with ws:// or wss://, got {self.remote_url!r}")
        check(self.remote_timeout_s > 0, n, "remote_timeout_s",
               f"must be > 0, got {self.remote_timeout_s}")
        k_max = min(256, self.limits.limit_k)
        check(1 <= self.num_candidates <= k_max, n, "num_candidates",
               f"must be in [1, {k_max}] (256 and limit_k), got {self.num_candidates}")
        check(1 <= self.horizon <= 256, n, "horizon", f"must be in [1, 256], got {self.horizon}")
        check(self.noise_std >= 0, n, "noise_std", f"must be >= 0, got {self.noise_std}")
        check(self.temperature >= 0, n, "temperature",
               f"must be >= 0, got {self.temperature}")
        check(self.image_size >= 0, n, "image_size", f"must be >= 0, got {self.image_size}")


@dataclass
class VerifierNodeConfig:
    """Parameters of ``verifier_node`` (scores candidates, publishes the approved chunk): its
    own settings plus the decision settings (:class:`SchedulerConfig`, composed whole)."""

    checkpoint: str = setting(_model_help("verifier", "verifier model"),
                            "", runtime=True)
    backend: str = setting(BACKEND_HELP + " (verifier model)", "auto", runtime=True)
    device: str = setting(DEVICE_HELP + " (verifier model)", "auto", runtime=True)
    artifacts: ArtifactsConfig = section(ArtifactsConfig, "model file verification")
    marker_frame: str = setting("frame of the approved-path markers", "world")
    resample: bool = setting("verifier model: when no candidate of a set passes tau, ask "
                           "policy_node for more (its sample_candidates service) within "
                           "max_rounds, max_samples and max_ms, then fall back to the safest "
                           "candidate or hold; false: the first set alone decides (a hold "
                           "when none passes)", True)
    resample_timeout_s: float = setting("longest wait for one sample_candidates answer; a late, "
                                      "failed or missing answer ends the resampling with the "
                                      "fallback", 1.0)
    scheduler: SchedulerConfig = section(SchedulerConfig, "the decision settings",
                                         verifier="model")
    limits: InputLimits = _limits("candidates, observation parts, instruction, "
                                  "sample_candidates answers")
    health: HealthConfig = _health()

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_engine(self, n)
        check(self.resample_timeout_s > 0, n, "resample_timeout_s",
               f"must be > 0, got {self.resample_timeout_s}")


@dataclass
class WorldModelNodeConfig:
    """Parameters of ``world_model_node`` (imagines the frames chunks would produce; started by
    ``ros2 launch ... use_world_model:=true`` or ``prevla up --world-model``)."""

    checkpoint: str = setting("world model: a .pt file, zoo:NAME from models/zoo/manifest.yaml, "
                            "or empty for the zoo's default world model (sha256-checked against "
                            "its record: see allow_unverified_models); a missing, corrupt or "
                            "unverified file fails the configure transition with one log line "
                            "and an error in /diagnostics: the node stays up unconfigured, "
                            "imagining nothing", "")
    device: str = setting(DEVICE_HELP, "auto")
    artifacts: ArtifactsConfig = section(ArtifactsConfig, "model file verification")
    source: str = setting("chunks to imagine: approved (action_chunk, what the verifier approved), "
                        "candidates (every candidate of the policy's set, ungated) or "
                        "imagine_candidates (the set verifier_node forwards in mode imagine)",
                        "approved")
    frames_per_chunk: int = setting("imagined frames per chunk: one every "
                                  "horizon/frames_per_chunk actions (must divide the model's "
                                  "horizon)", 4)
    max_candidates: int = setting("chunks imagined per observation at most (the first ones of "
                                "a set)", 4)
    max_rate_hz: float = setting("observations imagined per second at most; work above this "
                               "rate is dropped and counted as skipped (0 = no limit)", 5.0)
    frame_id: str = setting("frame_id of the imagined images", "agentview_camera")
    marker_frame: str = setting("frame of the imagined-path markers", "world")
    limits: InputLimits = _limits("chunks or candidate sets, observation parts",
                                  hide=("limit_instruction_chars",))
    health: HealthConfig = _health()

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_device(self, n)
        check(self.source in WM_SOURCES, n, "source",
               f"must be one of {WM_SOURCES}, got {self.source!r}")
        check(1 <= self.frames_per_chunk <= 256, n, "frames_per_chunk",
               f"must be in [1, 256], got {self.frames_per_chunk}")
        check(1 <= self.max_candidates <= 64, n, "max_candidates",
               f"must be in [1, 64], got {self.max_candidates}")
        check(math.isfinite(self.max_rate_hz) and self.max_rate_hz >= 0, n, "max_rate_hz",
               f"must be >= 0 (0 = no limit), got {self.max_rate_hz}")


NODE_CONFIGS = {"sim_node": SimNodeConfig, "policy_node": PolicyNodeConfig,
                "verifier_node": VerifierNodeConfig, "world_model_node": WorldModelNodeConfig}


def config_help(cls) -> dict[str, tuple[object, str]]:
    """name -> (default, description) for every parameter of a node config."""
    return {s.name: (s.default, s.help) for s in settings(cls).values()}


# --- real robots: nodes outside the default (simulated) graph -----------------------------
@dataclass
class ControllerAdapterConfig:
    """Parameters of ``controller_adapter_node`` (a real robot: approved chunks become
    Cartesian twist and gripper commands for a ros2_control robot; not in the default launch
    graph, see docs/controller.md)."""

    frame_id: str = setting("frame_id of the published twists: the axes the policy's deltas "
                            "are in (robosuite: the robot base); MoveIt Servo transforms it to "
                            "its planning frame", "base_link")
    gripper_command_size: int = setting("values in each gripper_command (Float64MultiArray, "
                                        "one per joint of the gripper's "
                                        "forward_command_controller), all the same position", 1)
    controller: ControllerConfig = section(ControllerConfig, "rate, scaling, limits, staleness, "
                                           "e-stop bound, gripper positions")
    limits: InputLimits = _limits("action_chunk", hide=(
        "limit_k", "limit_image_side", "limit_instruction_chars"))
    health: HealthConfig = _health()

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(isinstance(self.frame_id, str) and self.frame_id != "", n, "frame_id",
              f"must be a non-empty frame name, got {self.frame_id!r}")
        size = self.gripper_command_size
        check(isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 16, n,
              "gripper_command_size", f"must be in [1, 16], got {size!r}")


#: Nodes for a real robot, started on their own (not by the launch file or `prevla up`): their
#: parameters are documented and listed in the params YAML beside the graph's.
ROBOT_NODE_CONFIGS = {"controller_adapter_node": ControllerAdapterConfig}
