"""``deca-train prepare``: a training dataset (layout of :mod:`training.data`) from folders of photos.

Input: ``<photos>/<identity>/<photo>.(jpg|png|...)``, one sub-folder per person (photos directly inside
``<photos>`` become one identity each). For every photo: the core's landmark detector (largest face), DECA's
crop rule around the 68 landmarks (``core.frontend.crop_from_landmarks``, scale 1.25) warped to 224x224,
landmarks mapped into the crop, and a skin mask:

* with a face parser (``--face-parser module:function``, a callable ``crop (224, 224, 3) float -> mask``),
  its output thresholded at 0.5 (it overrides ``--skin-mask``);
* ``mesh``: when the detector gives MediaPipe's dense mesh (``FaceDetection.dense``),
  :func:`core.frontend.skin_mask.skin_mask` of the mesh mapped into the crop (the face oval minus eyes,
  eyebrows and lips; no colour test), and of the mesh mapped into the full image for the full mask;
* ``landmarks``: :func:`skin_mask_from_landmarks`: the face region (jaw contour closed over a forehead band
  above the brows) minus eyes and inner mouth, kept where the colour is close to the skin colour estimated
  on the cheeks and nose (Mahalanobis distance in chroma, robust re-estimation, small morphological
  clean-up, largest component).

``skin_mask="auto"`` (the default) is ``mesh`` for detections that carry the dense mesh and ``landmarks`` for the
others; ``"mesh"`` refuses a detector without it (:class:`SkinMaskError`). Each sample's ``.npz`` records its
``skin_mask_source`` (``mesh``, ``landmarks`` or ``face parser``) and ``dataset.json`` the sources of the run.

Photos where no face is found, or that cannot be read, are reported and skipped.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import DecaError
from core.networks import INPUT_SIZE

from .data import FULL_SUFFIX, write_dataset_info, write_manifest, write_sample

__all__ = ["skin_mask_from_landmarks", "prepare_dataset", "PrepareReport", "load_face_parser", "PHOTO_EXTS",
           "SKIN_MASKS", "SkinMaskError"]

log = logging.getLogger("training.prepare")
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: ``--skin-mask``: the dense mesh when the detection has it, always the mesh, always the landmarks + colour
SKIN_MASKS = ("auto", "mesh", "landmarks")
#: what ``dataset.json``'s ``skin_mask`` says for each source
SKIN_MASK_DESCRIPTIONS = {"mesh": "MediaPipe dense mesh (core.frontend.skin_mask)",
                          "landmarks": "landmarks + colour statistics"}


class SkinMaskError(DecaError, ValueError):
    """``--skin-mask mesh`` with a detector that gives no dense mesh."""

JAW = list(range(0, 17))
BROWS = list(range(17, 27))
LEFT_EYE = list(range(36, 42))
RIGHT_EYE = list(range(42, 48))
INNER_MOUTH = list(range(60, 68))
#: the stored full image (``<name>.full.png``): side in px, and its square in units of the landmark box
FULL_SIZE = 320
FULL_SCALE = 2.2
#: cheeks and nose: where the skin colour is estimated
CORE_SKIN = [1, 2, 3, 4, 31, 33, 35, 12, 13, 14, 15, 29]


def _polygon_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (size[1], size[0]), 0)
    pts = [(float(x), float(y)) for x, y in points]
    if len(pts) >= 3:
        ImageDraw.Draw(im).polygon(pts, fill=1)
    return np.asarray(im, dtype=bool)


def _hull(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    try:
        return points[ConvexHull(points).vertices]
    except Exception:  # noqa: BLE001 - degenerate point sets
        return points


def _ycbcr(img: np.ndarray) -> np.ndarray:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 + (b - y) * 0.564
    cr = 0.5 + (r - y) * 0.713
    return np.stack([y, cb, cr], -1)


def face_region(landmarks: np.ndarray, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE),
                forehead: float = 0.35) -> np.ndarray:
    """Jaw contour + brows raised by ``forehead`` x (chin-to-brow height), convex hull; minus the eyes
    (slightly dilated) and the inner mouth."""
    lm = np.asarray(landmarks, dtype=np.float64)
    brow = lm[BROWS]
    chin = lm[8]
    up = brow.mean(0) - chin
    height = np.linalg.norm(up)
    up = up / max(height, 1e-6)
    raised = brow + up * forehead * height
    region = _polygon_mask(_hull(np.concatenate([lm[JAW], brow, raised])), size)
    for eye in (LEFT_EYE, RIGHT_EYE):
        e = lm[eye]
        c = e.mean(0)
        region &= ~_polygon_mask(c + (e - c) * 1.35, size)
    mouth = lm[INNER_MOUTH]
    region &= ~_polygon_mask(mouth, size)
    return region


def skin_mask_from_landmarks(image: np.ndarray, landmarks: np.ndarray, threshold: float = 3.0,
                             forehead: float = 0.35) -> np.ndarray:
    """Skin mask (H, W) bool of a crop ``image`` (H, W, 3) float in [0, 1] from its 68 landmarks (crop
    pixels): the landmark face region restricted to pixels whose (Cb, Cr) chroma lies within ``threshold``
    standard deviations (Mahalanobis) of the skin colour of the cheeks and nose; very dark pixels (luma
    below the skin mean minus 3.5 sigma: hair, brows, nostrils) are excluded as well."""
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    size = img.shape[:2]
    lm = np.asarray(landmarks, dtype=np.float64)
    region = face_region(lm, size, forehead)
    core = _polygon_mask(_hull(lm[CORE_SKIN]), size) & region
    if core.sum() < 20:
        core = region
    if core.sum() < 20:
        return region
    ycc = _ycbcr(img)
    chroma = ycc[..., 1:]
    sample = chroma[core]
    luma = ycc[..., 0][core]
    keep = np.ones(len(sample), dtype=bool)
    for _ in range(3):  # robust re-estimation: drop outliers (hair, glasses, specularities)
        mu = sample[keep].mean(0)
        cov = np.cov(sample[keep].T) + np.eye(2) * 1e-5
        inv = np.linalg.inv(cov)
        d = sample - mu
        m2 = np.einsum("ni,ij,nj->n", d, inv, d)
        keep = m2 < threshold ** 2
        if keep.sum() < 10:
            keep = np.ones(len(sample), dtype=bool)
            break
    mu = sample[keep].mean(0)
    inv = np.linalg.inv(np.cov(sample[keep].T) + np.eye(2) * 1e-5)
    d = chroma - mu
    m2 = np.einsum("hwi,ij,hwj->hw", d, inv, d)
    l_mu, l_sd = luma[keep].mean(), luma[keep].std() + 1e-3
    mask = region & (m2 < threshold ** 2) & (ycc[..., 0] > l_mu - 3.5 * l_sd)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_closing(mask, iterations=2) & region
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def load_face_parser(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """``"package.module:function"`` -> the callable (crop (224, 224, 3) float in [0, 1] -> skin mask)."""
    if ":" not in spec:
        raise ValueError(f"face parser {spec!r} must look like 'module:function'")
    mod, fn = spec.split(":", 1)
    f = getattr(importlib.import_module(mod), fn, None)
    if not callable(f):
        raise ValueError(f"face parser {spec!r}: {fn} is not a callable of {mod}")
    return f


@dataclass
class PrepareReport:
    out: Path
    written: int = 0
    identities: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    #: samples written by this run per skin-mask source (``mesh``, ``landmarks``, ``face parser``)
    skin_mask_sources: dict[str, int] = field(default_factory=dict)


def _photo_groups(photos: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for p in sorted(photos.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in PHOTO_EXTS)
            if files:
                groups[p.name] = files
        elif p.is_file() and p.suffix.lower() in PHOTO_EXTS:
            groups[p.stem] = [p]
    return groups


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> ``(i, N)``; None -> ``(0, 1)``. The photos are split by their position in the
    sorted list of all photos, so N independent jobs (a Slurm array, Ray tasks, torchrun ranks) cover the
    corpus exactly once with no coordination."""
    if spec is None or spec == "":
        return 0, 1
    try:
        a, b = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 3/16), got {spec!r}") from None
    if b < 1 or not 0 <= a < b:
        raise ValueError(f"--shard {spec}: needs 0 <= i < N")
    return a, b


# one detector / face parser per worker process, built by the pool's initializer
_WORKER: dict = {}


def _init_worker(detector: str, face_parser: str | None, skin_threshold: float, detector_obj=None,
                 skin_mask: str = "auto") -> None:
    from core.frontend import get_detector

    _WORKER["det"] = detector_obj or get_detector(detector)
    _WORKER["parser"] = load_face_parser(face_parser) if face_parser else None
    _WORKER["threshold"] = skin_threshold
    _WORKER["skin_mask"] = skin_mask


def _init_pool_worker(detector: str, face_parser: str | None, skin_threshold: float, skin_mask: str = "auto") -> None:
    import torch

    torch.set_num_threads(1)  # N workers on N cores: no oversubscription
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # OpenCV is optional (MediaPipe's extra)
        pass
    _init_worker(detector, face_parser, skin_threshold, skin_mask=skin_mask)  # detector and parser: once per worker


def _skin_mask_source(mode: str, has_parser: bool, dense, detector: str) -> str:
    """Which mask a detection gets: ``face parser``, ``mesh`` or ``landmarks`` (see the module docstring)."""
    if has_parser:
        return "face parser"
    if mode == "landmarks":
        return "landmarks"
    if dense is not None:
        return "mesh"
    if mode == "mesh":
        raise SkinMaskError(f"--skin-mask mesh needs MediaPipe's dense mesh, and the '{detector}' detector gives "
                            f"none: use --detector mediapipe (or auto with mediapipe installed), or --skin-mask "
                            f"landmarks / auto")
    return "landmarks"


def _prepare_one(f: Path, folder: Path, name: str) -> tuple[str | None, str | None]:
    """Detect, crop and write one photo (in a worker); returns (why it was skipped or None, the skin mask's
    source or None)."""
    import torch
    from core.frontend import (CropTransform, ImageReadError, NoFaceError, crop_from_landmarks, detect_faces,
                               read_image, warp_image)
    from core.frontend.skin_mask import skin_mask

    det, parser = _WORKER["det"], _WORKER["parser"]
    try:
        img = read_image(f)
        face = detect_faces(img, det, source=f)[0]
    except (ImageReadError, NoFaceError) as e:
        return str(e), None
    source = _skin_mask_source(_WORKER.get("skin_mask", "auto"), parser is not None, face.dense, face.detector)
    tf = crop_from_landmarks(face.landmarks, scale=1.25, size=INPUT_SIZE)
    crop = warp_image(img, tf).permute(1, 2, 0).numpy().astype(np.float32)
    lm = tf.apply(face.landmarks).astype(np.float32)
    # the full image data.crop=release re-cuts from: the photo's square at FULL_SCALE x the landmark box (the
    # re-crop needs at most 1.8x plus its shift), at FULL_SIZE px
    tf_full = crop_from_landmarks(face.landmarks, scale=FULL_SCALE / 1.1, size=FULL_SIZE)
    to_crop = tf.matrix @ np.linalg.inv(tf_full.matrix)  # full px -> crop px
    full_img = warp_image(img, tf_full).permute(1, 2, 0).numpy().astype(np.float32)
    full_mask = None
    if source == "face parser":
        mask = np.asarray(parser(crop)) > 0.5
    elif source == "mesh":
        # the mesh's polygons drawn in each image's own pixels: no resampling of a drawn mask, and the full
        # mask covers the face outside the 224 crop as well
        mask = skin_mask(tf.apply(face.dense[:, :2]), (INPUT_SIZE, INPUT_SIZE))
        full_mask = skin_mask(tf_full.apply(face.dense[:, :2]), (FULL_SIZE, FULL_SIZE))
    else:
        mask = skin_mask_from_landmarks(crop, lm, threshold=_WORKER["threshold"])
    if full_mask is None:  # a mask of the crop's pixels only: carried over to the full image
        back = CropTransform.from_matrix(np.linalg.inv(to_crop), size=FULL_SIZE)  # crop px -> full px
        m3 = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None].expand(3, -1, -1)
        full_mask = warp_image(m3, back, antialias=False)[0].numpy() > 0.5
    full = {"image": full_img, "landmarks": tf_full.apply(face.landmarks), "skin_mask": full_mask,
            "matrix": to_crop}
    write_sample(folder, name, crop, lm, mask, full=full, crop_matrix=tf.matrix.astype(np.float64),
                 source=np.array(str(f)), detector=np.array(face.detector), skin_mask_source=np.array(source))
    return None, source


def _prepare_task(task: tuple[Path, Path, str]) -> tuple[str | None, str | None]:
    folder, f, name = task
    return _prepare_one(f, folder, name)


def prepare_dataset(photos: str | Path, out: str | Path, detector: str = "auto", face_parser: str | None = None,
                    min_images: int = 1, skin_threshold: float = 3.0, overwrite: bool = False,
                    detector_obj=None, workers: int = 1, shard: str | None = None,
                    skin_mask: str = "auto") -> PrepareReport:
    """Build the dataset (see the module docstring). Existing samples are kept unless ``overwrite``, so an
    interrupted run resumes where it stopped. ``workers`` processes share the photos (each loads its own
    detector); ``shard="i/N"`` processes only this job's share (:func:`parse_shard`); ``skin_mask`` one of
    :data:`SKIN_MASKS`."""
    import time

    photos, out = Path(photos), Path(out)
    if not photos.is_dir():
        raise FileNotFoundError(f"photo folder not found: {photos}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if skin_mask not in SKIN_MASKS:
        raise ValueError(f"skin_mask must be one of {', '.join(SKIN_MASKS)}, got {skin_mask!r}")
    shard_i, shard_n = parse_shard(shard)
    groups = _photo_groups(photos)
    if not groups:
        raise FileNotFoundError(f"{photos}: no photos ({', '.join(PHOTO_EXTS)}) found")
    report = PrepareReport(out=out)
    tasks: list[tuple[str, Path, str]] = []
    present: list[tuple[str, str]] = []  # this job's samples on disk: its manifest
    position = 0
    for ident, files in groups.items():
        if len(files) < min_images:
            report.skipped.extend((str(f), f"identity has fewer than {min_images} photos") for f in files)
            continue
        for k, f in enumerate(files):
            mine = position % shard_n == shard_i
            position += 1
            if not mine:
                continue
            name = f"{k:04d}_{f.stem}"
            # the .npz is written last (write_sample): with it and the full image the sample is complete
            if not overwrite and (out / ident / f"{name}.npz").is_file() and \
                    (out / ident / f"{name}{FULL_SUFFIX}").is_file():
                present.append((ident, name))  # resumed: already written
                continue
            tasks.append((ident, f, name))
    if tasks:
        log.info("prepare: %d photo(s) to process with %d worker(s)%s", len(tasks), workers,
                 f", shard {shard_i}/{shard_n}" if shard_n > 1 else "")
    t0 = time.perf_counter()

    def record(i: int, ident: str, f: Path, name: str, done: tuple[str | None, str | None]) -> None:
        why, source = done
        if why is None:
            report.written += 1
            present.append((ident, name))
            report.skin_mask_sources[source] = report.skin_mask_sources.get(source, 0) + 1
        else:
            report.skipped.append((str(f), why))
            log.warning("skipped %s: %s", f, why)
        n = i + 1
        if n == len(tasks) or n % max(1, len(tasks) // 20) == 0:
            rate = n / max(time.perf_counter() - t0, 1e-9)
            log.info("prepare: %d/%d photos (%.2f/s, %.0f s left)", n, len(tasks), rate, (len(tasks) - n) / rate)

    if workers == 1 or len(tasks) <= 1:
        _init_worker(detector, face_parser, skin_threshold, detector_obj, skin_mask)
        for i, (ident, f, name) in enumerate(tasks):
            record(i, ident, f, name, _prepare_one(f, out / ident, name))
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: the server imports torch and the detectors once and forks the workers from a clean state
        # (plain fork after torch has run hangs the children in OpenMP; spawn re-imports in every worker).
        # One thread per worker: N workers on N cores, no OpenMP/BLAS oversubscription (the variables must be
        # set before the server starts: OpenMP reads them once)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["training.prepare", "core.frontend"])
        else:
            ctx = mp.get_context("spawn")
        # chunks: one round trip per few photos, and in photo order so that the progress stays in order
        chunk = max(1, min(16, len(tasks) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_pool_worker,
                                 initargs=(detector, face_parser, skin_threshold, skin_mask)) as pool:
            results = pool.map(_prepare_task, [(out / ident, f, name) for ident, f, name in tasks], chunksize=chunk)
            for i, ((ident, f, name), done) in enumerate(zip(tasks, results)):
                record(i, ident, f, name, done)
    write_manifest(out, present, "manifest.json" if shard_n == 1 else f"manifest.{shard_i}of{shard_n}.json")
    report.identities = len({ident for ident, _ in present})
    det_name = getattr(detector_obj, "name", None) or detector
    # which masks this run wrote (every sample says its own in its .npz, skin_mask_source: a resumed run's
    # older samples too); a run that wrote none (all resumed) describes the option
    used = sorted(report.skin_mask_sources) or (["face parser"] if face_parser else [skin_mask])
    described = ["face parser " + face_parser if u == "face parser" else
                 SKIN_MASK_DESCRIPTIONS.get(u, "mesh when the detection has it, else landmarks + colour statistics")
                 for u in used]
    write_dataset_info(out, source=str(photos), detector=str(det_name), skin_mask_option=skin_mask,
                       skin_mask=" + ".join(described),
                       skin_mask_sources=dict(sorted(report.skin_mask_sources.items())))
    return report
