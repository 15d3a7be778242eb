"""Episode videos (ROS-free): the agent view at each decision, what was decided, and what the
world model imagined, as one small MP4 per episode (``prevla demo`` and ``prevla eval``).

One video frame per decision, laid out at the agent view's height (128 px by default)::

    | agent view | imagined frames (when a world model ran) | panel: episode, decision, verdict |

The last frame (the end state, with SUCCESS / FAILURE) is held for one second.

Why a frame per decision and not per control step: the simulator renders only when the policy
needs an observation (at chunk boundaries; a render is ~100 ms on a CPU, ~99% of a step), so
those frames exist already and cost nothing to get; a frame per control step would add a render
per step (eight times the episode's rendering at H = 8). A frame per decision also shows each
choice the runtime made, one per frame. At 4 fps a 220-step episode (~28 decisions) plays in ~7 s,
1.6x real time (20 Hz control, 8-step chunks = 2.5 decisions per second).

Encoding: H.264 (libx264, yuv420p, even sides, CRF 28) through imageio's ffmpeg plugin and the
ffmpeg binary that imageio-ffmpeg ships; where no working encoder is found, an animated GIF
(imageio's pillow plugin). :func:`write_video` returns the path it wrote.
"""
from __future__ import annotations

import functools
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Frames per second: one frame per decision (see the module docstring).
FPS = 4
#: Width of the text panel in pixels (~28 characters at FONT_PX).
PANEL_WIDTH = 176
FONT_PX = 11
LINE_PX = 14
#: Frames kept per episode (one per decision); later ones are dropped (an input bound).
MAX_FRAMES = 1000
#: H.264 constant rate factor: 28 keeps a 128 px decision video at a few tens of KB.
CRF = 28

WHITE, GREY = (235, 235, 235), (150, 150, 150)
#: Colour of a verdict line, by outcome (the scheduler's outcomes and the final result).
COLOURS = {"accepted": (90, 210, 100), "fallback_best": (240, 175, 50), "hold": (235, 70, 70),
           "success": (90, 210, 100), "failure": (235, 70, 70)}

log = logging.getLogger(__name__)


def decision_lines(outcome: str, index: int, considered: int, rounds: int = 1,
                   p_safe: float = math.nan, advantage: float = math.nan) -> list[str]:
    """The panel's verdict lines for one decision, e.g. ``["ACCEPTED cand 2/8", "round 2 ...", ...]``.

    Args:
        outcome: "accepted", "fallback_best", "hold", or an arm's pick ("policy", "random", ...).
        index: the chosen candidate (-1: none, a hold).
        considered: candidates considered (every round).
        rounds: sampling rounds the decision took.
        p_safe, advantage: the verifier's scores of the chosen candidate (NaN: not scored).
    """
    label = {"fallback_best": "FALLBACK"}.get(outcome, outcome.upper())
    lines = [f"{label} cand {index}/{considered}" if index >= 0 else f"{label} (nothing usable)"]
    if rounds > 1 or outcome in COLOURS:
        lines.append(f"round {rounds}, {considered} samples")
    scores = [f"P(safe) {p_safe:.2f}" if math.isfinite(p_safe) else "",
              f"adv {advantage:+.2f}" if math.isfinite(advantage) else ""]
    if any(scores):
        lines.append("  ".join(s for s in scores if s))
    return lines


@dataclass
class _Frame:
    image: np.ndarray | None = None
    lines: list[str] = field(default_factory=list)
    outcome: str = ""
    imagined: np.ndarray | None = None


class EpisodeVideo:
    """One episode's decisions, keyed by observation stamp (demo) or decision number (eval).

    A frame's verdict and imagined frames may arrive before or after the frame itself (ROS
    topics are not ordered across each other): everything is kept by key and composed in key
    order by :meth:`write`; keys without an agent-view frame are left out.
    """

    def __init__(self, title: list[str]) -> None:
        self.title = list(title)
        self._frames: dict[int, _Frame] = {}

    def __len__(self) -> int:
        return sum(f.image is not None for f in self._frames.values())

    def _at(self, key: int) -> _Frame | None:
        if key not in self._frames and len(self._frames) >= MAX_FRAMES:
            return None
        return self._frames.setdefault(int(key), _Frame())

    def add_frame(self, key: int, image: np.ndarray) -> None:
        """The agent view (H, W, 3) uint8 RGB observed at ``key``."""
        if (f := self._at(key)) is not None:
            f.image = image

    def add_verdict(self, key: int, lines: list[str], outcome: str = "") -> None:
        """What was decided at ``key`` (:func:`decision_lines`); ``outcome`` picks the colour."""
        if (f := self._at(key)) is not None:
            f.lines, f.outcome = list(lines), outcome

    def add_imagined(self, key: int, row: np.ndarray) -> None:
        """The world model's frames imagined from ``key``: one row (S, T*S, 3), left to right."""
        if (f := self._at(key)) is not None:
            f.imagined = row

    def frames(self, result: list[str], success: bool, end_image: np.ndarray | None = None,
               fps: int = FPS) -> list[np.ndarray]:
        """The composed video frames; the end state (``end_image`` or the last frame) with the
        ``result`` lines is held for one second."""
        keyed = [self._frames[k] for k in sorted(self._frames) if self._frames[k].image is not None]
        if not keyed:
            return []
        side = keyed[0].image.shape[0]
        wide = max((imagined_width(f.imagined, side) for f in keyed), default=0)
        out = [compose(f.image, self.title + [f"decision {i + 1}/{len(keyed)}"], f.lines,
                       f.outcome, f.imagined, wide) for i, f in enumerate(keyed)]
        end = keyed[-1].image if end_image is None else end_image
        out += [compose(end, self.title, result, "success" if success else "failure", None, wide)] * fps
        return out

    def write(self, path: str | Path, result: list[str], success: bool,
              end_image: np.ndarray | None = None, fps: int = FPS) -> Path | None:
        """Compose and encode (:func:`write_video`); the path written, None without frames."""
        frames = self.frames(result, success, end_image, fps)
        return write_video(path, frames, fps) if frames else None


def _grid(row: np.ndarray, side: int) -> np.ndarray:
    """An imagined row (S, T*S, 3) wrapped into ``side // S`` rows (or scaled to ``side``)."""
    from PIL import Image

    s = row.shape[0]
    t = row.shape[1] // s
    if s > side or side % s:
        row = np.asarray(Image.fromarray(row).resize((t * side, side), Image.Resampling.BILINEAR))
        s = side
    rows = side // s
    cols = -(-t // rows)
    cells = [row[:, i * s:(i + 1) * s] for i in range(t)]
    cells += [np.zeros_like(cells[0])] * (rows * cols - t)
    return np.concatenate([np.concatenate(cells[r * cols:(r + 1) * cols], axis=1)
                           for r in range(rows)], axis=0)


def imagined_width(row: np.ndarray | None, side: int) -> int:
    """Width the imagined frames take beside a ``side``-px agent view (0 for none)."""
    return 0 if row is None else _grid(row, side).shape[1]


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(FONT_PX)  # FreeType's bundled font
    except (OSError, ImportError):  # a Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


def compose(image: np.ndarray, header: list[str], verdict: list[str], outcome: str = "",
            imagined: np.ndarray | None = None, imagined_px: int = 0) -> np.ndarray:
    """One video frame: agent view | imagined frames (``imagined_px`` wide, black where a
    decision has none) | text panel: the ``header`` lines, then the ``verdict`` lines, the
    first of them in ``outcome``'s colour."""
    from PIL import Image, ImageDraw

    side = image.shape[0]
    parts = [np.asarray(image, dtype=np.uint8)]
    if imagined_px:
        grid = np.zeros((side, imagined_px, 3), np.uint8)
        if imagined is not None:
            g = _grid(imagined, side)[:, :imagined_px]
            grid[:, :g.shape[1]] = g
        parts.append(grid)
    lines = [(t, GREY if t.startswith("decision ") else WHITE) for t in header]
    lines += [(t, COLOURS.get(outcome, WHITE) if i == 0 else WHITE) for i, t in enumerate(verdict)]
    panel = Image.new("RGB", (PANEL_WIDTH, max(side, LINE_PX * len(lines) + 4)), (20, 20, 20))
    draw = ImageDraw.Draw(panel)
    for i, (text, fill) in enumerate(lines):
        draw.text((4, 2 + LINE_PX * i), text, fill=fill, font=_font())
    return np.concatenate(parts + [np.asarray(panel)[:side]], axis=1)


def mp4_encoder() -> str | None:
    """The ffmpeg executable imageio will encode with, or None (imageio-ffmpeg missing, or no
    ffmpeg it can find, or ``IMAGEIO_FFMPEG_EXE`` naming nothing runnable)."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None
    return shutil.which(exe)


def _even(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad (black, bottom/right) to ``height`` x ``width``: H.264's yuv420p needs even sides."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, height - h), (0, width - w), (0, 0)))


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """Write RGB uint8 frames as ``path`` with suffix .mp4 (H.264), or .gif without an encoder.

    Frames of different sizes are padded to the largest (rounded up to even sides).
    Returns the path written. ValueError for no frames or non-RGB ones.
    """
    if not frames or any(f.ndim != 3 or f.shape[2] != 3 for f in frames):
        raise ValueError(f"frames: expected a non-empty list of (H, W, 3) images, got "
                         f"{[f.shape for f in frames]}")
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    h, w = h + h % 2, w + w % 2
    frames = [_even(np.asarray(f, dtype=np.uint8), h, w) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mp4_encoder() is not None:
        mp4 = path.with_suffix(".mp4")
        try:
            _write_mp4(mp4, frames, fps)
            return mp4
        except (OSError, RuntimeError, ValueError) as exc:  # an ffmpeg that cannot encode H.264
            log.warning("MP4 encoding failed (%s); writing a GIF instead", exc)
            mp4.unlink(missing_ok=True)
    gif = path.with_suffix(".gif")
    import imageio.v3 as iio

    iio.imwrite(gif, np.stack(frames), plugin="pillow", duration=1000 / fps, loop=0)
    return gif


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            pixelformat="yuv420p", macro_block_size=2, quality=None,
                            ffmpeg_log_level="error",
                            output_params=["-crf", str(CRF), "-preset", "veryfast"]) as writer:
        for f in frames:
            writer.append_data(f)
