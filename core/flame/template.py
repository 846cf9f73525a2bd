"""FLAME's UV layout, read from DECA's `head_template.obj` (`v`, `vt` and `f v/vt` lines)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DecaError
from core.obj import ObjError, read_obj


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
    try:
        m = read_obj(path, triangles_only=True, need_uvs=True)
    except ObjError as exc:
        raise TemplateError(f"{exc}; FLAME's UV template (DECA's head_template.obj) is all 'f v/vt' triangles") from exc
    mesh = TemplateMesh(vertices=m.vertices, faces=m.faces, uv_coords=m.uv_coords, uv_faces=m.uv_faces)
    if len(mesh.faces) == 0 or len(mesh.uv_coords) == 0:
        raise TemplateError(f"{path}: has no faces or no texture coordinates")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.uv_faces.max() >= len(mesh.uv_coords):
        raise TemplateError(f"{path}: faces index beyond the listed vertices")
    return mesh
