"""Fitting mode on synthetic ground truth: accuracy (NoW protocol) and time per photo, for the current code
and for older code paths, interleaved in one run.

Renders N faces (default 50) of the TEST model (`core.testmodels.synthetic_flame`: FLAME's topology with
synthetic bases, NOT FLAME) with `core.evaluation.synthetic` at 224, 448 and 640x480, yaw spread evenly
over [-60, 60] degrees, then fits each photo through `Fitter.fit_faces` of every code path:

1. with the ground-truth 2D landmarks (the model's projected fitting-form landmarks);
2. with dlib's landmarks detected on the render (faces dlib misses are counted and skipped).

Code paths (``--trees``): ``now`` is this tree; the others are older commits of the repository, unpacked
with ``git archive REV core`` into a temporary folder (default: ``9ba048b``, the tree when issue 11 was
filed, and ``6bd3bdc``, the tree before the faster fit). Each runs in its own process
(benchmarks/bench_fitting_worker.py, its own ``core`` first on the path, the same thread count); for every
face the processes are called in turn, the order alternating from face to face, so load drifts hit all
alike. Every path gets the same photos and the same landmarks, and every fit is scored here by the same
code.

For each: the NoW-protocol error (7-landmark similarity + scan-to-mesh refinement; distances from the
ground-truth skin vertices in NoW's face crop to the fitted surface, mm) after stage 1 (landmarks) and
after stage 2 (photometric), for the posed mesh (the photo's expression and jaw, as rendered) and for the
neutral identity mesh (NoW's convention: zero expression and pose), plus the landmark reprojection error
(mean over the 68 points; in photo pixels and in pixels of the 224 crop), the time per photo of each
stage, and the wall and process-CPU seconds of the whole `fit_faces` call (the CPU seconds are steadier
on a loaded machine). With ``--photos K`` each path also runs `Fitter.fit_photo` (detection, both stages,
the result folder) on the first K photos of ../shared/photos, interleaved the same way. Prints, per path,
the medians, and the ratio of each path's time to ``now``'s; writes benchmarks/results/fitting.json.

    .venv/bin/python benchmarks/bench_fitting.py [-n 50] [--threads 1] [--no-dlib] [--photos 3]
                                                 [--trees 9ba048b=9ba048b,before=6bd3bdc,now=.]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from core.atomic import atomic_write_bytes  # noqa: E402
from core.evaluation.now import summarize  # noqa: E402
from core.evaluation.scoring import score_against_gt  # noqa: E402
from core.evaluation.synthetic import SyntheticConfig, SyntheticGenerator, load_ground_truth  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "fitting.json"
WORKER = Path(__file__).resolve().parent / "bench_fitting_worker.py"
DEFAULT_TREES = "9ba048b=9ba048b,before=6bd3bdc,now=."


def unpack_tree(rev: str, dest: Path) -> Path:
    """``core/`` of commit `rev` (``.``: this working tree) -> a folder to put first on sys.path."""
    if rev == ".":
        return REPO
    blob = subprocess.run(["git", "-C", str(REPO), "archive", rev, "core"], check=True, capture_output=True).stdout
    out = dest / rev
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out


class Worker:
    """One code path in its own process (see benchmarks/bench_fitting_worker.py)."""

    def __init__(self, label: str, tree: Path, pkl: Path, data: Path, threads: int) -> None:
        self.label = label
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(tree)
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(tree), str(pkl), str(data), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.core = self._read()["core"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):  # libraries may print to stdout: skip anything that is not an answer
                return json.loads(line)
        raise RuntimeError(f"the {self.label} worker exited ({self.proc.wait()})")

    def call(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def build_test_flame(shared: Path, dest: Path) -> Path:
    from core.testmodels.synthetic_flame import write_test_flame

    return write_test_flame(dest / "test_flame.pkl", shared / "assets" / "deca",
                            shared / "assets" / "flame" / "flame2020_joint_regressor.npz")


def run(args, tmp: Path) -> dict:
    from core.frontend import read_image
    from core.frontend.landmarks import DlibDetector
    from core.model.face_model import FaceAssets, FaceModel

    shared = Path(args.shared)
    pkl = build_test_flame(shared, tmp)
    fm = FaceModel(FaceAssets.from_paths(pkl, shared / "assets" / "deca")).eval()
    data = Path(args.data)
    t0 = time.perf_counter()
    if not (data / "manifest.json").is_file():
        yaws = np.random.default_rng(123).permutation(np.linspace(-args.max_yaw, args.max_yaw, args.n))
        cfg = SyntheticConfig(n=args.n, seed=args.seed, yaws_deg=tuple(float(y) for y in yaws),
                              max_yaw_deg=args.max_yaw)
        SyntheticGenerator(fm, cfg, photos_dir=shared / "photos").write(data)
    gen_seconds = time.perf_counter() - t0
    names = json.loads((data / "manifest.json").read_text())["faces"][: args.n]
    detector = DlibDetector() if not args.no_dlib else None

    trees = [t.split("=", 1) for t in args.trees.split(",")]
    workers = [Worker(label, unpack_tree(rev, tmp / "trees"), pkl, shared / "assets" / "deca", args.threads)
               for label, rev in trees]
    labels = [w.label for w in workers]
    rows = []
    try:
        for k, name in enumerate(names):
            gt = load_ground_truth(data / f"{name}.npz")
            gt_lmk = gt["landmarks2d"]
            row = {"name": name, "size": [int(x) for x in gt["image_size"]],
                   "yaw_deg": float(np.degrees(_yaw(gt["pose"][:3]))), "background": str(gt["background"])}
            sources = [("gt", gt_lmk, "ground-truth")]
            if detector is not None:
                dets = detector.detect(read_image(data / f"{name}.png"))
                if dets:
                    sources.append(("dlib", dets[0].landmarks, "dlib"))
                row["dlib_found"] = bool(dets)
            order = workers if k % 2 == 0 else workers[::-1]
            for src, lmk, det_name in sources:
                for w in order:
                    ans = w.call(op="fit", image=str(data / f"{name}.png"), landmarks=np.asarray(lmk).tolist(),
                                 detector=det_name)
                    entry = {"seconds_stage1": ans["seconds_stage1"], "seconds_stage2": ans["seconds_stage2"],
                             "wall": ans["wall"], "cpu": ans["cpu"]}
                    for stage in ("stage1", "stage2"):
                        c = {key: np.asarray(v, np.float32) for key, v in ans[stage].items()
                             if key in ("shape", "exp", "pose")}
                        errs = score_against_gt(fm, gt, c["shape"], c["exp"], c["pose"])
                        proj = np.asarray(ans[stage]["landmarks_photo"])
                        entry[stage] = {
                            "posed_distances": errs["posed"].distances,
                            "neutral_distances": errs["neutral"].distances,
                            "posed_median_mm": errs["posed"].median, "neutral_median_mm": errs["neutral"].median,
                            "reprojection_px_crop": ans[stage]["reprojection_px_crop"],
                            "reprojection_px_photo": float(np.linalg.norm(proj - lmk, axis=1).mean()),
                            "landmark_error_vs_gt_px_photo": float(np.linalg.norm(proj - gt_lmk, axis=1).mean()),
                        }
                    row.setdefault(w.label, {})[src] = entry
            rows.append(row)
            msg = "; ".join(f"{lab}/{src}: {row[lab][src]['stage1']['posed_median_mm']:.3f}->"
                            f"{row[lab][src]['stage2']['posed_median_mm']:.3f} mm {row[lab][src]['wall']:.1f} s"
                            for src in ("gt", "dlib") for lab in labels if src in row.get(lab, {}))
            print(f"{k + 1}/{len(names)} {name} {row['size']} yaw {row['yaw_deg']:+.0f}: {msg}", flush=True)
        photos = []
        photo_files = sorted(p for p in (shared / "photos").iterdir()
                             if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.photos]
        for k, photo in enumerate(photo_files):
            rec = {"photo": photo.name}
            for w in (workers if k % 2 == 0 else workers[::-1]):
                rec[w.label] = w.call(op="photo", path=str(photo), out=str(tmp / "photos" / w.label),
                                      landmarks=args.photo_landmarks)
            photos.append(rec)
            print(f"photo {photo.name}: " + ", ".join(f"{lab} {rec[lab]['wall']:.2f} s" for lab in labels), flush=True)
    finally:
        for w in workers:
            w.close()

    def aggregate(label: str, src: str) -> dict:
        sel = [r[label][src] for r in rows if src in r.get(label, {})]
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
                "landmark_error_vs_gt_px_photo_mean": float(np.mean([s[stage]["landmark_error_vs_gt_px_photo"]
                                                                     for s in sel])),
            }
        out["seconds_per_photo"] = {
            "stage1_median": float(np.median([s["seconds_stage1"] for s in sel])),
            "stage2_median": float(np.median([s["seconds_stage2"] for s in sel])),
            "wall_median": float(np.median([s["wall"] for s in sel])),
            "cpu_median": float(np.median([s["cpu"] for s in sel])),
            "wall_total": float(np.sum([s["wall"] for s in sel])),
            "cpu_total": float(np.sum([s["cpu"] for s in sel])),
        }
        out["faces_improved_by_stage2_posed"] = int(sum(s["stage2"]["posed_median_mm"] < s["stage1"]["posed_median_mm"]
                                                         for s in sel))
        return out

    summary = {lab: {src: aggregate(lab, src) for src in ("gt", "dlib")} for lab in labels}
    if "now" in labels:
        for lab in labels:
            for src in ("gt", "dlib"):
                a, b = summary[lab][src], summary["now"][src]
                if a and b:  # now's time / this path's, from the totals over the same faces
                    a["ratio_now_over_this"] = {
                        "wall": b["seconds_per_photo"]["wall_total"] / a["seconds_per_photo"]["wall_total"],
                        "cpu": b["seconds_per_photo"]["cpu_total"] / a["seconds_per_photo"]["cpu_total"]}
    for r in rows:  # drop the raw distances from the per-face records
        for lab in labels:
            for src in r.get(lab, {}).values():
                for stage in ("stage1", "stage2"):
                    src[stage].pop("posed_distances")
                    src[stage].pop("neutral_distances")
    photo_summary = {lab: {"wall_median": float(np.median([p[lab]["wall"] for p in photos])),
                           "cpu_median": float(np.median([p[lab]["cpu"] for p in photos]))}
                     for lab in labels} if photos else {}
    if photos and "now" in labels:
        for lab in labels:
            photo_summary[lab]["ratio_now_over_this_wall"] = (sum(p["now"]["wall"] for p in photos)
                                                              / sum(p[lab]["wall"] for p in photos))
    return {"trees": {w.label: {"rev": rev, "core": w.core} for w, (_, rev) in zip(workers, trees)},
            "rows": rows, "summary": summary, "photos": photos, "photo_summary": photo_summary,
            "dlib_detected": f"{sum(1 for r in rows if r.get('dlib_found'))} of {len(rows)}",
            "gen_seconds": gen_seconds}


def _yaw(aa: np.ndarray) -> float:
    from scipy.spatial.transform import Rotation

    return float(Rotation.from_rotvec(aa).as_euler("YXZ")[0])



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-yaw", type=float, default=60.0)
    p.add_argument("--shared", default=os.environ.get("DECA_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--data", help="folder for the synthetic faces (reused when it holds a manifest)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every code path")
    p.add_argument("--no-dlib", action="store_true")
    p.add_argument("--photos", type=int, default=0, help="also time fit_photo on this many shared photos")
    p.add_argument("--photo-landmarks", default="dlib", help="detector for --photos (every path must have it)")
    p.add_argument("--trees", default=DEFAULT_TREES, help="label=rev,...; rev '.' is this working tree")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        if not args.data:
            args.data = str(Path(tmp) / "synthetic")
        report = run(args, Path(tmp))
    meta = {
        "what": "fitting mode on synthetic renders of the deca-blender TEST model (FLAME topology, synthetic "
                "bases; NOT FLAME): errors are about the method and the renderer",
        "protocol": "NoW: 7-landmark similarity alignment + scan-to-mesh refinement; distances (mm) from the "
                    "ground-truth skin vertices in NoW's face crop to the fitted surface; median/mean/std over all "
                    "points of all faces",
        "timing": "each code path in its own process, called in turn per face (order alternating); wall and "
                  "process-CPU seconds of fit_faces; ratio = now's total / the path's total over the same faces",
        "n_faces": args.n, "max_yaw_deg": args.max_yaw, "threads": args.threads, "cpu": cpu_name(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
    }
    out = {"meta": meta, **report}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(out, indent=2).encode()
    atomic_write_bytes(Path(args.out), lambda f: f.write(payload))
    for lab, by_src in out["summary"].items():
        for src, a in by_src.items():
            if not a:
                continue
            s1, s2, t = a["stage1"], a["stage2"], a["seconds_per_photo"]
            ratio = a.get("ratio_now_over_this", {})
            print(f"[{lab}/{src}] {a['n_faces']} faces: posed median {s1['posed']['median_mm']:.3f} -> "
                  f"{s2['posed']['median_mm']:.3f} mm (mean {s2['posed']['mean_mm']:.3f}), neutral median "
                  f"{s1['neutral']['median_mm']:.3f} -> {s2['neutral']['median_mm']:.3f} mm; reprojection "
                  f"{s1['reprojection_px_photo_mean']:.2f} -> {s2['reprojection_px_photo_mean']:.2f} px; per photo "
                  f"{t['wall_median']:.2f} s wall ({t['stage1_median']:.2f} + {t['stage2_median']:.2f}), "
                  f"{t['cpu_median']:.2f} s CPU; now/this {ratio.get('wall', float('nan')):.3f} wall, "
                  f"{ratio.get('cpu', float('nan')):.3f} CPU")
    for lab, ps in out["photo_summary"].items():
        print(f"[{lab}/photo] fit_photo median {ps['wall_median']:.2f} s wall, {ps['cpu_median']:.2f} s CPU; "
              f"now/this {ps.get('ratio_now_over_this_wall', float('nan')):.3f}")
    print(f"load average {meta['load_average_at_start']} -> {meta['load_average_at_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
