"""Face detection and 68-point landmarks (iBUG 300-W order), plus a dense mesh where the detector has one.

Coordinates: boxes and landmarks are in **continuous photo pixel coordinates** (docs/CONVENTIONS.md):
pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``. dlib reports integer pixel indices, so its points
get ``+0.5`` (the pixel centre) and its inclusive rectangles ``[left, right]`` become ``[left, right + 1)``.

Detectors:

- `DlibDetector`: dlib's HOG frontal detector (upsample 1) on a copy of the photo downscaled to at most
  ``max_side`` pixels, the 68-point shape predictor on the full-resolution photo, and when HOG finds nothing,
  dlib's CNN (MMOD) detector as a fallback (about 1 s on 2 cores; see benchmarks/bench_frontend.py).
  Models come from the ``face_recognition_models`` package, located without importing it (its
  ``__init__`` imports ``pkg_resources``), and are loaded once per process.
- `FanDetector`: the ``face_alignment`` package (FAN), used only when it is importable **and** its weights
  are already in the torch hub cache; it never downloads.

- `MediaPipeDetector` (core/frontend/mediapipe_mesh.py, the default): MediaPipe's face detector and
  478-point mesh; its 68 points come from the mesh (core/frontend/mesh68.py).

`get_detector` picks one; `select_faces` applies the multiple-faces policy and raises `NoFaceError`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import DecaError

__all__ = [
    "FaceDetection", "LandmarkDetector", "DlibDetector", "FanDetector", "get_detector",
    "select_faces", "detect_faces", "NoFaceError", "DetectorUnavailableError",
    "dlib_models_dir", "DLIB_INSTALL_HINT", "FAN_INSTALL_HINT",
]

DLIB_INSTALL_HINT = "pip install dlib-bin face-recognition-models   (or: pip install 'deca-blender[dlib]')"
FAN_INSTALL_HINT = ("pip install face-alignment, then let it download its weights once on a machine with "
                    "internet access (they are cached in the torch hub folder)")


class NoFaceError(DecaError, ValueError):
    """No face was found in a photo."""

    def __init__(self, path: str | os.PathLike | None = None, detector: str | None = None):
        self.path = None if path is None else str(path)
        self.detector = detector
        where = self.path if self.path is not None else "the image"
        msg = f"no face found in {where}"
        if detector:
            msg += f" (detector: {detector})"
        super().__init__(msg)


class DetectorUnavailableError(DecaError, RuntimeError):
    """A requested landmark detector cannot be used here; the message says what to install."""


@dataclass
class FaceDetection:
    """One detected face. ``box`` = (x0, y0, x1, y1) and ``landmarks`` (68, 2) = (x, y), both float64 in
    continuous photo pixel coordinates. ``score`` is the detector's confidence (detector-specific scale)."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    detector: str
    # Set by detectors that know them (MediaPipe): the dense mesh (N, 3) = photo pixels + relative depth
    # (same scale as x, negative towards the camera), the head yaw in degrees (> 0: nose towards +x) and a
    # confidence in [0, 1] (see core/frontend/mediapipe_mesh.py for how it is made).
    dense: np.ndarray | None = None
    yaw: float | None = None
    confidence: float | None = None
    turn_ratio: float | None = None  # MediaPipe: how far the nose tip is towards/past the face outline
    warnings: list[str] = field(default_factory=list)  # filled by core.frontend.confidence.check_detection

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        if self.landmarks.shape != (68, 2):
            raise ValueError(f"landmarks must be (68, 2), got {self.landmarks.shape}")
        self.score = float(self.score)
        if self.dense is not None:
            self.dense = np.asarray(self.dense, dtype=np.float64)
            if self.dense.ndim != 2 or self.dense.shape[1] != 3:
                raise ValueError(f"dense landmarks must be (N, 3), got {self.dense.shape}")

    def record(self) -> dict[str, np.ndarray]:
        """What a result stores about this detection besides the 68 points (saved as ``extra_<key>``):
        ``detector_score``, and when known ``detected_landmarks_dense`` (N, 3) float32,
        ``landmark_confidence``, ``head_yaw`` (degrees) and ``landmark_warnings`` (one line each)."""
        out: dict[str, np.ndarray] = {"detector_score": np.float64(self.score)}
        if self.dense is not None:
            out["detected_landmarks_dense"] = self.dense.astype(np.float32)
        if self.confidence is not None:
            out["landmark_confidence"] = np.float64(self.confidence)
        if self.yaw is not None:
            out["head_yaw"] = np.float64(self.yaw)
        if self.turn_ratio is not None:
            out["head_turn_ratio"] = np.float64(self.turn_ratio)
        if self.warnings:
            out["landmark_warnings"] = np.str_("\n".join(self.warnings))
        return out

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return float(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))


def _sort_largest_first(dets: list[FaceDetection]) -> list[FaceDetection]:
    return sorted(dets, key=lambda d: -d.area)


def _as_uint8_rgb(image) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only if torch is loaded; never import it here (a
    if torch is not None and isinstance(image, torch.Tensor):  # detector process runs before torch loads)
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
            image = np.transpose(image, (1, 2, 0))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected float in [0, 1] or uint8, got dtype {a.dtype}")
    return np.ascontiguousarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8))


def _resize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize by ``scale`` (antialiased when shrinking); the continuous coordinate map is x' = x * scale
    (up to the rounding of the output size, accounted for by the caller through the exact factors)."""
    from PIL import Image
    h, w = img.shape[:2]
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))


class LandmarkDetector:
    """Interface: ``detect(image (H, W, 3) float in [0, 1]) -> list[FaceDetection]``, largest box first."""

    name = "base"

    def detect(self, image) -> list[FaceDetection]:  # pragma: no cover - interface
        raise NotImplementedError

    def warm_up(self) -> "LandmarkDetector":
        """Do now what the first photo would otherwise wait for (load models, first-call set-up); the
        detections stay the same. `core.pipeline.reconstruct` runs it on its detector-loading thread."""
        return self

    @classmethod
    def availability(cls) -> tuple[bool, str]:  # pragma: no cover - interface
        return False, "abstract detector"

    @classmethod
    def is_available(cls) -> bool:
        return cls.availability()[0]


# ----------------------------------------------------------------------------------------------- dlib

_DLIB_FILES = {
    "predictor68": "shape_predictor_68_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
}
_dlib_cache: dict[str, object] = {}
_dlib_lock = threading.Lock()


def dlib_models_dir() -> Path | None:
    """The ``models/`` folder of the ``face_recognition_models`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    return None


def _dlib_availability(models_dir: Path | None = None, need_cnn: bool = False) -> tuple[bool, str]:
    if importlib.util.find_spec("dlib") is None:
        return False, f"the dlib detector needs the 'dlib' module: {DLIB_INSTALL_HINT}"
    d = Path(models_dir) if models_dir is not None else dlib_models_dir()
    if d is None:
        return False, ("the dlib detector needs the 68-point model from the 'face_recognition_models' "
                       f"package: {DLIB_INSTALL_HINT}")
    needed = ["predictor68"] + (["cnn"] if need_cnn else [])
    missing = [_DLIB_FILES[k] for k in needed if not (d / _DLIB_FILES[k]).is_file()]
    if missing:
        return False, f"dlib model files missing in {d}: {', '.join(missing)} ({DLIB_INSTALL_HINT})"
    return True, f"dlib models in {d}"


def _dlib_model(kind: str, models_dir: Path):
    """Load (once per process) 'hog', 'predictor68' or 'cnn'."""
    key = f"{kind}:{models_dir}"
    m = _dlib_cache.get(key)
    if m is not None:
        return m
    with _dlib_lock:
        m = _dlib_cache.get(key)
        if m is None:
            import dlib
            if kind == "hog":
                m = dlib.get_frontal_face_detector()
            elif kind == "predictor68":
                m = dlib.shape_predictor(str(models_dir / _DLIB_FILES["predictor68"]))
            elif kind == "cnn":
                m = dlib.cnn_face_detection_model_v1(str(models_dir / _DLIB_FILES["cnn"]))
            else:  # pragma: no cover
                raise ValueError(kind)
            _dlib_cache[key] = m
    return m


class DlibDetector(LandmarkDetector):
    """dlib HOG (+ CNN fallback) face detector and 68-point shape predictor.

    Parameters
    ----------
    max_side: HOG runs on a copy downscaled so that its longest side is at most this (None: never).
    upsample: HOG pyramid upsampling (1 finds faces down to about 40 px in the downscaled copy).
    cnn_fallback: when HOG finds nothing, run dlib's CNN (MMOD) detector before giving up.
    cnn_side: the CNN runs (upsample 0) on a copy resized so that its longest side is this; it finds faces
        larger than about 80 px there, i.e. about 1/6 of the photo's longest side at the default 512.
    hog: False runs the CNN detector only (mostly for tests and measurements).
    models_dir: folder holding the .dat files (default: the face_recognition_models package).
    """

    name = "dlib"

    def __init__(self, max_side: int | None = 800, upsample: int = 1, cnn_fallback: bool = True,
                 cnn_side: int = 512, hog: bool = True, models_dir: str | os.PathLike | None = None):
        need_cnn = cnn_fallback or not hog
        ok, reason = _dlib_availability(models_dir, need_cnn=need_cnn)
        if not ok:
            raise DetectorUnavailableError(reason)
        self.models_dir = Path(models_dir) if models_dir is not None else dlib_models_dir()
        self.max_side = max_side
        self.upsample = int(upsample)
        self.cnn_fallback = bool(cnn_fallback)
        self.cnn_side = int(cnn_side)
        self.hog = bool(hog)
        self.last_used: str | None = None  # which detector produced the last result: 'hog', 'cnn', None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _dlib_availability()

    def load(self) -> "DlibDetector":
        """Load the models now (they are otherwise loaded on first use)."""
        if self.hog:
            _dlib_model("hog", self.models_dir)
        _dlib_model("predictor68", self.models_dir)
        if self.cnn_fallback or not self.hog:
            _dlib_model("cnn", self.models_dir)
        return self

    def warm_up(self) -> "DlibDetector":
        """`load`: the model files are what dlib's first photo waits for."""
        return self.load()

    # -- detection stages; boxes are returned in continuous photo coordinates with scores
    def _hog_boxes(self, img: np.ndarray) -> list[tuple[np.ndarray, float]]:
        h, w = img.shape[:2]
        small = img
        if self.max_side is not None and max(h, w) > self.max_side:
            small = _resize_uint8(img, self.max_side / max(h, w))
        sx, sy = small.shape[1] / w, small.shape[0] / h
        rects, scores, _ = _dlib_model("hog", self.models_dir).run(small, self.upsample, 0.0)
        out = []
        for r, s in zip(rects, scores):
            box = np.array([r.left() / sx, r.top() / sy, (r.right() + 1) / sx, (r.bottom() + 1) / sy])
            out.append((box, float(s)))
        return out

    def _cnn_boxes(self, img: np.ndarray) -> list[tuple[np.ndarray, float]]:
        h, w = img.shape[:2]
        small = img
        if max(h, w) != self.cnn_side:
            small = _resize_uint8(img, self.cnn_side / max(h, w))
        sx, sy = small.shape[1] / w, small.shape[0] / h
        dets = _dlib_model("cnn", self.models_dir)(small, 0)
        out = []
        for d in dets:
            r = d.rect
            box = np.array([r.left() / sx, r.top() / sy, (r.right() + 1) / sx, (r.bottom() + 1) / sy])
            out.append((box, float(d.confidence)))
        return out

    def _landmarks(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        import dlib
        # continuous [x0, x1) -> inclusive dlib pixel indices
        l, t = int(round(box[0])), int(round(box[1]))
        r, b = int(round(box[2])) - 1, int(round(box[3])) - 1
        shape = _dlib_model("predictor68", self.models_dir)(img, dlib.rectangle(l, t, max(r, l), max(b, t)))
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        return pts + 0.5

    def detect(self, image) -> list[FaceDetection]:
        img = _as_uint8_rgb(image)
        boxes: list[tuple[np.ndarray, float]] = []
        used = None
        if self.hog:
            boxes = self._hog_boxes(img)
            used = "hog" if boxes else None
        if not boxes and (self.cnn_fallback or not self.hog):
            boxes = self._cnn_boxes(img)
            used = "cnn" if boxes else None
        self.last_used = used
        dets = [FaceDetection(box=b, landmarks=self._landmarks(img, b), score=s, detector=f"dlib-{used}")
                for b, s in boxes]
        return _sort_largest_first(dets)


# ------------------------------------------------------------------------------------- face_alignment

class _DownloadBlocked(RuntimeError):
    pass


@contextlib.contextmanager
def _no_downloads():
    """Make any weight download attempted by torch.hub / face_alignment raise instead of fetching."""
    import torch.hub as hub

    def refuse(url, dst=None, *args, **kwargs):
        raise _DownloadBlocked(f"{url} (to {dst})")

    patched = [(hub, "download_url_to_file", hub.download_url_to_file)]
    try:
        import face_alignment.utils as fa_utils
        if hasattr(fa_utils, "download_url_to_file"):
            patched.append((fa_utils, "download_url_to_file", fa_utils.download_url_to_file))
    except ImportError:  # pragma: no cover
        pass
    for mod, attr, _ in patched:
        setattr(mod, attr, refuse)
    try:
        yield
    finally:
        for mod, attr, orig in patched:
            setattr(mod, attr, orig)


def _torch_hub_checkpoints() -> Path:
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


_fan_lock = threading.Lock()
_fan_cache: dict[str, object] = {}


class FanDetector(LandmarkDetector):
    """FAN 2D landmarks via the ``face_alignment`` package (its S3FD face detector included).

    Available only when ``face_alignment`` is importable and the 2D-FAN and S3FD weights are already in
    ``<torch hub dir>/checkpoints``. Construction never downloads: should face_alignment still want to
    fetch a file, `DetectorUnavailableError` is raised with the URL it asked for.

    FAN's landmarks are taken as continuous pixel coordinates (face_alignment maps heatmap-cell centres
    linearly into the photo), so no half-pixel offset is added.
    """

    name = "fan"

    def __init__(self, device: str = "cpu"):
        ok, reason = self.availability()
        if not ok:
            raise DetectorUnavailableError(reason)
        self.device = str(device)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            spec = importlib.util.find_spec("face_alignment")
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return False, f"the FAN detector needs the 'face_alignment' package: {FAN_INSTALL_HINT}"
        ckpt = _torch_hub_checkpoints()
        files = [p.name for p in ckpt.iterdir()] if ckpt.is_dir() else []
        have_fan = any(n.upper().startswith(("2DFAN4", "2DFAN-4")) for n in files)
        have_sfd = any(n.lower().startswith("s3fd") for n in files)
        missing = [what for what, ok in (("2DFAN4 (landmarks)", have_fan), ("s3fd (face detector)", have_sfd))
                   if not ok]
        if missing:
            return False, (f"face_alignment is installed but its weights are not in {ckpt} "
                           f"(missing: {', '.join(missing)}); downloads are disabled here. {FAN_INSTALL_HINT}")
        return True, f"face_alignment weights in {ckpt}"

    def _model(self):
        key = self.device
        m = _fan_cache.get(key)
        if m is not None:
            return m
        with _fan_lock:
            m = _fan_cache.get(key)
            if m is None:
                import face_alignment
                lt = face_alignment.LandmarksType
                kind = getattr(lt, "TWO_D", None)
                if kind is None:
                    kind = getattr(lt, "_2D")
                try:
                    with _no_downloads():
                        m = face_alignment.FaceAlignment(kind, device=self.device, flip_input=False)
                except _DownloadBlocked as e:
                    raise DetectorUnavailableError(
                        f"face_alignment wanted to download {e}; downloads are disabled. Place that file "
                        f"in {_torch_hub_checkpoints()} ({FAN_INSTALL_HINT})") from None
                _fan_cache[key] = m
        return m

    def detect(self, image) -> list[FaceDetection]:
        img = _as_uint8_rgb(image)
        fa = self._model()
        boxes = None
        try:
            res = fa.get_landmarks_from_image(img, return_bboxes=True)
            if isinstance(res, tuple):
                preds, _scores, boxes = res[0], res[1] if len(res) > 1 else None, res[-1]
            else:
                preds = res
        except TypeError:  # older face_alignment without return_bboxes
            preds = fa.get_landmarks_from_image(img)
        if preds is None:
            return []
        dets = []
        for i, p in enumerate(preds):
            lm = np.asarray(p, dtype=np.float64)[:, :2]
            if lm.shape != (68, 2):
                continue
            score = 1.0
            if boxes is not None and i < len(boxes) and boxes[i] is not None:
                bb = np.asarray(boxes[i], dtype=np.float64).ravel()
                box = bb[:4]
                if bb.size > 4:
                    score = float(bb[4])
            else:
                box = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
            dets.append(FaceDetection(box=box, landmarks=lm, score=score, detector="fan"))
        return _sort_largest_first(dets)


def select_faces(detections: Sequence[FaceDetection], all_faces: bool = False,
                 source: str | os.PathLike | None = None) -> list[FaceDetection]:
    """The multiple-faces policy: the largest face by default, every face (largest first) with
    ``all_faces``. Raises `NoFaceError` naming ``source`` when there is none."""
    dets = _sort_largest_first(list(detections))
    if not dets:
        raise NoFaceError(source)
    return dets if all_faces else dets[:1]
