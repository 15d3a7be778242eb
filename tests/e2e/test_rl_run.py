"""D-VLA end to end on a real local Ray and real LIBERO (short episodes, tiny batches):
``prevla rl`` trains asynchronously and in lock-step, writes its metrics and a checkpoint the
runtime can serve, resumes exactly where it stopped, and rides through a killed runner."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("libero.libero")
ray = pytest.importorskip("ray")

from prevla_models.vla import load_checkpoint  # noqa: E402
from prevla_training.rl.config import RLConfig  # noqa: E402
from prevla_training.rl.driver import Run, RunFailed, main, start_ray  # noqa: E402

pytestmark = pytest.mark.libero

TINY = ["--tasks", "0", "--runners", "1", "--envs-per-runner", "2", "--max-steps", "16",
        "--batch-size", "4", "--minibatch", "4", "--epochs", "1", "--runner-cpus", "1",
        "--server-cpus", "0.5", "--learner-cpus", "0.5", "--checkpoint-every", "1"]


@pytest.fixture
def ray_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_rl_trains_writes_and_resumes(ray_env, tmp_path, mode):
    out = tmp_path / "run"
    assert main([*TINY, "--mode", mode, "--steps", "2", "--out-dir", str(out)]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in lines] == [1, 2]
    assert all(r["decisions"] > 0 and r["env_steps"] > 0 for r in lines)
    assert lines[-1]["dropped_stale"] >= 0 and "approx_kl" in lines[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode and summary["env_steps"] > 0 and summary["runner_restarts"] == 0
    vla, extra = load_checkpoint(str(out / "last.pt"))  # a plain VLA checkpoint: the runtime serves it
    assert extra["rl_version"] == 2 and "noise_rho" in extra["rl"]
    # --resume continues from version 2 to 3 (one more update), nothing rewritten
    assert main([*TINY, "--mode", mode, "--steps", "3", "--resume", "--out-dir", str(out)]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in lines] == [1, 2, 3]
    assert load_checkpoint(str(out / "last.pt"))[1]["rl_version"] == 3


def test_a_killed_runner_is_replaced_and_the_run_goes_on(ray_env, tmp_path):
    cfg = RLConfig(tasks="0", runners=1, envs_per_runner=1, max_steps=16, batch_size=2, steps=3,
                   runner_cpus=1, server_cpus=0.5, learner_cpus=0.5, out_dir=str(tmp_path / "run"))
    start_ray("")
    run = Run(cfg)
    first = run.runners[0]
    refs = {first.run.remote(0): 0}
    assert ray.get(run.learner.update.remote())["version"] == 1
    ray.kill(first, no_restart=True)
    run._replace_dead(refs)  # noqa: SLF001 - the driver's own recovery step, called directly
    for _ in range(20):
        if run.restarts:
            break
        ray.wait(list(refs), timeout=1.0)
        run._replace_dead(refs)
    assert run.restarts == 1 and run.runners[0] is not first
    assert ray.get(run.learner.update.remote())["version"] == 2  # fed by the new runner
    for r in run.runners:
        r.stop.remote()


def test_a_dead_inference_server_stops_the_run_with_one_clear_error(ray_env, tmp_path):
    cfg = RLConfig(tasks="0", runners=1, envs_per_runner=1, max_steps=16, batch_size=2, steps=50,
                   runner_cpus=1, server_cpus=0.5, learner_cpus=0.5, out_dir=str(tmp_path / "run"))
    start_ray("")
    run = Run(cfg)
    ray.kill(run.servers[0], no_restart=True)
    with pytest.raises(RunFailed, match="InferenceServer"):
        run.train()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_rloo_groups_episodes_of_one_init_state(ray_env, tmp_path, mode):
    """Each environment replays its init state group_size times; the learner completes the groups
    (16-step episodes all fail, so every group is skipped as signal-free) and still updates."""
    out = tmp_path / "run"
    assert main([*TINY, "--mode", mode, "--steps", "2", "--advantage", "rloo", "--group-size", "2",
                 "--out-dir", str(out)]) == 0
    line = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert line["version"] == 2 and line["groups"] >= 1  # sync: a group spans two collection rounds
    assert line["groups_skipped"] == line["groups"] and line["decisions"] == 0


def test_critic_only_leaves_the_policy_bit_for_bit(ray_env, tmp_path):
    """Policy evaluation: the run trains the critic and publishes the loaded VLA unchanged."""
    import math

    import torch

    from prevla_models.zoo import resolve

    out = tmp_path / "run"
    assert main([*TINY, "--steps", "1", "--critic-only", "--out-dir", str(out)]) == 0
    line = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert line["decisions"] > 0 and line["value_loss"] > 0 and "approx_kl" not in line
    trained, extra = load_checkpoint(str(out / "last.pt"))
    zoo, _ = load_checkpoint(resolve("zoo:vla_libero_spatial", "vla"))
    got, want = trained.state_dict(), zoo.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    flow = RLConfig().flow  # the step noise was not trained either: still at its initial sigma
    u = (flow.sigma_init - flow.sigma_min) / (flow.sigma_max - flow.sigma_min)
    assert torch.equal(extra["rl"]["noise_rho"], torch.full_like(extra["rl"]["noise_rho"], math.log(u / (1 - u))))
    assert "value_head" in extra["rl"]
