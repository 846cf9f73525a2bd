"""Front end: reading photos, landmark detectors (MediaPipe, face-alignment, dlib), confidence checks and
DECA's crop.

Coordinates everywhere are continuous photo pixels (docs/CONVENTIONS.md).

Everything here but the crop is numpy-only. The crop's names (`crop.py`, which warps with torch) are
loaded on first use (PEP 562), so reading photos and detecting landmarks never imports torch: the
command line detects the first photo in a child process while the parent imports torch
(`detector_process.py`).
"""
from .confidence import FaceConfidenceWarning, LowConfidenceError, check_detection
from .images import ImageReadError, collect_photos, read_image, read_png16, write_png
from .detectors import detect_faces, get_detector
from .landmarks import (DetectorUnavailableError, DlibDetector, FaceDetection, FanDetector,
                        LandmarkDetector, NoFaceError, dlib_models_dir, select_faces)
from .mediapipe_mesh import MediaPipeDetector

_CROP_NAMES = ("CropTransform", "crop_from_box", "crop_from_landmarks", "warp_image", "warp_images")

__all__ = [
    "read_image", "read_png16", "write_png", "ImageReadError", "collect_photos",
    "FaceDetection", "LandmarkDetector", "MediaPipeDetector", "DlibDetector", "FanDetector", "get_detector",
    "check_detection", "LowConfidenceError", "FaceConfidenceWarning",
    "select_faces", "detect_faces", "dlib_models_dir", "NoFaceError", "DetectorUnavailableError",
    *_CROP_NAMES,
]


def __getattr__(name: str):
    if name in _CROP_NAMES:
        from . import crop

        return getattr(crop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
