"""Derive core/frontend/data/mediapipe_flame_embedding.npz: where MediaPipe's fixed face-mesh points lie on
FLAME's mean head.

Usage: .venv/bin/python scripts/derive_mediapipe_embedding.py [--template ../shared/assets/deca/head_template.obj]

How (see core/frontend/data/README_mediapipe_flame_embedding.md):
1. render FLAME's mean head (its template mesh), painted with our own simple colours
   (core/testmodels/painted_head.py), from 15 views: yaw -20..20 deg, pitch -10..10 deg;
2. run MediaPipe's face mesh (core/frontend/mediapipe_mesh.py) on each render;
3. back-project each detected point through the rasterizer: the triangle under it (face ids) and the
   exact barycentrics of the point in that triangle's projection -> a 3D point on the head;
4. per MediaPipe point, the coordinate-wise median of its 3D points over the views, snapped to the
   nearest surface point among the triangles the views hit.
Only the points of MediaPipe's eye, eyebrow, iris, nose and lip sets (plus the two iris centres) are kept:
the face oval slides along the silhouette and is not a fixed surface point.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.flame.template import read_template_obj  # noqa: E402
from core.frontend.flame_embedding import EMBEDDING_PATH  # noqa: E402
from core.frontend.mediapipe_mesh import MediaPipeDetector  # noqa: E402
from core.testmodels.painted_head import render_painted  # noqa: E402

VIEWS = [(yaw, pitch) for yaw in (-20, -10, 0, 10, 20) for pitch in (-10, 0, 10)]


def fixed_points() -> np.ndarray:
    """MediaPipe indices of the eye, eyebrow, iris, nose and lip sets, plus the iris centres 468 and 473."""
    from mediapipe.python.solutions import face_mesh_connections as c
    sets = (c.FACEMESH_LIPS, c.FACEMESH_LEFT_EYE, c.FACEMESH_RIGHT_EYE, c.FACEMESH_LEFT_EYEBROW,
            c.FACEMESH_RIGHT_EYEBROW, c.FACEMESH_NOSE, c.FACEMESH_LEFT_IRIS, c.FACEMESH_RIGHT_IRIS)
    idx = {i for s in sets for pair in s for i in pair} | {468, 473}
    return np.array(sorted(idx), np.int64)


def _bary_2d(tri: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Barycentrics of q (2,) in the 2D triangle tri (3, 2), clamped into the triangle."""
    a, b, c = tri
    m = np.array([b - a, c - a]).T
    try:
        l1, l2 = np.linalg.solve(m, q - a)
    except np.linalg.LinAlgError:
        return np.array([1.0, 0.0, 0.0])
    w = np.clip(np.array([1.0 - l1 - l2, l1, l2]), 0.0, None)
    return w / w.sum()


def _closest_on_triangle(p: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point to p (3,) on the triangle tri (3, 3), by projecting onto its plane and clamping the
    barycentrics (exact inside, a close approximation near the edges); returns (point, barycentrics)."""
    a, b, c = tri
    m = np.array([b - a, c - a]).T  # (3, 2)
    l, *_ = np.linalg.lstsq(m, p - a, rcond=None)
    w = np.clip(np.array([1.0 - l.sum(), l[0], l[1]]), 0.0, None)
    w = w / w.sum()
    return w @ tri, w


def derive(template_obj: str | Path) -> dict[str, np.ndarray]:
    mesh = read_template_obj(template_obj)
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    keep = fixed_points()
    det = MediaPipeDetector().load()
    samples: list[list[np.ndarray]] = [[] for _ in keep]
    hit_faces: list[set[int]] = [set() for _ in keep]
    for yaw, pitch in VIEWS:
        r = render_painted(v, f, yaw, pitch)
        found = det.detect(r.image)
        if len(found) != 1:
            raise RuntimeError(f"view yaw {yaw} pitch {pitch}: {len(found)} faces detected, expected 1")
        proj = r.project(v)
        for k, i in enumerate(keep):
            q = found[0].dense[i, :2]
            row, col = int(np.floor(q[1])), int(np.floor(q[0]))
            if not (0 <= row < r.size and 0 <= col < r.size) or r.face_ids[row, col] < 0:
                continue
            fi = int(r.face_ids[row, col])
            w = _bary_2d(proj[f[fi]], q)
            samples[k].append(w @ v[f[fi]])
            hit_faces[k].add(fi)
        print(f"view yaw {yaw:+3d} pitch {pitch:+3d}: detector score {found[0].score:.2f}, "
              f"yaw estimate {found[0].yaw:+.1f}")
    face_index, bary, spread = [], [], []
    for k, i in enumerate(keep):
        pts = np.array(samples[k])
        if len(pts) < len(VIEWS) // 2:
            raise RuntimeError(f"MediaPipe point {i} back-projected in only {len(pts)} of {len(VIEWS)} views")
        med = np.median(pts, axis=0)
        best = min(((np.linalg.norm(_closest_on_triangle(med, v[f[fi]])[0] - med), fi) for fi in hit_faces[k]))
        fi = best[1]
        p, w = _closest_on_triangle(med, v[f[fi]])
        face_index.append(fi)
        bary.append(w)
        spread.append(float(np.median(np.linalg.norm(pts - p, axis=1))) * 1000.0)
    return {"mediapipe_index": keep, "face_index": np.array(face_index, np.int64), "bary": np.array(bary),
            "spread_mm": np.array(spread), "views_yaw_pitch_deg": np.array(VIEWS, np.float64)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", default=str(REPO.parent / "shared" / "assets" / "deca" / "head_template.obj"),
                    help="FLAME's mean head as an OBJ (FLAME topology)")
    ap.add_argument("--out", default=str(EMBEDDING_PATH))
    args = ap.parse_args(argv)
    arrays = derive(args.template)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    s = arrays["spread_mm"]
    print(f"wrote {out}: {len(s)} points; view spread median {np.median(s):.2f} mm, max {s.max():.2f} mm")


if __name__ == "__main__":
    main()
