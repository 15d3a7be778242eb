"""Demonstrations in LIBERO's HDF5 layout: recorder, reader, resume, error messages."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from prevla_ros.runtime.types import Observation
from prevla_training import demos
from prevla_training.demos_read import DemoDataset, proprio_from_observation, quat2axisangle


# ------------------------------------------------------------------ fakes (no LIBERO)
class FakeEnv:
    """Deterministic stand-in for LiberoEnv: succeeds after 5 steps on even init states."""

    instances = 0

    def __init__(self, *a) -> None:
        FakeEnv.instances += 1
        self.init, self.t = 0, 0

    def reset(self, init: int) -> None:
        self.init, self.t = init, 0

    def observe(self) -> Observation:
        img = np.full((16, 16, 3), self.t, np.uint8)
        img[0, 0] = 255  # marks the top-left corner of the upright image
        q = np.array([0.0, 0.0, np.sin(0.1 * self.t), np.cos(0.1 * self.t)])
        return Observation(images={"agentview": img, "wrist": img + 1},
                           joint_positions=np.full(7, self.t, float),
                           gripper_qpos=np.array([0.04, -0.04]), eef_pos=np.array([self.t, 0, 1.0]),
                           eef_quat_xyzw=q, objects={})

    def get_state(self) -> np.ndarray:
        return np.array([self.t, self.init], float)

    def step(self, a):
        self.t += 1
        ok = self.t >= 5 and self.init % 2 == 0
        return ok or self.t >= 7, ok

    def close(self) -> None:
        pass


class FakeExpert:
    def reset(self) -> None:
        pass

    def act_chunk(self, obs, horizon):
        return np.tile(np.arange(7, dtype=np.float32) / 10 + obs.eef_pos[0], (horizon, 1))


@pytest.fixture
def fake_sim(monkeypatch, tmp_path):
    FakeEnv.instances = 0
    monkeypatch.setattr(demos, "_task_info", lambda s, t: dict(
        task_name=f"SCENE1_fake_task_{t}", bddl_path=str(tmp_path / "none.bddl"), n_init=50,
        instruction=f"do fake task {t}"))
    monkeypatch.setattr(demos, "_make_env", FakeEnv)
    monkeypatch.setattr(demos, "_make_expert", lambda env: FakeExpert())


def test_fake_recording_layout_and_reader(fake_sim, tmp_path):
    s = demos.record_demos("libero_spatial", [0], 2, tmp_path / "d", workers=0, horizon=2,
                           first_init_state=0)
    row = s["tasks"][0]
    # init states 0, 1, 2: the odd one fails, so 3 attempts for 2 demos
    assert (row["demos"], row["attempts"], row["total_steps"]) == (2, 3, 10)
    path = tmp_path / "d" / "SCENE1_fake_task_0_demo.hdf5"
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["tasks"][0]["demos"] == 2
    with h5py.File(path) as f:
        d = f["data"]
        assert json.loads(d.attrs["problem_info"])["language_instruction"] == "do fake task 0"
        assert d.attrs["macros_image_convention"] == "opengl"
        assert (d.attrs["num_demos"], d.attrs["total"]) == (2, 10)
        g = d["demo_1"]
        assert g.attrs["num_samples"] == 5 and g.attrs["prevla_init_state_index"] == 2
        np.testing.assert_array_equal(g["expert_actions"][:], g["actions"][:])  # no noise
        for key, shape, dtype in [("actions", (5, 7), np.float64), ("dones", (5,), np.uint8),
                                  ("rewards", (5,), np.uint8), ("states", (5, 2), np.float64),
                                  ("robot_states", (5, 9), np.float64),
                                  ("obs/agentview_rgb", (5, 16, 16, 3), np.uint8),
                                  ("obs/eye_in_hand_rgb", (5, 16, 16, 3), np.uint8),
                                  ("obs/joint_states", (5, 7), np.float64),
                                  ("obs/gripper_states", (5, 2), np.float64),
                                  ("obs/ee_pos", (5, 3), np.float64), ("obs/ee_ori", (5, 3), np.float64),
                                  ("obs/ee_states", (5, 6), np.float64)]:
            assert g[key].shape == shape and g[key].dtype == dtype, key
        assert list(g["dones"][:]) == [0, 0, 0, 0, 1]
        assert g["obs/agentview_rgb"][0, -1, -1, 0] == 255  # stored upside down (opengl)
    ds = DemoDataset(tmp_path / "d")
    assert (len(ds), ds.num_demos, ds.instructions) == (10, 2, ["do fake task 0"])
    env = FakeEnv()
    env.reset(2)
    for _ in range(3):
        env.step(None)
    s = ds.sample(8, horizon=4)  # demo 1, t=3
    obs = env.observe()
    assert (s["demo"], s["t"]) == (1, 3)
    np.testing.assert_array_equal(s["agentview"], obs.images["agentview"])  # upright again
    np.testing.assert_array_equal(s["wrist"], obs.images["wrist"])
    np.testing.assert_allclose(s["proprio"], proprio_from_observation(obs), atol=1e-6)
    # padding past the end: t=3,4 real, then the last action repeated
    assert list(s["action_mask"]) == [True, True, False, False]
    assert s["actions"].shape == (4, 7) and s["actions"].dtype == np.float32
    np.testing.assert_array_equal(s["actions"][2], s["actions"][1])
    np.testing.assert_array_equal(s["actions"][3], s["actions"][1])
    assert ds.cache_in_memory() > 0  # the in-RAM path returns exactly the same samples
    for i in range(len(ds)):
        cached, fresh = ds.sample(i, 4), DemoDataset(tmp_path / "d").sample(i, 4)
        assert cached.keys() == fresh.keys()
        for key in cached:
            np.testing.assert_array_equal(np.asarray(cached[key]), np.asarray(fresh[key]), key)


def test_resume_records_only_missing(fake_sim, tmp_path):
    out = tmp_path / "d"
    demos.record_demos("libero_spatial", [0], 1, out, workers=0, first_init_state=0)
    s = demos.record_demos("libero_spatial", [0], 3, out, workers=0, first_init_state=0)
    row = s["tasks"][0]
    assert (row["demos_before"], row["new_demos"], row["demos"]) == (1, 2, 3)
    assert row["attempts"] == 5 and row["new_attempts"] == 4  # init states 1..4, odd ones fail
    s = demos.record_demos("libero_spatial", [0], 3, out, workers=0, first_init_state=0)  # no-op
    assert s["tasks"][0]["new_attempts"] == 0
    assert FakeEnv.instances == 2  # the third call never built a simulator
    with h5py.File(out / "SCENE1_fake_task_0_demo.hdf5") as f:
        assert [f["data"][f"demo_{i}"].attrs["prevla_init_state_index"] for i in range(3)] == [0, 2, 4]


def test_noisy_demos_store_clean_expert_labels_and_skip_eval_init_states(fake_sim, tmp_path):
    out = tmp_path / "d"
    demos.record_demos("libero_spatial", [0], 2, out, workers=0, horizon=3, noise_std=0.2)
    with h5py.File(out / "SCENE1_fake_task_0_demo.hdf5") as f:
        d = f["data"]
        # default first_init_state=10: init states 0-9 stay unseen for `prevla eval`
        assert [d[f"demo_{i}"].attrs["prevla_init_state_index"] for i in range(2)] == [10, 12]
        g = d["demo_0"]
        executed, clean = g["actions"][:], g["expert_actions"][:]
    assert not np.allclose(executed[:, :6], clean[:, :6])  # the robot ran the noisy actions
    np.testing.assert_array_equal(executed[:, 6], clean[:, 6])  # gripper never perturbed
    # labels are the clean expert actions for the visited state: FakeExpert's chunk is
    # arange/10 + eef x, and eef x == t at step t (chunk starts at t = 0, 3)
    for t in range(5):
        np.testing.assert_allclose(clean[t], np.arange(7) / 10 + 3 * (t // 3), atol=1e-6)
    s = DemoDataset(out).sample(1, horizon=2)
    np.testing.assert_allclose(s["actions"], clean[1:3], atol=1e-6)  # the reader trains on them


def test_first_init_state_must_be_non_negative(fake_sim, tmp_path):
    with pytest.raises(ValueError, match="first_init_state"):
        demos.record_demos("libero_spatial", [0], 1, tmp_path, workers=0, first_init_state=-1)


def test_half_written_demo_is_dropped_on_resume(fake_sim, tmp_path):
    out = tmp_path / "d"
    demos.record_demos("libero_spatial", [0], 1, out, workers=0)
    final = out / "SCENE1_fake_task_0_demo.hdf5"
    with h5py.File(final, "a") as f:  # simulate a crash while demo_1 was being written
        f["data"].create_group("demo_1").create_dataset("actions", data=np.zeros((2, 7)))
    final.rename(final.with_name(final.name + ".part"))
    s = demos.record_demos("libero_spatial", [0], 2, out, workers=0)
    assert s["tasks"][0]["demos"] == 2
    assert DemoDataset(final).num_demos == 2


def _official_file(path, n=6, drop=None):
    """A file in the official LIBERO layout, written by hand (no prevla code)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        d = f.create_group("data")
        d.attrs["problem_info"] = json.dumps(dict(problem_name="libero_tabletop_manipulation",
                                                  domain_name="robosuite",
                                                  language_instruction="pick up the bowl"))
        d.attrs["env_args"] = "{}"
        d.attrs["macros_image_convention"] = "opengl"
        d.attrs["num_demos"], d.attrs["total"] = 1, n
        g = d.create_group("demo_0")
        g.attrs["num_samples"] = n
        g.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
        o = g.create_group("obs")
        img = np.zeros((n, 8, 8, 3), np.uint8)
        img[:, -1, -1] = 200  # bottom-right raw pixel = top-left once upright
        o.create_dataset("agentview_rgb", data=img)
        o.create_dataset("eye_in_hand_rgb", data=img)
        o.create_dataset("ee_pos", data=rng.normal(size=(n, 3)))
        o.create_dataset("ee_ori", data=rng.normal(size=(n, 3)))
        o.create_dataset("gripper_states", data=rng.normal(size=(n, 2)))
        if drop:
            del g[drop]


def test_reader_on_official_layout(tmp_path):
    p = tmp_path / "KITCHEN_SCENE1_pick_up_the_bowl_demo.hdf5"
    _official_file(p)
    ds = DemoDataset([p])
    s = ds.sample(0, horizon=3)
    assert s["instruction"] == "pick up the bowl" and s["agentview"][0, 0, 0] == 200
    assert s["proprio"].shape == (8,) and s["proprio"].dtype == np.float32
    with h5py.File(p) as f:
        o = f["data/demo_0/obs"]
        want = np.concatenate([o["ee_pos"][0], o["ee_ori"][0], o["gripper_states"][0]])
        np.testing.assert_allclose(s["proprio"], want, rtol=1e-6)
        np.testing.assert_allclose(s["actions"], f["data/demo_0/actions"][:3], rtol=1e-6)
    assert s["action_mask"].all()
    with pytest.raises(IndexError):
        ds.sample(6, 1)


def test_missing_key_names_key_and_file(tmp_path):
    p = tmp_path / "x_demo.hdf5"
    _official_file(p, drop="obs/ee_ori")
    with pytest.raises(ValueError, match=r"x_demo\.hdf5.*obs/ee_ori"):
        DemoDataset(p)


def test_truncated_file_names_file(tmp_path):
    p = tmp_path / "t_demo.hdf5"
    _official_file(p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"t_demo\.hdf5.*delete"):
        DemoDataset(p)


def test_quat2axisangle_matches_robosuite():
    T = pytest.importorskip("robosuite.utils.transform_utils")
    for q in np.random.default_rng(1).normal(size=(20, 4)):
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(quat2axisangle(q), T.quat2axisangle(q.copy()), atol=1e-12)


def test_parse_tasks():
    assert demos.parse_tasks("0-2,5", 10) == [0, 1, 2, 5]
    assert demos.parse_tasks(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="--tasks"):
        demos.parse_tasks("3-12", 10)


class _ObserveSpy:
    """Wraps the real LiberoEnv and keeps every Observation that observe() returned."""

    def __init__(self, env) -> None:
        self.env, self.seen = env, []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, init: int) -> None:
        self.seen = []  # only the last (successful) attempt is compared
        self.env.reset(init)

    def observe(self, *a):
        obs = self.env.observe(*a)
        self.seen.append(obs)
        return obs


@pytest.mark.libero
def test_real_recording_round_trip(tmp_path, monkeypatch):
    """One real LIBERO demo: images and proprio read back equal what env.observe() gave."""
    pytest.importorskip("libero.libero")
    spies = []
    real_make_env = demos._make_env
    monkeypatch.setattr(demos, "_make_env",
                        lambda *a: spies.append(_ObserveSpy(real_make_env(*a))) or spies[-1])
    s = demos.record_demos("libero_object", [0], 1, tmp_path, workers=0, image_size=64)
    assert s["tasks"][0]["demos"] == 1 and s["tasks"][0]["attempts"] == 1, s
    seen = spies[0].seen
    ds = DemoDataset(tmp_path)
    n = ds.demo_length(0)
    assert n == len(seen) == len(ds)
    with h5py.File(ds.files[0]) as f:
        d = f["data"]
        assert d.attrs["bddl_file_name"].endswith(".bddl")
        from libero.libero.envs import TASK_MAPPING  # LIBERO builds envs by this name

        assert json.loads(d.attrs["problem_info"])["problem_name"] in TASK_MAPPING
        g = d["demo_0"]
        assert g["obs/agentview_rgb"].shape == (n, 64, 64, 3) and g["dones"][-1] == 1
        assert g["states"].dtype == np.float64 and g["states"].shape[0] == n
    for t in (0, n // 2, n - 1):
        smp = ds.sample(t, horizon=4)
        np.testing.assert_array_equal(smp["agentview"], seen[t].images["agentview"])
        np.testing.assert_array_equal(smp["wrist"], seen[t].images["wrist"])
        np.testing.assert_allclose(smp["proprio"], proprio_from_observation(seen[t]), atol=1e-6)
        assert smp["instruction"] == seen[t].instruction
    assert ds.sample(n - 1, horizon=4)["action_mask"].tolist() == [True, False, False, False]
