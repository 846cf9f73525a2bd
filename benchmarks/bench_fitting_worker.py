"""One code path of the fitting benchmark, in its own process (driven by benchmarks/bench_fitting.py).

    python benchmarks/bench_fitting_worker.py TREE FLAME_PKL DECA_DATA THREADS

TREE is a folder holding a `core/` package (the current tree, or an older commit's `git archive`); it goes
first on sys.path, so this process runs that tree's fitting code and nothing of the caller's. Requests
are JSON lines on stdin, answers JSON lines on stdout:

- ``{"op": "fit", "image": PNG, "landmarks": [[x, y] * 68], "detector": NAME}``: `Fitter.fit_faces` on
  one face; returns the codes after stage 1 and stage 2, their 68 projected landmarks in photo pixels,
  the reprojection errors (crop pixels), the stage times and the call's wall and process-CPU seconds.
- ``{"op": "photo", "path": PHOTO, "out": DIR}``: `Fitter.fit_photo` (detection, both stages, the result
  folder); returns the wall and process-CPU seconds.

Timings are measured here, around exactly those calls; the caller interleaves the code paths.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    tree, pkl, data, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sys.path.insert(0, str(Path(tree).resolve()))
    import numpy as np
    import torch

    import core
    if not Path(core.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"core imported from {core.__file__}, not from {tree}")
    torch.set_num_threads(threads)
    try:
        from core.model.face_model import FaceAssets
    except ImportError:  # older trees kept it in the pipeline
        from core.pipeline.face_model import FaceAssets
    from core.fitting.fitter import Fitter
    from core.fitting.writer import crop_ndc_to_photo
    from core.frontend import read_image
    from core.frontend.landmarks import FaceDetection

    assets = FaceAssets.from_paths(pkl, data)
    fitters: dict[str, Fitter] = {}

    def fitter(landmarks: str) -> Fitter:
        if landmarks not in fitters:
            fitters[landmarks] = Fitter(face_assets=assets, device="cpu", landmarks=landmarks)
        return fitters[landmarks]

    print(json.dumps({"ready": True, "core": str(Path(core.__file__).parent)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "fit":
            f = fitter("dlib")
            image = read_image(req["image"])
            lm = np.asarray(req["landmarks"], np.float64)
            det = FaceDetection(box=np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()]),
                                landmarks=lm, score=1.0, detector=req["detector"])
            t, c = time.perf_counter(), time.process_time()
            fit = f.fit_faces([image], [det], [req["image"]])[0]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            out = {"wall": wall, "cpu": cpu, "seconds_stage1": fit.timings["stage1"],
                   "seconds_stage2": fit.timings["stage2"]}
            for stage, codes, info in (("stage1", fit.codes_stage1, fit.stage1), ("stage2", fit.codes, fit.stage2)):
                fm = f.face_model
                with torch.no_grad():
                    g = fm.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
                proj = crop_ndc_to_photo(g.landmarks2d[0].cpu().numpy(), fit.crop)
                out[stage] = {**{k: v.tolist() for k, v in codes.numpy().items() if k in ("shape", "exp", "pose")},
                              "landmarks_photo": proj.tolist(), "reprojection_px_crop": float(info.reprojection_px[0])}
        elif req["op"] == "photo":
            f = fitter(req.get("landmarks", "dlib"))
            t, c = time.perf_counter(), time.process_time()
            f.fit_photo(req["path"], req["out"], overwrite=True)
            out = {"wall": time.perf_counter() - t, "cpu": time.process_time() - c}
        else:
            out = {"error": f"unknown op {req['op']!r}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
