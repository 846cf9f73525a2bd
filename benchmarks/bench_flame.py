"""FLAME forward (vertices, joints, 68 landmarks) on the CPU for batch 1 and 64, float32.

Uses the generated test model (same topology and sizes as FLAME 2020: 5023 vertices, 300 + 100
blend shapes; DECA drives 100 shape + 50 expression). Writes benchmarks/results/flame.json.

    .venv/bin/python benchmarks/bench_flame.py [--shared ../shared] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.flame import FlameLayer, load_flame_model, read_official_embedding  # noqa: E402
from core.testmodels.synthetic_flame import write_test_flame  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "flame.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.shared) / "assets"
    with tempfile.TemporaryDirectory() as tmp:
        pkl = write_test_flame(Path(tmp) / "flame.pkl", data / "deca", data / "flame" / "flame2020_joint_regressor.npz")
        model = load_flame_model(pkl)
    layer = FlameLayer(model, read_official_embedding(data / "deca" / "landmark_embedding.npy"), n_shape=100, n_expression=50)
    report = {"device": "cpu", "threads": args.threads, "dtype": "float32", "model": "test model (FLAME topology)", "results": []}
    for batch in (1, 64):
        g = torch.Generator().manual_seed(0)
        shape, exp = torch.randn(batch, 100, generator=g), torch.randn(batch, 50, generator=g)
        pose = torch.randn(batch, 6, generator=g) * 0.2
        times = []
        with torch.inference_mode():
            for i in range(args.repeats + 3):
                t = time.perf_counter()
                layer(shape, exp, pose)
                if i >= 3:
                    times.append(time.perf_counter() - t)
        med = statistics.median(times)
        row = {"batch": batch, "median_ms": round(med * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
               "meshes_per_s": round(batch / med, 1)}
        report["results"].append(row)
        print(f"batch {batch:3d}: median {row['median_ms']:.2f} ms  ({row['meshes_per_s']} meshes/s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
