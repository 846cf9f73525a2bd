"""Scoring a folder of predictions against a folder of ground truth with the NoW protocol.

Ground truth (``--gt DIR``), one item per name:

- ``<name>.npz`` written by `core.evaluation.synthetic` (both the posed mesh as rendered and the neutral
  identity mesh; ``scan_mask`` selects the skin vertices), or any ``.npz`` with ``scan_vertices (N, 3)`` and
  ``scan_landmarks (7, 3)`` (and ``scan_unit_to_mm``, default 1000 for metres);
- ``<name>.obj`` (or ``.ply``) with ``<name>.pp`` (Meshlab picked points, as NoW ships them), ``<name>.txt`` or
  ``<name>.npy`` (7 x 3 landmarks in NoW's order). The scan's unit is read from its landmarks' size
  (`core.evaluation.now.unit_to_mm_from_landmarks`: NoW's scans are in mm) unless ``scan_unit`` names it.

A folder in NoW's own layout (``scans/``, ``scans_lmks_onlypp/``, an image list) is read by
`core.evaluation.now_layout` instead (``eval now`` tells them apart).

Predictions (``--pred DIR``), matched by name:

- a result folder ``<name>/result.npz`` (``reconstruct`` or ``fit``): the neutral identity mesh
  (``rig_template``, NoW's convention) or with ``geometry="posed"`` the posed mesh (``vertices``); the 7
  landmarks come from ``extra_now_landmarks[_neutral]`` when the folder has them, else from FLAME's landmark
  embedding (``embedding`` argument or the installed asset);
- ``<name>.obj`` with ``<name>.npy`` (7 x 3), NoW's submission format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DecaError
from core.evaluation.now import NOW_LANDMARKS_68, UNIT_TO_MM, now_errors, summarize, unit_to_mm_from_landmarks
from core.evaluation.now_files import read_landmarks, read_mesh
from core.evaluation.now_files import read_obj as read_obj_vertices_faces  # noqa: F401  (kept name)


class EvaluationError(DecaError, ValueError):
    """The folders cannot be evaluated; the message says why."""


@dataclass
class GroundTruth:
    name: str
    points: np.ndarray  # (N, 3) scan points, in the scan's units
    landmarks: np.ndarray  # (7, 3)
    unit_to_mm: float


def _read_lmk7(path: Path) -> np.ndarray:
    try:
        return read_landmarks(path)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None


def scan_unit_to_mm(landmarks: np.ndarray, scan_unit: str = "auto", where: str = "") -> float:
    """``scan_unit`` 'mm', 'cm' or 'm', or 'auto': read from the landmarks' size."""
    if scan_unit != "auto":
        if scan_unit not in UNIT_TO_MM:
            raise EvaluationError(f"unknown scan unit {scan_unit!r}: use auto, mm, cm or m")
        return UNIT_TO_MM[scan_unit]
    try:
        return unit_to_mm_from_landmarks(landmarks)
    except ValueError as exc:
        raise EvaluationError(f"{where}: {exc}" if where else str(exc)) from None


_LANDMARK_SUFFIXES = (".pp", ".txt", ".npy")


def load_ground_truth_item(path: Path, geometry: str = "neutral", scan_unit: str = "auto") -> GroundTruth:
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        if "scan_vertices" in d:
            return GroundTruth(path.stem, d["scan_vertices"], d["scan_landmarks"], float(d.get("scan_unit_to_mm", 1000.0)))
        prefix = "neutral_" if geometry == "neutral" else ""
        try:
            verts, lmk = d[prefix + "vertices"], d[prefix + "now_landmarks"]
        except KeyError as exc:
            raise EvaluationError(f"{path}: not a ground-truth file (lacks {exc})") from None
        mask = d["scan_mask"].astype(bool) if "scan_mask" in d else np.ones(len(verts), bool)
        return GroundTruth(path.stem, verts[mask], lmk, 1000.0)
    if path.suffix in (".obj", ".ply"):
        for ext in _LANDMARK_SUFFIXES:
            lp = path.with_suffix(ext)
            if lp.is_file():
                v, _ = read_mesh(path)
                lm = _read_lmk7(lp)
                return GroundTruth(path.stem, v, lm, scan_unit_to_mm(lm, scan_unit, str(path)))
        raise EvaluationError(f"{path}: no landmark file {path.stem}.pp, .txt or .npy beside the scan")
    raise EvaluationError(f"{path}: unsupported ground-truth file")


def ground_truth_items(gt_dir: Path) -> dict[str, Path]:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder not found: {gt_dir}")
    items = {}
    for p in sorted(gt_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix == ".npz" or (p.suffix in (".obj", ".ply")
                                  and any(p.with_suffix(e).is_file() for e in _LANDMARK_SUFFIXES)):
            items[p.stem] = p
    if not items:
        raise EvaluationError(f"{gt_dir}: holds no ground truth (.npz, or .obj/.ply with .pp/.txt/.npy landmarks)")
    return items


class _EmbeddingLandmarks:
    """The 7 NoW landmarks of a FLAME-topology mesh from the 68-landmark embedding (numpy only)."""

    def __init__(self, embedding) -> None:
        sel = list(NOW_LANDMARKS_68)
        self.faces = np.asarray(embedding.full_faces, np.int64)[sel]
        self.bary = np.asarray(embedding.full_bary, np.float64)[sel]

    def __call__(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)[self.faces]]  # (7, 3, 3)
        return (tri * self.bary[..., None]).sum(1)


def _default_embedding():
    from core.assets import AssetManager
    from core.flame import load_embedding

    p = AssetManager().path("landmark_embedding")
    if not p.is_file():
        raise EvaluationError("predictions without stored NoW landmarks need FLAME's landmark embedding: install "
                              "DECA's data (deca-blender assets install --data FOLDER) or pass --embedding PATH")
    return load_embedding(p)


def load_prediction(path: Path, geometry: str, embedding=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, 7 landmarks) of one prediction (a result folder or an .obj with .npy)."""
    path = Path(path)
    if path.is_dir():
        from core.results.result import ReconstructionResult

        r = ReconstructionResult.load(path)
        verts = r.rig_template if geometry == "neutral" else r.vertices
        key = "now_landmarks_neutral" if geometry == "neutral" else "now_landmarks"
        if key in r.extra:
            lmk = np.asarray(r.extra[key], np.float64)
        else:
            if geometry == "posed":
                lmk = np.asarray(r.landmarks3d, np.float64)[list(NOW_LANDMARKS_68)]
            else:
                emb = embedding if embedding is not None else _default_embedding()
                lmk = _EmbeddingLandmarks(emb)(verts, r.faces)
        return np.asarray(verts, np.float64), np.asarray(r.faces, np.int64), lmk
    v, f = read_mesh(path)
    for ext in (".npy", ".txt"):  # NoW's order of preference
        lp = path.with_suffix(ext)
        if lp.is_file():
            return v, f, _read_lmk7(lp)
    raise EvaluationError(f"{path}: no {path.stem}.npy or .txt with its 7 landmarks")


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    for cand in (pred_dir / f"{name}.obj", pred_dir / f"{name}.ply", pred_dir / name):
        if (cand.is_dir() and (cand / "result.npz").is_file()) or cand.is_file():
            return cand
    return None


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, geometry: str = "neutral", refine: bool = True,
                     embedding=None, progress=None, scan_unit: str = "auto") -> dict:
    """NoW errors of every prediction that has a ground truth. Returns a JSON-able dict with per-item and
    overall median/mean/std (mm, over all distances together as NoW reports them) and the missing names."""
    if geometry not in ("neutral", "posed"):
        raise EvaluationError(f"geometry must be 'neutral' or 'posed', got {geometry!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder not found: {pred_dir}")
    items = ground_truth_items(Path(gt_dir))
    per, dists, missing = [], [], []
    for k, (name, gt_path) in enumerate(items.items()):
        pred = find_prediction(pred_dir, name)
        if pred is None:
            missing.append(name)
            continue
        gt = load_ground_truth_item(gt_path, geometry, scan_unit)
        v, f, lmk = load_prediction(pred, geometry, embedding)
        # Predictions are in metres (FLAME); scale them into the scan's units for the alignment.
        to_scan_units = 1000.0 / gt.unit_to_mm
        e = now_errors(gt.points, gt.landmarks, v * to_scan_units, f, lmk * to_scan_units, refine=refine,
                       units_to_mm=gt.unit_to_mm)
        dists.append(e.distances)
        per.append({"name": name, "median_mm": e.median, "mean_mm": e.mean, "std_mm": e.std,
                    "n_points": int(e.distances.size), "scale": e.transform.scale})
        if progress:
            progress(k + 1, len(items), name)
    if not per:
        raise EvaluationError(f"no prediction in {pred_dir} matches a ground-truth name in {gt_dir} "
                              f"(e.g. {next(iter(items))})")
    return {"protocol": "NoW (7-landmark similarity + scan-to-mesh refinement)" if refine else
            "NoW (7-landmark similarity, no refinement)", "geometry": geometry,
            "overall": summarize(dists), "items": per, "missing": missing}
