"""Frames of a video for the expression track (core/frontend/video.py), on a video written here."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from core.frontend.video import VideoReadError, extract_frames  # noqa: E402


def _video(path, n=10, size=(64, 48)):
    """An MJPG .avi whose frame k is a flat grey of level 20 k (so each frame is recognisable)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    assert writer.isOpened()
    for k in range(n):
        writer.write(np.full((h, w, 3), 20 * k, np.uint8))
    writer.release()
    return path


def test_every_nth_frame_is_written_with_its_number(tmp_path):
    video = _video(tmp_path / "clip.avi")
    seen = []
    frames = extract_frames(video, tmp_path / "frames", every=3, progress=lambda f, m: seen.append(f))
    assert frames.frame_numbers == [0, 3, 6, 9]
    assert [p.name for p in frames.paths] == [f"frame_{k:06d}.png" for k in (0, 3, 6, 9)]
    assert frames.fps == pytest.approx(25.0) and frames.n_frames == 10
    for k, p in zip(frames.frame_numbers, frames.paths):
        level = cv2.imread(str(p)).mean()
        assert abs(level - 20 * k) < 4, (k, level)  # MJPG is lossy, a flat grey nearly exact
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_progress_may_cancel_and_bad_videos_are_named(tmp_path):
    video = _video(tmp_path / "clip.avi")

    class Stop(Exception):
        pass

    def stop_after_two(fraction, message):
        if fraction >= 0.5:
            raise Stop

    with pytest.raises(Stop):
        extract_frames(video, tmp_path / "frames", every=3, progress=stop_after_two)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["frame_000000.png", "frame_000003.png"]
    assert extract_frames(video, tmp_path / "two", every=1, max_frames=2).frame_numbers == [0, 1]
    with pytest.raises(VideoReadError, match="not found"):
        extract_frames(tmp_path / "none.mp4", tmp_path / "x")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match="junk.mp4"):
        extract_frames(tmp_path / "junk.mp4", tmp_path / "y")
