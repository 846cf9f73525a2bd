"""Front-end timings per photo: read_image, detection + 68 landmarks, crop + warp.

Usage: .venv/bin/python benchmarks/bench_frontend.py [--photos DIR] [--repeat N]
Writes benchmarks/results/frontend.json. Times are medians over N repeats (seconds) on this machine's CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.frontend import (DlibDetector, crop_from_landmarks, read_image, warp_image,  # noqa: E402
                           warp_images)
from core.frontend import landmarks as lmmod  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def timed(fn, repeat):
    ts, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default=os.environ.get("DECA_SHARED", str(REPO.parent / "shared")) + "/photos")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "frontend.json"))
    args = ap.parse_args(argv)
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in EXTS)
    if not photos:
        sys.exit(f"no photos in {args.photos}")
    # one torch thread: the warp is tiny, and on a shared 2-core machine extra threads only stall
    torch.set_num_threads(args.threads)

    models_dir = lmmod.dlib_models_dir()
    t0 = time.perf_counter()
    lmmod._dlib_model("hog", models_dir)
    lmmod._dlib_model("predictor68", models_dir)
    load_hog = time.perf_counter() - t0
    t0 = time.perf_counter()
    lmmod._dlib_model("cnn", models_dir)
    load_cnn = time.perf_counter() - t0

    full = DlibDetector()
    hog_only = DlibDetector(cnn_fallback=False)
    cnn_only = DlibDetector(hog=False)
    rows = []
    for p in photos:
        t_read, img = timed(lambda: read_image(p), args.repeat)
        t_det, dets = timed(lambda: full.detect(img), args.repeat)
        used = full.last_used
        t_hog, hog = timed(lambda: hog_only.detect(img), args.repeat)
        t_cnn, cnn = timed(lambda: cnn_only.detect(img), 1)
        row = {"photo": p.name, "size_hw": list(img.shape[:2]), "read_s": t_read,
               "detect_s": t_det, "detector_used": used, "faces": len(dets),
               "hog_only_s": t_hog, "hog_faces": len(hog), "cnn_only_s": t_cnn, "cnn_faces": len(cnn)}
        if dets:
            def crop_warp():
                t = crop_from_landmarks(dets[0].landmarks)
                return warp_image(img, t)
            row["crop_warp_s"], _ = timed(crop_warp, args.repeat)
        rows.append(row)
        print(f"{p.name[:40]:40s} read {t_read*1e3:6.1f} ms  detect {t_det*1e3:7.1f} ms ({used})  "
              f"hog {t_hog*1e3:6.1f} ms  cnn {t_cnn*1e3:7.1f} ms  "
              f"crop+warp {row.get('crop_warp_s', float('nan'))*1e3:5.1f} ms")

    # a large photo: the first photo with a face, enlarged 10x onto a 2444x1718 canvas
    from PIL import Image
    src = next((r for r in rows if r["hog_faces"]), rows[0])
    img = read_image(Path(args.photos) / src["photo"])
    big = np.asarray(Image.fromarray((img * 255).round().astype(np.uint8)).resize(
        (img.shape[1] * 7, img.shape[0] * 7), Image.Resampling.BICUBIC))
    canvas = np.full((1718, 2444, 3), 128, np.uint8)
    h, w = min(big.shape[0], 1718), min(big.shape[1], 2444)
    canvas[:h, 300:300 + min(w, 2444 - 300)] = big[:h, : min(w, 2444 - 300)]
    canvas_f = canvas.astype(np.float32) / 255
    t_big, big_dets = timed(lambda: hog_only.detect(canvas_f), 1)
    t_big_full, _ = timed(lambda: DlibDetector(max_side=None, cnn_fallback=False).detect(canvas_f), 1)
    t_big_cnn, _ = timed(lambda: cnn_only.detect(canvas_f), 1)
    if big_dets:
        tt = crop_from_landmarks(big_dets[0].landmarks)
        t_big_warp, _ = timed(lambda: warp_image(canvas_f, tt), args.repeat)
        t_big_warp_noaa, _ = timed(lambda: warp_image(canvas_f, tt, antialias=False), args.repeat)
    else:
        t_big_warp = t_big_warp_noaa = None
    ts = [crop_from_landmarks(r.landmarks) for r in big_dets] * 8
    t_batch, _ = timed(lambda: warp_images(canvas_f, ts), args.repeat) if ts else (None, None)
    large = {"size_hw": [1718, 2444], "hog_downscaled_800_s": t_big, "hog_full_resolution_s": t_big_full,
             "cnn_only_s": t_big_cnn, "faces": len(big_dets), "crop_warp_antialias_s": t_big_warp,
             "crop_warp_no_antialias_s": t_big_warp_noaa, "warp_images_batch": len(ts),
             "warp_images_batch_s": t_batch}
    print(f"large 2444x1718: HOG on <=800 px {t_big:.3f} s vs full resolution {t_big_full:.3f} s; "
          f"CNN {t_big_cnn:.3f} s; warp {t_big_warp} s (no antialias {t_big_warp_noaa} s); "
          f"{len(ts)} crops batched {t_batch} s")

    def med(key, sel=lambda r: True):
        v = [r[key] for r in rows if key in r and sel(r)]
        return statistics.median(v) if v else None

    summary = {
        "photos": len(rows),
        "faces_hog": sum(1 for r in rows if r["hog_faces"]),
        "faces_with_cnn_fallback": sum(1 for r in rows if r["faces"]),
        "faces_cnn_only": sum(1 for r in rows if r["cnn_faces"]),
        "model_load_hog_predictor_s": load_hog, "model_load_cnn_s": load_cnn,
        "median_read_s": med("read_s"), "median_detect_hog_s": med("hog_only_s"),
        "median_cnn_s": med("cnn_only_s"), "median_crop_warp_s": med("crop_warp_s"),
        "cnn_fallback_extra_cost_s": med("cnn_only_s"),
    }
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(),
                          "load_average_1_5_15": list(os.getloadavg())},
              "repeat": args.repeat, "summary": summary, "large_photo": large, "per_photo": rows}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
