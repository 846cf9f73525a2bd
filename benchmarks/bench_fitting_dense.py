"""Stage-1 fit accuracy with and without MediaPipe's dense points, and with the old vs the new jaw prior.

Renders N heads of the TEST model (not FLAME; core/testmodels/synthetic_flame.py) with random shape
(1 sigma), the region-driven expressions (the first 10 components, 1 sigma), a jaw opening of 0-0.25 rad
and head yaw +-25 deg / pitch +-10 deg, painted and shaded (core/testmodels/painted_head.py); MediaPipe
detects each render; `Fitter.fit_faces` (landmark stage only) fits it in three set-ups:

- ``68``: the 68 mesh-derived points, the old jaw prior (one 0.3 rad std on all three axes);
- ``68+jaw``: the 68 points, the new jaw prior (0.05 rad on the sideways axes);
- ``68+dense+jaw``: the 68 and our embedding's 126 dense points, the new jaw prior.

Error: mean distance (mm) of the fitted posed mesh's face vertices (in front of the ears, eyeballs
excluded) from the ground truth after a similarity alignment (the fit's pose and scale are its own), and
the fitted jaw's sideways rotation. Writes benchmarks/results/fitting_dense.json.

    .venv/bin/python benchmarks/bench_fitting_dense.py [-n 8]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from core.atomic import atomic_write_bytes  # noqa: E402

SHARED = Path(os.environ.get("DECA_SHARED", str(REPO.parent / "shared")))


def similarity_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between (N, 3) point sets after the best similarity transform of a onto b."""
    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    u, s, vt = np.linalg.svd(B.T @ A)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (A ** 2).sum()
    return float(np.linalg.norm(scale * A @ r.T - B, axis=1).mean())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fitting_dense.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from core.fitting.fitter import Fitter
    from core.fitting.landmark_fit import LandmarkFitConfig
    from core.flame import load_flame_model
    from core.flame.layer import FlameLayer
    from core.frontend import MediaPipeDetector
    from core.model.face_model import FaceAssets
    from core.testmodels.painted_head import EYEBALLS, render_painted
    from core.testmodels.synthetic_flame import write_test_flame

    tmp = Path(tempfile.mkdtemp(prefix="bench-dense-"))
    pkl = write_test_flame(tmp / "test_flame.pkl", SHARED / "assets" / "deca",
                           SHARED / "assets" / "flame" / "flame2020_joint_regressor.npz")
    model = load_flame_model(pkl)
    layer = FlameLayer(model).double()
    faces = np.asarray(model.faces, np.int64)
    assets = FaceAssets.from_paths(pkl, SHARED / "assets" / "deca", None)
    v0 = np.asarray(model.v_template)
    region = (v0[:, 2] > np.percentile(v0[:, 2], 60))
    for eye in EYEBALLS:
        region[eye] = False

    setups = {
        "68": dict(dense=False, cfg=LandmarkFitConfig(jaw_side_std=0.3)),
        "68+jaw": dict(dense=False, cfg=LandmarkFitConfig()),
        "68+dense+jaw": dict(dense=True, cfg=LandmarkFitConfig()),
    }
    fitters = {k: Fitter(face_assets=assets, device="cpu", landmarks=MediaPipeDetector(), photometric=False,
                         dense=s["dense"], landmark_config=s["cfg"]) for k, s in setups.items()}
    det = MediaPipeDetector().load()
    rng = np.random.default_rng(args.seed)
    rows = []
    for i in range(args.n):
        shape = torch.as_tensor(rng.normal(size=(1, 100)))
        exp = torch.zeros(1, 50, dtype=torch.float64)
        exp[0, :10] = torch.as_tensor(rng.normal(size=10))
        pose = torch.zeros(1, 6, dtype=torch.float64)
        pose[0, 3] = rng.uniform(0.0, 0.25)
        gt = layer(shape, exp, pose).vertices[0].numpy()
        r = render_painted(gt, faces, yaw_deg=rng.uniform(-25, 25), pitch_deg=rng.uniform(-10, 10))
        found = det.detect(r.image)
        if len(found) != 1:
            rows.append({"head": i, "detected": False})
            continue
        img = r.image.astype(np.float32) / 255.0
        row = {"head": i, "detected": True, "jaw_gt": float(pose[0, 3])}
        for name, fitter in fitters.items():
            t0 = time.perf_counter()
            fit = fitter.fit_faces([img], found)[0]
            dt = time.perf_counter() - t0
            c = fit.codes_stage1
            fm = fitter.face_model
            with torch.no_grad():
                v = fm.flame(c.shape.to(fm.flame.v_template), c.exp.to(fm.flame.v_template),
                             c.pose.to(fm.flame.v_template)).vertices[0].double().numpy()
            jaw = c.pose[0, 3:].double().numpy()
            row[name] = {"face_error_mm": similarity_error(v[region], gt[region]) * 1000.0,
                         "jaw_side_rad": float(np.abs(jaw[1:]).max()), "jaw_open_rad": float(jaw[0]),
                         "stage1_s": fit.timings["stage1"], "total_s": dt,
                         "reprojection_px_224": float(fit.stage1.reprojection_px[0])}
        rows.append(row)
        print(f"head {i}: " + "  ".join(f"{k} {row[k]['face_error_mm']:.2f} mm (jaw side {row[k]['jaw_side_rad']:.3f}, "
                                         f"{row[k]['stage1_s']:.2f} s)" for k in setups))
    ok = [r for r in rows if r["detected"]]
    summary = {k: {"median_face_error_mm": statistics.median(r[k]["face_error_mm"] for r in ok),
                   "mean_face_error_mm": statistics.fmean(r[k]["face_error_mm"] for r in ok),
                   "max_jaw_side_rad": max(r[k]["jaw_side_rad"] for r in ok),
                   "median_stage1_s": statistics.median(r[k]["stage1_s"] for r in ok)} for k in setups}
    summary["detected"] = len(ok)
    summary["heads"] = len(rows)
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"machine": {"cpu": cpu_name(), "load_average_1_5_15": list(os.getloadavg())},
                          "summary": summary, "per_head": rows}, indent=1).encode()
    atomic_write_bytes(out, lambda f: f.write(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
