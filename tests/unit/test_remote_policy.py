"""The out-of-process policy: msgpack+numpy codec (openpi-compatible) and a real websocket
round trip against a server started in the test on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
import time

import msgpack
import numpy as np
import pytest

from prevla_ros.runtime import msgpack_numpy
from prevla_ros.runtime.policy_server import (PolicyServerConfig, axis_angle_to_quat_xyzw, decode_observation,
                                              serve_policy)
from prevla_ros.runtime.remote_policy import (PolicyServerUnavailable, RemotePolicyConfig,
                                              RemotePolicyError, WebsocketPolicy, encode_observation)
from prevla_ros.runtime.types import ACTION_DIM, ObjectPose, Observation, Policy

H = 4


def _obs(seed: int = 0, instruction: str = "put the bowl on the plate") -> Observation:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    return Observation(
        images={"agentview": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)},
        joint_positions=rng.normal(size=7), gripper_qpos=rng.uniform(0, 0.04, 2),
        eef_pos=rng.normal(size=3), eef_quat_xyzw=q / np.linalg.norm(q),
        instruction=instruction, stamp_ns=123456789)


class EchoPolicy:
    """Deterministic chunks that encode the observation, so the test sees it arrived intact."""

    policy_id = "echo"

    def __init__(self, fail: int = 0, bad: str = "") -> None:
        self.fail, self.bad, self.calls, self.resets = fail, bad, 0, 0

    def reset(self) -> None:
        self.resets += 1

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("deliberate failure in EchoPolicy")
        row = [obs.images["agentview"].mean() / 255, obs.images["wrist"].mean() / 255,
               len(obs.instruction) / 100, obs.eef_pos[0], obs.eef_quat_xyzw[3],
               obs.gripper_qpos[1] * 10, obs.joint_positions[6] + temperature]
        out = np.tile(np.asarray(row, dtype=np.float32), (k, H, 1))
        out += np.arange(k, dtype=np.float32)[:, None, None] * 0.01
        if self.bad == "nan":
            out[0, 1, 2] = np.nan
        elif self.bad == "shape":
            out = out[:, :, :5]
        return out


def _client(url: str, **kw) -> WebsocketPolicy:
    kw = {"connect_timeout_s": 2.0, "request_timeout_s": 5.0, "horizon": H, **kw}
    return WebsocketPolicy(RemotePolicyConfig(url=url, **kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- codec ------------------------------------------------------------------------------------

def test_round_trip_dtypes_shapes_and_nesting():
    msg = {"a": {"b": [np.arange(6, dtype=np.int64).reshape(2, 3), np.float32(1.5)]},
           "img": np.zeros((0, 3), dtype=np.uint8), "s": np.array(3.25), "flag": np.array([True, False]),
           "t": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)), "txt": "x", "n": None}
    for dt in (np.uint8, np.int16, np.uint32, np.float16, np.float32, np.float64):
        msg[np.dtype(dt).str] = (np.arange(24) % 7).astype(dt).reshape(2, 3, 4)
    out = msgpack_numpy.unpackb(msgpack_numpy.packb(msg))
    assert out["txt"] == "x" and out["n"] is None
    assert isinstance(out["a"]["b"][1], np.float32) and out["a"]["b"][1] == 1.5
    for key in ("img", "s", "flag", "t", *(np.dtype(d).str for d in (np.uint8, np.float16, np.float64))):
        ref = msg[key]
        assert out[key].dtype == ref.dtype and out[key].shape == ref.shape
        np.testing.assert_array_equal(out[key], ref)
    np.testing.assert_array_equal(out["a"]["b"][0], msg["a"]["b"][0])


def test_bytes_identical_to_openpi_encoding():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    # Built by hand the way openpi_client.msgpack_numpy.pack_array lays it out.
    openpi = msgpack.packb({"actions": {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4",
                                        b"shape": (3, 4)},
                            "t": {b"__npgeneric__": True, b"data": 2.0, b"dtype": "<f4"}},
                           use_bin_type=True)
    # np.float32 takes the __npgeneric__ path (np.float64 is a Python float: plain msgpack).
    ours = msgpack_numpy.packb({"actions": arr, "t": np.float32(2.0)})
    assert ours == openpi
    out = msgpack_numpy.unpackb(openpi)
    np.testing.assert_array_equal(out["actions"], arr)
    assert out["t"] == 2.0 and out["t"].dtype == np.float32


def test_object_and_malformed_arrays_refused():
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.packb({"x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.packb({"x": np.zeros(2, dtype=np.complex64)})
    evil = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]},
                         use_bin_type=True)
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.unpackb(evil)
    short = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 7, b"dtype": "<f4", b"shape": [2]},
                          use_bin_type=True)
    with pytest.raises(ValueError, match="expected 8"):
        msgpack_numpy.unpackb(short)
    with pytest.raises(ValueError, match="malformed"):
        msgpack_numpy.unpackb(b"\xc1")


def test_observation_encoding_and_fallback_decoding():
    obs = _obs()
    obs.objects = {"bowl": ObjectPose(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))}
    req = msgpack_numpy.unpackb(msgpack_numpy.packb(encode_observation(obs, {"agentview": "observation/image",
                                                                             "wrist": "observation/wrist_image"})))
    assert req["observation/state"].shape == (8,) and req["prompt"] == obs.instruction
    back = decode_observation(req)
    np.testing.assert_array_equal(back.eef_quat_xyzw, obs.eef_quat_xyzw)
    np.testing.assert_array_equal(back.objects["bowl"].pos, [0.1, 0.2, 0.3])
    # An openpi-style request (state only): the quaternion is rebuilt from robosuite's axis-angle.
    bare = {k: v for k, v in req.items() if not k.startswith("prevla/")}
    rebuilt = decode_observation(bare)
    assert np.allclose(rebuilt.eef_quat_xyzw, obs.eef_quat_xyzw, atol=1e-6) or \
        np.allclose(rebuilt.eef_quat_xyzw, -obs.eef_quat_xyzw, atol=1e-6)
    np.testing.assert_array_equal(axis_angle_to_quat_xyzw(np.zeros(3)), [0, 0, 0, 1])


def test_config_rejects_bad_values_naming_the_field():
    for kw, name in [({"url": "http://x"}, "url"), ({"horizon": 0}, "horizon"),
                     ({"connect_timeout_s": -1}, "connect_timeout_s"), ({"image_keys": {}}, "image_keys"),
                     ({"api_key": ""}, "api_key"), ({"action_dim": 2.5}, "action_dim")]:
        with pytest.raises(ValueError, match=name):
            RemotePolicyConfig(**kw)


# -- real server -------------------------------------------------------------------------------

def test_remote_samples_equal_local_policy():
    local = EchoPolicy()
    assert isinstance(local, Policy)
    with serve_policy(EchoPolicy(), "127.0.0.1", 0) as server:
        client = _client(server.url)
        assert isinstance(client, Policy)
        obs = _obs()
        got = client.sample(obs, 3, temperature=0.5)
        assert got.dtype == np.float32 and got.shape == (3, H, ACTION_DIM)
        np.testing.assert_allclose(got, local.sample(obs, 3, 0.5), rtol=0, atol=1e-6)
        assert server.requests == 1 and client.server_metadata["policy_id"] == "echo"
        client.set_task("libero_spatial", 2)
        np.testing.assert_allclose(client.sample(_obs(1), 1), local.sample(_obs(1), 1), atol=1e-6)
        client.reset()
        assert server.policy.resets == 1
        client.close()


@pytest.mark.parametrize("metadata", [{"prevla/num_samples": False}, {}], ids=["says_single", "openpi_like"])
def test_single_sample_server_gets_k_requests(metadata):
    with serve_policy(EchoPolicy(), "127.0.0.1", 0, metadata=metadata, batched=False) as server:
        client = _client(server.url)
        got = client.sample(_obs(), 3)
        assert got.shape == (3, H, ACTION_DIM) and server.requests == 3
        np.testing.assert_allclose(got, np.repeat(EchoPolicy().sample(_obs(), 1), 3, axis=0), atol=1e-6)
        client.sample(_obs(), 2)
        assert server.requests == 5
        client.close()


def test_server_exception_is_a_clear_error_and_the_client_recovers():
    with serve_policy(EchoPolicy(fail=1), "127.0.0.1", 0) as server:
        client = _client(server.url)
        with pytest.raises(RemotePolicyError, match="deliberate failure in EchoPolicy"):
            client.sample(_obs(), 2)
        assert client.sample(_obs(), 2).shape == (2, H, ACTION_DIM)
        client.close()


@pytest.mark.parametrize("bad,match", [("nan", "NaN"), ("shape", "shape")])
def test_bad_reply_is_value_error(bad, match):
    with serve_policy(EchoPolicy(bad=bad), "127.0.0.1", 0) as server:
        client = _client(server.url)
        with pytest.raises(ValueError, match=match):
            client.sample(_obs(), 2)
        client.close()


def test_longer_chunks_are_cut_to_horizon():
    with serve_policy(EchoPolicy(), "127.0.0.1", 0) as server:
        client = _client(server.url, horizon=2)
        got = client.sample(_obs(), 2)
        np.testing.assert_allclose(got, EchoPolicy().sample(_obs(), 2)[:, :2], atol=1e-6)
        client.close()


def test_no_server_is_connection_error_within_timeout():
    client = _client(f"ws://127.0.0.1:{_free_port()}", connect_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable") as info:
        client.sample(_obs(), 1)
    assert time.monotonic() - start < 3.0
    assert isinstance(info.value, PolicyServerUnavailable) and isinstance(info.value, RuntimeError)
    assert "127.0.0.1" in str(info.value)


def test_client_reconnects_after_server_restart():
    server = serve_policy(EchoPolicy(), "127.0.0.1", 0)
    port = server.port
    client = _client(server.url, connect_timeout_s=0.5)
    try:
        assert client.sample(_obs(), 1).shape == (1, H, ACTION_DIM)
        server.shutdown()
        server = serve_policy(EchoPolicy(), "127.0.0.1", port)
        # The old connection was closed by the server: the very next call reconnects.
        assert client.sample(_obs(), 2).shape == (2, H, ACTION_DIM)
        assert server.requests == 1
        server.shutdown()
        with pytest.raises(ConnectionError):
            client.sample(_obs(), 1)  # nothing listens now
        server = serve_policy(EchoPolicy(), "127.0.0.1", port)
        assert client.sample(_obs(), 1).shape == (1, H, ACTION_DIM)
    finally:
        client.close()
        server.shutdown()


class SlowPolicy(EchoPolicy):
    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        time.sleep(0.6)
        return super().sample(obs, k, temperature)


def test_silent_server_is_connection_error_after_request_timeout():
    with serve_policy(SlowPolicy(), "127.0.0.1", 0) as server:
        client = _client(server.url, request_timeout_s=0.2)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="no reply within"):
            client.sample(_obs(), 1)
        assert time.monotonic() - start < 2.0
        client.close()


def test_openpi_style_client_gets_one_chunk():
    from websockets.sync.client import connect

    req = {"observation/image": _obs().images["agentview"], "observation/wrist_image": _obs().images["wrist"],
           "observation/state": np.zeros(8, dtype=np.float32), "prompt": "pick"}
    with serve_policy(EchoPolicy(), "127.0.0.1", 0) as server:
        # Exactly what openpi_client.WebsocketClientPolicy does: metadata, then packb(obs) -> reply.
        with connect(server.url, compression=None, max_size=None, proxy=None, open_timeout=2) as ws:
            assert msgpack_numpy.unpackb(ws.recv(timeout=2))["prevla/num_samples"] is True
            ws.send(msgpack_numpy.packb(req))
            reply = msgpack_numpy.unpackb(ws.recv(timeout=5))
    assert reply["actions"].shape == (H, ACTION_DIM) and "server_timing" in reply


def test_reply_carries_openpi_timings_and_slices():
    with serve_policy(EchoPolicy(), "127.0.0.1", 0, config=PolicyServerConfig(slice_samples=2)) as server:
        client = _client(server.url)
        got = client.sample(_obs(), 5)
        assert got.shape == (5, H, ACTION_DIM) and server.requests == 1
        # Three policy calls (2 + 2 + 1), each numbering its own samples from 0.
        np.testing.assert_allclose(got[:, 0, 0] - got[0, 0, 0], [0, 0.01, 0, 0.01, 0], atol=1e-6)
        assert server.policy.calls == 3
        client.close()


def test_connection_over_max_connections_is_told_to_retry_later():
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with serve_policy(EchoPolicy(), "127.0.0.1", 0, config=PolicyServerConfig(max_connections=1)) as server:
        first = _client(server.url)
        assert first.sample(_obs(), 1).shape == (1, H, ACTION_DIM)
        with connect(server.url, compression=None, proxy=None, open_timeout=2) as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=2)
        assert info.value.rcvd.code == 1013 and "max_connections 1" in info.value.rcvd.reason
        first.close()
        deadline = time.monotonic() + 5
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        second = _client(server.url)
        assert second.sample(_obs(), 1).shape == (1, H, ACTION_DIM)
        second.close()


def test_healthz_answers_plain_http():
    import urllib.request

    with serve_policy(EchoPolicy(), "127.0.0.1", 0) as server:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as resp:
            assert resp.status == 200 and resp.read() == b"OK\n"


def test_server_config_rejects_bad_values_naming_the_field():
    for kw, name in [({"max_samples_per_request": 0}, "max_samples_per_request"),
                     ({"slice_samples": 1.5}, "slice_samples"),
                     ({"max_connections": True}, "max_connections"),
                     ({"image_side": -1}, "image_side"), ({"image_side": 4096}, "image_side")]:
        with pytest.raises(ValueError, match=name):
            PolicyServerConfig(**kw)


def test_shutdown_frees_a_client_waiting_for_its_reply():
    class Started(SlowPolicy):
        started = threading.Event()

        def sample(self, obs, k, temperature=1.0):
            self.started.set()
            return super().sample(obs, k, temperature)

    errors: list[Exception] = []
    server = serve_policy(Started(), "127.0.0.1", 0)
    client = _client(server.url, request_timeout_s=5.0)

    def ask() -> None:
        try:
            client.sample(_obs(), 1)
        except ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    assert Started.started.wait(5)
    server.shutdown()  # the policy is mid-call (SlowPolicy sleeps): the reply is never sent
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1 and "closed the connection" in str(errors[0])
