"""Head pose from MediaPipe's 3D face mesh: a similarity fit of MediaPipe's canonical face model.

The canonical model (``data/mediapipe_canonical_face_model.obj``, Apache-2.0, see
``data/MEDIAPIPE_LICENSE.txt``) is in centimetres, y up, z towards the viewer. The detected mesh is in
photo pixels (x right, y down) with MediaPipe's relative depth z (same scale as x, negative towards the
camera); it is turned into the same right-handed y-up frame ``(x, -y, -z)`` before an Umeyama fit.

Angles (degrees): ``yaw`` > 0 when the nose points to the photo's right (+x), ``pitch`` > 0 when it points
up, ``roll`` > 0 for a counter-clockwise tilt in the photo. ``residual`` is the fit's RMS error divided by
the fitted face scale (the canonical model's 1 cm in pixels): large when the mesh is not face-like.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["HeadPose", "canonical_face_model", "head_pose_from_mesh"]

_DATA = Path(__file__).with_name("data")


@functools.lru_cache(maxsize=1)
def canonical_face_model() -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's canonical face: vertices (468, 3) float64 in cm, triangles (898, 3) int64 (0-based)."""
    verts, faces = [], []
    with open(_DATA / "mediapipe_canonical_face_model.obj", encoding="utf-8") as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(x.split("/")[0]) - 1 for x in line.split()[1:4]])
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64)


@dataclass(frozen=True)
class HeadPose:
    """Head rotation of one detected mesh: angles in degrees (see the module docstring); ``rotation``
    (3, 3) maps the canonical model's frame to the photo's y-up frame; ``scale`` pixels per cm."""

    yaw: float
    pitch: float
    roll: float
    rotation: np.ndarray
    scale: float
    residual: float


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Similarity (R, s, t) minimising |s R src + t - dst|^2; src, dst (N, 3)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    r = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / (a ** 2).sum(1).mean())
    return r, s, md - s * r @ ms


def head_pose_from_mesh(mesh: np.ndarray) -> HeadPose:
    """``mesh`` (468 or 478, 3) photo pixels + relative depth -> `HeadPose`."""
    m = np.asarray(mesh, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 468 or m.shape[1] != 3 or not np.isfinite(m[:468]).all():
        raise ValueError(f"expected finite (468 or 478, 3) mesh points, got {m.shape}")
    canon, _ = canonical_face_model()
    dst = m[:468] * np.array([1.0, -1.0, -1.0])
    r, s, t = _umeyama(canon, dst)
    res = np.sqrt((((s * canon @ r.T + t) - dst) ** 2).sum(1).mean()) / max(s, 1e-12)
    # ZYX Euler angles of R = Rz(roll) Ry(yaw) Rx(pitch): yaw and pitch are about the head's own axes, so an
    # in-plane tilt (roll) does not turn into yaw.
    yaw = np.degrees(-np.arcsin(np.clip(r[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return HeadPose(float(yaw), float(pitch), float(roll), r, s, float(res))
