"""Frames of a video file for the expression track: every Nth frame, written as PNG photos.

The expression path (`core.pipeline.expressions.decode_expressions`) reads photos by path, so a video
becomes a folder of frames named by their frame number (`frame_000123.png`); the caller keys each at
its own frame, so the timing of the video is kept whatever N is. OpenCV reads the video
(opencv-contrib-python-headless, installed with MediaPipe by setup.sh); cv2 is imported on call.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import DecaError

__all__ = ["VideoReadError", "VideoFrames", "extract_frames", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


class VideoReadError(DecaError, ValueError):
    """A video that cannot be opened or holds no frame; names the file."""


@dataclass
class VideoFrames:
    """paths (K,) of the written frames and their frame numbers (K,) in the video (0-based); fps as stored."""

    paths: list[Path]
    frame_numbers: list[int]
    fps: float
    n_frames: int  # frames the container reports (0 when it does not say)


def extract_frames(video: str | Path, out_dir: str | Path, every: int = 1, max_frames: int | None = None,
                   progress: Callable[[float, str], None] | None = None) -> VideoFrames:
    """Write frames 0, N, 2N, ... of `video` to `out_dir` (created) as PNG. `progress(fraction, message)` is
    called after each written frame; it may raise to cancel (the frames written so far stay, the caller
    owns `out_dir`). Raises VideoReadError for a missing, unreadable or empty video."""
    import cv2

    video = Path(video)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not video.is_file():
        raise VideoReadError(f"video not found: {video}")
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{video}: OpenCV cannot open it as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        wanted = (total + every - 1) // every if total > 0 else 0
        if max_frames is not None:
            wanted = min(wanted, max_frames) if wanted else max_frames
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths, numbers = [], []
        index = 0
        # grab() decodes no pixels for the skipped frames; retrieve() only for the kept ones.
        while cap.grab():
            if index % every == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                path = out / f"frame_{index:06d}.png"
                if not cv2.imwrite(str(path), frame):
                    raise OSError(f"could not write {path}")
                paths.append(path)
                numbers.append(index)
                if progress is not None:
                    progress(len(paths) / wanted if wanted else 0.0, f"frame {index}")
                if max_frames is not None and len(paths) >= max_frames:
                    break
            index += 1
    finally:
        cap.release()
    if not paths:
        raise VideoReadError(f"{video}: holds no frame OpenCV can read")
    return VideoFrames(paths, numbers, fps, total)
