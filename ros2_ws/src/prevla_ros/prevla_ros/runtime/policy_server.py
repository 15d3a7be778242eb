"""Serve any ``Policy`` over openpi's websocket protocol (the server side of ``remote_policy``).

One thread per connection (``websockets.sync.server``); policy calls are serialised by a lock
because policies keep generators and per-episode state. A failing request is answered the
way openpi answers it: a text frame with the traceback, then close code 1011. The server
itself keeps running and accepts the next connection.

Run a learned VLA out of process::

    python -m prevla_ros.runtime.policy_server --policy vla [--checkpoint ckpt.pt] --port 8000
"""
from __future__ import annotations

import argparse
import logging
import threading
import time
import traceback
from typing import Any

import numpy as np
import websockets
from websockets.frames import CloseCode
from websockets.sync.server import Server, ServerConnection, serve

from prevla_ros.runtime import msgpack_numpy
from prevla_ros.runtime.remote_policy import (DEFAULT_IMAGE_KEYS, MAX_MESSAGE_BYTES, META_NUM_SAMPLES,
                                              META_RESET, PROMPT_KEY, STATE_KEY)
from prevla_ros.runtime.types import ObjectPose, Observation, Policy

log = logging.getLogger(__name__)
MAX_SAMPLES = 1024  # a request for more is a client bug, not a reason to exhaust memory


def axis_angle_to_quat_xyzw(aa: np.ndarray) -> np.ndarray:
    """Inverse of robosuite's ``quat2axisangle`` (exact for its [0, 2 pi] angle convention)."""
    aa = np.asarray(aa, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.concatenate([aa / angle * np.sin(angle / 2.0), [np.cos(angle / 2.0)]])


def _vec(req: dict, key: str, n: int) -> np.ndarray:
    v = np.asarray(req[key], dtype=np.float64).reshape(-1)
    if v.shape != (n,):
        raise ValueError(f"{key}: expected {n} values, got shape {v.shape}")
    return v


def decode_observation(req: dict[str, Any], image_keys: dict[str, str] | None = None) -> Observation:
    """Request map -> ``Observation``; raw ``prevla/*`` fields win over ``observation/state``.

    Without the prevla extras (an openpi-style client) the quaternion is rebuilt from the
    axis-angle in the state and joint positions are unknown (zeros).
    """
    if not isinstance(req, dict):
        raise ValueError(f"request: expected a msgpack map, got {type(req).__name__}")
    images = {cam: np.asarray(req[key]) for cam, key in (image_keys or DEFAULT_IMAGE_KEYS).items()
              if key in req}
    if "prevla/eef_pos" in req:
        pos, quat = _vec(req, "prevla/eef_pos", 3), _vec(req, "prevla/eef_quat_xyzw", 4)
        grip = _vec(req, "prevla/gripper_qpos", 2)
    elif STATE_KEY in req:
        state = _vec(req, STATE_KEY, 8)
        pos, quat, grip = state[:3], axis_angle_to_quat_xyzw(state[3:6]), state[6:8]
    else:
        raise ValueError(f"request: expected {STATE_KEY!r} or 'prevla/eef_pos'; got keys {sorted(req)}")
    joints = _vec(req, "prevla/joint_positions", 7) if "prevla/joint_positions" in req else np.zeros(7)
    objects = None
    if isinstance(req.get("prevla/objects"), dict):
        objects = {str(n): ObjectPose(_vec(p, "pos", 3), _vec(p, "quat_xyzw", 4))
                   for n, p in req["prevla/objects"].items()}
    return Observation(images=images, joint_positions=joints, gripper_qpos=grip, eef_pos=pos,
                       eef_quat_xyzw=quat, instruction=str(req.get(PROMPT_KEY, "")),
                       stamp_ns=int(req.get("prevla/stamp_ns", 0)), objects=objects)


class PolicyServer:
    """A running websocket server for one policy (use :func:`serve_policy` to start one).

    Args:
        policy: any object meeting the ``Policy`` protocol.
        host: address to bind (keep 127.0.0.1 unless the port is firewalled).
        port: TCP port; 0 lets the OS pick one (see ``port``).
        metadata: sent to each client on connect (openpi's convention).
        batched: honour ``num_samples`` and answer (k, H, D); False answers one (H, D) chunk
            per request, exactly like a stock openpi server.
    """

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0,
                 metadata: dict[str, Any] | None = None, batched: bool = True) -> None:
        self.policy = policy
        self.batched = batched
        self.metadata = {META_RESET: True, "policy_id": policy.policy_id, **(metadata or {})}
        if batched:
            self.metadata[META_NUM_SAMPLES] = True
        self.requests = 0  # answered inference requests (tests count them)
        self._lock = threading.Lock()  # serialises policy calls
        self._conns_lock = threading.Lock()
        self._conns: set[ServerConnection] = set()
        self._task: tuple[str, int] | None = None
        self._server: Server = serve(self._handle, host, port, compression=None,
                                     max_size=MAX_MESSAGE_BYTES)
        self.host = host
        self.port = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"policy-server-{self.port}")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close open connections (clients see them drop) and join."""
        self._server.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for ws in conns:
            ws.close(code=CloseCode.GOING_AWAY, reason="server shutting down")
        self._thread.join(timeout_s)

    def __enter__(self) -> "PolicyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _handle(self, ws: ServerConnection) -> None:
        with self._conns_lock:
            self._conns.add(ws)
        try:
            ws.send(msgpack_numpy.packb(self.metadata))
            for frame in ws:
                try:
                    if isinstance(frame, str):
                        raise ValueError("request: expected a binary msgpack frame, got text")
                    reply = self._answer(msgpack_numpy.unpackb(frame))
                    ws.send(msgpack_numpy.packb(reply))
                except websockets.exceptions.ConnectionClosed:
                    raise
                except Exception:
                    log.exception("policy request failed")
                    ws.send(traceback.format_exc())
                    ws.close(code=CloseCode.INTERNAL_ERROR,
                             reason="Internal server error. Traceback included in previous frame.")
                    return
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(ws)

    def _answer(self, req: Any) -> dict[str, Any]:
        if isinstance(req, dict) and req.get(META_RESET):
            with self._lock:
                self.policy.reset()
            return {"ok": True}
        obs = decode_observation(req)
        k = req.get("num_samples") if self.batched else None
        if k is not None and (not isinstance(k, int) or not 1 <= k <= MAX_SAMPLES):
            raise ValueError(f"num_samples: expected an int in [1, {MAX_SAMPLES}], got {k!r}")
        temperature = float(req.get("temperature", 1.0))
        start = time.monotonic()
        with self._lock:
            task = (str(req["prevla/suite"]), int(req["prevla/task_id"])) if "prevla/suite" in req else None
            if task is not None and task != self._task and hasattr(self.policy, "set_task"):
                self.policy.set_task(*task)
                self._task = task
            chunks = np.asarray(self.policy.sample(obs, k or 1, temperature), dtype=np.float32)
            self.requests += 1
        return {"actions": chunks if k is not None else chunks[0], "policy_id": self.policy.policy_id,
                "server_timing": {"infer_ms": 1000.0 * (time.monotonic() - start)}}


def serve_policy(policy: Policy, host: str = "127.0.0.1", port: int = 0,
                 metadata: dict[str, Any] | None = None, batched: bool = True) -> PolicyServer:
    """Start serving ``policy`` in a background thread; returns the running server."""
    return PolicyServer(policy, host, port, metadata, batched)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a prevla policy over openpi's websocket protocol.")
    parser.add_argument("--policy", choices=["vla"], default="vla", help="which policy to serve")
    parser.add_argument("--checkpoint", default="",
                        help="VLA checkpoint: file, zoo:NAME, or empty for the zoo default "
                             "(sha256-checked against its record: zoo manifest or FILE.sha256)")
    parser.add_argument("--allow-unverified-models", action="store_true",
                        help="serve a checkpoint whose sha256 matches no record (logged)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--single-sample", action="store_true",
                        help="ignore num_samples and answer one (H, 7) chunk, like openpi")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from prevla_models.vla_policy import VLAPolicy  # torch import only when serving a VLA

    from prevla_models import zoo

    checked = zoo.resolve_file(args.checkpoint, "vla", allow_unverified=args.allow_unverified_models)
    if checked.problem:
        log.warning("serving an UNVERIFIED model (--allow-unverified-models): %s", checked.problem)
    policy = VLAPolicy.from_checkpoint(checked.path, device=args.device, seed=args.seed)
    server = serve_policy(policy, args.host, args.port, batched=not args.single_sample)
    log.info("serving policy %r on %s", policy.policy_id, server.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
