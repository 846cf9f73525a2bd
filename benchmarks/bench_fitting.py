"""Fitting mode on synthetic ground truth: accuracy (NoW protocol) and time per photo.

Renders N faces (default 50) of the TEST model (`core.testmodels.synthetic_flame`: FLAME's topology with
synthetic bases, NOT FLAME) with `core.evaluation.synthetic` at 224, 448 and 640x480, yaw spread evenly
over [-60, 60] degrees, then fits each photo twice through `core.fitting.Fitter.fit_faces`:

1. with the ground-truth 2D landmarks (the model's projected fitting-form landmarks);
2. with dlib's landmarks detected on the render (faces dlib misses are counted and skipped).

For each: the NoW-protocol error (7-landmark similarity + scan-to-mesh refinement; distances from the
ground-truth skin vertices in NoW's face crop to the fitted surface, mm) after stage 1 (landmarks) and
after stage 2 (photometric), for the posed mesh (the photo's expression and jaw, as rendered) and for the
neutral identity mesh (NoW's convention: zero expression and pose), plus the landmark reprojection error
(mean over the 68 points; in photo pixels and in pixels of the 224 crop) and the time per photo of each
stage. Writes benchmarks/results/fitting.json.

    .venv/bin/python benchmarks/bench_fitting.py [-n 50] [--threads 1] [--device cpu|cuda] [--no-dlib]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.evaluation.now import summarize  # noqa: E402
from core.evaluation.scoring import score_against_gt  # noqa: E402
from core.evaluation.synthetic import SyntheticConfig, SyntheticGenerator, load_ground_truth  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "fitting.json"


def build_assets(shared: Path):
    from core.model.face_model import FaceAssets
    from core.testmodels.synthetic_flame import write_test_flame

    data = shared / "assets" / "deca"
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:  # read into memory, then removed
        pkl = Path(tmp) / "test_flame.pkl"
        write_test_flame(pkl, data, shared / "assets" / "flame" / "flame2020_joint_regressor.npz")
        return FaceAssets.from_paths(pkl, data)


def run(args) -> dict:
    from core.fitting.fitter import Fitter
    from core.fitting.writer import crop_ndc_to_photo
    from core.frontend import read_image
    from core.frontend.landmarks import DlibDetector, FaceDetection

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    assets = build_assets(Path(args.shared))
    fitter = Fitter(face_assets=assets, device=device, landmarks="dlib")
    fm = fitter.face_model
    data = Path(args.data)
    t0 = time.perf_counter()
    if not (data / "manifest.json").is_file():
        yaws = np.random.default_rng(123).permutation(np.linspace(-args.max_yaw, args.max_yaw, args.n))
        cfg = SyntheticConfig(n=args.n, seed=args.seed, yaws_deg=tuple(float(y) for y in yaws),
                              max_yaw_deg=args.max_yaw)
        SyntheticGenerator(fm.to("cpu"), cfg, photos_dir=Path(args.shared) / "photos").write(data)
        fm.to(device)
    gen_seconds = time.perf_counter() - t0
    names = json.loads((data / "manifest.json").read_text())["faces"][: args.n]
    detector = DlibDetector() if not args.no_dlib else None

    rows = []
    for k, name in enumerate(names):
        gt = load_ground_truth(data / f"{name}.npz")
        image = read_image(data / f"{name}.png")
        gt_lmk = gt["landmarks2d"]
        row = {"name": name, "size": [int(x) for x in gt["image_size"]],
               "yaw_deg": float(np.degrees(_yaw(gt["pose"][:3]))), "background": str(gt["background"])}
        sources = [("gt", FaceDetection(box=_box(gt_lmk), landmarks=gt_lmk, score=1.0, detector="ground-truth"))]
        if detector is not None:
            t = time.perf_counter()
            dets = detector.detect(image)
            det_seconds = time.perf_counter() - t
            if dets:
                sources.append(("dlib", dets[0]))
            row["dlib_found"] = bool(dets)
            row["dlib_seconds"] = det_seconds
        for label, det in sources:
            fit = fitter.fit_faces([image], [det], [name])[0]
            entry = {"seconds_stage1": fit.timings["stage1"], "seconds_stage2": fit.timings["stage2"]}
            for stage, codes, info in (("stage1", fit.codes_stage1, fit.stage1), ("stage2", fit.codes, fit.stage2)):
                c = codes.numpy()
                errs = score_against_gt(fm, gt, c["shape"], c["exp"], c["pose"])
                with torch.no_grad():
                    g = fm.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
                proj = crop_ndc_to_photo(g.landmarks2d[0].cpu().numpy(), fit.crop)
                entry[stage] = {
                    "posed_distances": errs["posed"].distances, "neutral_distances": errs["neutral"].distances,
                    "posed_median_mm": errs["posed"].median, "neutral_median_mm": errs["neutral"].median,
                    "reprojection_px_crop": float(info.reprojection_px[0]),
                    "reprojection_px_photo": float(np.linalg.norm(proj - det.landmarks, axis=1).mean()),
                    "landmark_error_vs_gt_px_photo": float(np.linalg.norm(proj - gt_lmk, axis=1).mean()),
                }
            if label == "dlib":
                entry["detector_error_vs_gt_px_photo"] = float(np.linalg.norm(det.landmarks - gt_lmk, axis=1).mean())
            row[label] = entry
        rows.append(row)
        msg = " ".join(f"{lab}: {row[lab]['stage1']['posed_median_mm']:.3f}->{row[lab]['stage2']['posed_median_mm']:.3f} mm "
                       f"({row[lab]['seconds_stage1']:.1f}+{row[lab]['seconds_stage2']:.1f} s)"
                       for lab in ("gt", "dlib") if lab in row)
        print(f"{k + 1}/{len(names)} {name} {row['size']} yaw {row['yaw_deg']:+.0f}: {msg}", flush=True)

    def aggregate(label: str) -> dict:
        sel = [r[label] for r in rows if label in r]
        if not sel:
            return {}
        out = {"n_faces": len(sel)}
        for stage in ("stage1", "stage2"):
            out[stage] = {
                "posed": summarize([s[stage]["posed_distances"] for s in sel]),
                "neutral": summarize([s[stage]["neutral_distances"] for s in sel]),
                "per_face_median_posed_mm_median": float(np.median([s[stage]["posed_median_mm"] for s in sel])),
                "reprojection_px_photo_mean": float(np.mean([s[stage]["reprojection_px_photo"] for s in sel])),
                "reprojection_px_crop_mean": float(np.mean([s[stage]["reprojection_px_crop"] for s in sel])),
                "landmark_error_vs_gt_px_photo_mean": float(np.mean([s[stage]["landmark_error_vs_gt_px_photo"] for s in sel])),
            }
        out["seconds_per_photo"] = {
            "stage1_median": float(np.median([s["seconds_stage1"] for s in sel])),
            "stage2_median": float(np.median([s["seconds_stage2"] for s in sel])),
            "total_median": float(np.median([s["seconds_stage1"] + s["seconds_stage2"] for s in sel])),
            "total_mean": float(np.mean([s["seconds_stage1"] + s["seconds_stage2"] for s in sel])),
        }
        out["faces_improved_by_stage2_posed"] = int(sum(s["stage2"]["posed_median_mm"] < s["stage1"]["posed_median_mm"]
                                                         for s in sel))
        if label == "dlib":
            out["detector_error_vs_gt_px_photo_mean"] = float(np.mean([s["detector_error_vs_gt_px_photo"] for s in sel]))
        return out

    gt_agg, dlib_agg = aggregate("gt"), aggregate("dlib")
    for r in rows:  # drop the raw distances from the per-face records
        for lab in ("gt", "dlib"):
            if lab in r:
                for stage in ("stage1", "stage2"):
                    r[lab][stage].pop("posed_distances")
                    r[lab][stage].pop("neutral_distances")
    n_dlib = sum(1 for r in rows if r.get("dlib_found"))
    if dlib_agg:
        dlib_agg["detected"] = f"{n_dlib} of {len(rows)}"
    return {"rows": rows, "gt": gt_agg, "dlib": dlib_agg, "gen_seconds": gen_seconds}


def _yaw(aa: np.ndarray) -> float:
    from scipy.spatial.transform import Rotation

    return float(Rotation.from_rotvec(aa).as_euler("YXZ")[0])


def _box(lmk: np.ndarray) -> np.ndarray:
    return np.array([lmk[:, 0].min(), lmk[:, 1].min(), lmk[:, 0].max(), lmk[:, 1].max()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-yaw", type=float, default=60.0)
    p.add_argument("--shared", default=os.environ.get("DECA_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--data", help="folder for the synthetic faces (reused when it holds a manifest)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-dlib", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.data:
        report = run(args)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-fit-synth-") as tmp:
            args.data = tmp
            report = run(args)
    meta = {
        "what": "fitting mode on synthetic renders of the deca-blender TEST model (FLAME topology, synthetic "
                "bases; NOT FLAME): errors are about the method and the renderer",
        "protocol": "NoW: 7-landmark similarity alignment + scan-to-mesh refinement; distances (mm) from the "
                    "ground-truth skin vertices in NoW's face crop to the fitted surface; median/mean/std over all "
                    "points of all faces",
        "n_faces": args.n, "max_yaw_deg": args.max_yaw, "device": str(args.device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
    out = {"meta": meta, **report}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for lab in ("gt", "dlib"):
        a = out[lab]
        if not a:
            continue
        s1, s2 = a["stage1"], a["stage2"]
        print(f"[{lab}] {a['n_faces']} faces: posed median {s1['posed']['median_mm']:.3f} -> {s2['posed']['median_mm']:.3f} mm, "
              f"neutral median {s1['neutral']['median_mm']:.3f} -> {s2['neutral']['median_mm']:.3f} mm; "
              f"reprojection {s1['reprojection_px_photo_mean']:.2f} -> {s2['reprojection_px_photo_mean']:.2f} px; "
              f"time/photo {a['seconds_per_photo']['stage1_median']:.2f} + {a['seconds_per_photo']['stage2_median']:.2f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
