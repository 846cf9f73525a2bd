"""core.render on FLAME's template (5023 vertices, 9976 faces) on the CPU, float32.

Times, per call: the rasterizer alone and the full render (albedo texture + SH light) at 224x224 for batch
1 and 8, the full render's backward pass, the UV-space rasterization at 256 and 512 (what the cache saves)
and the mapping of per-vertex positions into a 256 UV map with a cached rasterization.
Writes benchmarks/results/render.json.

    .venv/bin/python benchmarks/bench_render.py [--shared ../shared] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.obj import read_obj as core_read_obj  # noqa: E402
from core.render import MeshRenderer, orthographic_project, rasterize, render_uv_space  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "render.json"


def read_obj(path: Path):
    """(vertices, faces, uv_coords, uv_faces) of an OBJ as tensors (core.obj reads it)."""
    m = core_read_obj(path)
    return (torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.long),
            torch.tensor(m.uv_coords, dtype=torch.float32), torch.tensor(m.uv_faces, dtype=torch.long))


def timeit(fn, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    verts, faces, uvs, uv_faces = read_obj(Path(args.shared) / "assets" / "deca" / "head_template.obj")

    # A DECA-like framing: the head fills ~90% of the crop; batch items turned by different yaws so that
    # the batch is not one image repeated.
    lo, hi = verts.amin(0), verts.amax(0)
    centre = (lo + hi) / 2
    scale = 2 * 0.9 / float((hi - lo)[:2].max())
    renderer = MeshRenderer(faces, uvs, uv_faces, image_size=224)
    g = torch.Generator().manual_seed(0)
    albedo_1 = torch.rand(1, 3, 512, 512, generator=g)
    light_1 = torch.randn(1, 9, 3, generator=g) * 0.3
    light_1[:, 0] += 3.0

    def batch_of(b: int):
        yaws = torch.linspace(-0.6, 0.6, b) if b > 1 else torch.zeros(1)
        rots = []
        for a in yaws.tolist():
            c, s = math.cos(a), math.sin(a)
            rots.append(torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]]))
        v = torch.einsum("bij,vj->bvi", torch.stack(rots), verts - centre)
        cam = torch.tensor([[scale, 0.0, 0.0]]).expand(b, -1).contiguous()
        return v, cam, albedo_1.expand(b, -1, -1, -1), light_1.expand(b, -1, -1)

    report = {"device": "cpu", "threads": args.threads, "dtype": "float32",
              "mesh": "FLAME head_template.obj (5023 v, 9976 f)", "results": []}

    def record(name: str, batch: int, stats: dict) -> None:
        row = {"name": name, "batch": batch, **stats, "ms_per_image": round(stats["median_ms"] / batch, 3)}
        report["results"].append(row)
        print(f"{name:34s} batch {batch}: median {stats['median_ms']:8.2f} ms  ({row['ms_per_image']:.2f} ms/image)")

    for b in (1, 8):
        v, cam, albedo, light = batch_of(b)
        vs = orthographic_project(v, cam)
        record("rasterize 224", b, timeit(lambda: rasterize(vs, faces, 224), args.repeats))
        with torch.no_grad():
            record("render 224 (texture + SH)", b, timeit(lambda: renderer(v, cam, albedo, light), args.repeats))
        vg = v.clone().requires_grad_()
        lg = light.clone().requires_grad_()
        ag = albedo.clone().requires_grad_()

        def fwd_bwd():
            renderer(vg, cam, ag, lg).image.sum().backward()

        record("render 224 forward + backward", b, timeit(fwd_bwd, max(3, args.repeats // 2)))

    for size in (256, 512):
        record(f"UV rasterize {size} (uncached)", 1, timeit(lambda: render_uv_space(uvs, uv_faces, size), args.repeats))
    uvr = renderer.uv_rasterization(256)
    v8 = batch_of(8)[0]
    record("vertices -> UV 256 (cached raster)", 8, timeit(lambda: uvr.vertex_attributes_to_uv(v8, faces), args.repeats))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
