"""FLAME's UV layout, read from DECA's `head_template.obj` (`v`, `vt` and `f v/vt` lines)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DecaError


class TemplateError(DecaError, ValueError):
    """The template OBJ is missing or not the FLAME head template; the message names the file."""


@dataclass(frozen=True)
class TemplateMesh:
    """vertices (V, 3), faces (F, 3) into vertices, uv_coords (Nuv, 2) in [0, 1] with v up,
    uv_faces (F, 3) into uv_coords, row-aligned with `faces`."""

    vertices: np.ndarray
    faces: np.ndarray
    uv_coords: np.ndarray
    uv_faces: np.ndarray


def read_template_obj(path: str | Path) -> TemplateMesh:
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"template OBJ not found: {path}")
    verts, uvs, faces, uv_faces = [], [], [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("v "):
                    verts.append([float(t) for t in line.split()[1:4]])
                elif line.startswith("vt "):
                    uvs.append([float(t) for t in line.split()[1:3]])
                elif line.startswith("f "):
                    corners = line.split()[1:]
                    if len(corners) != 3:
                        raise TemplateError(f"{path}: has a face with {len(corners)} corners; FLAME's template is all triangles")
                    idx = [c.split("/") for c in corners]
                    if any(len(c) < 2 or not c[1] for c in idx):
                        raise TemplateError(f"{path}: faces lack texture indices (expected 'f v/vt'); not DECA's UV template")
                    faces.append([int(c[0]) - 1 for c in idx])
                    uv_faces.append([int(c[1]) - 1 for c in idx])
    except (ValueError, IndexError) as exc:
        if isinstance(exc, TemplateError):
            raise
        raise TemplateError(f"{path}: is not a readable OBJ ({exc})") from exc
    mesh = TemplateMesh(
        vertices=np.asarray(verts, dtype=np.float64).reshape(-1, 3),
        faces=np.asarray(faces, dtype=np.int64).reshape(-1, 3),
        uv_coords=np.asarray(uvs, dtype=np.float64).reshape(-1, 2),
        uv_faces=np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3),
    )
    if len(mesh.faces) == 0 or len(mesh.uv_coords) == 0:
        raise TemplateError(f"{path}: has no faces or no texture coordinates")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.uv_faces.max() >= len(mesh.uv_coords):
        raise TemplateError(f"{path}: faces index beyond the listed vertices")
    return mesh
