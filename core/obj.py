"""Wavefront OBJ, the one reader and writer: FLAME's UV template, result meshes, scans, benchmarks.

Reads ``v``, ``vt`` and ``f`` lines (``v``, ``v/vt``, ``v/vt/vn``, ``v//vn`` corners, 1-based or negative
indices); polygons are fan-triangulated unless ``triangles_only``. Everything else (normals, groups,
materials) is ignored. numpy only, so Blender's process and the results package can use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes
from core.errors import DecaError


class ObjError(DecaError, ValueError):
    """An OBJ file that is missing, unreadable, or lacks what the caller needs; names the file."""


@dataclass
class ObjMesh:
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, 0-based
    uv_coords: np.ndarray  # (T, 2) float64; (0, 2) when the file has none
    uv_faces: np.ndarray  # (F, 3) int64 into uv_coords; (0, 3) unless every corner has a texture index


def read_obj(path: str | Path, triangles_only: bool = False, need_uvs: bool = False) -> ObjMesh:
    """The mesh in ``path``. Raises `ObjError` for a missing or malformed file, a polygon with more than three
    corners when ``triangles_only``, missing texture indices when ``need_uvs``, or indices out of range."""
    path = Path(path)
    if not path.is_file():
        raise ObjError(f"OBJ file not found: {path}")
    verts, uvs, faces, uv_faces = [], [], [], []
    all_uv = True
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    verts.append([float(t) for t in parts[1:4]])
                elif parts[0] == "vt":
                    uvs.append([float(t) for t in parts[1:3]])
                elif parts[0] == "f":
                    corners = [c.split("/") for c in parts[1:]]
                    if len(corners) < 3 or (triangles_only and len(corners) != 3):
                        raise ObjError(f"{path}: has a face with {len(corners)} corners; expected triangles")
                    vi = [_index(c[0], len(verts)) for c in corners]
                    has_uv = all(len(c) > 1 and c[1] for c in corners)
                    ti = [_index(c[1], len(uvs)) for c in corners] if has_uv else None
                    all_uv &= has_uv
                    for k in range(1, len(corners) - 1):  # fan triangulation (a triangle is one fan)
                        faces.append([vi[0], vi[k], vi[k + 1]])
                        if ti is not None:
                            uv_faces.append([ti[0], ti[k], ti[k + 1]])
    except (ValueError, IndexError) as exc:
        if isinstance(exc, ObjError):
            raise
        raise ObjError(f"{path}: is not a readable OBJ ({exc})") from exc
    mesh = ObjMesh(
        vertices=np.asarray(verts, np.float64).reshape(-1, 3),
        faces=np.asarray(faces, np.int64).reshape(-1, 3),
        uv_coords=np.asarray(uvs, np.float64).reshape(-1, 2),
        uv_faces=np.asarray(uv_faces if all_uv else [], np.int64).reshape(-1, 3),
    )
    if need_uvs and (len(mesh.faces) == 0 or len(mesh.uv_faces) != len(mesh.faces)):
        raise ObjError(f"{path}: faces lack texture indices (expected 'f v/vt')")
    if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices)):
        raise ObjError(f"{path}: faces index beyond the listed vertices")
    if len(mesh.uv_faces) and (mesh.uv_faces.min() < 0 or mesh.uv_faces.max() >= len(mesh.uv_coords)):
        raise ObjError(f"{path}: faces index beyond the listed texture coordinates")
    return mesh


def _index(token: str, n_listed: int) -> int:
    """1-based OBJ index (negative: relative to the end of what is listed so far) -> 0-based."""
    i = int(token)
    return i - 1 if i > 0 else n_listed + i


def obj_text(vertices: np.ndarray, faces: np.ndarray, uv_coords: np.ndarray | None = None,
             uv_faces: np.ndarray | None = None, header: str | None = None, mtllib: str | None = None,
             material: str | None = None) -> str:
    """OBJ text: ``v`` (and ``vt``) lines, then ``f v/vt`` (or ``f v``) triangles, 1-based."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64) + 1
    lines = [f"# {header}"] if header else []
    if mtllib:
        lines += [f"mtllib {mtllib}", "o face"]
    lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in v.tolist()]
    if uv_coords is not None and uv_faces is not None:
        lines += [f"vt {a:.7g} {b:.7g}" for a, b in np.asarray(uv_coords, np.float64).tolist()]
        if material:
            lines += [f"usemtl {material}", "s 1"]
        lines.append(_face_lines(f, np.asarray(uv_faces, np.int64) + 1))
    else:
        lines.append(_face_lines(f, None))
    return "\n".join(lines) + "\n"


#: the ``f`` lines of the last few topologies: every result of one FLAME model has the same faces, and their
#: text is about half of an OBJ's formatting time (25 of 50 ms for FLAME's 9976 triangles)
_FACE_TEXT: dict[bytes, str] = {}


def _face_lines(f: np.ndarray, ft: np.ndarray | None) -> str:
    """The ``f`` lines (no trailing newline) for 1-based ``f`` (and ``ft``), cached by their bytes."""
    key = f.tobytes() + b"|" + (b"-" if ft is None else ft.tobytes())
    text = _FACE_TEXT.get(key)
    if text is None:
        if ft is None:
            text = "\n".join(f"f {a} {b} {c}" for a, b, c in f.tolist())
        else:
            text = "\n".join(f"f {a}/{d} {b}/{e} {c}/{g}" for (a, b, c), (d, e, g) in zip(f.tolist(), ft.tolist()))
        if len(_FACE_TEXT) >= 4:
            _FACE_TEXT.clear()
        _FACE_TEXT[key] = text
    return text


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, uv_coords: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None, **kw) -> Path:
    """Write `obj_text` to ``path`` atomically; returns the path."""
    data = obj_text(vertices, faces, uv_coords, uv_faces, **kw).encode()
    atomic_write_bytes(Path(path), lambda fh: fh.write(data))
    return Path(path)
