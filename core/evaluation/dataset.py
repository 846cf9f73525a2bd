"""Scoring a folder of predictions against a folder of ground truth with the NoW protocol.

Ground truth (``--gt DIR``), one item per name:

- ``<name>.npz`` written by `core.evaluation.synthetic` (both the posed mesh as rendered and the neutral
  identity mesh; ``scan_mask`` selects the skin vertices), or any ``.npz`` with ``scan_vertices (N, 3)`` and
  ``scan_landmarks (7, 3)`` (and ``scan_unit_to_mm``, default 1000 for metres);
- ``<name>.obj`` with ``<name>.txt`` or ``<name>.npy`` (7 x 3 landmarks in NoW's order), as NoW's scans.

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
from core.evaluation.now import NOW_LANDMARKS_68, now_errors, summarize
from core.obj import read_obj


class EvaluationError(DecaError, ValueError):
    """The folders cannot be evaluated; the message says why."""


@dataclass
class GroundTruth:
    name: str
    points: np.ndarray  # (N, 3) scan points, in the scan's units
    landmarks: np.ndarray  # (7, 3)
    unit_to_mm: float


def read_obj_vertices_faces(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) vertices and (F, 3) triangles (polygons fan-triangulated) of a scan or prediction OBJ."""
    mesh = read_obj(path)
    return mesh.vertices, mesh.faces


def _read_lmk7(path: Path) -> np.ndarray:
    lm = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path)
    lm = np.asarray(lm, np.float64).reshape(-1, 3)
    if lm.shape != (7, 3):
        raise EvaluationError(f"{path}: expected 7 landmarks (x y z), found {lm.shape[0]}")
    return lm


def load_ground_truth_item(path: Path, geometry: str = "neutral") -> GroundTruth:
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
    if path.suffix == ".obj":
        for ext in (".txt", ".npy"):
            lp = path.with_suffix(ext)
            if lp.is_file():
                v, _ = read_obj_vertices_faces(path)
                return GroundTruth(path.stem, v, _read_lmk7(lp), 1000.0)
        raise EvaluationError(f"{path}: no landmark file {path.stem}.txt or .npy beside the scan")
    raise EvaluationError(f"{path}: unsupported ground-truth file")


def ground_truth_items(gt_dir: Path) -> dict[str, Path]:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder not found: {gt_dir}")
    items = {}
    for p in sorted(gt_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix == ".npz" or (p.suffix == ".obj" and (p.with_suffix(".txt").is_file() or p.with_suffix(".npy").is_file())):
            items[p.stem] = p
    if not items:
        raise EvaluationError(f"{gt_dir}: holds no ground truth (.npz, or .obj with .txt/.npy landmarks)")
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
    v, f = read_obj_vertices_faces(path)
    lp = path.with_suffix(".npy")
    if not lp.is_file():
        raise EvaluationError(f"{path}: no {lp.name} with its 7 landmarks")
    return v, f, _read_lmk7(lp)


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    for cand in (pred_dir / name, pred_dir / f"{name}.obj"):
        if (cand.is_dir() and (cand / "result.npz").is_file()) or cand.is_file():
            return cand
    return None


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, geometry: str = "neutral", refine: bool = True,
                     embedding=None, progress=None) -> dict:
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
        gt = load_ground_truth_item(gt_path, geometry)
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
