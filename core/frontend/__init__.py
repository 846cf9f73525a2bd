"""Front end: reading photos, landmark detectors (MediaPipe, face-alignment, dlib), confidence checks and
DECA's crop.

Coordinates everywhere are continuous photo pixels (docs/CONVENTIONS.md).
"""
from .confidence import FaceConfidenceWarning, LowConfidenceError, check_detection
from .crop import CropTransform, crop_from_box, crop_from_landmarks, warp_image, warp_images
from .images import ImageReadError, read_image, read_png16, write_png
from .detectors import detect_faces, get_detector
from .landmarks import (DetectorUnavailableError, DlibDetector, FaceDetection, FanDetector,
                        LandmarkDetector, NoFaceError, dlib_models_dir, select_faces)
from .mediapipe_mesh import MediaPipeDetector

__all__ = [
    "read_image", "read_png16", "write_png", "ImageReadError",
    "FaceDetection", "LandmarkDetector", "MediaPipeDetector", "DlibDetector", "FanDetector", "get_detector",
    "check_detection", "LowConfidenceError", "FaceConfidenceWarning",
    "select_faces", "detect_faces", "dlib_models_dir", "NoFaceError", "DetectorUnavailableError",
    "CropTransform", "crop_from_landmarks", "crop_from_box", "warp_image", "warp_images",
]
