"""Confidence, not silence: warnings and refusals for faces beyond what the model handles.

DECA (and the FLAME-only fit) are trained/tuned on faces that show both eyes. A strong profile still gets a
frontal-looking set of landmarks from every detector, and a result written from them looks confident and
is wrong. Detectors that know the head pose (MediaPipe: `FaceDetection.yaw`, `FaceDetection.confidence`)
let us say so:

- |yaw| > `WARN_YAW_DEG` (70 deg), or a turn ratio above `WARN_TURN` (the nose tip well past the face
  outline, about 55 deg of true yaw: MediaPipe's own yaw saturates near 50 deg, see
  core/frontend/mediapipe_mesh.py): a warning (CLI, worker log, Blender report);
- confidence < `MIN_CONFIDENCE`: `LowConfidenceError` unless the caller forces it, and then a warning.

Detectors without a pose (dlib, FAN) get no check (nothing to judge by); the result says which detector ran.
"""
from __future__ import annotations

import warnings as _warnings

from .landmarks import FaceDetection

__all__ = ["WARN_YAW_DEG", "WARN_TURN", "MIN_CONFIDENCE", "LowConfidenceError", "FaceConfidenceWarning", "check_detection"]

WARN_YAW_DEG = 70.0
WARN_TURN = 1.45
# confidence = detector score x pose factor x turn factor (core/frontend/mediapipe_mesh.py); below 0.3 at
# about 60 deg of true yaw and more (renders of FLAME's mean head), or for a weak detection.
MIN_CONFIDENCE = 0.3


class FaceConfidenceWarning(UserWarning):
    """A face is beyond what the model handles (issued once per face, not once per call site)."""


_warnings.filterwarnings("always", category=FaceConfidenceWarning)


class LowConfidenceError(ValueError):
    """A detected face is below the confidence threshold (e.g. a strong profile)."""

    def __init__(self, detection: FaceDetection, source: str | None = None):
        self.detection = detection
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"the face{where} is beyond what the model handles: landmark confidence "
            f"{detection.confidence:.2f} < {MIN_CONFIDENCE} (head yaw {detection.yaw:+.0f} deg, turn ratio "
            f"{detection.turn_ratio if detection.turn_ratio is not None else float('nan'):.2f}, detector "
            f"score {detection.score:.2f}); the reconstruction would look confident and be wrong. Use a "
            f"photo that shows both eyes, or --force to reconstruct anyway")


def check_detection(det: FaceDetection, force: bool = False, source: str | None = None) -> list[str]:
    """Check one face: raises `LowConfidenceError` below `MIN_CONFIDENCE` unless ``force``; otherwise
    issues a `FaceConfidenceWarning` per problem, appends the messages to ``det.warnings`` (the result
    stores them) and returns them."""
    found: list[str] = []
    where = f"{source}: " if source else ""
    if det.confidence is not None and det.confidence < MIN_CONFIDENCE:
        if not force:
            raise LowConfidenceError(det, source)
        found.append(f"{where}low landmark confidence {det.confidence:.2f} (< {MIN_CONFIDENCE}); "
                     f"reconstructing anyway (--force)")
    if det.yaw is not None and abs(det.yaw) > WARN_YAW_DEG:
        found.append(f"{where}head yaw {det.yaw:+.0f} deg is beyond {WARN_YAW_DEG:.0f} deg: the model is "
                     f"trained on faces that show both eyes, expect a wrong head")
    elif det.turn_ratio is not None and det.turn_ratio > WARN_TURN:
        found.append(f"{where}the head is turned far (the nose is past the face outline, turn ratio "
                     f"{det.turn_ratio:.2f} > {WARN_TURN}; roughly 55 deg or more): expect a wrong head")
    for msg in found:
        _warnings.warn(msg, FaceConfidenceWarning, stacklevel=2)
    det.warnings.extend(found)
    return found
