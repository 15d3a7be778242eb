"""Node configs: every field documented, defaults valid, every bad value named in its error."""
from __future__ import annotations

import math

import pytest

from prevla_ros.runtime.configs import (NODE_CONFIGS, POLICIES, SUITES, PolicyNodeConfig,
                                        SimNodeConfig, VerifierNodeConfig, WorldModelNodeConfig,
                                        config_help)
from prevla_ros.runtime.settings import build, flatten, settings

# Every setting of a node (composed sections flattened: the ROS parameters).
ALL_FIELDS = [(cls, s) for cls in NODE_CONFIGS.values() for s in settings(cls).values()]

BAD_VALUES = [
    (SimNodeConfig, "suite", "libero_100"),
    (SimNodeConfig, "task_id", -1),
    (SimNodeConfig, "init_state", -1),
    (SimNodeConfig, "episodes", -1),
    (SimNodeConfig, "image_size", 15),
    (SimNodeConfig, "image_size", 1025),
    (SimNodeConfig, "max_steps", -1),
    (SimNodeConfig, "control_rate_hz", -0.5),
    (SimNodeConfig, "control_rate_hz", math.nan),
    (SimNodeConfig, "execute_steps", -1),
    (SimNodeConfig, "hold_steps", 0),
    (SimNodeConfig, "max_abs_action", 0.0),
    (SimNodeConfig, "chunk_timeout_s", 0.0),
    (SimNodeConfig, "start_delay_s", -1.0),
    (PolicyNodeConfig, "policy", "openvla"),
    (PolicyNodeConfig, "remote_url", "http://host:8000"),
    (PolicyNodeConfig, "remote_timeout_s", 0.0),
    (PolicyNodeConfig, "num_candidates", 0),
    (PolicyNodeConfig, "num_candidates", 257),
    (PolicyNodeConfig, "horizon", 0),
    (PolicyNodeConfig, "horizon", 257),
    (PolicyNodeConfig, "noise_std", -0.01),
    (PolicyNodeConfig, "noise_std", math.nan),
    (PolicyNodeConfig, "temperature", -1.0),
    (PolicyNodeConfig, "image_size", -1),
    (PolicyNodeConfig, "backend", "tensorflow"),
    (PolicyNodeConfig, "device", "gpu"),
    (VerifierNodeConfig, "verifier", "oracle"),
    (VerifierNodeConfig, "threshold", 1.0),
    (VerifierNodeConfig, "threshold", -0.1),
    (VerifierNodeConfig, "threshold", math.nan),
    (VerifierNodeConfig, "mode", "dream"),
    (VerifierNodeConfig, "action_dim", 0),
    (VerifierNodeConfig, "max_abs_action", -1.0),
    (VerifierNodeConfig, "max_abs_action", math.nan),
    (VerifierNodeConfig, "hold_horizon", 0),
    (VerifierNodeConfig, "resample_timeout_s", 0.0),
    (VerifierNodeConfig, "resample_timeout_s", math.nan),
    (VerifierNodeConfig, "max_rounds", 0),
    (VerifierNodeConfig, "max_samples", 0),
    (VerifierNodeConfig, "max_ms", -1.0),
    (VerifierNodeConfig, "max_ms", math.nan),
    (VerifierNodeConfig, "temperature_step", -0.5),
    (VerifierNodeConfig, "fallback_min_p_safe", 1.5),
    (VerifierNodeConfig, "fallback_min_p_safe", math.nan),
    (VerifierNodeConfig, "overlap", "yes"),
    (VerifierNodeConfig, "ranking", "best"),
    (VerifierNodeConfig, "advantage_margin", -1.0),
    (VerifierNodeConfig, "backend", "trt"),
    (VerifierNodeConfig, "device", "cuda:x"),
    (VerifierNodeConfig, "imagine_threshold", 1.0),
    (VerifierNodeConfig, "imagine_threshold", math.nan),
    (VerifierNodeConfig, "imagine_max_candidates", 0),
    (WorldModelNodeConfig, "device", "gpu"),
    (WorldModelNodeConfig, "source", "verdict"),
    (WorldModelNodeConfig, "frames_per_chunk", 0),
    (WorldModelNodeConfig, "max_candidates", 0),
    (WorldModelNodeConfig, "max_candidates", 65),
    (WorldModelNodeConfig, "max_rate_hz", -1.0),
    (WorldModelNodeConfig, "max_rate_hz", math.nan),
    (PolicyNodeConfig, "allow_unverified_models", "yes"),
    (VerifierNodeConfig, "allow_unverified_models", 1),
    (WorldModelNodeConfig, "allow_unverified_models", "true"),
]
# The input limits and the diagnostics window, in every node that has them.
_SHARED_BAD = [("limit_k", 0), ("limit_chunk_length", 0), ("limit_image_side", 0),
               ("limit_instruction_chars", 0), ("limit_rate_hz", -1.0),
               ("limit_rate_hz", math.nan), ("max_future_stamp_s", -1.0),
               ("max_future_stamp_s", math.inf), ("stamp_jump_back_s", 0.0),
               ("diagnostics_recovery_s", 0.0), ("diagnostics_recovery_s", math.nan)]
BAD_VALUES += [(cls, name, value) for cls in NODE_CONFIGS.values() for name, value in _SHARED_BAD
               if name in settings(cls)]
BAD_VALUES.append((PolicyNodeConfig, "num_candidates", 65))  # above limit_k (64 by default)


@pytest.mark.parametrize("cls, f", ALL_FIELDS, ids=lambda x: getattr(x, "__name__",
                                                                        getattr(x, "name", x)))
def test_every_field_has_help(cls, f):
    assert isinstance(f.help, str) and f.help.strip()


@pytest.mark.parametrize("cls", list(NODE_CONFIGS.values()), ids=list(NODE_CONFIGS))
def test_defaults_are_valid_and_typed(cls):
    config = flatten(cls())
    for f in settings(cls).values():
        # Exact type: a ROS parameter's type comes from its default (10 vs 10.0 matters).
        assert type(config[f.name]) is f.type, f.name
    assert config_help(cls) == {f.name: (config[f.name], f.help) for f in settings(cls).values()}


@pytest.mark.parametrize("cls, name, value", BAD_VALUES,
                         ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in BAD_VALUES])
def test_bad_value_names_the_field(cls, name, value):
    with pytest.raises(ValueError) as err:
        build(cls, {name: value})
    assert f"{cls.__name__}.{name}:" in str(err.value)
    assert repr(value) in str(err.value) or str(value) in str(err.value)


def test_every_validated_field_is_covered():
    # Fields without a range to check: free strings and booleans, and float fields whose
    # every value is meaningful. Everything else must appear in BAD_VALUES above.
    unchecked = {("SimNodeConfig", "publish_privileged"), ("PolicyNodeConfig", "seed"),
                 ("VerifierNodeConfig", "marker_frame"), ("VerifierNodeConfig", "resample"),
                 ("PolicyNodeConfig", "checkpoint"),  # resolved (and sha256-checked) at load
                 ("VerifierNodeConfig", "checkpoint"), ("WorldModelNodeConfig", "checkpoint"),
                 ("WorldModelNodeConfig", "frame_id"), ("WorldModelNodeConfig", "marker_frame")}
    covered = {(c.__name__, n) for c, n, _ in BAD_VALUES}
    every = {(cls.__name__, f.name) for cls, f in ALL_FIELDS}
    assert every - unchecked == covered


def test_the_learned_vla_from_the_zoo_is_the_default_policy():
    cfg = PolicyNodeConfig()
    assert (cfg.policy, cfg.checkpoint) == ("vla", "")  # "" = the zoo's default VLA


def test_the_learned_verifier_from_the_zoo_is_the_default_verifier():
    cfg = flatten(VerifierNodeConfig())
    assert (cfg["verifier"], cfg["checkpoint"], cfg["threshold"]) == ("model", "", 0.0)
    assert build(VerifierNodeConfig, {"threshold": 0.7}).scheduler.threshold == 0.7


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_is_accepted(suite):
    assert SimNodeConfig(suite=suite).suite == suite


def test_edge_values_are_accepted():
    SimNodeConfig(image_size=16, episodes=0, max_steps=0, control_rate_hz=0.0,
                  execute_steps=0, start_delay_s=0.0)
    SimNodeConfig(image_size=1024)
    build(PolicyNodeConfig, dict(policy=POLICIES[0], num_candidates=256, limit_k=256, horizon=1,
                                 noise_std=0.0, temperature=0.0, image_size=0))
    build(VerifierNodeConfig, dict(mode="imagine", action_dim=1, hold_horizon=1))


def test_node_configs_keys_are_node_names():
    assert set(NODE_CONFIGS) == {"sim_node", "policy_node", "verifier_node", "world_model_node"}
    assert NODE_CONFIGS["verifier_node"] is VerifierNodeConfig


def test_unverified_models_are_refused_by_default_in_every_node_that_loads_one():
    for cls in (PolicyNodeConfig, VerifierNodeConfig, WorldModelNodeConfig):
        assert settings(cls)["allow_unverified_models"].default is False, cls.__name__
        assert not settings(cls)["allow_unverified_models"].runtime  # startup-only
        assert build(cls, {"allow_unverified_models": True}).artifacts.allow_unverified_models
