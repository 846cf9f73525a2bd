"""Fitting mode: photo -> detection -> crop -> stage 1 (landmarks) -> stage 2 (photometric) -> result folder.

    fitter = Fitter()                                   # FLAME + DECA's data from the asset manager
    folders = fitter.fit_photo("me.jpg", "out/")
    summary = fitter.fit_photos(["a.jpg", "b.jpg"], "out/", same_person=True)   # one shared shape
    fitter = Fitter(mode="deca+fit")                    # start from DECA's regressor, then refine

Needs only FLAME and DECA's data files (template, embedding, masks, mean texture); DECA's checkpoint only
for ``mode="deca+fit"``. The result folder is the regressor's (docs/CONVENTIONS.md, written by
`core.fitting.writer`), with ``mode`` = ``fit`` or ``deca+fit``. In ``fit`` mode the displacement is a
static map from shading (`core.fitting.detail`), ``animatable_detail = False``; in ``deca+fit`` mode the
regressor's detail code is decoded at the fitted expression and its wrinkle model is fitted, as in
``reconstruct``.

The crop is DECA's (from the detected landmarks) at 224 x 224; both stages work in that crop, so the
cost per photo does not depend on the photo's resolution.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from core.fitting.codes import FitCodes
from core.fitting.landmark_fit import (CROP_SIZE, DenseTargets, LandmarkFitConfig, LandmarkFitInfo, fit_landmarks,
                                       rigid_init)
from core.fitting.photometric_fit import PhotometricFitConfig, PhotometricFitInfo, fit_photometric
from core.frontend import CropTransform, crop_from_landmarks, detect_faces, get_detector, read_image, warp_image
from core.frontend.confidence import check_detection
from core.frontend.landmarks import FaceDetection, LandmarkDetector
from core.pipeline.reconstruct import resolve_device

MODES = ("fit", "deca+fit")
# Landmark noise (pixels of the 224 crop) by detector: the landmark energy weighs each face by 1 / sigma^2.
# dlib's 8 px was chosen on 12 synthetic renders of the test model (a separate seed from the benchmark):
# on them dlib's points sit several pixels from the model's landmark definition (its jaw contour tens of
# pixels at large yaw), and trusting them less lets the priors and the photometric stage decide (posed
# median error 2.3 mm at 1 px, 1.9 at 3 px, 1.4 at 8 px, 1.5 at 12 px after stage 2). FAN's 4 px is not
# measured here (FAN's weights are not available on this machine).
# mediapipe: not measured against ground truth; its mesh-derived 68 points differ from dlib's by 3.3 % of
# the box (~5 crop px) on ../shared/photos (core/frontend/mesh68.py), so it sits between FAN and dlib.
LANDMARK_SIGMA_PX = {"ground-truth": 1.0, "given": 1.0, "fan": 4.0, "mediapipe": 6.0, "dlib": 8.0}
DEFAULT_SIGMA_PX = 4.0
Progress = Callable[[float, str], None]


@dataclass
class FaceFit:
    """One fitted face (all tensors batch 1, on the fitter's device)."""

    source: str
    image: np.ndarray  # (H, W, 3) the photo
    face_index: int
    detection: FaceDetection
    crop: CropTransform
    crop_image: torch.Tensor  # (1, 3, 224, 224)
    codes_stage1: FitCodes
    codes: FitCodes
    stage1: LandmarkFitInfo | None
    stage2: PhotometricFitInfo | None
    albedo: torch.Tensor | None  # (1, 3, S, S) fitted albedo (None without stage 2)
    mode: str = "fit"
    detail: np.ndarray | None = None  # (128,) regressor's detail code (deca+fit)
    faces_in_photo: int = 1  # faces fitted in this face's photo (recorded so a rerun can resume)
    timings: dict = field(default_factory=dict)

    def target_ndc(self) -> np.ndarray:
        return self.crop.apply(self.detection.landmarks) / (CROP_SIZE / 2.0) - 1.0


@dataclass
class FitFailure:
    photo: str
    error: str
    message: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)  # re-raised by fit_photo


@dataclass
class FitSummary:
    succeeded: list[tuple[str, int, str]] = field(default_factory=list)  # (photo, face index, folder)
    failed: list[FitFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {"succeeded": [{"photo": p, "face_index": i, "folder": f} for p, i, f in self.succeeded],
                "failed": [{"photo": f.photo, "error": f.error, "message": f.message} for f in self.failed],
                "seconds": self.seconds}


def _camera_in_fit_crop(res) -> np.ndarray:
    """The regressor's camera (in its crop's NDC: DECA's convention by default) moved into the continuous crop
    the fit works in (same landmarks), so that deca+fit starts where the regressor put the face."""
    src = CropTransform.from_matrix(res.crop_matrix, convention=str(res.extra.get("crop_convention", "continuous")))
    dst = crop_from_landmarks(res.detected_landmarks, size=CROP_SIZE)
    m = src.ndc_transform_to(dst)  # q = k p + c, axis-aligned (DECA's crops never rotate)
    k, c = m[0, 0], m[:2, 2]
    s, tx, ty = (float(v) for v in res.cam)
    s2 = k * s
    return np.array([s2, tx + c[0] / s2, ty - c[1] / s2], np.float32)  # image y is down, FLAME's y up


class Fitter:
    """Analysis-by-synthesis fitting of FLAME to photos (see the module docstring).

    Args:
        assets: asset manager (default: the user's) to load FLAME and DECA's data from.
        face_assets: injected `FaceAssets` instead (tests, benchmarks).
        device: 'auto', 'cpu', 'cuda', ...
        landmarks: 'auto', 'fan', 'dlib' or a `LandmarkDetector`.
        mode: 'fit' (FLAME only) or 'deca+fit' (start from the regressor; needs DECA's checkpoint).
        reconstructor: an existing `core.pipeline.reconstruct.Reconstructor` for 'deca+fit'.
        photometric: run stage 2 (default True).
    """

    def __init__(self, assets=None, face_assets=None, device: str | torch.device = "auto",
                 landmarks: str | LandmarkDetector = "auto", mode: str = "fit", reconstructor=None,
                 landmark_config: LandmarkFitConfig | None = None,
                 photometric_config: PhotometricFitConfig | None = None, photometric: bool = True,
                 landmark_sigma_px: dict[str, float] | None = None, force: bool = False,
                 dense: bool = True) -> None:
        from core.model.face_model import FaceAssets, FaceModel


        self.force = bool(force)  # fit faces below the landmark confidence threshold (with a warning)
        self.dense = bool(dense)  # stage 1 also fits MediaPipe's dense points (when the detector has them)
        if mode not in MODES:
            raise ValueError(f"unknown fitting mode {mode!r}: use one of {MODES}")
        self.mode = mode
        self.device = resolve_device(device)
        self.manager = assets
        self.reconstructor = reconstructor
        if mode == "deca+fit" and reconstructor is None:
            from core.pipeline.reconstruct import Reconstructor

            self.reconstructor = Reconstructor(assets, device=self.device, landmarks=landmarks,
                                               face_assets=face_assets)
        if face_assets is None and self.reconstructor is not None:
            face_assets = self.reconstructor.face_assets
        if face_assets is None:
            from core.assets import AssetManager

            self.manager = assets if assets is not None else AssetManager()
            face_assets = FaceAssets.from_manager(self.manager)
        self.face_assets = face_assets
        self.face_model = FaceModel(face_assets).to(self.device).eval()
        self._landmarks = landmarks
        self._detector = landmarks if isinstance(landmarks, LandmarkDetector) else None
        self.landmark_config = landmark_config or LandmarkFitConfig()
        self.photometric_config = photometric_config or PhotometricFitConfig(landmarks=self.landmark_config)
        self.photometric = bool(photometric)
        self.landmark_sigma_px = dict(LANDMARK_SIGMA_PX if landmark_sigma_px is None else landmark_sigma_px)
        self._flame_description: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def detector(self) -> LandmarkDetector:
        if self._detector is None:
            if self.reconstructor is not None:
                self._detector = self.reconstructor.detector
            else:
                self._detector = get_detector(str(self._landmarks), device=str(self.device))
        return self._detector

    @property
    def flame_description(self) -> str:
        if self._flame_description is None:
            if self.reconstructor is not None:
                self._flame_description = self.reconstructor.flame_description
            else:
                fl = self.face_assets.flame
                digest = "unknown"
                if fl.source and Path(fl.source).is_file():
                    from core.flame.model_file import file_sha256

                    with contextlib.suppress(OSError):
                        digest = file_sha256(fl.source)
                name = Path(fl.source).name if fl.source else "in-memory"
                label = "deca-blender TEST model (synthetic, not FLAME)" if fl.is_test_model else fl.variant
                self._flame_description = f"{label}: {name} sha256:{digest}"
        return self._flame_description

    # ------------------------------------------------------------------ fitting

    def _regressor_init(self, source: str, face_index: int) -> tuple[FitCodes, np.ndarray] | None:
        """DECA's codes for one face of a photo (through the reconstructor's public API)."""
        from core.results.result import ReconstructionResult

        with tempfile.TemporaryDirectory(prefix="deca-fit-init-") as tmp:
            folders = self.reconstructor.reconstruct_photo(source, tmp, all_faces=face_index > 0)
            if face_index >= len(folders):
                return None
            res = ReconstructionResult.load(folders[face_index])
        cam = _camera_in_fit_crop(res)
        codes = FitCodes.from_numpy({"shape": res.shape, "exp": res.exp, "pose": res.pose, "cam": cam,
                                     "tex": res.tex, "light": res.light}, device=self.device)
        return codes, np.asarray(res.detail, np.float32)

    def fit_faces(self, images: Sequence[np.ndarray], detections: Sequence[FaceDetection],
                  sources: Sequence[str] | None = None, face_indices: Sequence[int] | None = None,
                  same_person: bool = False, inits: Sequence[FitCodes | None] | None = None) -> list[FaceFit]:
        """Fit faces given their photos (H, W, 3) and 68 landmarks (in `detections`, photo pixels).

        With `same_person` all faces share one shape (fitted jointly). `inits` optionally gives starting
        codes per face (e.g. a regressor's, in the crop of DECA's rule from the same landmarks).
        """
        n = len(images)
        sources = list(sources) if sources is not None else [""] * n
        face_indices = list(face_indices) if face_indices is not None else [0] * n
        fm = self.face_model
        ref = fm.flame.v_template
        crops = [crop_from_landmarks(d.landmarks, size=CROP_SIZE) for d in detections]
        crop_imgs = torch.stack([warp_image(img, c) for img, c in zip(images, crops)]).to(ref)
        target = torch.as_tensor(np.stack([c.apply(d.landmarks) / (CROP_SIZE / 2.0) - 1.0
                                           for c, d in zip(crops, detections)]), dtype=ref.dtype, device=ref.device)
        init = self._initial_codes(target, inits)
        # Per-face landmark weights 1 / sigma^2 (relative to the configs' sigma) from the detector's noise.
        base = self.landmark_config.sigma_px
        lw = torch.as_tensor([(base / self.sigma_for(d.detector)) ** 2 for d in detections], dtype=ref.dtype,
                             device=ref.device)[:, None].expand(n, 68)
        dense = self._dense_targets(detections, crops) if self.dense else None
        groups = [list(range(n))] if same_person else [[i] for i in range(n)]
        fits: list[FaceFit | None] = [None] * n
        for g in groups:
            idx = torch.as_tensor(g, device=ref.device)
            t0 = time.perf_counter()
            dg = None if dense is None else DenseTargets(dense.target_ndc[idx], dense.faces, dense.bary,
                                                         dense.weights[idx])
            c1, info1 = fit_landmarks(fm, target[idx], init=FitCodes(**{k: v[idx] for k, v in init.__dict__.items()}),
                                      config=self.landmark_config, shared_shape=same_person, landmark_weights=lw[idx],
                                      dense=dg)
            t1 = time.perf_counter()
            c2, info2, albedo = c1, None, None
            if self.photometric:
                c2, info2 = fit_photometric(fm, crop_imgs[idx], c1, target[idx], config=self.photometric_config,
                                            shared_shape=same_person, landmark_weights=lw[idx])
                albedo = info2.albedo
            t2 = time.perf_counter()
            for j, i in enumerate(g):
                share = 1.0 / len(g)
                fits[i] = FaceFit(
                    source=sources[i], image=images[i], face_index=face_indices[i], detection=detections[i],
                    crop=crops[i], crop_image=crop_imgs[i:i + 1], codes_stage1=c1.select(j), codes=c2.select(j),
                    stage1=_slice_info(info1, j), stage2=_slice_info(info2, j) if info2 is not None else None,
                    albedo=albedo[j:j + 1] if albedo is not None else None, mode=self.mode,
                    timings={"stage1": (t1 - t0) * share, "stage2": (t2 - t1) * share})
        return fits  # type: ignore[return-value]

    def _dense_targets(self, detections: Sequence[FaceDetection], crops) -> DenseTargets | None:
        """MediaPipe's fixed surface points (our FLAME embedding) in crop NDC, or None when no face has
        them. Faces without them get weight 0; the irises get 0 (the fit has no gaze)."""
        if not any(d.dense is not None and d.dense.shape[0] >= 478 for d in detections):
            return None
        from core.frontend.flame_embedding import load_mediapipe_embedding

        emb = load_mediapipe_embedding()
        ref = self.face_model.flame.v_template
        iris = np.isin(emb.mediapipe_index, np.arange(468, 478))
        pts, w = [], []
        for d, c in zip(detections, crops):
            ok = d.dense is not None and d.dense.shape[0] >= 478
            xy = d.dense[emb.mediapipe_index, :2] if ok else np.zeros((len(emb.mediapipe_index), 2))
            pts.append(c.apply(xy) / (CROP_SIZE / 2.0) - 1.0)
            w.append(np.where(iris, 0.0, 1.0) if ok else np.zeros(len(emb.mediapipe_index)))
        return DenseTargets(torch.as_tensor(np.stack(pts), dtype=ref.dtype, device=ref.device), emb.face_index,
                            emb.bary, torch.as_tensor(np.stack(w), dtype=ref.dtype, device=ref.device))

    def sigma_for(self, detector: str) -> float:
        """Landmark noise (crop pixels) assumed for a detector's points."""
        return float(self.landmark_sigma_px.get(str(detector).lower(), DEFAULT_SIGMA_PX))

    def _initial_codes(self, target: torch.Tensor, inits: Sequence[FitCodes | None] | None) -> FitCodes:
        """Closed-form rigid init, or the given codes where present (their pose/camera are kept only when
        they reproject the landmarks better than the closed-form init)."""
        from core.fitting.landmark_model import project

        fm = self.face_model
        ref = fm.flame.v_template
        B = target.shape[0]
        codes = FitCodes.zeros(B, device=ref.device, dtype=ref.dtype)
        pose, cam = rigid_init(fm, target)
        codes.pose[:, :3] = pose[:, :3]
        codes.cam = cam
        if not inits:
            return codes
        from core.fitting.landmark_fit import _landmark_model

        lm = _landmark_model(fm)
        for i, c in enumerate(inits):
            if c is None:
                continue
            c = FitCodes(**{k: v.to(ref) for k, v in c.__dict__.items()})
            codes.shape[i], codes.exp[i], codes.tex[i], codes.light[i] = c.shape[0], c.exp[0], c.tex[0], c.light[0]
            codes.pose[i, 3:] = c.pose[0, 3:]
            with torch.no_grad():
                def err(pose, cam):
                    p = project(lm.landmarks(c.shape, c.exp, pose), cam)
                    return float(((p - target[i:i + 1]) ** 2).sum())
                mine = err(torch.cat([codes.pose[i:i + 1, :3], c.pose[:, 3:]], 1), codes.cam[i:i + 1])
                theirs = err(c.pose, c.cam)
            if theirs < mine:
                codes.pose[i, :3], codes.cam[i] = c.pose[0, :3], c.cam[0]
        return codes

    # ------------------------------------------------------------------ photos

    def _detect(self, path: str | Path, all_faces: bool) -> tuple[np.ndarray, list[FaceDetection]]:
        image = read_image(path)
        dets = detect_faces(image, self.detector, all_faces=all_faces, source=path)
        for d in dets:  # LowConfidenceError (a per-photo failure) or warnings kept in the result
            check_detection(d, force=self.force, source=str(path))
        return image, dets

    def fit_photos(self, paths: Iterable[str | Path], out_dir: str | Path, same_person: bool = False,
                   all_faces: bool = False, overwrite: bool = False, progress: Progress | None = None) -> FitSummary:
        """Fit every photo (files or folders) and write one result folder per face.

        With `same_person` the largest face of every photo is fitted jointly with one shared shape."""
        from core.fitting.writer import write_fit_result
        from core.results import writing
        from core.frontend.images import collect_photos

        t_start = time.perf_counter()
        out = writing.check_output_dir(out_dir)
        photos = collect_photos(paths)
        summary = FitSummary()
        reserved: set[str] = set()
        stems: dict[str, str] = {}
        prepared = []
        for k, p in enumerate(photos):
            t0 = time.perf_counter()
            try:
                image, dets = self._detect(p, all_faces and not same_person)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                summary.failed.append(FitFailure(str(p), type(exc).__name__, str(exc) or type(exc).__name__, exc))
                continue
            # one base name per photo, as `reconstruct` does: photo, photo_face1, ... (not photo-2_face1)
            stems[str(p)] = writing.pick_base_stem(out, writing.safe_stem(Path(p).stem), len(dets), overwrite,
                                                   reserved)
            prepared.append((p, image, dets, time.perf_counter() - t0))
            if progress:
                progress(0.2 * (k + 1) / max(1, len(photos)), f"{Path(p).name}: landmarks")

        jobs = []  # (photo, image, detection, face index, detect time)
        n_faces = {str(p): len(dets) for p, _, dets, _ in prepared}
        for p, image, dets, dt in prepared:
            for i, d in enumerate(dets):
                jobs.append((p, image, d, i, dt / len(dets)))
        batches = [jobs] if same_person and jobs else [[j] for j in jobs]
        done = 0
        for batch in batches:
            try:
                inits = None
                if self.mode == "deca+fit":
                    inits, details = [], []
                    for p, _, _, i, _ in batch:
                        r = self._regressor_init(str(p), i)
                        inits.append(r[0] if r else None)
                        details.append(r[1] if r else None)
                fits = self.fit_faces([b[1] for b in batch], [b[2] for b in batch], [str(b[0]) for b in batch],
                                      [b[3] for b in batch], same_person=same_person, inits=inits)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                for b in batch:
                    summary.failed.append(FitFailure(str(b[0]), type(exc).__name__, str(exc) or type(exc).__name__,
                                                     exc))
                continue
            for k, (fit, b) in enumerate(zip(fits, batch)):
                fit.timings["detect"] = b[4]
                fit.faces_in_photo = n_faces[str(b[0])]
                if self.mode == "deca+fit":
                    fit.detail = details[k]
                try:
                    name = writing.folder_name(stems[str(b[0])], b[3])
                    folder = write_fit_result(self, fit, out, name, overwrite)
                    summary.succeeded.append((str(b[0]), b[3], str(folder)))
                except (KeyboardInterrupt, SystemExit, writing.OutputDirError):
                    raise
                except Exception as exc:
                    summary.failed.append(FitFailure(str(b[0]), type(exc).__name__, str(exc) or type(exc).__name__,
                                                     exc))
                done += 1
                if progress:
                    progress(0.2 + 0.8 * done / max(1, len(jobs)), f"{Path(b[0]).name}: done")
        summary.seconds = time.perf_counter() - t_start
        return summary

    def fit_photo(self, path: str | Path, out_dir: str | Path, all_faces: bool = False,
                  overwrite: bool = False) -> list[Path]:
        """Fit one photo; returns its result folders. Raises the photo's error (unreadable, no face)."""
        summary = self.fit_photos([path], out_dir, all_faces=all_faces, overwrite=overwrite)
        if summary.failed and not summary.succeeded:
            raise summary.failed[0].exception  # the photo's own error (NoFaceError, ImageReadError, ...)
        return [Path(s[2]) for s in summary.succeeded]


def _slice_info(info, j: int):
    """Per-face view of a batched stage info."""
    if info is None:
        return None
    out = {}
    for k, v in info.__dict__.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] > j:
            out[k] = v[j:j + 1]
        elif isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] > j:
            out[k] = v[j:j + 1]
        else:
            out[k] = v
    return type(info)(**out)
