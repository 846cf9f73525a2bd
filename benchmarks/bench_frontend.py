"""Front end: detection counts, per-photo detection time and 68-point agreement with dlib, for every
installed detector (MediaPipe, the default; dlib, the baseline; FAN when its weights are on disk), on the
shared photos and on large frames (a shared photo scaled up into 2444x1718 and 4000x3000 frames).

Usage: .venv/bin/python benchmarks/bench_frontend.py [--photos DIR] [--repeat N]
Writes benchmarks/results/frontend.json. Times are medians over N repeats (seconds). The baseline is dlib
(the previous default): every detector's time is also given as a ratio to dlib's on the same photo in the
same run, so a loaded machine shifts both. Agreement: DECA's crop box (centre and size) from each
detector's 68 points against the one from dlib's, in % of dlib's box size, and the mean point distance.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from core.atomic import atomic_write_bytes  # noqa: E402
from core.frontend import DlibDetector, FanDetector, MediaPipeDetector, read_image  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def timed(fn, repeat):
    ts, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def crop_box(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """DECA's crop box of 68 points: centre and size (before its 1.1 and 1.25 factors)."""
    lo, hi = lm.min(0), lm.max(0)
    return (lo + hi) / 2.0, float((hi - lo).sum() / 2.0)


def agreement(lm: np.ndarray, ref: np.ndarray) -> dict:
    (c, s), (c0, s0) = crop_box(lm), crop_box(ref)
    return {"centre_pct": float(np.linalg.norm(c - c0) / s0 * 100), "size_pct": float((s - s0) / s0 * 100),
            "mean_point_pct": float(np.linalg.norm(lm - ref, axis=1).mean() / s0 * 100)}


def framed(img: np.ndarray, hw: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``img`` (uint8) scaled by ``scale`` into a grey frame of size ``hw``; returns it, the offset, scale."""
    from PIL import Image
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                                 Image.Resampling.BICUBIC))
    frame = np.full((*hw, 3), 110, np.uint8)
    off = np.array([hw[1] // 2 - big.shape[1] // 3, hw[0] // 4])
    frame[off[1]:off[1] + big.shape[0], off[0]:off[0] + big.shape[1]] = big
    return frame, off.astype(np.float64), float(scale)


def compare(detectors: dict, img: np.ndarray, repeat: int) -> dict:
    """{detector: {faces, detect_s, ratio_to_dlib, agreement_with_dlib (others than dlib)}} on one image."""
    out, found = {}, {}
    for name, det in detectors.items():
        t, dets = timed(lambda: det.detect(img), repeat)
        found[name] = dets
        out[name] = {"faces": len(dets), "detect_s": t}
        if name == "mediapipe" and dets:
            out[name].update(yaw=dets[0].yaw, confidence=dets[0].confidence, score=dets[0].score)
    for name in detectors:
        out[name]["ratio_to_dlib"] = out[name]["detect_s"] / out["dlib"]["detect_s"]
        if name != "dlib" and found[name] and found["dlib"]:
            out[name]["agreement_with_dlib"] = agreement(found[name][0].landmarks, found["dlib"][0].landmarks)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default=os.environ.get("DECA_SHARED", str(REPO.parent / "shared")) + "/photos")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "frontend.json"))
    args = ap.parse_args(argv)
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in EXTS)
    if not photos:
        sys.exit(f"no photos in {args.photos}")

    detectors, load_s = {}, {}
    for name, make in (("mediapipe", lambda: MediaPipeDetector().load()), ("dlib", lambda: DlibDetector().load()),
                       ("fan", lambda: FanDetector())):
        cls = {"mediapipe": MediaPipeDetector, "dlib": DlibDetector, "fan": FanDetector}[name]
        if not cls.is_available():
            print(f"{name}: not available ({cls.availability()[1]})")
            continue
        t0 = time.perf_counter()
        detectors[name] = make()
        load_s[name] = time.perf_counter() - t0
    if "dlib" not in detectors:
        sys.exit("dlib (the baseline) is not installed")

    rows = []
    for p in photos:
        img = np.rint(read_image(p) * 255).astype(np.uint8)
        row = {"photo": p.name, "size_hw": list(img.shape[:2]), **compare(detectors, img, args.repeat)}
        rows.append(row)
        print(f"{p.name[:34]:34s} " + "  ".join(
            f"{n} {row[n]['faces']} face {row[n]['detect_s'] * 1e3:6.1f} ms" for n in detectors))

    large = []
    src_row = next(r for r in rows if r["dlib"]["faces"] and r.get("mediapipe", {}).get("faces", 1))
    src = np.rint(read_image(Path(args.photos) / src_row["photo"]) * 255).astype(np.uint8)
    for hw, scale in (((1718, 2444), 5), ((3000, 4000), 8)):
        frame, _, k = framed(src, hw, scale)
        entry = {"size_hw": list(hw), "face_scale": k, **compare(detectors, frame, max(1, args.repeat - 1))}
        large.append(entry)
        print(f"large {hw[1]}x{hw[0]}: " + "  ".join(
            f"{n} {entry[n]['faces']} face {entry[n]['detect_s'] * 1e3:7.1f} ms (x{entry[n]['ratio_to_dlib']:.2f})"
            for n in detectors))

    summary = {"photos": len(rows), "load_s": load_s}
    for name in detectors:
        ag = [r[name]["agreement_with_dlib"] for r in rows if "agreement_with_dlib" in r[name]]
        summary[name] = {
            "photos_with_a_face": sum(1 for r in rows if r[name]["faces"]),
            "median_detect_s": statistics.median(r[name]["detect_s"] for r in rows),
            "median_ratio_to_dlib": statistics.median(r[name]["ratio_to_dlib"] for r in rows),
        }
        if ag:
            summary[name]["agreement_with_dlib_median"] = {
                "centre_pct": statistics.median(a["centre_pct"] for a in ag),
                "abs_size_pct": statistics.median(abs(a["size_pct"]) for a in ag),
                "mean_point_pct": statistics.median(a["mean_point_pct"] for a in ag)}
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "load_average_1_5_15": list(os.getloadavg())},
              "repeat": args.repeat, "summary": summary, "large_photos": large, "per_photo": rows}
    payload = json.dumps(result, indent=1).encode()
    atomic_write_bytes(out, lambda f: f.write(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
