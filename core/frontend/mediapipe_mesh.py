"""MediaPipe's face detector and 478-point face mesh as a `LandmarkDetector` (the default).

Uses the models bundled in the ``mediapipe==0.10.14`` wheel (Apache-2.0), through ``mp.solutions``:

1. BlazeFace short-range detection on a copy of the photo downscaled to at most ``detect_side`` pixels
   (the model sees 128x128 anyway; downscaling ourselves with OpenCV's area filter keeps large photos
   cheap and clean), the full-range model when the short-range one finds nothing (small or distant faces);
2. per detected face, the face mesh with refined eyes and irises (``refine_landmarks``: 478 points) on a
   square crop of side ``crop_factor`` x the box, resized to ``mesh_side`` pixels. Running the mesh on a
   crop, not the photo, keeps every face of a multi-face photo and makes the cost independent of the
   photo's size.

MediaPipe's normalised coordinates times the crop size are taken as continuous pixel coordinates
(docs/CONVENTIONS.md); z is the mesh's relative depth in the same pixel scale as x (negative towards the
camera). The 68 iBUG points come from the mesh through `core.frontend.mesh68`.

Confidence: ``confidence = detector score x pose factor x turn factor``. The pose factor is 1 up to a mesh
yaw of 45 deg, falling linearly to 0 at 90 deg. The mesh's own yaw saturates near 50 deg (measured on
renders of FLAME's mean head: 39, 44, 49, 50, 47, 44 deg for true yaws of 40, 50, 60, 70, 75, 80; beyond
80 nothing is detected), so the turn factor uses a 2D cue that keeps growing: the turn ratio
``|2 (x_nose - x_234) / (x_454 - x_234) - 1|`` (0 frontal, 1 when the nose tip reaches the face outline;
1.16, 1.36, 1.72, 1.84, 1.74 at those yaws; at most 0.64 on the shared photos). The turn factor is 1 up to
`TURN_OK` and 0 from `TURN_ZERO`: about 60 deg and more of true yaw gives a confidence below 0.3.
`core.frontend.confidence` turns this into warnings and refusals.
"""
from __future__ import annotations

import importlib.util
import threading

import numpy as np

from .head_pose import head_pose_from_mesh
from .landmarks import (DetectorUnavailableError, FaceDetection, LandmarkDetector, _as_uint8_rgb,
                        _sort_largest_first)
from .mesh68 import mesh_to_ibug68

__all__ = ["MediaPipeDetector", "MEDIAPIPE_INSTALL_HINT", "pose_factor", "turn_ratio", "turn_factor",
           "TURN_OK", "TURN_ZERO"]

TURN_OK, TURN_ZERO = 1.4, 1.75

MEDIAPIPE_INSTALL_HINT = ("pip install --no-deps mediapipe==0.10.14 && pip install absl-py attrs flatbuffers "
                          "'protobuf>=4.25.3,<5' 'matplotlib<3.11' opencv-contrib-python-headless==4.11.0.86 "
                          "(or: ./setup.sh)")

_lock = threading.Lock()  # mediapipe's solution graphs are not safe to call from two threads
_solutions: dict[str, object] = {}


def pose_factor(yaw_deg: float) -> float:
    """1 for |yaw| <= 45 deg, linearly down to 0 at 90 deg."""
    return float(np.clip((90.0 - abs(yaw_deg)) / 45.0, 0.0, 1.0))


def turn_ratio(mesh: np.ndarray) -> float:
    """0 for a frontal face, 1 when the nose tip (4) reaches the face outline (234 / 454), more beyond."""
    m = np.asarray(mesh, np.float64)
    width = m[454, 0] - m[234, 0]
    if abs(width) < 1e-9:
        return float("inf")
    return float(abs(2.0 * (m[4, 0] - m[234, 0]) / width - 1.0))


def turn_factor(ratio: float) -> float:
    """1 up to TURN_OK, linearly down to 0 at TURN_ZERO."""
    return float(np.clip((TURN_ZERO - ratio) / (TURN_ZERO - TURN_OK), 0.0, 1.0))


_DRAWING = ("mediapipe.python.solutions.drawing_utils", "mediapipe.python.solutions.drawing_styles")


def _import_mediapipe():
    import logging
    import os
    import sys
    import types
    if "mediapipe" in sys.modules:
        return sys.modules["mediapipe"]
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ start-up chatter
    logging.getLogger("absl").setLevel(logging.ERROR)
    # mediapipe's package imports its drawing helpers, and they import matplotlib.pyplot: 0.3 s of the 0.5 s
    # import at load 10 (python -X importtime), paid by every cold `reconstruct`. Nothing here draws, so
    # placeholders stand in for the two helper modules during the import; they are removed afterwards, so
    # a later ``import mediapipe.python.solutions.drawing_utils`` still loads the real module.
    placeholders = {name: types.ModuleType(name) for name in _DRAWING if name not in sys.modules}
    sys.modules.update(placeholders)
    try:
        import mediapipe
    finally:
        solutions = sys.modules.get("mediapipe.python.solutions")
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
            short = name.rsplit(".", 1)[1]
            if solutions is not None and getattr(solutions, short, None) is module:
                delattr(solutions, short)
    return mediapipe


def _solution(kind: str, min_confidence: float):
    key = f"{kind}:{min_confidence}"
    s = _solutions.get(key)
    if s is None:
        mp = _import_mediapipe()
        if kind == "short":
            s = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=min_confidence)
        elif kind == "full":
            s = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        elif kind == "mesh":
            s = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                                min_detection_confidence=min_confidence)
        else:  # pragma: no cover
            raise ValueError(kind)
        _solutions[key] = s
    return s


class MediaPipeDetector(LandmarkDetector):
    """MediaPipe face detection + 478-point face mesh (see the module docstring).

    Parameters
    ----------
    min_score: detections below this detector score are dropped (MediaPipe's own default 0.5).
    detect_side: the detector runs on a copy whose longest side is at most this.
    crop_factor: the mesh's square crop side, in units of the detector box's longest side.
    mesh_side: the mesh crop is resized to this many pixels.
    mesh_from_detect_copy: cut the mesh crop from the detector's downscaled copy when that copy still holds
        it at ``mesh_side`` pixels or more (a face larger than about a third of the photo's longest side
        at the defaults), instead of from the photo: the same pixels the mesh would see, resampled twice
        (area filters both) instead of once. For a 4000x3000 photo the face fills, this skips a 6000x6000
        zero-padded copy and its resize (detection 0.31 -> 0.11 s at load 4.7). Measured on the shared
        photos at 4000x3000 and 1600x1200: the 68 landmarks move by at most 1.5 % of the face box (median
        0.2 %), DECA's crop scale by at most 0.5 %; the same as the photo-path's own change when the photo is
        resized by 0.1 % (4000 -> 4004 px wide: up to 1.2 %). tests/test_mediapipe.py holds the bounds.
        False: always from the photo.
    """

    name = "mediapipe"

    def __init__(self, min_score: float = 0.5, detect_side: int = 640, crop_factor: float = 2.0,
                 mesh_side: int = 384, mesh_from_detect_copy: bool = True):
        ok, reason = self.availability()
        if not ok:
            raise DetectorUnavailableError(reason)
        self.min_score = float(min_score)
        self.detect_side = int(detect_side)
        self.crop_factor = float(crop_factor)
        self.mesh_side = int(mesh_side)
        self.mesh_from_detect_copy = bool(mesh_from_detect_copy)
        self.last_used: str | None = None  # 'short', 'full' or None: which detection model found the faces
        # Import now, with the models, not inside the first photo: mediapipe pulls in matplotlib and
        # opencv (about a second), and the Blender worker's cancel must not land inside that import.
        _import_mediapipe()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            spec = importlib.util.find_spec("mediapipe")
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return False, f"the MediaPipe detector needs the 'mediapipe' package: {MEDIAPIPE_INSTALL_HINT}"
        try:
            from importlib.metadata import version
            v = version("mediapipe")
        except Exception:  # pragma: no cover - metadata missing
            v = "unknown"
        if not v.startswith("0.10."):
            return False, (f"mediapipe {v} is installed, but only 0.10.x ships the face models and "
                           f"mp.solutions: {MEDIAPIPE_INSTALL_HINT}")
        return True, f"mediapipe {v}"

    def load(self) -> "MediaPipeDetector":
        with _lock:
            for kind in ("short", "full", "mesh"):
                _solution(kind, self.min_score if kind != "mesh" else 0.3)
        return self

    def warm_up(self) -> "MediaPipeDetector":
        """`load` and one run of the short-range detector and of the mesh graph on a blank image: the
        TFLite/XNNPACK set-up of their first call (measured: the first photo's detection 0.19 s, 0.10 s
        after this, 0.03 s warm; the rest is the landmark model's first run, which a blank image does not
        reach). `core.pipeline.reconstruct` runs it on its detector-loading thread."""
        self.load()
        with _lock:
            _solution("short", self.min_score).process(np.zeros((64, 64, 3), np.uint8))
            _solution("mesh", 0.3).process(np.zeros((self.mesh_side, self.mesh_side, 3), np.uint8))
        return self

    def _small(self, img: np.ndarray) -> np.ndarray:
        """The photo downscaled so that its longest side is at most ``detect_side`` (itself when it is)."""
        import cv2  # a dependency of mediapipe; INTER_AREA is a proper (fast) antialiasing downscale
        h, w = img.shape[:2]
        if max(h, w) <= self.detect_side:
            return img
        f = self.detect_side / max(h, w)
        return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)

    def _boxes(self, img: np.ndarray, small: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
        h, w = img.shape[:2]
        small = self._small(img) if small is None else small
        self.last_used = None
        for kind in ("short", "full"):
            res = _solution(kind, self.min_score).process(small)
            dets = res.detections or []
            if dets:
                self.last_used = kind
                out = []
                for d in dets:  # relative coordinates: the same in the small copy and the photo
                    b = d.location_data.relative_bounding_box
                    box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])
                    out.append((box, float(d.score[0])))
                return out
        return []

    def _mesh(self, img: np.ndarray, box: np.ndarray, small: np.ndarray | None = None) -> np.ndarray | None:
        """(478, 3) photo pixels + depth for the face in ``box``, or None when the mesh finds none. With
        ``small`` (the detector's downscaled copy) the crop is cut from it when it holds the crop at
        ``mesh_side`` pixels or more (``mesh_from_detect_copy``)."""
        h, w = img.shape[:2]
        if small is not None and small is not img and self.mesh_from_detect_copy:
            sx, sy = small.shape[1] / w, small.shape[0] / h  # small pixels per photo pixel (per axis: rounding)
            side = self.crop_factor * max(box[2] - box[0], box[3] - box[1]) * min(sx, sy)
            if side >= self.mesh_side:
                pts = self._mesh(small, box * np.array([sx, sy, sx, sy]))
                if pts is not None:  # small pixels -> photo pixels; depth on x's scale, as x
                    pts = pts / np.array([sx, sy, sx])
                return pts
        import cv2
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        n = max(8, int(round(self.crop_factor * max(box[2] - box[0], box[3] - box[1]))))
        x0, y0 = int(round(cx - n / 2.0)), int(round(cy - n / 2.0))
        # the square [x0, x0 + n) x [y0, y0 + n) of whole pixels, zeros outside the photo; only this
        # region is copied, whatever the photo's size
        crop = np.zeros((n, n, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
        if n != self.mesh_side:
            interp = cv2.INTER_AREA if n > self.mesh_side else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (self.mesh_side, self.mesh_side), interpolation=interp)
        res = _solution("mesh", 0.3).process(crop)
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        pts = np.array([[p.x, p.y, p.z] for p in lm], dtype=np.float64) * n  # crop-normalised -> pixels
        pts[:, 0] += x0
        pts[:, 1] += y0
        return pts

    def detect(self, image) -> list[FaceDetection]:
        img = _as_uint8_rgb(image)
        out = []
        with _lock:
            small = self._small(img)
            for box, score in self._boxes(img, small):
                dense = self._mesh(img, box, small)
                if dense is None:
                    continue
                pose = head_pose_from_mesh(dense)
                turn = turn_ratio(dense)
                out.append(FaceDetection(box=box, landmarks=mesh_to_ibug68(dense[:, :2]), score=score,
                                         detector="mediapipe", dense=dense, yaw=pose.yaw, turn_ratio=turn,
                                         confidence=score * pose_factor(pose.yaw) * turn_factor(turn)))
        return _sort_largest_first(out)
