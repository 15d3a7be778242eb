"""Episode videos: frames in -> a readable H.264 MP4 (or a GIF without an encoder) out."""
from __future__ import annotations

import math

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, ImageSequence

from prevla_sim import video
from prevla_sim.video import EpisodeVideo, decision_lines, write_video


def _frames(n: int, h: int = 128, w: int = 128) -> list[np.ndarray]:
    """Frames a reader can tell apart: frame i is uniformly grey at 20 * i."""
    return [np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)]


def _read_mp4(path) -> tuple[list[np.ndarray], dict]:
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return list(reader.iter_data()), reader.get_meta_data()  # len(reader) is inf
    finally:
        reader.close()


@pytest.fixture
def no_encoder(monkeypatch):
    """imageio-ffmpeg pointed at an ffmpeg that does not exist (as on a machine without one)."""
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/nonexistent/ffmpeg")
    assert video.mp4_encoder() is None


def test_mp4_has_every_frame_at_its_size_and_fps(tmp_path):
    if video.mp4_encoder() is None:
        pytest.skip("no ffmpeg for imageio (imageio-ffmpeg not installed)")
    path = write_video(tmp_path / "ep", _frames(10), fps=4)
    assert path == tmp_path / "ep.mp4"
    frames, meta = _read_mp4(path)
    assert len(frames) == 10 and frames[0].shape == (128, 128, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 4
    # lossy, but each frame is still the one written, in order
    assert [int(round(f.mean() / 20)) for f in frames] == list(range(10))


def test_odd_sizes_are_padded_to_even_for_yuv420p(tmp_path):
    if video.mp4_encoder() is None:
        pytest.skip("no ffmpeg for imageio")
    frames, meta = _read_mp4(write_video(tmp_path / "odd.mp4", _frames(3, 127, 131)))
    assert meta["size"] == (132, 128) and len(frames) == 3


def test_without_an_encoder_a_gif_is_written(tmp_path, no_encoder):
    path = write_video(tmp_path / "ep.mp4", _frames(6, 64, 96), fps=5)
    assert path == tmp_path / "ep.gif" and not (tmp_path / "ep.mp4").exists()
    gif = iio.imread(path, index=None)
    assert gif.shape == (6, 64, 96, 3)
    assert [int(round(f.mean() / 20)) for f in gif] == list(range(6))
    assert iio.immeta(path, index=0)["duration"] == pytest.approx(200)  # ms per frame at 5 fps


def test_an_encoder_that_fails_falls_back_to_a_gif(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/bin/false")  # found, runs, encodes nothing
    path = write_video(tmp_path / "ep", _frames(4))
    assert path.suffix == ".gif" and not (tmp_path / "ep.mp4").exists()
    assert iio.imread(path, index=None).shape[0] == 4


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="frames"):
        write_video("unused.mp4", [])
    with pytest.raises(ValueError, match="frames"):
        write_video("unused.mp4", [np.zeros((8, 8), np.uint8)])


def test_episode_video_orders_by_key_and_holds_the_end(tmp_path, no_encoder):
    v = EpisodeVideo(["libero_spatial/0 init 0", "arm verifier"])
    side = 64
    # the verdict of stamp 20 and the imagined frames of stamp 10 arrive before their frames
    v.add_verdict(20, decision_lines("hold", -1, 8, 3), "hold")
    v.add_imagined(10, np.zeros((32, 8 * 32, 3), np.uint8))  # 8 frames of 32 px: 2 rows of 4
    v.add_frame(20, np.full((side, side, 3), 200, np.uint8))
    v.add_frame(10, np.full((side, side, 3), 100, np.uint8))
    v.add_verdict(10, decision_lines("accepted", 2, 4, 1, 0.91, 0.05), "accepted")
    v.add_verdict(30, ["a verdict whose frame never came"])
    assert len(v) == 2
    frames = v.frames(["FAILURE", "220 steps"], success=False, fps=3)
    assert len(frames) == 2 + 3  # one per decision, the end held for one second
    width = side + 4 * 32 + video.PANEL_WIDTH
    assert all(f.shape == (side, width, 3) for f in frames)
    assert frames[0][:, :side].mean() == 100 and frames[1][:, :side].mean() == 200
    path = v.write(tmp_path / "ep", ["FAILURE"], success=False, fps=4)
    # a GIF merges the held end frames into one of 4 x 250 ms: the video still lasts 6 frames
    with Image.open(path) as gif:
        durations = [gif.info["duration"] for _ in ImageSequence.Iterator(gif)]
    assert sum(durations) == pytest.approx(6 * 250) and durations[-1] == pytest.approx(1000)
    assert EpisodeVideo([]).write(tmp_path / "empty", ["x"], True) is None


def test_decision_lines_say_what_was_picked():
    assert decision_lines("accepted", 2, 8, 2, 0.934, -0.1) == [
        "ACCEPTED cand 2/8", "round 2, 8 samples", "P(safe) 0.93  adv -0.10"]
    assert decision_lines("hold", -1, 4)[0] == "HOLD (nothing usable)"
    assert decision_lines("fallback_best", 5, 8, 3, 0.6)[0] == "FALLBACK cand 5/8"
    assert decision_lines("random", 1, 4) == ["RANDOM cand 1/4"]  # an arm's pick: no scores
    assert decision_lines("policy", 0, 1, p_safe=math.nan) == ["POLICY cand 0/1"]


def test_frames_are_bounded(monkeypatch):
    monkeypatch.setattr(video, "MAX_FRAMES", 3)
    v = EpisodeVideo([])
    for k in range(10):
        v.add_frame(k, np.zeros((8, 8, 3), np.uint8))
        v.add_verdict(k, ["x"])
    assert len(v) == 3
