"""The closed-loop evaluator: statistics, config checks, and one real LIBERO run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from prevla_ros.runtime.settings import build
from prevla_ros.runtime.chunks import medoid_index
from prevla_training.eval_report import paired
from prevla_training.evaluate import EvalConfig, evaluate, parse_policy_spec, parse_tasks
from prevla_training.stats import mcnemar_exact_p, paired_comparison, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775),
                                       (10, 10, 0.7225, 1.0)])
def test_wilson_interval_matches_hand_computed(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_mcnemar_and_paired_difference_match_hand_computed():
    # 10 pairs: A alone succeeds in 4, B alone in 1, both in 3, neither in 2.
    a = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0]
    b = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    # exact McNemar: 2 * P(Bin(5, 1/2) <= 1) = 2 * (1 + 5) / 32 = 0.375
    assert mcnemar_exact_p(4, 1) == pytest.approx(0.375)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(6, 0) == pytest.approx(2 / 64)
    r = paired_comparison(a, b, steps_a=[100] * 10, steps_b=[110] * 10)
    # d = (+1 x4, -1 x1, 0 x5): mean 0.3, sd (ddof 1) = sqrt((4*0.49 + 2.89*1 + 5*0.09)/9)
    sd = ((4 * 0.49 + 1.69 + 5 * 0.09) / 9) ** 0.5
    assert r["diff"] == pytest.approx(0.3)
    assert r["diff_ci95"] == pytest.approx([0.3 - 1.96 * sd / 10 ** 0.5, 0.3 + 1.96 * sd / 10 ** 0.5])
    assert (r["a_only"], r["b_only"], r["pairs"], r["steps_diff"]) == (4, 1, 10, -10.0)
    with pytest.raises(ValueError, match="same"):
        paired_comparison([True], [True, False])


def test_paired_matches_episodes_by_task_init_and_cycle():
    def ep(arm, init, cycle, ok):
        return dict(arm=arm, task_id=0, init_state=init, cycle=cycle, success=ok, steps=100)

    eps = [ep("policy", 0, 0, False), ep("policy", 0, 1, True), ep("consensus", 0, 1, True),
           ep("consensus", 0, 0, True), ep("verifier", 0, 0, True), ep("verifier", 0, 1, False)]
    r = paired(eps, ("policy", "consensus", "verifier"))
    assert set(r) == {"consensus vs policy", "verifier vs policy", "verifier vs consensus"}
    assert (r["consensus vs policy"]["a_only"], r["consensus vs policy"]["b_only"]) == (1, 0)
    assert (r["verifier vs policy"]["a_only"], r["verifier vs policy"]["b_only"]) == (1, 1)
    assert (r["verifier vs consensus"]["a_only"], r["verifier vs consensus"]["b_only"]) == (0, 1)


def test_medoid_is_the_candidate_nearest_the_others():
    chunks = np.zeros((5, 2, 7), np.float32)
    for i, v in enumerate([1.0, 0.1, 0.12, 0.2, 0.15]):  # on a line: the medoid is the median
        chunks[i] += v
    assert medoid_index(chunks) == 4
    assert medoid_index(chunks[:1]) == 0
    with pytest.raises(ValueError):
        medoid_index(chunks[:0])


def test_episodes_cycle_init_states_with_new_seeds():
    cfg = EvalConfig(init_start=0, init_count=10, episodes_per_task=20)
    assert [cfg.episode(e, 50) for e in (0, 9, 10, 19)] == [(0, 0), (9, 0), (0, 1), (9, 1)]
    assert EvalConfig(init_start=12).episode(3, 50) == (15, 0)  # init_count 0: every init state


@pytest.mark.parametrize("field,value", [("episodes_per_task", 0), ("num_candidates", 0),
                                         ("arms", ("best",)), ("workers", -1),
                                         ("render", "maybe"), ("temperature", -1.0),
                                         ("videos", "some")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})


@pytest.mark.parametrize("spec", ["vla:", "remote:", "expert", ""])
def test_bad_policy_spec_is_explained(spec):
    with pytest.raises(ValueError, match="scripted_expert"):
        parse_policy_spec(spec)


def test_policy_spec_and_tasks_parse():
    assert parse_policy_spec("vla:/tmp/x.pt") == ("vla", "/tmp/x.pt")
    assert parse_policy_spec("vla") == ("vla", "")  # the zoo's default VLA
    assert parse_policy_spec("vla:zoo:vla_libero_spatial") == ("vla", "zoo:vla_libero_spatial")
    assert parse_policy_spec("remote:ws://h:8000") == ("remote", "ws://h:8000")
    assert parse_tasks("0-2,5") == [0, 1, 2, 5]
    assert parse_tasks("") == []
    with pytest.raises(ValueError, match="tasks"):
        parse_tasks("a-b")


@pytest.mark.libero
def test_scripted_expert_in_process(tmp_path):
    out = tmp_path / "eval.json"
    res = evaluate(EvalConfig(suite="libero_spatial", task_ids=[0], episodes_per_task=1,
                              arms=("policy", "random"), num_candidates=2, noise_std=0.02,
                              workers=0, out=str(out)))
    rows = {r["arm"]: r for r in res["tasks"]}
    assert rows["policy"]["successes"] == 1
    for r in rows.values():
        assert {"ci95", "mean_steps_success", "policy_ms_p50", "policy_ms_p99",
                "decisions_per_episode", "invalid_picks"} <= set(r)
    assert set(res["success_rate"]) == {"policy", "random"}
    assert json.loads(out.read_text())["tasks"][0]["task_id"] == 0
    assert "| 0 | policy |" in out.with_suffix(".md").read_text()
    # A rerun with one more arm runs only that arm: the others come from <out>.jobs/
    more = evaluate(EvalConfig(suite="libero_spatial", task_ids=[0], episodes_per_task=1,
                               arms=("policy", "random", "consensus"), num_candidates=2, noise_std=0.02,
                               workers=0, out=str(out)))
    assert (more["jobs_cached"], more["jobs"]) == (2, 3)
    first = {e["arm"]: e for e in res["episodes"]}
    again = {e["arm"]: e for e in more["episodes"]}
    assert again["policy"] == first["policy"] and again["random"] == first["random"]
    assert "consensus vs policy" in more["paired"]
    # the expert renders nothing by default, so the default --videos failures writes none
    assert not any("video" in e for e in more["episodes"]) and not out.with_suffix(".videos").exists()


@pytest.mark.libero
def test_eval_writes_an_episode_video_per_episode(tmp_path):
    import imageio.v2 as imageio

    out = tmp_path / "eval.json"
    res = evaluate(EvalConfig(suite="libero_spatial", task_ids=[0], episodes_per_task=1, arms=("random",),
                              num_candidates=2, noise_std=0.02, render="on", videos="all", workers=0,
                              out=str(out)))
    [ep] = res["episodes"]
    path = tmp_path / ep["video"]  # relative to the JSON
    assert path.parent == out.with_suffix(".videos") and path.name.startswith("libero_spatial_task00_random_init00")
    if path.suffix == ".mp4":
        reader = imageio.get_reader(path, format="FFMPEG")
        frames = list(reader.iter_data())
        reader.close()
        # one frame per decision, then the end state held for a second (4 fps)
        assert len(frames) == ep["decisions"] + 4 and frames[0].shape[0] == 128
    assert f"[{ep['video']}]({ep['video']})" in out.with_suffix(".md").read_text()
    assert json.loads(out.read_text())["episodes"][0]["video"] == ep["video"]


@pytest.mark.libero
def test_expert_eval_keeps_its_json_fields(tmp_path):
    from prevla_training import expert_eval

    out = tmp_path / "expert.json"
    assert expert_eval.main(["--task-ids", "0", "--episodes-per-task", "1", "--workers", "0",
                             "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert {"suite", "episodes_per_task", "noise_std", "success_rate", "wall_time_s",
            "tasks"} <= set(s)
    t = s["tasks"][0]
    assert {"task_id", "instruction", "episodes", "successes", "success_rate", "mean_steps",
            "mean_steps_success"} <= set(t)
    assert t["successes"] == 1 and s["success_rate"] == 1.0


def test_verifier_arm_needs_a_learned_policy():
    with pytest.raises(ValueError, match="verifier arm"):
        EvalConfig(arms=("verifier",), policy="scripted_expert")
    assert EvalConfig(arms=("policy", "verifier"), policy="vla").arms == ("policy", "verifier")
    for field, value in (("max_rounds", 0), ("ranking", "vibes"), ("temperature_step", -0.5),
                         ("fallback_min_p_safe", 1.5), ("max_ms", -1.0), ("advantage_margin", -1.0),
                         ("overlap", "yes")):  # fail at startup, not in a worker
        with pytest.raises(ValueError, match=field):
            build(EvalConfig, dict(arms=("verifier",), policy="vla", **{field: value}))


def test_verifier_arm_knobs_reach_the_scheduler_and_the_defaults_are_the_nodes():
    from prevla_ros.runtime.configs import VerifierNodeConfig

    knobs = dict(max_ms=80.0, temperature_step=0.25, fallback_min_p_safe=0.3, overlap=True,
                 advantage_margin=0.5, ranking="advantage", max_rounds=2, max_samples=16)
    sc = build(EvalConfig, dict(arms=("verifier",), policy="vla", **knobs)).scheduler_config()
    assert {k: getattr(sc, k) for k in knobs} == knobs and sc.verifier == "model"
    default, node = EvalConfig(arms=("verifier",), policy="vla").scheduler_config(), VerifierNodeConfig()
    for k in ("ranking", "temperature_step", "fallback_min_p_safe", "overlap", "advantage_margin",
              "max_rounds", "max_samples", "max_ms", "threshold"):
        assert getattr(default, k) == getattr(node.scheduler, k), k  # one declaration, one default


@pytest.mark.libero
def test_verifier_arm_runs_the_scheduler_with_the_zoo_verifier(tmp_path):
    out = tmp_path / "eval.json"
    res = evaluate(EvalConfig(suite="libero_spatial", task_ids=[3], episodes_per_task=1, init_start=10,
                              policy="vla", arms=("verifier",), num_candidates=4, workers=0, out=str(out)))
    [row] = res["tasks"]
    [ep] = res["episodes"]
    assert row["arm"] == "verifier" and len(ep["verify_ms"]) == ep["decisions"] > 0
    assert all(n >= 4 for n in ep["samples"]) and set(ep["outcome"]) <= {"accepted", "fallback_best", "hold"}
    assert 0 < row["verify_ms_p50"] < 1000 and row["samples_per_decision"] >= 4
    assert 0 <= row["resample_rate"] <= 1 and 0 <= row["hold_rate"] <= 1
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| **all** | verifier |" in out.with_suffix(".md").read_text()
    # the default --videos failures: a video exactly when the episode failed
    assert ("video" in ep) == (not ep["success"])
    assert all(v.startswith("eval.videos/") for e in res["episodes"] if (v := e.get("video")))


def test_cli_has_a_flag_per_config_field_and_config_errors_name_the_field(capsys):
    from prevla_training.evaluate import main

    for argv, field in ((["--policy", "vla", "--arms", "verifier", "--overlap", "--ranking", "vibes"], "ranking"),
                        (["--tasks", "0-x"], "tasks"), (["--episodes-per-task", "0"], "episodes_per_task")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and field in capsys.readouterr().err


def test_reuse_adopts_only_jobs_run_with_the_same_settings(tmp_path):
    from prevla_ros.runtime.settings import flatten
    from prevla_training.evaluate import JobCache

    old = EvalConfig(policy="vla", arms=("policy", "verifier"), verifier="a.pt", num_candidates=8,
                     episodes_per_task=2, out="old.json")
    eps = [{"task_id": t, "arm": a, "init_state": i, "success": True}
           for t in (0, 1) for a in ("policy", "verifier") for i in range(2)]
    report = {"suite": "libero_spatial", "config": json.loads(json.dumps(flatten(old))), "episodes": eps}
    report["episodes"] = [e for e in eps if not (e["task_id"] == 1 and e["arm"] == "policy" and e["init_state"])]

    def jobs(cfg):
        return [(flatten(cfg), cfg.suite, t, a) for t in (0, 1) for a in cfg.arms]

    # another verifier: the policy arm is the same job, the verifier arm is not; task 1's policy
    # job lacks an episode in the report, so it is not adopted either
    new = EvalConfig(policy="vla", arms=("policy", "verifier"), verifier="b.pt", num_candidates=8,
                     episodes_per_task=2, out=str(tmp_path / "new.json"), reuse="old.json")
    cache = JobCache(tmp_path / "new.jobs")
    assert cache.adopt(report, jobs(new)) == 1
    assert cache.get(jobs(new)[0]) == eps[:2] and not cache.get(jobs(new)[1]) and not cache.get(jobs(new)[2])
    assert cache.adopt(report, jobs(new)) == 0  # already cached
    # a result-relevant setting changed (the seed): nothing is adopted
    other = EvalConfig(policy="vla", arms=("policy",), num_candidates=8, episodes_per_task=2, seed=1,
                       out=str(tmp_path / "o.json"))
    assert JobCache(tmp_path / "o.jobs").adopt(report, jobs(other)) == 0
    with pytest.raises(ValueError, match="reuse"):
        EvalConfig(reuse="old.json")
