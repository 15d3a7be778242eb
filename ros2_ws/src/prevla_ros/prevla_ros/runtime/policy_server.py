"""Serve any ``Policy`` over openpi's websocket protocol (the server side of ``remote_policy``).

A stock openpi client (``openpi_client.websocket_client_policy.WebsocketClientPolicy``) sending
openpi's LIBERO layout gets openpi's answer: ``actions`` (H, 7), ``server_timing`` and
``policy_timing``; prevla's client adds ``num_samples`` (k) and the ``prevla/*`` fields and
gets (k, H, 7). Accepted layouts, limits and the reply are documented in ``docs/openpi.md``.

Threads. ``websockets.sync.server`` gives each connection a thread that reads a frame, decodes
and validates it (:mod:`prevla_ros.runtime.openpi_layout`: images converted and resized like
openpi's ``resize_with_pad``), hands it to the one :class:`InferenceWorker` and waits for its
answer. The worker alone calls the policy, k samples in slices of ``slice_samples``,
round-robin over the clients' requests, so a client asking for k = 1 waits for at most one
slice of each other client's request, not for a whole k = 256 request. Why threads rather
than asyncio: decoding, resizing and msgpack are CPU work that would stall an event loop just
the same; a few clients (robots, evaluators) are served, and their number is bounded
(``max_connections``).

Errors follow openpi's convention: a request that fails is answered by a text frame with the
traceback, then close code 1011; the server logs one line (bad input: a warning at most once per
``LOG_EVERY_S``; a policy failure: the traceback) and keeps serving. A frame over
``MAX_MESSAGE_BYTES`` is refused by the websocket layer itself (close code 1009).

Run a learned VLA out of process::

    python -m prevla_ros.runtime.policy_server --policy vla [--checkpoint ckpt.pt] --port 8000
"""
from __future__ import annotations

import argparse
import http
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import websockets
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.sync.server import Server, ServerConnection, serve

from prevla_ros.runtime import msgpack_numpy
from prevla_ros.runtime.inference_worker import InferenceWorker, RequestCancelled, WorkerClosed
from prevla_ros.runtime.limits import InputLimits, Throttle
from prevla_ros.runtime.openpi_layout import (ImageSpec, axis_angle_to_quat_xyzw,  # noqa: F401 (API)
                                              decode_observation, image_spec)
from prevla_ros.runtime.remote_policy import MAX_MESSAGE_BYTES, META_NUM_SAMPLES, META_RESET
from prevla_ros.runtime.settings import build, check, section, setting, settings
from prevla_ros.runtime.types import Policy

log = logging.getLogger(__name__)
#: Highest temperature a request may ask for (it scales the sampling noise).
MAX_TEMPERATURE = 100.0


@dataclass
class PolicyServerConfig:
    """The policy server's declared limits."""

    max_samples_per_request: int = setting(
        "num_samples (k) a request may ask for at most; a larger k is refused", 256)
    slice_samples: int = setting(
        "samples per policy call: a request for more is computed in slices, round-robin with "
        "other clients' requests, so a large request delays others by at most one slice", 16)
    max_connections: int = setting(
        "open connections at most; one more is closed at once with code 1013 (try again later)",
        16)
    image_side: int = setting(
        "side that images the policy does not take as they are (another size, non-square, "
        "float, channel-first) are resized to, aspect kept and zero-padded as openpi's "
        "resize_with_pad does; 0 = the policy's own (an exported graph's side, else the "
        "smallest side >= 128 the model takes)", 0)
    limits: InputLimits = section(InputLimits, "bounds of a request's images and prompt", hidden=(
        "limit_k", "limit_chunk_length", "limit_rate_hz", "max_future_stamp_s",
        "stamp_jump_back_s"))

    def __post_init__(self) -> None:
        n = type(self).__name__
        for name in ("max_samples_per_request", "slice_samples", "max_connections"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, n, name,
                  f"must be an integer >= 1, got {value!r}")
        check(isinstance(self.image_side, int) and 0 <= self.image_side <= self.limits.limit_image_side,
              n, "image_side", f"must be 0 or a side in [1, limit_image_side "
              f"{self.limits.limit_image_side}], got {self.image_side!r}")


class PolicyServer:
    """A running websocket server for one policy (use :func:`serve_policy` to start one).

    Args:
        policy: any object meeting the ``Policy`` protocol; from now on only this server's
            worker thread calls it.
        host: address to bind (keep 127.0.0.1 unless the port is firewalled).
        port: TCP port; 0 lets the OS pick one (see ``port``).
        metadata: sent to each client on connect (openpi's convention).
        batched: honour ``num_samples`` and answer (k, H, D); False answers one (H, D) chunk
            per request, exactly like a stock openpi server.
        config: the declared limits (:class:`PolicyServerConfig`).

    Raises:
        ValueError: ``config.image_side`` is a side the policy does not take.
    """

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0,
                 metadata: dict[str, Any] | None = None, batched: bool = True,
                 config: PolicyServerConfig | None = None) -> None:
        self.policy = policy
        self.batched = batched
        self.config = config or PolicyServerConfig()
        self.spec: ImageSpec = image_spec(policy)
        self.image_side = self.config.image_side or self.spec.default_side()
        if not self.spec.takes(self.image_side):
            raise ValueError(f"PolicyServerConfig.image_side: policy {policy.policy_id!r} does not "
                             f"take {self.image_side}x{self.image_side} images ({self.spec})")
        self.metadata = {META_RESET: True, "policy_id": policy.policy_id,
                         "prevla/max_samples_per_request": self.config.max_samples_per_request,
                         "prevla/image_side": self.image_side, **(metadata or {})}
        if batched:
            self.metadata[META_NUM_SAMPLES] = True
        self._conns_lock = threading.Lock()
        self._conns: set[ServerConnection] = set()
        self._refused = Throttle()
        self.worker = InferenceWorker(policy, self.config.slice_samples)
        self._server: Server = serve(self._handle, host, port, compression=None,
                                     max_size=MAX_MESSAGE_BYTES, process_request=_health_check)
        self.host = host
        self.port = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"policy-server-{self.port}")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def requests(self) -> int:
        """Answered inference requests (tests count them)."""
        return self.worker.completed

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._conns_lock:
            return len(self._conns)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close open connections (clients see them drop) and join."""
        self._server.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for ws in conns:
            ws.close(code=CloseCode.GOING_AWAY, reason="server shutting down")
        self.worker.close(timeout_s)
        self._thread.join(timeout_s)

    def __enter__(self) -> "PolicyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- one thread per connection -----------------------------------------------------------

    def _handle(self, ws: ServerConnection) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.config.max_connections
            if not full:
                self._conns.add(ws)
        if full:
            self._log_refusal(ws, f"max_connections {self.config.max_connections} reached")
            ws.close(code=CloseCode.TRY_AGAIN_LATER,
                     reason=f"server at max_connections {self.config.max_connections}")
            return
        try:
            ws.send(msgpack_numpy.packb(self.metadata))
            prev_total_s = None
            for frame in ws:
                start = time.monotonic()
                try:
                    reply = self._answer(frame, ws)
                    if prev_total_s is not None and "server_timing" in reply:
                        # openpi reports the previous request's total, which includes its send.
                        reply["server_timing"]["prev_total_ms"] = 1000.0 * prev_total_s
                    ws.send(msgpack_numpy.packb(reply))
                except websockets.exceptions.ConnectionClosed:
                    raise
                except (WorkerClosed, RequestCancelled):
                    return  # shutting down, or this client hung up: nobody to answer
                except Exception as exc:
                    if isinstance(exc, ValueError):  # bad input: one line, rate-limited
                        self._log_refusal(ws, f"{type(exc).__name__}: {exc}")
                    else:
                        log.exception("policy request from %s failed", _peer(ws))
                    ws.send(traceback.format_exc())
                    ws.close(code=CloseCode.INTERNAL_ERROR,
                             reason="Internal server error. Traceback included in previous frame.")
                    return
                prev_total_s = time.monotonic() - start
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(ws)

    def _log_refusal(self, ws: ServerConnection, why: str) -> None:
        line = self._refused.line(f"refused a request from {_peer(ws)}: {why}", time.monotonic())
        if line:
            log.warning(line)

    def _answer(self, frame: str | bytes, ws: ServerConnection) -> dict[str, Any]:
        if isinstance(frame, str):
            raise ValueError("request: expected a binary msgpack frame, got text")
        start = time.monotonic()
        req = msgpack_numpy.unpackb(frame)
        if not isinstance(req, dict):
            raise ValueError(f"request: expected a msgpack map, got {type(req).__name__}")
        if req.get(META_RESET):
            self.worker.reset().result()
            return {"ok": True}
        # The O(1) checks first: a refused request never costs an image conversion.
        k = self._num_samples(req) if self.batched else None
        temperature = req.get("temperature", 1.0)
        if (not isinstance(temperature, Real) or isinstance(temperature, bool)
                or not 0.0 <= float(temperature) <= MAX_TEMPERATURE):
            raise ValueError(f"temperature: expected a number in [0, {MAX_TEMPERATURE:g}], "
                             f"got {temperature!r}")
        task = None
        if "prevla/suite" in req:
            suite, task_id = req["prevla/suite"], req.get("prevla/task_id")
            if not isinstance(suite, str) or not isinstance(task_id, Integral):
                raise ValueError(f"prevla/suite, prevla/task_id: expected a string and an int, got "
                                 f"{type(suite).__name__}, {type(task_id).__name__}")
            task = (suite, int(task_id))
        obs = decode_observation(req, spec=self.spec, side=self.image_side, limits=self.config.limits)
        got = self.worker.sample(obs, k or 1, float(temperature), task,
                                 cancelled=lambda: ws.state is not State.OPEN).result()
        return {"actions": got.chunks if k is not None else got.chunks[0],
                "policy_id": self.policy.policy_id,
                "server_timing": {"infer_ms": 1000.0 * (time.monotonic() - start),
                                  "queue_ms": 1000.0 * got.queue_s,
                                  "queue_samples": got.queue_samples},
                "policy_timing": {"infer_ms": 1000.0 * got.compute_s, "slices": got.slices}}

    def _num_samples(self, req: dict[str, Any]) -> int | None:
        k = req.get("num_samples")
        cap = self.config.max_samples_per_request
        if k is not None and (not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= cap):
            raise ValueError(f"num_samples: expected an int in [1, max_samples_per_request {cap}], "
                             f"got {k!r}")
        return None if k is None else int(k)


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except (OSError, TypeError, ValueError):
        return "?"


def _health_check(connection: ServerConnection, request: Any) -> Any:
    """``GET /healthz`` answers 200 without a websocket upgrade (openpi's server does too)."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def serve_policy(policy: Policy, host: str = "127.0.0.1", port: int = 0,
                 metadata: dict[str, Any] | None = None, batched: bool = True,
                 config: PolicyServerConfig | None = None) -> PolicyServer:
    """Start serving ``policy`` in a background thread; returns the running server."""
    return PolicyServer(policy, host, port, metadata, batched, config)


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
    for s in settings(PolicyServerConfig).values():  # each limit declared once, in the config
        parser.add_argument(f"--{s.name.replace('_', '-')}", type=s.type, default=s.default,
                            help=f"{s.help} (default {s.default})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from prevla_models.vla_policy import VLAPolicy  # torch import only when serving a VLA

    from prevla_models import zoo

    config = build(PolicyServerConfig, {n: getattr(args, n) for n in settings(PolicyServerConfig)})
    checked = zoo.resolve_file(args.checkpoint, "vla", allow_unverified=args.allow_unverified_models)
    if checked.problem:
        log.warning("serving an UNVERIFIED model (--allow-unverified-models): %s", checked.problem)
    policy = VLAPolicy.from_checkpoint(checked.path, device=args.device, seed=args.seed)
    server = serve_policy(policy, args.host, args.port, batched=not args.single_sample, config=config)
    log.info("serving policy %r on %s (images resized to %dx%d; k <= %d in slices of %d)",
             policy.policy_id, server.url, server.image_side, server.image_side,
             config.max_samples_per_request, config.slice_samples)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
