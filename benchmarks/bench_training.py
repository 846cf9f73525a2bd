"""Training speed: optimisation steps per second of each stage (pretrain, coarse, detail).

Real networks (ResNet-50 encoders at 224, all layers trained unless ``--trainable``), Adam, the full loss
of each stage (coarse: render + shape-consistency re-render; detail: detail normals + render + the
detail-consistency re-shading), data loading from a synthetic dataset rendered from the FLAME-format TEST
model (the speed does not depend on the model's values). The time of a step is the trainer's own
``step_time_s`` (data, forward, backward, optimizer); the first ``--warmup`` steps are dropped.

    .venv/bin/python benchmarks/bench_training.py [--device cpu|cuda] [--threads 1] [--steps 8]
        [--stages pretrain coarse detail] [--trainable all] [--shared ../shared]

Writes ``benchmarks/results/training.json`` (results of other devices already there are kept).

``--prepare``: wall time of ``deca-train prepare`` on ``<shared>/photos`` (each photo linked ``--prepare-copies``
times) with ``--prepare-workers`` (default 1 and 2) worker processes, interleaved ``--prepare-repeats`` times in
one run, with the speed-up over the first and the load average (``benchmarks/results/training_prepare.json``).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training.json"

#: identities x images per batch of each stage (per process); DECA: pretrain 64 x 1, coarse 8 x 4, detail 2 x 3
BATCH = {"pretrain": (8, 1), "coarse": (2, 4), "detail": (2, 3)}


def bench_prepare(photos: Path, workers: list[int], detector: str = "dlib", copies: int = 4, repeats: int = 2) -> dict:
    """Wall time of ``prepare_dataset`` on ``photos`` per worker count, each into a fresh folder, interleaved
    (w1, w2, w1, w2, ...) in one run so that the machine's load falls on both alike; the photos are linked
    ``copies`` times (each copy its own identity) so that the per-worker start-up is paid over a realistic
    share of photos. Reports the median per count, the ratio against the first count and the load average."""
    from training.prepare import PHOTO_EXTS, prepare_dataset

    files = sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_EXTS)
    out: dict = {"photos": str(photos), "n_photos": len(files) * copies, "detector": detector,
                 "copies": copies, "repeats": repeats, "runs": {str(w): [] for w in workers},
                 "loadavg_before": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else None}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        for c in range(copies):
            for f in files:
                (src / f"c{c}_{f.stem}").mkdir(parents=True, exist_ok=True)
                (src / f"c{c}_{f.stem}" / f.name).symlink_to(f.resolve())
        for r in range(repeats):
            for w in workers:
                t0 = time.perf_counter()
                rep = prepare_dataset(src, Path(tmp) / f"w{w}_r{r}", detector=detector, workers=w)
                sec = time.perf_counter() - t0
                out["runs"][str(w)].append({"seconds": round(sec, 3), "written": rep.written})
                print(f"workers {w} repeat {r}: {sec:.2f} s, {rep.written} written", flush=True)
    med = {w: statistics.median(x["seconds"] for x in out["runs"][str(w)]) for w in workers}
    base = med[workers[0]]
    out["median_seconds"] = {str(w): med[w] for w in workers}
    out["speedup_vs_first"] = {str(w): round(base / med[w], 3) for w in workers}
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else None
    out["cpu"] = cpu_name()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true",
                    help="benchmark deca-train prepare on <shared>/photos with --workers 1 and 2 instead")
    ap.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prepare-copies", type=int, default=4, help="each photo linked this many times")
    ap.add_argument("--prepare-repeats", type=int, default=2, help="interleaved runs per worker count")
    ap.add_argument("--prepare-detector", default="dlib")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 on a shared machine, see docs/training.md)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--stages", nargs="+", default=["pretrain", "coarse", "detail"])
    ap.add_argument("--trainable", default="all", help="model.encoder_trainable_layers")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--batch-scale", type=int, default=1, help="multiply the identities per batch (GPU)")
    ap.add_argument("--shared", default=os.environ.get("DECA_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.prepare:
        res = bench_prepare(Path(args.shared) / "photos", args.prepare_workers, args.prepare_detector,
                            args.prepare_copies, args.prepare_repeats)
        print(json.dumps(res, indent=2))
        out = Path(args.out).with_name("training_prepare.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        return 0

    from core.model.face_model import FaceAssets, FaceModel
    from core.testmodels.synthetic_flame import write_test_flame
    from training.config import config_from_dict
    from training.synthetic import SyntheticSpec, make_synthetic_dataset
    from training.trainer import train

    torch.set_num_threads(args.threads)
    shared = Path(args.shared) / "assets"
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flame = write_test_flame(tmp / "test_flame.pkl", shared / "deca", shared / "flame" / "flame2020_joint_regressor.npz")
        face = FaceModel(FaceAssets.from_paths(flame, shared / "deca"))
        n_id = max(b[0] for b in BATCH.values()) * args.batch_scale
        data = make_synthetic_dataset(tmp / "data", face, SyntheticSpec(n_identities=n_id, images_per_identity=4, seed=0))
        face = face.to(device)
        init = None
        for stage in args.stages:
            ids, k = BATCH[stage]
            ids *= args.batch_scale
            cfg = config_from_dict({
                "stage": stage, "output_dir": str(tmp / stage),
                "data": {"root": str(data), "identities_per_batch": ids, "images_per_identity": k},
                "model": {"encoder_trainable_layers": args.trainable, "bn_calibration_images": 8,
                          "init_from": str(init) if (stage == "detail" and init) else ""},
                "train": {"max_steps": args.steps + args.warmup, "threads": args.threads, "device": args.device,
                          "amp": args.amp, "log_every": 1000, "checkpoint_every": 100000, "tensorboard": False,
                          "resume": "never", "export_on_finish": stage == "coarse"},
            })
            t0 = time.perf_counter()
            res = train(cfg, face=face)
            wall = time.perf_counter() - t0
            if stage == "coarse":
                init = res.exported
            times = [r["step_time_s"] for r in res.history[args.warmup:]]
            med = statistics.median(times)
            row = {"stage": stage, "identities_per_batch": ids, "images_per_identity": k, "images_per_step": ids * k,
                   "trainable": args.trainable, "median_step_s": round(med, 4), "min_step_s": round(min(times), 4),
                   "steps_per_s": round(1.0 / med, 4), "images_per_s": round(ids * k / med, 3),
                   "steps_timed": len(times), "run_wall_s": round(wall, 1)}
            results.append(row)
            print(f"{stage:9s} batch {ids}x{k}={ids * k:3d}  median {med:7.3f} s/step  {1 / med:7.3f} steps/s  "
                  f"{ids * k / med:7.2f} images/s", flush=True)

    entry = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device_type": device.type, "threads": args.threads, "torch": torch.__version__, "cpu": cpu_name(),
        "cpu_count": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "amp": args.amp, "model": "test model (FLAME topology)", "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    all_entries = {}
    if out.is_file():
        try:
            all_entries = json.loads(out.read_text())
        except ValueError:
            all_entries = {}
    all_entries[device.type] = entry
    out.write_text(json.dumps(all_entries, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
