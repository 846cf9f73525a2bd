"""A painted, shaded render of a FLAME-topology head that face detectors accept as a face.

Used to derive our MediaPipe-to-FLAME landmark embedding (scripts/derive_mediapipe_embedding.py) and to
test it. The paint is ours and deliberately simple (no licensed texture: not DECA's mean texture, not
FLAME's albedo): one skin colour, and on FLAME's eyeballs (vertices 3931-5022, two spheres of 546) a white
sclera, a brown iris and a black pupil around each eyeball's forward axis. Lambert shading from a light
above-right of the camera plus an ambient term, on a grey background.

Camera: orthographic. ``render_painted`` rotates the head about ``centre`` (yaw about +y, then pitch about
+x), scales by ``pixels_per_metre`` and centres it; ``project`` gives the continuous pixel coordinates
(docs/CONVENTIONS.md) of any head-space point under the same camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.render.rasterize import rasterize
from core.render.shading import vertex_normals

__all__ = ["EYEBALLS", "paint_head", "PaintedRender", "render_painted"]

EYEBALLS = (slice(3931, 4477), slice(4477, 5023))  # FLAME's two eyeball spheres
_SKIN = np.array([0.85, 0.64, 0.52])
_SCLERA, _IRIS, _PUPIL = np.array([0.92, 0.90, 0.88]), np.array([0.35, 0.22, 0.12]), np.array([0.05, 0.05, 0.05])


def paint_head(vertices: np.ndarray) -> np.ndarray:
    """(V, 3) head-space vertices (FLAME topology, +z forward) -> (V, 3) RGB colours in [0, 1]."""
    v = np.asarray(vertices, np.float64)
    if v.shape[0] < 5023:
        raise ValueError(f"expected FLAME's 5023 vertices, got {v.shape}")
    col = np.tile(_SKIN, (len(v), 1))
    for eye in EYEBALLS:
        d = v[eye] - v[eye].mean(0)
        cos_fwd = d[:, 2] / np.linalg.norm(d, axis=1)
        col[eye] = np.where(cos_fwd[:, None] > 0.97, _PUPIL, np.where(cos_fwd[:, None] > 0.85, _IRIS, _SCLERA))
    return col


@dataclass
class PaintedRender:
    """image (S, S, 3) uint8; face_ids (S, S) (-1 = background) and bary (S, S, 3) at pixel centres;
    rotation (3, 3), centre (3,), pixels_per_metre and size of the camera (see `project`)."""

    image: np.ndarray
    face_ids: np.ndarray
    bary: np.ndarray
    rotation: np.ndarray
    centre: np.ndarray
    pixels_per_metre: float
    size: int

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) head-space points -> (N, 2) continuous pixel coordinates (x right, y down)."""
        p = (np.asarray(points, np.float64) - self.centre) @ self.rotation.T
        return np.c_[p[:, 0], -p[:, 1]] * self.pixels_per_metre + self.size / 2.0


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


def render_painted(vertices: np.ndarray, faces: np.ndarray, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                   size: int = 512, pixels_per_metre: float | None = None,
                   centre: np.ndarray | None = None) -> PaintedRender:
    """Render the painted head (see the module docstring). ``centre`` defaults to the mean of the face
    vertices in front of the ears; ``pixels_per_metre`` to 3.2 x ``size`` (a 16 cm half-width view)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if centre is None:
        centre = np.array([0.0, v[:, 1].mean(), 0.0])
    ppm = float(pixels_per_metre if pixels_per_metre is not None else size / 0.32)
    r = _rotation(yaw_deg, pitch_deg)
    p = (v - centre) @ r.T
    # image NDC: x right, y down, z = depth (smaller is nearer)
    k = 2.0 * ppm / size
    scr = torch.as_tensor(np.c_[p[:, 0] * k, -p[:, 1] * k, -p[:, 2]])[None]
    ft = torch.as_tensor(f)
    fr = rasterize(scr, ft, size)
    n = vertex_normals(torch.as_tensor(p)[None], ft)[0].numpy()
    fid, bary = fr.face_ids[0].numpy(), fr.bary[0].numpy()
    m = fid >= 0
    tri = f[fid[m]]
    nrm = (n[tri] * bary[m][..., None]).sum(1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    col = (paint_head(v)[tri] * bary[m][..., None]).sum(1)
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    shade = 0.35 + 0.75 * np.clip(nrm @ light, 0.0, 1.0)
    img = np.full((size, size, 3), 0.25)
    img[m] = np.clip(col * shade[:, None], 0.0, 1.0)
    return PaintedRender(np.rint(img * 255).astype(np.uint8), fid, bary, r, np.asarray(centre, np.float64), ppm,
                         int(size))
