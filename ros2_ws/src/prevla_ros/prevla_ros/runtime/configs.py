"""One config dataclass per node (ROS-free). Every field is a declared ROS parameter of its
node with the same name, default and description (``metadata["help"]``); ``__post_init__``
rejects bad values with a ``ValueError`` naming the field, so a node fails at startup.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from prevla_ros.runtime.engines.loader import BACKENDS, DEVICES
from prevla_ros.runtime.scheduler import MODES, RANKINGS, VERIFIERS

WM_SOURCES = ("approved", "candidates", "imagine_candidates")
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
POLICIES = ("scripted_expert", "vla", "remote")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


def _check(ok: bool, cls: str, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{cls}.{name}: {message}")


def _model_help(kind: str, when: str, unusable: str) -> str:
    return (f"{kind} model ({when}): a file (.pt, .onnx, .engine), zoo:NAME from "
            f"models/zoo/manifest.yaml, or empty for the zoo's default {kind} (sha256-checked); "
            f"a missing or corrupt file at startup is logged and {unusable}. Changing checkpoint, "
            "backend or device at run time hot-swaps the model (reverted if it fails)")


BACKEND_HELP = ("runtime backend of the model: " + ", ".join(BACKENDS) + "; the fallback chain "
                "tensorrt -> onnxruntime -> torch starts at the one named (auto = at the top), "
                "and a backend that cannot run here logs why and the next is tried")
DEVICE_HELP = ("device of the model: auto (cuda when a GPU is visible, else cpu), cpu, cuda or "
               "cuda:N")


def _check_engine(config, n: str) -> None:
    """The ``backend`` and ``device`` fields shared by the nodes that run a model."""
    _check(config.backend in BACKENDS, n, "backend",
           f"must be one of {BACKENDS}, got {config.backend!r}")
    _check(config.device in DEVICES or re.fullmatch(r"cuda:\d+", config.device) is not None, n,
           "device", f"must be one of {DEVICES} or cuda:N, got {config.device!r}")


@dataclass
class SimNodeConfig:
    """Parameters of ``sim_node`` (LIBERO robot simulator)."""

    suite: str = _help("LIBERO suite: " + ", ".join(SUITES), "libero_spatial")
    task_id: int = _help("task index within the suite", 0)
    init_state: int = _help("index of LIBERO's official init state for the first episode", 0)
    episodes: int = _help("episodes to run (init states init_state, init_state+1, ...); "
                          "0 runs forever", 1)
    image_size: int = _help("square camera resolution in pixels", 128)
    max_steps: int = _help("control steps before an episode times out; 0 = suite default", 0)
    control_rate_hz: float = _help("control steps per second; 0 runs as fast as possible", 20.0)
    execute_steps: int = _help("actions executed from each chunk before the next decision; "
                               "0 = the whole chunk", 0)
    hold_steps: int = _help("zero-motion steps executed when an invalid chunk arrives", 1)
    max_abs_action: float = _help("chunks with any absolute action value above this are "
                                  "invalid (the controller clips to 1; far more is a bug)", 10.0)
    chunk_timeout_s: float = _help("seconds without a chunk before the observation is "
                                   "re-published under a new stamp (lost message / dead peer)",
                                   10.0)
    publish_privileged: bool = _help("publish object poses on sim_state (needed by the "
                                     "scripted expert; a real robot has none)", True)
    start_delay_s: float = _help("seconds to wait after startup before the first observation "
                                 "(lets subscribers connect)", 0.5)

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check(self.suite in SUITES, n, "suite", f"must be one of {SUITES}, got {self.suite!r}")
        _check(self.task_id >= 0, n, "task_id", f"must be >= 0, got {self.task_id}")
        _check(self.init_state >= 0, n, "init_state", f"must be >= 0, got {self.init_state}")
        _check(self.episodes >= 0, n, "episodes", f"must be >= 0, got {self.episodes}")
        _check(16 <= self.image_size <= 1024, n, "image_size",
               f"must be in [16, 1024], got {self.image_size}")
        _check(self.max_steps >= 0, n, "max_steps", f"must be >= 0, got {self.max_steps}")
        _check(self.control_rate_hz >= 0, n, "control_rate_hz",
               f"must be >= 0, got {self.control_rate_hz}")
        _check(self.execute_steps >= 0, n, "execute_steps",
               f"must be >= 0, got {self.execute_steps}")
        _check(self.hold_steps >= 1, n, "hold_steps", f"must be >= 1, got {self.hold_steps}")
        _check(self.max_abs_action > 0, n, "max_abs_action",
               f"must be > 0, got {self.max_abs_action}")
        _check(self.chunk_timeout_s > 0, n, "chunk_timeout_s",
               f"must be > 0, got {self.chunk_timeout_s}")
        _check(self.start_delay_s >= 0, n, "start_delay_s",
               f"must be >= 0, got {self.start_delay_s}")


@dataclass
class PolicyNodeConfig:
    """Parameters of ``policy_node`` (samples candidate chunks from observations)."""

    policy: str = _help("policy to run: vla (the learned VLA in `checkpoint`), "
                        "scripted_expert (privileged scripted LIBERO expert + Gaussian noise) "
                        "or remote (a policy server at `remote_url`, openpi websocket protocol)",
                        "vla")
    checkpoint: str = _help(_model_help("VLA", "policy vla", "answered with hold chunks"), "")
    backend: str = _help(BACKEND_HELP + " (policy vla)", "auto")
    device: str = _help(DEVICE_HELP + " (policy vla)", "auto")
    remote_url: str = _help("policy server URL (policy remote); an unreachable server is "
                            "logged and answered with hold chunks", "ws://127.0.0.1:8000")
    remote_timeout_s: float = _help("longest wait for a policy server to connect or reply",
                                    5.0)
    num_candidates: int = _help("K, candidate chunks sampled per observation", 4)
    horizon: int = _help("H, actions per chunk", 8)
    noise_std: float = _help("std of the Gaussian noise added to the expert's position and "
                             "rotation actions (candidate diversity)", 0.05)
    temperature: float = _help("sampling temperature of the first round (scales noise)", 1.0)
    seed: int = _help("random seed of the sampler", 0)
    image_size: int = _help("expected camera resolution; other sizes are rejected "
                            "(0 accepts any)", 128)

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check(self.policy in POLICIES, n, "policy",
               f"must be one of {POLICIES}, got {self.policy!r}")
        _check_engine(self, n)
        _check(self.remote_url.startswith(("ws://", "wss://")), n, "remote_url",
               f"must start with ws:// or wss://, got {self.remote_url!r}")
        _check(self.remote_timeout_s > 0, n, "remote_timeout_s",
               f"must be > 0, got {self.remote_timeout_s}")
        _check(1 <= self.num_candidates <= 256, n, "num_candidates",
               f"must be in [1, 256], got {self.num_candidates}")
        _check(1 <= self.horizon <= 256, n, "horizon", f"must be in [1, 256], got {self.horizon}")
        _check(self.noise_std >= 0, n, "noise_std", f"must be >= 0, got {self.noise_std}")
        _check(self.temperature >= 0, n, "temperature",
               f"must be >= 0, got {self.temperature}")
        _check(self.image_size >= 0, n, "image_size", f"must be >= 0, got {self.image_size}")


@dataclass
class VerifierNodeConfig:
    """Parameters of ``verifier_node`` (scores candidates, publishes the approved chunk)."""

    verifier: str = _help("verifier: " + ", ".join(VERIFIERS) + " (model = the learned "
                          "Pre-VLA verifier in `checkpoint`: the safe candidate with the highest "
                          "advantage; passthrough = accept the first valid candidate: the "
                          "policy-alone baseline)", "model")
    checkpoint: str = _help(_model_help("verifier", "verifier model", "every decision is a hold"), "")
    backend: str = _help(BACKEND_HELP + " (verifier model)", "auto")
    device: str = _help(DEVICE_HELP + " (verifier model)", "auto")
    threshold: float = _help("accept threshold tau on P(safe) (verifier model); 0 = the "
                             "checkpoint's calibrated threshold, else in (0, 1)", 0.0)
    mode: str = _help("execute: gate before the robot moves; imagine: gate before the "
                      "world model rolls a chunk out", "execute")
    action_dim: int = _help("action dimension the robot accepts", 7)
    max_abs_action: float = _help("reject candidates with any absolute action value above "
                                  "this", 10.0)
    hold_horizon: int = _help("length of the hold chunk published when no candidate is "
                              "usable", 8)
    marker_frame: str = _help("frame of the approved-path markers", "world")
    ranking: str = _help("verifier model: among the candidates that pass tau, advantage = the "
                         "highest predicted advantage; policy_order = the policy's first (the "
                         "verifier as a pure safety gate)", "policy_order")
    advantage_margin: float = _help("ranking advantage: the best candidate replaces the "
                                    "policy's first passing one only if its predicted advantage "
                                    "is higher by at least this (0 = always the best)", 0.0)
    resample: bool = _help("verifier model: when no candidate of a set passes tau, ask "
                           "policy_node for more (its sample_candidates service) within "
                           "max_rounds, max_samples and max_ms, then fall back to the safest "
                           "candidate or hold; false: the first set alone decides (a hold "
                           "when none passes)", True)
    resample_timeout_s: float = _help("longest wait for one sample_candidates answer; a late, "
                                      "failed or missing answer ends the resampling with the "
                                      "fallback", 1.0)
    max_rounds: int = _help("sampling rounds per decision, the policy's set included "
                            "(1 = no resampling)", 3)
    max_samples: int = _help("candidates per decision over all rounds", 24)
    max_ms: float = _help("time budget of a decision in ms (0 = none); no round starts after "
                          "it and no answer is awaited past it", 0.0)
    temperature_step: float = _help("each resampling round asks for a temperature this much "
                                    "higher than the set before", 0.0)
    fallback_min_p_safe: float = _help("resample: when the budget is spent (or resampling "
                                       "fails) and nothing passed tau, the safest candidate is executed "
                                       "if its P(safe) is at least this, else the robot holds",
                                       0.5)
    overlap: bool = _help("resample: once a set has been rejected, request the next set "
                          "before scoring the current one (preemptive; an unneeded set is "
                          "dropped)", False)
    imagine_threshold: float = _help("mode imagine: P(safe) a candidate needs to be forwarded "
                                     "to the world model on imagine_candidates; 0 = tau (the "
                                     "threshold in use), else in (0, 1)", 0.0)
    imagine_max_candidates: int = _help("mode imagine: at most this many candidates forwarded "
                                        "per observation, highest predicted advantage first "
                                        "(passthrough: the first valid ones)", 2)

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check(self.verifier in VERIFIERS, n, "verifier",
               f"must be one of {VERIFIERS}, got {self.verifier!r}")
        _check_engine(self, n)
        _check(math.isfinite(self.threshold) and 0.0 <= self.threshold < 1.0, n, "threshold",
               f"must be 0 (calibrated) or in (0, 1), got {self.threshold!r}")
        _check(self.mode in MODES, n, "mode", f"must be one of {MODES}, got {self.mode!r}")
        _check(self.action_dim >= 1, n, "action_dim", f"must be >= 1, got {self.action_dim}")
        _check(self.max_abs_action > 0, n, "max_abs_action",
               f"must be > 0, got {self.max_abs_action}")
        _check(self.hold_horizon >= 1, n, "hold_horizon",
               f"must be >= 1, got {self.hold_horizon}")
        _check(self.ranking in RANKINGS, n, "ranking",
               f"must be one of {RANKINGS}, got {self.ranking!r}")
        _check(math.isfinite(self.advantage_margin) and self.advantage_margin >= 0, n,
               "advantage_margin", f"must be >= 0, got {self.advantage_margin!r}")
        _check(self.resample_timeout_s > 0, n, "resample_timeout_s",
               f"must be > 0, got {self.resample_timeout_s}")
        _check(self.max_rounds >= 1, n, "max_rounds", f"must be >= 1, got {self.max_rounds}")
        _check(self.max_samples >= 1, n, "max_samples", f"must be >= 1, got {self.max_samples}")
        _check(self.max_ms >= 0, n, "max_ms", f"must be >= 0 (0 = no budget), got {self.max_ms}")
        _check(self.temperature_step >= 0, n, "temperature_step",
               f"must be >= 0, got {self.temperature_step}")
        _check(0 <= self.fallback_min_p_safe <= 1, n, "fallback_min_p_safe",
               f"must be in [0, 1], got {self.fallback_min_p_safe}")
        _check(isinstance(self.overlap, bool), n, "overlap",
               f"must be true or false, got {self.overlap!r}")
        _check(math.isfinite(self.imagine_threshold) and 0.0 <= self.imagine_threshold < 1.0,
               n, "imagine_threshold",
               f"must be 0 (tau) or in (0, 1), got {self.imagine_threshold!r}")
        _check(self.imagine_max_candidates >= 1, n, "imagine_max_candidates",
               f"must be >= 1, got {self.imagine_max_candidates}")


@dataclass
class WorldModelNodeConfig:
    """Parameters of ``world_model_node`` (imagines the frames chunks would produce)."""

    checkpoint: str = _help("world model: a .pt file, zoo:NAME from models/zoo/manifest.yaml, "
                            "or empty for the zoo's default world model; a missing or corrupt "
                            "file is logged and the node stays up imagining nothing (an error "
                            "in /diagnostics)", "")
    device: str = _help(DEVICE_HELP, "auto")
    source: str = _help("chunks to imagine: approved (action_chunk, what the verifier approved), "
                        "candidates (every candidate of the policy's set, ungated) or "
                        "imagine_candidates (the set verifier_node forwards in mode imagine)",
                        "approved")
    frames_per_chunk: int = _help("imagined frames per chunk: one every "
                                  "horizon/frames_per_chunk actions (must divide the model's "
                                  "horizon)", 4)
    max_candidates: int = _help("chunks imagined per observation at most (the first ones of "
                                "a set)", 4)
    max_rate_hz: float = _help("observations imagined per second at most; work above this "
                               "rate is dropped and counted as skipped (0 = no limit)", 5.0)
    frame_id: str = _help("frame_id of the imagined images", "agentview_camera")
    marker_frame: str = _help("frame of the imagined-path markers", "world")

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check(self.device in DEVICES or re.fullmatch(r"cuda:\d+", self.device) is not None, n,
               "device", f"must be one of {DEVICES} or cuda:N, got {self.device!r}")
        _check(self.source in WM_SOURCES, n, "source",
               f"must be one of {WM_SOURCES}, got {self.source!r}")
        _check(1 <= self.frames_per_chunk <= 256, n, "frames_per_chunk",
               f"must be in [1, 256], got {self.frames_per_chunk}")
        _check(1 <= self.max_candidates <= 64, n, "max_candidates",
               f"must be in [1, 64], got {self.max_candidates}")
        _check(math.isfinite(self.max_rate_hz) and self.max_rate_hz >= 0, n, "max_rate_hz",
               f"must be >= 0 (0 = no limit), got {self.max_rate_hz}")


NODE_CONFIGS = {"sim_node": SimNodeConfig, "policy_node": PolicyNodeConfig,
                "verifier_node": VerifierNodeConfig, "world_model_node": WorldModelNodeConfig}


def config_help(cls) -> dict[str, tuple[object, str]]:
    """name -> (default, description) for every parameter of a node config."""
    return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}
