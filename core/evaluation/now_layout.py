"""Evaluating predictions on the NoW benchmark's own folder layout, read as it is shipped.

Dataset root (``--gt``), as NoW's official evaluation (github soubhiksanyal/now_evaluation) expects it::

    imagepathsvalidation.txt | imagepathstest.txt   lines ".../<subject>/<experiment>/<image>.jpg"
    scans/<subject>/<scan>.obj                       one scan per subject, in millimetres
    scans_lmks_onlypp/<subject>/<scan>.pp            its 7 landmarks (Meshlab picked points)

Predictions (``--pred``), NoW's submission layout: ``<subject>/<experiment>/<image stem>.obj`` or ``.ply``
with ``<image stem>.npy`` or ``.txt`` (7 x 3 landmarks), or one of our result folders
``<subject>/<experiment>/<image stem>/result.npz``. An image without a prediction is listed as missing,
as the official code counts it.

Each image is scored against its subject's scan with `core.evaluation.now.now_errors` (face crop, landmark
Procrustes allowing a reflection, scan-to-mesh refinement, distances of the cropped scan's vertices); the
scan's unit is read from its landmarks (NoW's: mm) unless ``scan_unit`` names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.evaluation.dataset import EvaluationError, load_prediction, scan_unit_to_mm
from core.evaluation.now import now_errors, summarize
from core.evaluation.now_files import read_mesh, read_pp

__all__ = ["IMAGE_LISTS", "CHALLENGES", "NowImage", "is_now_layout", "read_image_list", "subject_scan",
           "find_now_prediction", "evaluate_now_layout"]

IMAGE_LISTS = {"val": "imagepathsvalidation.txt", "test": "imagepathstest.txt"}
CHALLENGES = ("", "multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")


@dataclass(frozen=True)
class NowImage:
    """One line of NoW's image list."""

    subject: str
    experiment: str
    filename: str

    @property
    def stem(self) -> str:
        return Path(self.filename).stem

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.experiment}/{self.stem}"


def is_now_layout(path: str | Path) -> bool:
    p = Path(path)
    return (p / "scans").is_dir() and (p / "scans_lmks_onlypp").is_dir()


def read_image_list(path: str | Path) -> list[NowImage]:
    """NoW's image list: the last three path components of each non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"NoW image list not found: {path}")
    out = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace("\\", "/").split("/")
        if len(parts) < 3:
            raise EvaluationError(f"{path}:{k}: expected <subject>/<experiment>/<image>, got {line!r}")
        out.append(NowImage(*parts[-3:]))
    if not out:
        raise EvaluationError(f"{path}: the image list is empty")
    return out


def subject_scan(root: str | Path, subject: str) -> tuple[Path, Path]:
    """(scan .obj, landmarks .pp) of a subject; NoW has exactly one of each per subject."""
    root = Path(root)
    found = []
    for folder, pattern in (("scans", "*.obj"), ("scans_lmks_onlypp", "*.pp")):
        files = sorted((root / folder / subject).glob(pattern))
        if len(files) != 1:
            raise EvaluationError(f"{root / folder / subject}: expected one {pattern} (NoW has one scan per subject), "
                                  f"found {len(files)}")
        found.append(files[0])
    return found[0], found[1]


def find_now_prediction(pred_dir: str | Path, image: NowImage) -> Path | None:
    """The prediction for one image: mesh (.obj, then .ply) with landmarks (.npy or .txt), or a result folder."""
    base = Path(pred_dir) / image.subject / image.experiment / image.stem
    has_landmarks = base.with_suffix(".npy").is_file() or base.with_suffix(".txt").is_file()
    for ext in (".obj", ".ply"):
        if base.with_suffix(ext).is_file() and has_landmarks:
            return base.with_suffix(ext)
    if (base / "result.npz").is_file():
        return base
    return None


def evaluate_now_layout(dataset: str | Path, pred_dir: str | Path, image_set: str = "val",
                        imgs_list: str | Path | None = None, challenge: str = "", geometry: str = "neutral",
                        refine: bool = True, embedding=None, progress=None, scan_unit: str = "auto") -> dict:
    """NoW errors of every listed image that has a prediction; the report of `evaluate_folders` (per image
    ``name`` = subject/experiment/stem, all distances in millimetres) plus the images without one."""
    dataset, pred_dir = Path(dataset), Path(pred_dir)
    if not is_now_layout(dataset):
        raise EvaluationError(f"{dataset}: not NoW's layout (needs scans/ and scans_lmks_onlypp/)")
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder not found: {pred_dir}")
    if challenge not in CHALLENGES:
        raise EvaluationError(f"unknown challenge {challenge!r}: use one of {', '.join(c for c in CHALLENGES if c)}")
    if imgs_list is None:
        if image_set not in IMAGE_LISTS:
            raise EvaluationError(f"image set must be 'val' or 'test', got {image_set!r}")
        imgs_list = dataset / IMAGE_LISTS[image_set]
    images = [im for im in read_image_list(imgs_list) if not challenge or im.experiment == challenge]
    scans: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    per, dists, missing = [], [], []
    for k, image in enumerate(images):
        pred = find_now_prediction(pred_dir, image)
        if pred is None:
            missing.append(image.name)
            continue
        if image.subject not in scans:
            scan_path, pp_path = subject_scan(dataset, image.subject)
            points, _ = read_mesh(scan_path)
            lmk = read_pp(pp_path)
            scans[image.subject] = (points, lmk, scan_unit_to_mm(lmk, scan_unit, str(pp_path)))
        points, lmk, unit_to_mm = scans[image.subject]
        v, f, plmk = load_prediction(pred, geometry, embedding)
        e = now_errors(points, lmk, v, f, plmk, refine=refine, units_to_mm=unit_to_mm)
        dists.append(e.distances)
        per.append({"name": image.name, "subject": image.subject, "experiment": image.experiment,
                    "median_mm": e.median, "mean_mm": e.mean, "std_mm": e.std, "n_points": int(e.distances.size),
                    "scale": e.transform.scale, "reflected": bool(np.linalg.det(e.transform.rotation) < 0),
                    "scan_unit_to_mm": unit_to_mm})
        if progress:
            progress(k + 1, len(images), image.name)
    if not per:
        raise EvaluationError(f"no prediction in {pred_dir} for the {len(images)} listed image(s) "
                              f"(e.g. {images[0].name}.obj + .npy)" if images else "no image selected")
    what = "NoW (7-landmark Procrustes, reflection allowed" + (", scan-to-mesh refinement)" if refine else ")")
    return {"protocol": what, "layout": "now", "geometry": geometry, "overall": summarize(dists),
            "items": per, "missing": missing}
