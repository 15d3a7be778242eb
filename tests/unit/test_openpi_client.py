"""openpi clients as they are: the real ``openpi_client`` from PyPI against prevla's policy server.

The client is ``openpi_client.websocket_client_policy.WebsocketClientPolicy`` unchanged, sending
openpi's LIBERO example layout (``examples/libero/main.py``: 224x224 uint8 images made with
``image_tools.resize_with_pad``, an 8-float state, a prompt) to a server running the zoo VLA.
Also: the other image layouts openpi's input transform takes (float, channel-first, any size),
parity of our ``resize_with_pad`` with openpi's, the per-request sample cap, bad input answered
by openpi's error convention, and fairness between a large and a small request, counted (how
many samples of others a request waited for), never timed.
"""
from __future__ import annotations

import threading
import time

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from prevla_ros.runtime.inference_worker import InferenceWorker
from prevla_ros.runtime.openpi_layout import (ImageSpec, axis_angle_to_quat_xyzw, decode_observation,
                                              resize_with_pad, to_hwc_uint8)
from prevla_ros.runtime.policy_server import PolicyServerConfig, serve_policy
from prevla_ros.runtime.remote_policy import RemotePolicyConfig, WebsocketPolicy
from prevla_ros.runtime.types import ACTION_DIM, Observation

try:  # the stock client from PyPI: `pip install --no-deps openpi-client==0.1.2` (see docs/openpi.md)
    from openpi_client import image_tools
    from openpi_client import websocket_client_policy as ws_client
except ImportError:
    image_tools = ws_client = None
needs_openpi = pytest.mark.skipif(ws_client is None, reason="openpi-client is not installed "
                                  "(pip install --no-deps openpi-client==0.1.2)")
# openpi-client 0.1.2 calls websockets' connect() outside a `with`, which websockets >= 17.1
# deprecates; that is the stock client's code, exercised here as it is.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

H = 8  # the zoo VLA's horizon


@pytest.fixture(scope="module")
def recorded():
    from prevla_models import zoo

    return np.load(zoo.zoo_dir() / "recorded_inputs_libero_spatial.npz")


@pytest.fixture(scope="module")
def vla():
    """One zoo VLA for tests that need no particular noise draws (servers run one at a time)."""
    return _vla()


def _vla(seed: int = 0):
    from prevla_models import zoo
    from prevla_models.vla_policy import VLAPolicy

    return VLAPolicy.from_checkpoint(zoo.resolve_file("", "vla").path, seed=seed)


def libero_element(recorded, i: int = 0, size: int = 224) -> dict:
    """What openpi's LIBERO example sends: upright frames resize_with_pad'ed to ``size`` and
    made uint8 by openpi's own image_tools, state = eef pos + axis-angle + gripper qpos."""
    img, wrist = (image_tools.convert_to_uint8(image_tools.resize_with_pad(x, size, size))
                  for x in recorded["images"][i])
    return {"observation/image": img, "observation/wrist_image": wrist,
            "observation/state": recorded["proprio"][i, :8].astype(np.float64),
            "prompt": str(recorded["instructions"][i])}


def _connect(server) -> "ws_client.WebsocketClientPolicy":
    return ws_client.WebsocketClientPolicy(server.url)


# -- resize_with_pad: our implementation against openpi's --------------------------------------


@needs_openpi
@pytest.mark.parametrize("shape,target", [((224, 224), (128, 128)), ((256, 256), (224, 224)),
                                          ((100, 150), (128, 128)), ((480, 640), (224, 224)),
                                          ((64, 64), (128, 128)), ((128, 128), (128, 128)),
                                          ((37, 91), (64, 64)), ((120, 160), (96, 128)),
                                          ((300, 17), (128, 128))])
def test_resize_with_pad_matches_openpi_pixel_for_pixel(shape, target):

    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resize_with_pad(img, *target)
    theirs = image_tools.resize_with_pad(img, *target)
    assert ours.shape == (*target, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@needs_openpi
def test_layouts_openpi_takes_decode_to_the_same_pixels():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (224, 224, 3))
    as_uint8 = image_tools.convert_to_uint8(x)  # what openpi turns a float image into
    spec = ImageSpec(multiple=64)
    want = resize_with_pad(as_uint8, 128, 128)
    for img in (x, x.astype(np.float32), x.transpose(2, 0, 1), as_uint8, as_uint8.transpose(2, 0, 1)):
        req = {"observation/image": img, "observation/state": np.zeros(8), "prompt": "p"}
        got = decode_observation(req, spec=spec).images["agentview"]
        assert got.shape == (128, 128, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    # A side the model takes passes untouched; others are resized (and padded) to 128.
    same = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    req = {"observation/image": same, "observation/state": np.zeros(8)}
    np.testing.assert_array_equal(decode_observation(req, spec=spec).images["agentview"], same)
    wide = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    got = decode_observation({"observation/image": wide, "observation/state": np.zeros(8)},
                             spec=spec).images["agentview"]
    assert got.shape == (128, 128, 3) and not got[:16].any() and not got[-16:].any()  # padding


@pytest.mark.parametrize("img,match", [
    (np.zeros((224, 224), np.uint8), "shape"), (np.zeros((224, 224, 4), np.uint8), "shape"),
    (np.zeros((2000, 2000, 3), np.uint8), "limit_image_side"), (np.zeros((0, 5, 3), np.uint8), "0x5"),
    (np.full((8, 8, 3), -0.5, np.float32), r"\[0, 1\]"), (np.full((8, 8, 3), np.nan), "finite"),
    (np.zeros((8, 8, 3), np.int32), "dtype int32"), ([[1, 2, 3]], "image array")])
def test_bad_images_are_clear_value_errors(img, match):
    with pytest.raises(ValueError, match=match):
        to_hwc_uint8(img, "observation/image", 1024)


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=5),
    st.lists(st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans()), max_size=9),
    hnp.arrays(st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                         hnp.floating_dtypes(), st.just(np.dtype("<U2"))),
               hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)),
    st.dictionaries(st.sampled_from(["pos", "quat_xyzw", "x"]),
                    st.lists(st.floats(), min_size=3, max_size=4), max_size=3))
REQUEST_KEYS = ["observation/image", "observation/wrist_image", "observation/state", "prompt",
                "prevla/eef_pos", "prevla/eef_quat_xyzw", "prevla/gripper_qpos",
                "prevla/joint_positions", "prevla/stamp_ns", "prevla/objects"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(REQUEST_KEYS), ANY_VALUE, max_size=8))
def test_any_request_map_decodes_or_is_a_value_error(req):
    try:
        obs = decode_observation(req, spec=ImageSpec(multiple=4), side=8)
    except ValueError:
        return
    for img in obs.images.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == img.shape[1]
        assert img.shape[2] == 3 and ImageSpec(multiple=4).takes(img.shape[0])
    assert np.all(np.isfinite(obs.eef_pos)) and obs.gripper_qpos.shape == (2,)


# -- the real openpi client against the zoo VLA ---------------------------------------------

@needs_openpi
def test_openpi_libero_example_layout_gets_openpi_reply(recorded):

    element = libero_element(recorded)
    assert element["observation/image"].shape == (224, 224, 3)
    with serve_policy(_vla()) as server:
        client = _connect(server)
        assert client.get_server_metadata()["policy_id"] == "vla_libero_spatial"
        first = client.infer(element)
        second = client.infer(element)
    for reply in (first, second):
        acts = reply["actions"]
        assert isinstance(acts, np.ndarray) and acts.shape == (H, ACTION_DIM)
        assert np.all(np.isfinite(acts)) and np.all(np.abs(acts) <= 1.0 + 1e-5)
        assert reply["server_timing"]["infer_ms"] > 0 and reply["policy_timing"]["infer_ms"] > 0
    assert "prev_total_ms" in second["server_timing"] and "prev_total_ms" not in first["server_timing"]
    # The same chunk as the policy run in process on openpi's own 224 -> 128 resize of the frames.
    state = element["observation/state"]
    local = Observation(
        images={"agentview": image_tools.resize_with_pad(element["observation/image"], 128, 128),
                "wrist": image_tools.resize_with_pad(element["observation/wrist_image"], 128, 128)},
        joint_positions=np.zeros(7), gripper_qpos=state[6:8], eef_pos=state[:3],
        eef_quat_xyzw=axis_angle_to_quat_xyzw(state[3:6]), instruction=element["prompt"])
    np.testing.assert_allclose(first["actions"], _vla().sample(local, 1)[0], atol=1e-4)


@needs_openpi
def test_float_chw_and_other_sizes_from_the_openpi_client(recorded, vla):
    base = libero_element(recorded, 1)
    x = base["observation/image"].astype(np.float32) / 255.0
    variants = {"float_hwc": x, "float64_chw": x.astype(np.float64).transpose(2, 0, 1),
                "uint8_chw": base["observation/image"].transpose(2, 0, 1),
                "uint8_96": image_tools.resize_with_pad(recorded["images"][1, 0], 96, 96),
                "uint8_256": image_tools.resize_with_pad(recorded["images"][1, 0], 256, 256),
                "uint8_480x640": image_tools.resize_with_pad(recorded["images"][1, 0], 480, 640)}
    with serve_policy(vla) as server:
        client = _connect(server)
        for name, img in variants.items():
            reply = client.infer({**base, "observation/image": img, "observation/wrist_image": img})
            assert reply["actions"].shape == (H, ACTION_DIM), name
            assert np.all(np.isfinite(reply["actions"])), name
        assert server.requests == len(variants)



@needs_openpi
@pytest.mark.parametrize("change,match", [
    ({"observation/state": np.full(8, np.nan)}, "observation/state: expected finite"),
    ({"observation/state": np.zeros(7)}, "observation/state: expected 8 values"),
    ({"observation/image": np.zeros((224, 224), np.uint8)}, "observation/image: expected an"),
    ({"observation/wrist_image": np.zeros((1500, 1500, 3), np.uint8)}, "limit_image_side"),
    ({"observation/image": np.full((224, 224, 3), -1.0, np.float32)}, r"in \[0, 1\]"),
    ({"prompt": 7}, "prompt: expected a string"), ({"num_samples": 10_000}, "max_samples_per_request"),
    ({"temperature": float("nan")}, "temperature")])
def test_bad_requests_get_openpi_error_convention_and_server_stays_up(recorded, vla, caplog, change,

                                                                     match):
    element = libero_element(recorded)
    with serve_policy(vla) as server:
        client = _connect(server)
        with pytest.raises(RuntimeError, match=match):  # openpi's client: text frame -> RuntimeError
            client.infer({**element, **change})
        with pytest.raises(Exception):  # the server closed that connection (code 1011)
            client.infer(element)
        assert _connect(server).infer(element)["actions"].shape == (H, ACTION_DIM)
    assert any("refused a request from 127.0.0.1" in r.getMessage() and "ValueError" in r.getMessage()
               for r in caplog.records)


@needs_openpi
def test_sample_cap_and_slices(recorded, vla):

    cfg = PolicyServerConfig(max_samples_per_request=8, slice_samples=3)
    with serve_policy(vla, config=cfg) as server:
        client = _connect(server)
        reply = client.infer({**libero_element(recorded), "num_samples": 8})
        assert reply["actions"].shape == (8, H, ACTION_DIM) and np.all(np.isfinite(reply["actions"]))
        assert reply["policy_timing"]["slices"] == 3  # 3 + 3 + 2
        with pytest.raises(RuntimeError, match=r"num_samples: expected an int in \[1, "
                                               r"max_samples_per_request 8\], got 9"):
            client.infer({**libero_element(recorded), "num_samples": 9})
    with pytest.raises(ValueError, match="slice_samples"):
        PolicyServerConfig(slice_samples=0)


@needs_openpi
def test_image_side_must_be_one_the_model_takes(vla):

    with pytest.raises(ValueError, match="does not take 100x100"):
        serve_policy(vla, config=PolicyServerConfig(image_side=100))
    with serve_policy(vla, config=PolicyServerConfig(image_side=192)) as server:
        assert server.image_side == 192 and _connect(server).get_server_metadata()["prevla/image_side"] == 192


def test_prevla_client_with_extras_through_the_same_server(recorded):
    """prevla's own client (k candidates, prevla/* fields, reset) keeps working."""
    with serve_policy(_vla(), config=PolicyServerConfig(slice_samples=2)) as server:
        client = WebsocketPolicy(RemotePolicyConfig(url=server.url, horizon=H))
        p = recorded["proprio"][0]
        obs = Observation(images={"agentview": recorded["images"][0, 0], "wrist": recorded["images"][0, 1]},
                          joint_positions=p[8:15], gripper_qpos=p[6:8], eef_pos=p[:3],
                          eef_quat_xyzw=axis_angle_to_quat_xyzw(p[3:6]), instruction="pick")
        first = client.sample(obs, 5)
        client.reset()  # re-seeds the server's policy: the same draws again
        np.testing.assert_array_equal(client.sample(obs, 5), first)
        assert first.shape == (5, H, ACTION_DIM)
        client.close()


# -- fairness ------------------------------------------------------------------------------------

def small_vs_large(url: str, element: dict, big_k: int, warmup: int = 3) -> dict:
    """One stock openpi client asks for k=1 over and over while another asks for ``big_k``.

    Returns the small client's latencies (s) and replies that arrived while the large request
    was in progress, and the large reply."""
    small, big = ws_client.WebsocketClientPolicy(url), ws_client.WebsocketClientPolicy(url)
    for _ in range(warmup):
        small.infer(element)
    sent, done, out = threading.Event(), threading.Event(), {}

    def large() -> None:
        sent.set()
        out["big"] = big.infer({**element, "num_samples": big_k})
        done.set()

    thread = threading.Thread(target=large)
    thread.start()
    sent.wait()
    lat, during = [], []
    while not done.is_set():
        t = time.perf_counter()
        reply = small.infer(element)
        lat.append(time.perf_counter() - t)
        if not done.is_set():
            during.append(reply)
    thread.join()
    return {"latency_s": lat, "during": during, "big": out["big"]}


def _percentiles(lat: list[float]) -> str:

    ms = 1000 * np.asarray(lat)
    return f"n={len(ms):3d} p50={np.percentile(ms, 50):7.1f} ms p99={np.percentile(ms, 99):7.1f} ms"


@needs_openpi
def test_small_client_is_answered_while_a_large_request_runs(recorded, vla):
    element = libero_element(recorded)
    big_k, slice_k = 128, 16
    results = {}
    for name, s in (("sliced", slice_k), ("unsliced", big_k)):
        cfg = PolicyServerConfig(max_samples_per_request=big_k, slice_samples=s)
        with serve_policy(vla, config=cfg) as server:
            results[name] = small_vs_large(server.url, element, big_k)
    for name, r in results.items():  # a measurement, printed (pytest -s), never asserted on time
        print(f"\nk=1 client while k={big_k} runs, {name:8s}: {_percentiles(r['latency_s'])}")
    sliced = results["sliced"]
    assert sliced["big"]["actions"].shape == (big_k, H, ACTION_DIM)
    assert sliced["big"]["policy_timing"]["slices"] == big_k // slice_k
    # Interleaving: the small client was answered several times before the large reply came,
    # and no small request waited for more than one slice of the large one.
    assert len(sliced["during"]) >= 2
    assert max(r["server_timing"]["queue_samples"] for r in sliced["during"]) <= slice_k
    assert results["unsliced"]["big"]["policy_timing"]["slices"] == 1


class CountingPolicy:
    """Records the order of its calls, so the worker's schedule can be read back."""

    policy_id = "counting"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()

    def reset(self) -> None:
        self.calls.append(("reset", 0))

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        self.gate.wait(5)
        self.calls.append((obs.instruction, k))
        return np.full((k, 2, ACTION_DIM), len(self.calls), dtype=np.float32)


def _tiny_obs(name: str) -> Observation:
    return Observation(images={}, joint_positions=np.zeros(7), gripper_qpos=np.zeros(2),
                       eef_pos=np.zeros(3), eef_quat_xyzw=np.array([0, 0, 0, 1.0]), instruction=name)


def test_worker_round_robin_over_slices():
    policy = CountingPolicy()
    worker = InferenceWorker(policy, slice_samples=4)
    try:
        big = worker.sample(_tiny_obs("big"), 10)
        small = [worker.sample(_tiny_obs(f"small{i}"), 1) for i in range(2)]
        reset = worker.reset()
        policy.gate.set()
        assert big.result(5).chunks.shape == (10, 2, ACTION_DIM) and reset.result(5) is None
        assert policy.calls == [("big", 4), ("small0", 1), ("small1", 1), ("reset", 0),
                                ("big", 4), ("big", 2)]
        assert [f.result().queue_samples for f in small] == [4, 5]
        assert big.result().slices == 3 and worker.completed == 3
        assert worker.sample(_tiny_obs("gone"), 8, cancelled=lambda: True).exception(5) is not None
    finally:
        worker.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        worker.sample(_tiny_obs("late"), 1)
