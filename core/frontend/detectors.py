"""Choosing a landmark detector (``--landmarks auto|mediapipe|fan|dlib``) and detecting with it.

Its own module because it sits above every detector: MediaPipe's builds on `landmarks` (the shared
`FaceDetection`/`LandmarkDetector` types and dlib/FAN), so the choice cannot live in `landmarks` without
an import circle.
"""
from __future__ import annotations

import os

from .landmarks import (DetectorUnavailableError, DlibDetector, FaceDetection, FanDetector, LandmarkDetector,
                        NoFaceError, _dlib_availability, select_faces)
from .mediapipe_mesh import MediaPipeDetector

__all__ = ["get_detector", "detect_faces"]


def get_detector(method: str = "auto", device: str = "cpu", **kwargs) -> LandmarkDetector:
    """``'mediapipe'``, ``'fan'``, ``'dlib'`` or ``'auto'`` (MediaPipe when installed, else FAN when its
    weights are on disk, else dlib).

    Raises `DetectorUnavailableError` naming what to install. ``kwargs`` go to the chosen detector.
    """
    method = (method or "auto").lower()
    if method == "mediapipe":
        return MediaPipeDetector(**kwargs)
    if method == "fan":
        return FanDetector(device=device)
    if method == "dlib":
        return DlibDetector(**kwargs)
    if method != "auto":
        raise ValueError(f"unknown landmark detector {method!r}: use 'auto', 'mediapipe', 'fan' or 'dlib'")
    mp_ok, mp_reason = MediaPipeDetector.availability()
    if mp_ok:
        return MediaPipeDetector()
    fan_ok, fan_reason = FanDetector.availability()
    if fan_ok:
        return FanDetector(device=device)
    dlib_ok, dlib_reason = _dlib_availability(kwargs.get("models_dir"),
                                              need_cnn=kwargs.get("cnn_fallback", True))
    if dlib_ok:
        return DlibDetector(**kwargs)
    raise DetectorUnavailableError(
        "no landmark detector is available.\n"
        f"  MediaPipe: {mp_reason}\n  FAN: {fan_reason}\n  dlib: {dlib_reason}")


def detect_faces(image, detector: LandmarkDetector | None = None, all_faces: bool = False,
                 source: str | os.PathLike | None = None) -> list[FaceDetection]:
    """Detect, then apply `select_faces` (raising `NoFaceError` naming ``source``)."""
    det = detector if detector is not None else get_detector("auto")
    found = det.detect(image)
    try:
        return select_faces(found, all_faces=all_faces, source=source)
    except NoFaceError:
        raise NoFaceError(source, getattr(det, "name", None)) from None
