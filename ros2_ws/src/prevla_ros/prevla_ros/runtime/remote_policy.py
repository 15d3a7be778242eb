"""``WebsocketPolicy``: a ``Policy`` served out of process, over openpi's websocket protocol.

Wire protocol (openpi's ``WebsocketPolicyServer`` / ``WebsocketClientPolicy``, plus
optional prevla extras that an openpi server ignores):

1. The client opens a websocket (binary frames, no compression; optional header
   ``Authorization: Api-Key <key>``). The server first sends one binary frame: a msgpack map
   of metadata.
2. Each request is one binary frame, a msgpack map (numpy arrays encoded as in
   :mod:`prevla_ros.runtime.msgpack_numpy`) in openpi's LIBERO example layout:

   - ``observation/image``: agentview, upright HxWx3 uint8 (already rotated 180 degrees,
     as openpi's LIBERO client sends it);
   - ``observation/wrist_image``: wrist camera, same format;
   - ``observation/state``: (8,) float32 = eef_pos (3) + robosuite axis-angle (3) +
     gripper_qpos (2) (``prevla_models.geometry.proprio_from_state``);
   - ``prompt``: the instruction;
   - prevla extras: ``num_samples`` (k), ``temperature``, ``prevla/eef_pos``,
     ``prevla/eef_quat_xyzw``, ``prevla/gripper_qpos``, ``prevla/joint_positions``,
     ``prevla/stamp_ns``, ``prevla/suite`` / ``prevla/task_id`` (once a task is set) and
     ``prevla/objects`` (privileged poses, only when the observation has them).
3. The reply is one binary frame: a msgpack map with ``actions`` of shape (k, H, D) or
   (H, D), plus anything else (openpi adds ``server_timing``). A *text* frame instead is
   the server's traceback (openpi sends it, then closes with code 1011): it is raised as
   :class:`RemotePolicyError`.
4. A server that sets ``prevla/reset: true`` in its metadata also accepts
   ``{"prevla/reset": true}`` and answers ``{"ok": true}`` after resetting its policy.

Batching rule (how k candidates are obtained):

- metadata ``prevla/num_samples: true`` -> one request; the reply must be (k, H, D).
- metadata ``prevla/num_samples: false`` -> k requests, each answered by one (H, D) chunk.
- key absent (a stock openpi server) -> one request carrying ``num_samples``; a (k, H, D)
  reply is used as is, an (H, D) reply means the server ignored it, so k - 1 more requests
  follow and the connection is remembered as single-sample.

A reply longer than ``horizon`` is cut to its first ``horizon`` steps (openpi's LIBERO client
likewise executes only the first steps of its chunk); a shorter one is an error.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from prevla_models.geometry import proprio_from_state
from prevla_ros.runtime import msgpack_numpy
from prevla_ros.runtime.types import ACTION_DIM, Observation

log = logging.getLogger(__name__)
#: Largest frame either side accepts: two 512x512 RGB images are ~1.5 MiB; leave headroom.
MAX_MESSAGE_BYTES = 64 * 2**20
DEFAULT_IMAGE_KEYS = {"agentview": "observation/image", "wrist": "observation/wrist_image"}
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
META_NUM_SAMPLES = "prevla/num_samples"
META_RESET = "prevla/reset"
# websockets >= 17 wants connect() as a context manager unless legacy=True (older: no such flag).
_CONNECT_KW = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


class RemotePolicyError(RuntimeError):
    """The policy server failed while answering (its traceback is in the message)."""


class PolicyServerUnavailable(ConnectionError, RuntimeError):
    """The server cannot be reached or dropped the connection.

    A ``ConnectionError`` and also a ``RuntimeError``, so callers that turn policy failures
    into a hold (the policy node catches ``(ValueError, RuntimeError)``) hold on it too.
    """


@dataclass
class RemotePolicyConfig:
    """How to reach a remote policy and what its chunks must look like."""

    url: str = field(default="ws://127.0.0.1:8000", metadata={"help": "ws:// or wss:// URL of the server"})
    connect_timeout_s: float = field(default=5.0, metadata={"help": "keep retrying to connect this long"})
    request_timeout_s: float = field(default=10.0, metadata={"help": "longest wait for one reply"})
    horizon: int = field(default=8, metadata={"help": "actions per chunk kept (longer replies are cut)"})
    action_dim: int = field(default=ACTION_DIM, metadata={"help": "action width the reply must have"})
    image_keys: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGE_KEYS),
                                       metadata={"help": "camera name -> request key"})
    api_key: str | None = field(default=None, metadata={"help": "sent as 'Authorization: Api-Key ...'"})
    policy_id: str = field(default="remote", metadata={"help": "name reported in candidate sets"})

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url: expected a ws:// or wss:// URL, got {self.url!r}")
        for name in ("connect_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        for name in ("horizon", "action_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not self.image_keys or not all(isinstance(k, str) and isinstance(v, str) and v
                                          for k, v in self.image_keys.items()):
            raise ValueError(f"image_keys: expected a non-empty camera -> key map, got {self.image_keys!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key: expected None or a non-empty string, got ''")


def encode_observation(obs: Observation, image_keys: dict[str, str]) -> dict[str, Any]:
    """Observation -> request map in openpi's LIBERO layout plus the raw prevla fields."""
    req: dict[str, Any] = {}
    for cam, key in image_keys.items():
        if cam not in obs.images:
            raise ValueError(f"observation lacks camera {cam!r} (has {sorted(obs.images)})")
        img = np.ascontiguousarray(obs.images[cam])
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"camera {cam!r}: expected HxWx3 uint8, got {img.shape} {img.dtype}")
        req[key] = img
    req[STATE_KEY] = proprio_from_state(obs.eef_pos, obs.eef_quat_xyzw, obs.gripper_qpos)
    req[PROMPT_KEY] = str(obs.instruction)
    req["prevla/eef_pos"] = np.asarray(obs.eef_pos, dtype=np.float64)
    req["prevla/eef_quat_xyzw"] = np.asarray(obs.eef_quat_xyzw, dtype=np.float64)
    req["prevla/gripper_qpos"] = np.asarray(obs.gripper_qpos, dtype=np.float64)
    req["prevla/joint_positions"] = np.asarray(obs.joint_positions, dtype=np.float64)
    req["prevla/stamp_ns"] = int(obs.stamp_ns)
    if obs.objects is not None:
        req["prevla/objects"] = {name: {"pos": np.asarray(p.pos, dtype=np.float64),
                                        "quat_xyzw": np.asarray(p.quat_xyzw, dtype=np.float64)}
                                 for name, p in obs.objects.items()}
    return req


class WebsocketPolicy:
    """A ``Policy`` whose samples come from a websocket policy server (openpi protocol).

    Synchronous and not thread-safe (one request in flight, as the policy node calls it).
    Connects lazily on the first ``sample``, retrying until ``connect_timeout_s``; a dropped
    connection is re-opened on the next call. See the module docstring for the protocol.

    Args:
        config: where the server is and what its replies must look like.
    """

    def __init__(self, config: RemotePolicyConfig) -> None:
        self.config = config
        self.policy_id = config.policy_id
        self._ws: ClientConnection | None = None
        self.server_metadata: dict[str, Any] = {}
        self._single_sample: bool | None = None  # None: not known yet for this connection
        self._task: tuple[str, int] | None = None

    @property
    def ready(self) -> bool:
        """Always true: the server, not this client, decides whether it can answer."""
        return True

    def set_task(self, suite: str, task_id: int) -> None:
        """Remember the task; it travels as ``prevla/suite`` / ``prevla/task_id``."""
        self._task = (str(suite), int(task_id))

    def reset(self) -> None:
        """Reset the server's policy if it advertises ``prevla/reset`` (openpi's does not)."""
        if self._ws is not None and self.server_metadata.get(META_RESET):
            try:
                self._request({META_RESET: True})
            except (PolicyServerUnavailable, RemotePolicyError) as exc:
                # A reset is best effort: the next sample reconnects or reports the failure.
                log.warning("remote reset failed: %s", exc)

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def sample(self, obs: Observation, k: int, temperature: float = 1.0) -> np.ndarray:
        """Return (k, horizon, action_dim) float32 chunks from the server.

        Raises:
            PolicyServerUnavailable: the server is unreachable, silent or hung up.
            RemotePolicyError: the server reported an error (traceback in the message).
            ValueError: a bad observation, or a reply of the wrong shape or not finite.
        """
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        req = encode_observation(obs, self.config.image_keys)
        req["num_samples"] = int(k)
        req["temperature"] = float(temperature)
        if self._task is not None:
            req["prevla/suite"], req["prevla/task_id"] = self._task
        self._ensure_connected()
        if self._single_sample:
            req.pop("num_samples")
            return np.stack([self._chunks(self._request(req), 1)[0] for _ in range(k)])
        first = self._chunks(self._request(req), k)
        if first.shape[0] == k:
            return first
        if self._single_sample is False:
            raise ValueError(f"policy reply: server advertises {META_NUM_SAMPLES} but answered "
                             f"{first.shape[0]} chunk(s) for k={k}")
        # An (H, D) answer to a k > 1 request: the server ignores num_samples (stock openpi).
        self._single_sample = True
        req.pop("num_samples")
        rest = [self._chunks(self._request(req), 1)[0] for _ in range(k - 1)]
        return np.stack([first[0], *rest])

    # -- internals ---------------------------------------------------------------------------

    def _ensure_connected(self) -> None:
        if self._ws is not None and self._ws.state is State.OPEN:
            return
        self.close()
        cfg = self.config
        headers = {"Authorization": f"Api-Key {cfg.api_key}"} if cfg.api_key else None
        deadline = time.monotonic() + cfg.connect_timeout_s
        delay, reason = 0.05, "no attempt"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PolicyServerUnavailable(
                    f"policy server {cfg.url} unreachable within {cfg.connect_timeout_s:g} s: {reason}")
            try:
                ws = connect(cfg.url, compression=None, max_size=MAX_MESSAGE_BYTES, proxy=None,
                             additional_headers=headers, open_timeout=remaining, **_CONNECT_KW)
            except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 0.5)
                continue
            break
        self._ws = ws
        try:
            meta = self._recv(cfg.connect_timeout_s)
        except BaseException:
            self.close()
            raise
        if not isinstance(meta, dict):
            self.close()
            raise ValueError(f"server metadata: expected a msgpack map, got {type(meta).__name__}")
        self.server_metadata = meta
        flag = meta.get(META_NUM_SAMPLES)
        self._single_sample = None if flag is None else not bool(flag)

    def _recv(self, timeout: float) -> Any:
        assert self._ws is not None
        try:
            frame = self._ws.recv(timeout=timeout)
        except TimeoutError as exc:
            # A late reply would answer the wrong request: drop the connection.
            self.close()
            raise PolicyServerUnavailable(f"policy server {self.config.url}: no reply within "
                                          f"{timeout:g} s") from exc
        except websockets.exceptions.ConnectionClosed as exc:
            self.close()
            raise PolicyServerUnavailable(f"policy server {self.config.url} closed the "
                                          f"connection: {exc}") from exc
        if isinstance(frame, str):
            # openpi's convention: a text frame carries the server's traceback, then it closes.
            self.close()
            raise RemotePolicyError(f"policy server {self.config.url} failed:\n{frame}")
        return msgpack_numpy.unpackb(frame)

    def _request(self, req: dict[str, Any]) -> Any:
        self._ensure_connected()
        assert self._ws is not None
        try:
            self._ws.send(msgpack_numpy.packb(req))
        except (websockets.exceptions.ConnectionClosed, OSError) as exc:
            self.close()
            raise PolicyServerUnavailable(f"policy server {self.config.url}: send failed: {exc}") from exc
        return self._recv(self.config.request_timeout_s)

    def _chunks(self, reply: Any, k: int) -> np.ndarray:
        """Validate a reply; return (n, horizon, D) float32 with n == k, or n == 1 for (H, D)."""
        H, D = self.config.horizon, self.config.action_dim
        want = f"'actions' of shape ({k}, >={H}, {D}) or (>={H}, {D}), finite numbers"
        if not isinstance(reply, dict) or "actions" not in reply:
            got = sorted(map(str, reply)) if isinstance(reply, dict) else type(reply).__name__
            raise ValueError(f"policy reply: expected a map with {want}; got {got}")
        acts = reply["actions"]
        if not isinstance(acts, np.ndarray) or acts.dtype.kind not in "biuf":
            raise ValueError(f"policy reply: expected {want}; got {type(acts).__name__} "
                             f"{getattr(acts, 'dtype', '')}")
        if acts.ndim == 2:
            acts = acts[None]
        if acts.ndim != 3 or acts.shape[0] not in (1, k) or acts.shape[1] < H or acts.shape[2] != D:
            raise ValueError(f"policy reply: expected {want}; got shape {reply['actions'].shape}")
        out = np.array(acts[:, :H], dtype=np.float32)  # a writable copy of the wire bytes
        if not np.all(np.isfinite(out)):
            raise ValueError(f"policy reply: expected {want}; got NaN or inf")
        return out
