"""Labelling candidates by branching in the real simulator, with the zoo VLA (~40 s).

One short rollout (16 control steps = 2 decisions of 5 candidates each): the schema, the file
round trip, and that a branch's recorded outcome is exactly what executing that candidate from
the same state gives again (branch-and-restore leaves no trace on the rollout).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero.libero")

from prevla_models import zoo  # noqa: E402
from prevla_models.vla_policy import VLAPolicy  # noqa: E402
from prevla_sim.libero_env import LiberoEnv, LiberoEnvConfig  # noqa: E402
from prevla_sim.outcomes import OUTCOME_FIELDS, STATE_DIM, WorldProbe, execute_and_measure  # noqa: E402
from prevla_training.candidates import LabelConfig, label_episode, write_episode  # noqa: E402
from prevla_training.critic import load_candidates  # noqa: E402

pytestmark = [pytest.mark.libero, pytest.mark.usefixtures("torch_one_thread")]


def test_label_episode_branches_exactly_and_round_trips(tmp_path):
    cfg = LabelConfig(k_policy=3, perturbed=2, first_init_state=12)
    env = LiberoEnv(LiberoEnvConfig(suite="libero_spatial", task_id=0, init_state=12, max_steps=16))
    try:
        probe = WorldProbe(env)
        policy = VLAPolicy.from_checkpoint(zoo.resolve("", "vla"), seed=3)
        ep = label_episode(env, probe, policy, 12, cfg, np.random.default_rng(0))
        a = ep["arrays"]
        assert env.step_count == 16 and ep["attrs"]["length"] == 16  # candidate 0 really ran, twice
        assert a["actions"].shape == (2, 5, 8, 7) and a["source"].tolist() == [0, 0, 0, 1, 2]
        assert a["images"].shape == (2, 2, 128, 128, 3) and a["state"].shape == (2, STATE_DIM)
        assert a["next_state"].shape == (2, 5, STATE_DIM) and a["step"].tolist() == [0, 8]
        for f in OUTCOME_FIELDS:
            assert a[f"outcome/{f}"].shape == (2, 5)
        # the candidates differ, and so do the states they lead to
        assert np.abs(a["next_state"][0, 1] - a["next_state"][0, 2]).max() > 1e-4
        # the on-policy rollout went on from candidate 0's end state
        np.testing.assert_allclose(a["state"][1], a["next_state"][0, 0], atol=1e-6)
        # replay branch 3 (motion noise) from the same start: identical outcome and end state
        env.reset(12)
        probe.remember_rest()
        again = execute_and_measure(env, probe, a["actions"][0, 3], cfg.gamma)
        for f in OUTCOME_FIELDS:
            assert again[f] == pytest.approx(float(a[f"outcome/{f}"][0, 3]), abs=1e-6), f
        # robot and the task's objects (fixtures are static bodies that LIBERO re-places on a
        # hard reset, so their poses are not part of the replayable state)
        np.testing.assert_allclose(probe.state_features()[:30], a["next_state"][0, 3, :30], atol=1e-6)
    finally:
        env.close()
    out = tmp_path / "task00"
    out.mkdir()
    write_episode(out / "init12.hdf5", ep, dict(suite="libero_spatial", task_id=0, gamma=cfg.gamma))
    data = load_candidates(tmp_path)
    assert len(data) == 2 and data.instructions[0] == env.instruction and data.max_steps == 220
    np.testing.assert_array_equal(data.actions, a["actions"])
    (out / "init13.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="init13.hdf5"):
        load_candidates(tmp_path)
