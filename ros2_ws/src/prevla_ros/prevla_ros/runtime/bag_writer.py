"""Bag writing, ROS-free: a rosbag2 directory (``metadata.yaml`` + one ``.mcap``) that
``ros2 bag info`` / ``ros2 bag play`` read on a full ROS 2 install.

The format is rosbags' (:class:`rosbags.rosbag2.Writer` with the MCAP storage plugin): one MCAP
file with the ``ros2`` profile, a ``ros2msg`` schema per message type (the definition with its
dependencies, as ``rosbag2_storage_mcap`` writes it), a channel per topic carrying its offered
QoS profiles, CDR messages as they came off the wire, and a ``metadata.yaml`` listing every
topic with its type, serialization format, QoS, RIHS01 type hash and message count.

Message definitions come from rosbags' ROS 2 Kilted type store; types it does not know (the
graph's own ``prevla_interfaces``) are read from the ``.msg`` files their package installed
under ``share/<package>/msg/`` (the prefixes of ``AMENT_PREFIX_PATH`` and this Python's).

* :class:`RecordConfig` — what to record (topics, size cap, duration), validated.
* :class:`MessageTypes` — a message type's definition text and RIHS01 hash.
* :class:`BagWriter` — one bag: topics added as they are discovered, raw CDR bytes written
  until the size cap; always closed into a valid bag.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore

from prevla_ros.runtime.settings import check, setting

#: What the size cap charges per message beyond its CDR bytes: the MCAP message record
#: (opcode + length 9 B, channel 2, sequence 4, log and publish time 16) and its index entry (16).
MESSAGE_OVERHEAD_BYTES = 47
#: Topics ``prevla record`` leaves out when recording "every topic" (name them to record them).
SKIPPED_BY_DEFAULT = ("/parameter_events",)
_UNKNOWN = re.compile(r"'?([A-Za-z0-9_]+/msg/[A-Za-z0-9_]+)'?")
_TOPIC = re.compile(r"^(/[A-Za-z_~{][A-Za-z0-9_~{}]*)+$")


def topic_list(text: str) -> tuple[str, ...]:
    """Comma-separated topic names as absolute names (``a/b`` -> ``/a/b``); ValueError names a
    malformed one."""
    names = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        name = name if name.startswith("/") else "/" + name
        if not _TOPIC.match(name):
            raise ValueError(f"not a ROS topic name: {raw.strip()!r} (expected e.g. "
                             f"'agentview/image_raw')")
        names.append(name)
    return tuple(dict.fromkeys(names))


def megabytes(text: str) -> float:
    """A size cap flag's value (argparse ``type``): a finite number of MB >= 0."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a size cap must be a number of MB >= 0, got {text!r}")
    return value


@dataclass(frozen=True)
class RecordConfig:
    """What ``prevla record`` (and ``prevla demo``'s recorder) writes, and when it stops."""

    out: str = setting("bag directory to create (it must not exist yet)", "")
    topics: str = setting(
        "comma-separated topics to record (e.g. 'agentview/image_raw,verdict'); empty: every "
        "topic of the graph, as it appears (except /parameter_events)", "")
    exclude: str = setting("comma-separated topics not to record (e.g. 'wrist/image_raw')", "")
    max_mb: float = setting(
        "size cap in MB (10^6 bytes) of the recorded messages: the first message that would "
        "pass it stops the recording, the bag is closed valid; 0: no cap", 1024.0)
    duration_s: float = setting("stop recording after this many seconds; 0: until stopped", 0.0)

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(isinstance(self.out, (str, os.PathLike)) and str(self.out) != "", n, "out",
              "must name the bag directory to create")
        check(not Path(self.out).exists(), n, "out",
              f"{self.out} exists already (a bag is never overwritten)")
        for name in ("topics", "exclude"):
            try:
                topic_list(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{n}.{name}: {exc}") from None
        for name in ("max_mb", "duration_s"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, n,
                  name, f"must be a number >= 0 (0: none), got {value!r}")

    @property
    def max_bytes(self) -> int:
        """The cap in bytes; 0 = none."""
        return int(self.max_mb * 1e6)

    @cached_property
    def _selection(self) -> tuple[list[str], list[str]]:
        """(included, excluded) topics, parsed once (``wants`` runs on every discovery)."""
        return topic_list(self.topics), topic_list(self.exclude)

    def wants(self, topic: str) -> bool:
        """Whether ``topic`` (an absolute name) is to be recorded."""
        include, exclude = self._selection
        if topic in exclude:
            return False
        return topic in include if include else topic not in SKIPPED_BY_DEFAULT


class MessageTypes:
    """Definitions of message types for a bag's schemas: rosbags' ROS 2 Kilted store, plus the
    ``.msg`` files of any other package found in ``share_prefixes`` (default: the prefixes of
    ``AMENT_PREFIX_PATH`` and this Python's, where the interfaces were installed)."""

    def __init__(self, share_prefixes: list[Path] | None = None) -> None:
        self.store = get_typestore(Stores.ROS2_KILTED)
        if share_prefixes is None:
            share_prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(
                os.pathsep) if p] + [Path(sys.prefix)]
        self.prefixes = share_prefixes
        self._loaded: set[str] = set()

    def definition(self, msgtype: str) -> tuple[str, str]:
        """``(ros2msg definition with dependencies, RIHS01 hash)`` of ``msgtype``
        (``pkg/msg/Name``); ValueError when no definition of it or a dependency is found."""
        if msgtype.count("/") != 2 or msgtype.split("/")[1] != "msg":
            raise ValueError(f"not a message type name: {msgtype!r} (expected pkg/msg/Name)")
        for _ in range(64):  # one package loaded per missing dependency
            try:
                text, _ = self.store.generate_msgdef(msgtype, ros_version=2)
                return text, self.store.hash_rihs01(msgtype)
            except (KeyError, TypesysError) as exc:  # an unknown type: this one or a dependency
                match = _UNKNOWN.search(str(exc))
                if match is None:
                    raise ValueError(f"{msgtype}: {exc}") from None
                self._load_package(match.group(1).split("/")[0], wanted=match.group(1))
        raise ValueError(f"{msgtype}: too many missing dependencies")  # pragma: no cover

    def _load_package(self, package: str, wanted: str) -> None:
        if package in self._loaded:
            raise ValueError(f"no definition of {wanted}: package {package} has no such .msg")
        self._loaded.add(package)
        for prefix in self.prefixes:
            files = sorted((prefix / "share" / package / "msg").glob("*.msg"))
            if files:
                types = {}
                for f in files:
                    types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
                self.store.register(types)
                return
        raise ValueError(f"no definition of {wanted}: no share/{package}/msg/*.msg under "
                         f"{', '.join(map(str, self.prefixes))}")


class BagWriter:
    """One rosbag2 MCAP bag being written; messages are serialized CDR bytes (rclpy's raw
    subscriptions deliver them so, nothing is deserialized).

    Args:
        path: the bag directory to create (must not exist).
        max_bytes: the size cap (0: none) on messages' bytes plus
            :data:`MESSAGE_OVERHEAD_BYTES` each; :meth:`write` refuses the message that would
            pass it.
        types: where message definitions come from.
    """

    def __init__(self, path: Path | str, max_bytes: int = 0,
                 types: MessageTypes | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: no cap), got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.types = types or MessageTypes()
        self.bytes = 0
        self.counts: dict[str, int] = {}
        self.closed = False
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=StoragePlugin.MCAP)
        try:
            self._writer.open()
        except WriterError as exc:
            raise ValueError(str(exc)) from None
        self._connections: dict[str, Connection] = {}

    @property
    def mcap_path(self) -> Path:
        return self.path / f"{self.path.name}.mcap"

    def add_topic(self, topic: str, msgtype: str, offered_qos: list[Qos] | None = None) -> str:
        """Register ``topic`` of ``msgtype`` with its publishers' QoS; returns the RIHS01 hash of
        the definition written (compare it with the publishers' to know the bag decodes)."""
        if topic in self._connections:
            raise ValueError(f"topic {topic} is already in the bag")
        msgdef, rihs01 = self.types.definition(msgtype)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, msgdef=msgdef, rihs01=rihs01,
            offered_qos_profiles=list(offered_qos or []))
        self.counts[topic] = 0
        return rihs01

    def write(self, topic: str, log_time_ns: int, data: bytes) -> bool:
        """Write one message received at ``log_time_ns``; False (nothing written) when the
        bag is closed or the message would take it past the size cap."""
        if self.closed:
            return False
        cost = len(data) + MESSAGE_OVERHEAD_BYTES
        if self.max_bytes and self.bytes + cost > self.max_bytes:
            return False
        self._writer.write(self._connections[topic], log_time_ns, data)
        self.bytes += cost
        self.counts[topic] += 1
        return True

    def close(self, note: str = "") -> None:
        """Write the MCAP summary and ``metadata.yaml`` (idempotent); ``note`` (why the
        recording stopped) goes into the metadata's ``custom_data``."""
        if self.closed:
            return
        self.closed = True
        if note:
            self._writer.set_custom_data("prevla.stopped", note)
        if self.max_bytes:
            self._writer.set_custom_data("prevla.max_bytes", str(self.max_bytes))
        if not any(self.counts.values()):
            # rosbags would write its "no message yet" sentinel as the start time
            self._writer.min_timestamp = self._writer.max_timestamp = 0
        self._writer.close()

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())
