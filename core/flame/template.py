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
    mesh = _read_plain_template(path)
    if mesh is None:  # not the plain layout: the general reader (and its errors)
        try:
            m = read_obj(path, triangles_only=True, need_uvs=True)
        except ObjError as exc:
            raise TemplateError(f"{exc}; FLAME's UV template (DECA's head_template.obj) is all 'f v/vt' "
                                "triangles") from exc
        mesh = TemplateMesh(vertices=m.vertices, faces=m.faces, uv_coords=m.uv_coords, uv_faces=m.uv_faces)
    if len(mesh.faces) == 0 or len(mesh.uv_coords) == 0:
        raise TemplateError(f"{path}: has no faces or no texture coordinates")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.uv_faces.max() >= len(mesh.uv_coords):
        raise TemplateError(f"{path}: faces index beyond the listed vertices")
    return mesh


def _read_plain_template(path: Path) -> TemplateMesh | None:
    """`read_obj`'s answer for a file in the template's plain layout, parsed in bulk by numpy (one ``split``
    per line kind instead of Python work per line: 0.1 s of every cold start, ~20x faster), or None when the
    file is not in that layout: every ``v`` line exactly 3 numbers, every ``vt`` line 2, every ``f`` line 3
    ``v/vt`` corners with positive indices, no other line starting with ``v``/``vt``/``f`` tokens. The values
    are the same (numpy parses each number as ``float``/``int`` do; tests/test_startup.py checks equality
    with `read_obj`)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    groups: dict[str, list[str]] = {"v": [], "vt": [], "f": []}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head in groups:
            groups[head].append(rest)
        elif head.startswith(("v", "f")) and head not in ("vn", "vp"):  # "v\t", "f\t", ...: not plain
            return None
    try:
        verts = np.array(" ".join(groups["v"]).split(), np.float64)
        uvs = np.array(" ".join(groups["vt"]).split(), np.float64)
        f_text = " ".join(groups["f"])
        corners = np.array(f_text.replace("/", " ").split(), np.int64)
    except ValueError:
        return None
    n_v, n_vt, n_f = len(groups["v"]), len(groups["vt"]), len(groups["f"])
    if (verts.size != 3 * n_v or uvs.size != 2 * n_vt or n_f == 0 or corners.size != 6 * n_f
            or f_text.count("/") != 3 * n_f or "//" in f_text or len(f_text.split()) != 3 * n_f):
        return None  # extra values, other corner forms, polygons: the general reader decides
    if any(len(rest.split()) != 3 for rest in groups["f"]):
        return None
    corners = corners.reshape(n_f, 3, 2)
    if corners.min() < 1:  # 0 or relative (negative) indices
        return None
    faces, uv_faces = corners[..., 0] - 1, corners[..., 1] - 1
    if faces.max() >= n_v or uv_faces.max() >= n_vt:
        return None
    return TemplateMesh(vertices=verts.reshape(n_v, 3), faces=faces, uv_coords=uvs.reshape(n_vt, 2),
                        uv_faces=uv_faces)
