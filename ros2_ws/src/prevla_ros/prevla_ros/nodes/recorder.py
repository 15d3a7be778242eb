"""recorder: the graph's topics into a rosbag2 MCAP bag (``prevla record``, ``prevla demo``).

Every ``DISCOVERY_PERIOD_S`` (0.5 s) the node lists the graph's topics and subscribes to each selected
one that has a publisher, in raw mode: rclpy hands over the serialized CDR bytes, written as
they are (no deserialize/serialize). The subscription's QoS follows the publishers' offers, as
``ros2 bag record`` does: reliable when every publisher is, transient-local when every publisher
is (latched ``instruction`` and ``episode_status`` are recorded even when published before the
recorder joined); the offers are stored with each topic so ``ros2 bag play`` republishes
alike. A message that would pass the size cap, the end of ``duration_s``, SIGINT/SIGTERM or
``destroy_node`` stop the recording and close the bag, always valid. The bag format and the
message definitions: :mod:`prevla_ros.runtime.bag_writer`.

    prevla record [--out DIR] [--topics a,b] [--exclude c] [--max-mb N] [--duration S]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from functools import partial

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.exceptions import InvalidHandle
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)

from prevla_ros.runtime.bag_writer import BagWriter, RecordConfig
from prevla_ros.runtime.settings import settings
from prevla_ros.runtime.supervisor import StopSignals

#: Seconds between two looks at the graph's topics (new topics are recorded from then on).
DISCOVERY_PERIOD_S = 0.5
#: Messages a subscription queues while the recorder is busy writing.
DEPTH = 100


def message_class(msgtype: str) -> type:
    """The rosidl Python class of ``pkg/msg/Name``; ValueError when it is not importable."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {msgtype} is not importable here: {exc}") from None


def subscription_qos(offers: list[QoSProfile]) -> QoSProfile:
    """A subscription that matches every publisher's offer and keeps what they promise:
    reliable / transient-local only when all offers are."""
    reliable = all(o.reliability == ReliabilityPolicy.RELIABLE for o in offers)
    latched = all(o.durability == DurabilityPolicy.TRANSIENT_LOCAL for o in offers)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE if reliable
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                      else DurabilityPolicy.VOLATILE)


def offered_qos(profile: QoSProfile) -> Qos:
    """An rclpy QoS profile as rosbags stores it in the bag's metadata."""
    def time_of(duration) -> QosTime:
        return QosTime(*divmod(int(duration.nanoseconds), 10**9))

    return Qos(QosHistory(int(profile.history)), int(profile.depth),
               QosReliability(int(profile.reliability)), QosDurability(int(profile.durability)),
               time_of(profile.deadline), time_of(profile.lifespan),
               QosLiveliness(int(profile.liveliness)),
               time_of(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


class Recorder(Node):
    """Records the selected topics of the graph into one bag (module docstring).

    ``stopped`` is None while recording, else why it stopped; ``bag`` has the counts.
    """

    def __init__(self, config: RecordConfig, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        self.config = config
        self.bag = BagWriter(config.out, config.max_bytes)
        self.stopped: str | None = None
        self._topic_subs: dict[str, object] = {}
        self._skipped: set[str] = set()  # topics that cannot be recorded (logged once)
        self._timer = self.create_timer(DISCOVERY_PERIOD_S, self._discover)
        self._deadline = (time.monotonic() + config.duration_s) if config.duration_s else None
        self.get_logger().info(f"recording into {config.out}"
                               + (f" (cap {config.max_mb:g} MB)" if config.max_mb else ""))
        self._discover()

    def _discover(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.stop(f"duration {self.config.duration_s:g} s reached")
        if self.stopped is not None:
            return
        for topic, types in self.get_topic_names_and_types():
            if topic in self._topic_subs or topic in self._skipped or \
                    not self.config.wants(topic):
                continue
            offers = self.get_publishers_info_by_topic(topic)
            if offers:  # a topic with only subscribers has nothing to record yet
                self._subscribe(topic, types, offers)

    def _subscribe(self, topic: str, types: list[str], offers) -> None:
        msgtype = types[0]
        try:
            if len(types) > 1:
                raise ValueError(f"published with {len(types)} types ({', '.join(types)})")
            cls = message_class(msgtype)
            rihs01 = self.bag.add_topic(topic, msgtype, [offered_qos(o.qos_profile)
                                                         for o in offers])
        except ValueError as exc:
            self._skipped.add(topic)
            self.get_logger().error(f"not recording {topic}: {exc}")
            return
        theirs = {str(o.topic_type_hash) for o in offers}
        theirs = {h for h in theirs if h.startswith("RIHS01_") and set(h[7:]) != {"0"}}
        if theirs and theirs != {rihs01}:
            # the bag still decodes with its own definition; a player's type may differ
            self.get_logger().warning(f"{topic}: the bag's {msgtype} definition hashes to "
                                      f"{rihs01}, its publishers' to {sorted(theirs)}")
        self._topic_subs[topic] = self.create_subscription(
            cls, topic, partial(self._on_message, topic),
            subscription_qos([o.qos_profile for o in offers]), raw=True)

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.stopped is not None:
            return
        try:
            written = self.bag.write(topic, self.get_clock().now().nanoseconds, data)
        except OSError as exc:  # disk full, removed: the graph runs on, the recording stops
            self.stop(f"write failed: {exc}", drain=False)
            return
        if not written:  # the cap ends the recording here: nothing queued after it is written
            self.stop(f"size cap {self.config.max_mb:g} MB reached: a {len(data)} B message "
                      f"on {topic} would pass it", drain=False)

    def stop(self, reason: str, drain: bool = True) -> None:
        """Stop recording (idempotent): unsubscribe, close the bag valid, say why; ``drain``:
        first write what the subscriptions still hold (not after a failed write or the size cap)."""
        if self.stopped is not None:
            return
        self.stopped = reason
        self._timer.cancel()
        try:
            if drain:
                self._drain()
            self.bag.close(reason)
        except OSError as exc:
            self.get_logger().error(f"bag {self.config.out} could not be closed: {exc}")
        for sub in self._topic_subs.values():
            self.destroy_subscription(sub)
        self.get_logger().info(f"recording stopped ({reason}): {self.summary()}")

    def _drain(self) -> None:
        """Write what the subscriptions hold but the executor has not handed over yet: a stop
        (the demo's last episode status seen by the monitor, SIGINT) keeps the last messages."""
        for topic, sub in self._topic_subs.items():
            try:
                with sub.handle:
                    while (taken := sub.handle.take_message(sub.msg_type, True)) is not None:
                        if not self.bag.write(topic, self.get_clock().now().nanoseconds,
                                              taken[0]):
                            return
            except InvalidHandle:
                continue

    @property
    def subscribed(self) -> dict[str, object]:
        """The topics being recorded and their (raw) subscriptions."""
        return dict(self._topic_subs)

    def summary(self) -> str:
        return (f"{self.bag.message_count} messages on {len(self.bag.counts)} topics, "
                f"{self.bag.bytes / 1e6:.2f} MB in {self.config.out}")

    def destroy_node(self) -> None:
        self.stop("recorder shut down")
        super().destroy_node()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prevla record", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    known = settings(RecordConfig)
    parser.add_argument("--out", default=None,
                        help="bag directory to create (default outputs/bags/<date-time>)")
    for name, flag in (("topics", "--topics"), ("exclude", "--exclude"),
                       ("max_mb", "--max-mb"), ("duration_s", "--duration")):
        s = known[name]
        parser.add_argument(flag, dest=name, type=s.type, default=s.default,
                            help=f"{s.help} (default {s.default!r})")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="the size cap in bytes instead of --max-mb")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``prevla record``: record the running graph until Ctrl-C/SIGTERM, ``--duration`` or the
    size cap; exit 0 with the bag closed valid, 2 for a bad option."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or os.path.join("outputs", "bags", time.strftime("%Y%m%d-%H%M%S"))
    max_mb = args.max_mb if args.max_bytes is None else args.max_bytes / 1e6
    try:
        config = RecordConfig(out=out, topics=args.topics, exclude=args.exclude,
                              max_mb=max_mb, duration_s=args.duration_s)
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.path.expanduser("~"), ".ros", "log"))
    try:
        with StopSignals() as stop, rclpy.init(signal_handler_options=SignalHandlerOptions.NO):
            with stop.interruptible():
                recorder = Recorder(config)
            executor = SingleThreadedExecutor()
            executor.add_node(recorder)
            try:
                while not stop.received and recorder.stopped is None and rclpy.ok():
                    executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                pass
            finally:
                recorder.stop(f"{stop.received} received" if stop.received else "shutdown")
                executor.remove_node(recorder)
                recorder.destroy_node()
                executor.shutdown()
    except KeyboardInterrupt:  # a signal while the recorder was being built: nothing recorded
        return 0
    print(f"recorded {recorder.summary()} (stopped: {recorder.stopped})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
