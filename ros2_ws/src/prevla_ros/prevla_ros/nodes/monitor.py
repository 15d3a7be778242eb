"""episode monitor: records what the graph did (used by ``prevla demo`` and the e2e tests).

Subscribes ``episode_status``, ``verdict``, ``candidates``, ``agentview/image_raw`` and
``imagined/image_raw``; writes ``episodes.jsonl``, ``verdicts.jsonl`` and the first/last
agent-view frame of each episode as PNG under its output directory. With a world model in the
graph, each imagined chunk is compared with what really happened: the real frame of the next
observation (the end of the executed chunk) against the last imagined frame, and against the
"nothing moves" baseline (the frame the imagination started from); the first
``IMAGINED_PNGS`` per episode are saved as ``ep<N>_imagined_d<k>.png``: real now | imagined
frames | real at the chunk's end. With ``videos`` each episode is also written as
``videos/ep<N>.mp4`` (:mod:`prevla_sim.video`: the agent view at each decision, the verdict, the
imagined frames), its path in the episode's record.
"""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import cv2
import numpy as np
from prevla_interfaces.msg import CandidateSet, EpisodeStatus, Verdict
from rclpy.node import Node
from sensor_msgs.msg import Image

from prevla_ros import conversions as conv
from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS
from prevla_sim.video import EpisodeVideo, decision_lines

#: Imagined-vs-real comparison images saved per episode.
IMAGINED_PNGS = 3
#: Recent real frames / pending imagined grids kept for matching them by stamp.
KEEP_FRAMES = 8


class EpisodeMonitor(Node):
    """Collects episode outcomes and verdicts; ``finished`` once enough episodes ended."""

    def __init__(self, out_dir: Path | None, expected_episodes: int = 1, videos: bool = True,
                 **kwargs) -> None:
        super().__init__("episode_monitor", **kwargs)
        self.out_dir = out_dir
        self.videos = videos and out_dir is not None
        self._video: EpisodeVideo | None = None  # the running episode's
        self.expected = expected_episodes
        self.episodes: list[dict] = []
        self.verdicts: list[dict] = []
        self._current: dict | None = None
        #: verdicts seen while no episode was running (the next one's first, before its status)
        self._early: deque[tuple[Verdict, dict]] = deque(maxlen=KEEP_FRAMES)
        self._last_frame: np.ndarray | None = None
        self._frames: dict[int, np.ndarray] = {}  # recent real agent-view frames by stamp
        self._imagined: dict[int, np.ndarray] = {}  # imagined grids waiting for their real outcome
        if out_dir is not None:
            (out_dir / "frames").mkdir(parents=True, exist_ok=True)
        self.create_subscription(EpisodeStatus, "episode_status", self._on_status, STATUS_QOS)
        self.create_subscription(Verdict, "verdict", self._on_verdict, STREAM_QOS)
        self.create_subscription(CandidateSet, "candidates", self._on_candidates, STREAM_QOS)
        self.create_subscription(Image, "agentview/image_raw", self._on_image, STREAM_QOS)
        self.create_subscription(Image, "imagined/image_raw", self._on_imagined, STREAM_QOS)

    @property
    def finished(self) -> bool:
        return self.expected > 0 and len(self.episodes) >= self.expected

    def _on_status(self, msg: EpisodeStatus) -> None:
        if not msg.done:
            if self._current is None or self._current["episode"] != msg.episode:
                self._current = {"episode": int(msg.episode), "suite": msg.suite,
                                 "task_id": int(msg.task_id), "init_state": int(msg.init_state),
                                 "instruction": msg.instruction, "decisions": 0, "holds": 0,
                                 "verify_ms": [], "policy_ids": [], "imagined_mse": [],
                                 "copy_mse": []}
                self._last_frame = None
                self._video = EpisodeVideo([f"ep {msg.episode} {msg.suite}/{msg.task_id}",
                                            f"init {msg.init_state}"]) if self.videos else None
                while self._early:  # verdicts that arrived before this status
                    self._attribute(*self._early.popleft())
            return
        record = dict(self._current or {"episode": int(msg.episode), "decisions": 0,
                                        "holds": 0, "verify_ms": [], "policy_ids": []})
        if any(e["episode"] == record["episode"] for e in self.episodes):
            return  # the same latched status seen twice
        verify = record.pop("verify_ms")
        for key in ("imagined_mse", "copy_mse"):
            values = record.pop(key, [])
            if values:
                record[f"{key}_mean"] = round(float(np.mean(values)), 5)
        record.update(success=bool(msg.success), steps=int(msg.step), state=msg.state,
                      max_steps=int(msg.max_steps), detail=msg.detail,
                      verify_ms_mean=float(np.mean(verify)) if verify else 0.0)
        self._write_video(record)
        self.episodes.append(record)
        self._save_frame(f"ep{record['episode']:03d}_last.png")
        self._current = None
        self._append("episodes.jsonl", record)

    def _on_verdict(self, msg: Verdict) -> None:
        record = {"stamp_ns": conv.from_time(msg.header.stamp), "outcome": msg.outcome,
                  "accepted_index": int(msg.accepted_index), "samples": int(msg.samples_drawn),
                  "verify_ms": float(msg.verify_ms), "reason": msg.reason,
                  "verifier_id": msg.verifier_id,
                  "safety_probs": [round(float(p), 4) for p in msg.safety_probs],
                  "advantages": [round(float(a), 4) for a in msg.advantages]}
        self.verdicts.append(record)
        self._append("verdicts.jsonl", record)
        if self._current is None:  # topics are not ordered: the episode's status may come next
            self._early.append((msg, record))
            return
        self._attribute(msg, record)

    def _attribute(self, msg: Verdict, record: dict) -> None:
        """Count ``msg`` (its ``record``) in the running episode and its video."""
        if self._video is not None:
            probs, i = msg.safety_probs, int(msg.accepted_index)
            scored = 0 <= i < min(len(probs), len(msg.advantages))
            scores = (float(probs[i]), float(msg.advantages[i])) if scored else ()
            self._video.add_verdict(record["stamp_ns"], decision_lines(
                msg.outcome, i, len(probs) or int(msg.samples_drawn), int(msg.rounds), *scores), msg.outcome)
        self._current["decisions"] += 1
        self._current["holds"] += int(msg.outcome == "hold")
        self._current["verify_ms"].append(float(msg.verify_ms))

    def _on_candidates(self, msg: CandidateSet) -> None:
        """Which policies proposed the candidates of the running episode ("hold" included)."""
        if self._current is not None and msg.policy_id not in self._current["policy_ids"]:
            self._current["policy_ids"].append(msg.policy_id)

    def _on_image(self, msg: Image) -> None:
        try:
            frame = conv.msg_to_image(msg)
        except ValueError as exc:
            self.get_logger().error(f"ignoring agentview image: {exc}")
            return
        first = self._last_frame is None and self._current is not None
        self._last_frame = frame
        stamp = conv.from_time(msg.header.stamp)
        self._frames[stamp] = frame
        if self._video is not None:
            self._video.add_frame(stamp, frame)
        for old in sorted(self._frames)[:-KEEP_FRAMES]:
            del self._frames[old]
        self._compare_ready()
        if first:
            self._save_frame(f"ep{self._current['episode']:03d}_first.png")

    def _on_imagined(self, msg: Image) -> None:
        """An imagined grid (one row per chunk, one column per frame); its first row is kept
        until the next real frame arrives."""
        try:
            grid = conv.msg_to_image(msg)
        except ValueError as exc:
            self.get_logger().error(f"ignoring imagined image: {exc}")
            return
        # One row (world model source "approved", the default): the grid's height is the frame side.
        if grid.shape[1] % grid.shape[0] == 0:
            stamp = conv.from_time(msg.header.stamp)
            self._imagined[stamp] = grid
            if self._video is not None:
                self._video.add_imagined(stamp, grid)
            for old in sorted(self._imagined)[:-KEEP_FRAMES]:
                del self._imagined[old]
            self._compare_ready()

    def _compare_ready(self) -> None:
        """Compare every imagined grid whose start frame and next real frame have arrived
        (topics are not ordered across each other, so either may come last)."""
        for stamp in sorted(self._imagined):
            later = [s for s in self._frames if s > stamp]
            if stamp in self._frames and later and self._current is not None:
                self._compare(self._imagined.pop(stamp), self._frames[stamp], self._frames[min(later)])

    def _compare(self, row: np.ndarray, real_then: np.ndarray, real_next: np.ndarray) -> None:
        side = row.shape[0]
        down = [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in (real_then, real_next)]
        last = row[:, -side:].astype(np.float32) / 255
        imagined = float(np.mean((last - down[1] / 255.0) ** 2))
        copy = float(np.mean((down[0] / 255.0 - down[1] / 255.0) ** 2))
        cur = self._current
        cur["imagined_mse"].append(imagined)
        cur["copy_mse"].append(copy)
        k = len(cur["imagined_mse"])
        if self.out_dir is not None and k <= IMAGINED_PNGS:
            strip = np.concatenate([down[0], row, down[1]], axis=1)
            cv2.imwrite(str(self.out_dir / "frames" / f"ep{cur['episode']:03d}_imagined_d{k}.png"),
                        strip[..., ::-1])

    def _write_video(self, record: dict) -> None:
        """The finished episode's video (~0.1 s: compose + ffmpeg) -> ``record["video"]``."""
        video, self._video = self._video, None
        if video is None or not len(video):
            return
        result = [f"{'SUCCESS' if record['success'] else 'FAILURE'} ({record['state']})",
                  f"{record['steps']} steps"]
        try:
            path = video.write(self.out_dir / "videos" / f"ep{record['episode']:03d}", result,
                               record["success"])
        except (OSError, ValueError) as exc:  # a full disk: the episode still counts
            self.get_logger().error(f"episode video not written: {exc}")
            return
        record["video"] = str(path.relative_to(self.out_dir))

    def _save_frame(self, name: str) -> None:
        if self.out_dir is not None and self._last_frame is not None:
            cv2.imwrite(str(self.out_dir / "frames" / name), self._last_frame[..., ::-1])

    def _append(self, name: str, record: dict) -> None:
        if self.out_dir is not None:
            with open(self.out_dir / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, wall_s: float, finished: bool) -> dict:
        return {"episodes": len(self.episodes),
                "successes": sum(e["success"] for e in self.episodes),
                "wall_s": wall_s, "finished": finished, "per_episode": self.episodes}

    def table(self) -> str:
        rows = ["| episode | task | init | success | steps | decisions | holds | imagined vs real MSE (copy) "
                "| video |", "|---|---|---|---|---|---|---|---|---|"]
        for e in self.episodes:
            wm = (f"{e['imagined_mse_mean']:.4f} ({e['copy_mse_mean']:.4f})"
                  if "imagined_mse_mean" in e else "–")
            rows.append(f"| {e['episode']} | {e.get('suite', '?')}/{e.get('task_id', '?')} | "
                        f"{e.get('init_state', '?')} | {'yes' if e['success'] else 'no'} | "
                        f"{e['steps']} | {e['decisions']} | {e['holds']} | {wm} | {e.get('video', '–')} |")
        return "\n".join(rows)
