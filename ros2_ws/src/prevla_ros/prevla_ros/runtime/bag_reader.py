"""``prevla inspect``: what a recorded bag holds, and an episode's frames back as PNGs. ROS-free
(rosbags' :class:`~rosbags.highlevel.AnyReader` decodes messages with the definitions stored in
the bag itself).

    prevla inspect BAG                                   topics: type, count, rate, size, times
    prevla inspect BAG --export-frames DIR [--episode N] [--topic agentview/image_raw]

Episodes are delimited by ``episode_status`` messages, by header stamp (sim_node stamps an
observation's images and its status alike): a frame belongs to the episode of the last status
stamped at or before it, or, when that status ended its episode (``done``), to the episode of
the status after it.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATUS_TOPIC = "/episode_status"
DEFAULT_FRAME_TOPIC = "/agentview/image_raw"


@dataclass(frozen=True)
class TopicStats:
    """One topic of a bag: its type and what was recorded on it (times are log times, ns)."""

    topic: str
    msgtype: str
    count: int
    bytes: int
    first_ns: int
    last_ns: int

    @property
    def rate_hz(self) -> float:
        """Mean message rate between the first and the last message; 0 below two messages or
        10 ms (a burst, e.g. the messages a stop wrote at once, has no meaningful rate)."""
        span = (self.last_ns - self.first_ns) / 1e9
        return (self.count - 1) / span if self.count > 1 and span >= 0.01 else 0.0


@dataclass(frozen=True)
class BagInfo:
    """What ``prevla inspect`` prints: the bag's topics, its time span and its episodes."""

    path: Path
    topics: list[TopicStats]
    start_ns: int
    end_ns: int
    episodes: list[dict]
    stopped: str

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics)

    def table(self) -> str:
        """A text table: one line per topic, then one per episode."""
        total_mb = sum(t.bytes for t in self.topics) / 1e6
        lines = [f"bag {self.path}: {self.message_count} messages, {total_mb:.2f} MB, "
                 f"{(self.end_ns - self.start_ns) / 1e9:.2f} s"
                 + (f" (stopped: {self.stopped})" if self.stopped else "")]
        width = max([len(t.topic) for t in self.topics] + [5])
        twidth = max([len(t.msgtype) for t in self.topics] + [4])
        lines.append(f"{'topic':<{width}}  {'type':<{twidth}}  {'count':>6}  {'rate_hz':>8}  "
                     f"{'MB':>8}  {'first_s':>8}  {'last_s':>8}")
        for t in self.topics:
            times = ((f"{(t.first_ns - self.start_ns) / 1e9:>8.3f}  "
                      f"{(t.last_ns - self.start_ns) / 1e9:>8.3f}") if t.count
                     else f"{'-':>8}  {'-':>8}")
            lines.append(f"{t.topic:<{width}}  {t.msgtype:<{twidth}}  {t.count:>6}  "
                         f"{t.rate_hz:>8.2f}  {t.bytes / 1e6:>8.3f}  {times}")
        for e in self.episodes:
            lines.append(f"episode {e['episode']}: {e['state']} after {e['step']} steps"
                         f" ({e['suite']} task {e['task_id']}: '{e['instruction']}')")
        return "\n".join(lines)


@contextlib.contextmanager
def open_bag(path: Path | str) -> Iterator:
    """An open :class:`~rosbags.highlevel.AnyReader` of the rosbag2 directory ``path`` (closed
    on exit); ValueError when it is not a readable bag."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"not a rosbag2 directory: {path} (no metadata.yaml)")
    reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
    try:
        reader.open()
    except AnyReaderError as exc:
        raise ValueError(f"cannot read bag {path}: {exc}") from None
    try:
        yield reader
    finally:
        reader.close()


def inspect_bag(path: Path | str) -> BagInfo:
    """Per-topic counts, bytes and first/last log times, and the episodes the bag's
    ``episode_status`` messages report (each episode's last status)."""
    from ruamel.yaml import YAML

    stats: dict[str, list[int]] = {}
    types: dict[str, str] = {}
    with open_bag(path) as reader:
        for c in reader.connections:
            types[c.topic] = c.msgtype
            stats.setdefault(c.topic, [0, 0, 0, 0])
        for connection, t, raw in reader.messages():
            s = stats[connection.topic]
            s[0] += 1
            s[1] += len(raw)
            s[2] = t if s[0] == 1 else min(s[2], t)
            s[3] = max(s[3], t)
        episodes = _episode_records(reader)
        start, end = reader.start_time, reader.end_time
    meta = YAML(typ="safe").load((Path(path) / "metadata.yaml").read_text())
    custom = meta["rosbag2_bagfile_information"].get("custom_data") or {}
    topics = [TopicStats(name, types[name], *stats[name]) for name in sorted(stats)]
    if not any(t.count for t in topics):
        start = end = 0
    return BagInfo(Path(path), topics, start, end, episodes, custom.get("prevla.stopped", ""))


def _statuses(reader) -> list[tuple[int, object]]:
    """``(header stamp ns, EpisodeStatus)`` of every status message, in stamp order."""
    connections = [c for c in reader.connections if c.topic == STATUS_TOPIC]
    if not connections:  # rosbags reads every topic when given no connection
        return []
    out = []
    for connection, _, raw in reader.messages(connections=connections):
        msg = reader.deserialize(raw, connection.msgtype)
        out.append((msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, msg))
    out.sort(key=lambda item: item[0])
    return out


def _episode_records(reader) -> list[dict]:
    last: dict[int, object] = {}
    for _, msg in _statuses(reader):
        last[int(msg.episode)] = msg
    return [{"episode": n, "state": m.state, "done": bool(m.done), "success": bool(m.success),
             "step": int(m.step), "suite": m.suite, "task_id": int(m.task_id),
             "instruction": m.instruction} for n, m in sorted(last.items())]


def episode_of(stamp_ns: int, statuses: list[tuple[int, object]],
               stamps: list[int] | None = None) -> int | None:
    """The episode a message stamped ``stamp_ns`` belongs to (module docstring); None before
    any status when there is none, or after the last episode ended. ``stamps``: the statuses'
    stamps, for a caller that asks for many messages."""
    if not statuses:
        return None
    i = bisect.bisect_right(stamps if stamps is not None else [s for s, _ in statuses], stamp_ns) - 1
    if i < 0:
        return int(statuses[0][1].episode)
    if statuses[i][1].done:
        return int(statuses[i + 1][1].episode) if i + 1 < len(statuses) else None
    return int(statuses[i][1].episode)


def decode_image(msg) -> np.ndarray:
    """A ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8 or mono8) as an HxWx3 RGB or HxW
    uint8 array; ValueError for another encoding or inconsistent sizes."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
    if msg.encoding not in channels:
        raise ValueError(f"cannot export {msg.encoding!r} images (expected one of "
                         f"{', '.join(channels)})")
    c, h, w = channels[msg.encoding], int(msg.height), int(msg.width)
    step = int(msg.step) or w * c
    data = np.asarray(msg.data, dtype=np.uint8)
    if h == 0 or w == 0 or step < w * c or data.size != step * h:
        raise ValueError(f"image {w}x{h} {msg.encoding} with step {step} cannot hold "
                         f"{data.size} bytes")
    image = data.reshape(h, step)[:, : w * c].reshape(h, w, c)
    if msg.encoding.startswith("bgr"):
        image = image[..., [2, 1, 0]]
    return image[..., 0] if c == 1 else image[..., :3]


def export_frames(path: Path | str, out_dir: Path | str, episode: int | None = None,
                  topic: str = DEFAULT_FRAME_TOPIC) -> list[Path]:
    """Write the images of ``topic`` as PNGs ``ep<N>_<i>.png`` into ``out_dir`` (every episode,
    or only ``episode``); the paths written. ValueError for an unknown topic or episode."""
    import cv2

    topic = topic if topic.startswith("/") else "/" + topic
    out_dir = Path(out_dir)
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ValueError(f"bag has no topic {topic} (topics: "
                             f"{', '.join(sorted({c.topic for c in reader.connections}))})")
        statuses = _statuses(reader)
        stamps = [s for s, _ in statuses]
        known = sorted({int(m.episode) for _, m in statuses})
        if episode is not None and episode not in known:
            raise ValueError(f"episode {episode} is not in the bag (episodes: "
                             f"{', '.join(map(str, known)) or f'none, no {STATUS_TOPIC}'})")
        out_dir.mkdir(parents=True, exist_ok=True)
        written, index = [], {}
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            n = episode_of(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, statuses, stamps)
            if episode is not None and n != episode:
                continue
            i = index[n] = index.get(n, -1) + 1
            image = decode_image(msg)
            file = out_dir / (f"ep{n:03d}_{i:04d}.png" if n is not None else f"frame_{i:04d}.png")
            if not cv2.imwrite(str(file), image[..., ::-1] if image.ndim == 3 else image):
                raise ValueError(f"could not write {file}")
            written.append(file)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prevla inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="a rosbag2 directory (prevla record's --out)")
    parser.add_argument("--export-frames", type=Path, default=None, metavar="DIR",
                        help="write the images of --topic as PNGs into DIR")
    parser.add_argument("--episode", type=int, default=None,
                        help="with --export-frames: only this episode (default: every one)")
    parser.add_argument("--topic", default=DEFAULT_FRAME_TOPIC,
                        help=f"with --export-frames: the image topic (default {DEFAULT_FRAME_TOPIC})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(inspect_bag(args.bag).table())
        if args.export_frames is not None:
            files = export_frames(args.bag, args.export_frames, args.episode, args.topic)
            print(f"{len(files)} frames of {args.topic} written to {args.export_frames}/")
    except ValueError as exc:
        print(f"prevla inspect: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
