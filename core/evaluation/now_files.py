"""The file formats of the NoW benchmark, read as they are (numpy only).

- scans and predictions: Wavefront ``.obj`` (``v`` and ``f`` lines; polygons fan-triangulated, negative
  indices allowed) or Stanford ``.ply`` (ascii, binary little or big endian; ``vertex`` x y z and a
  ``face`` list property, other elements skipped);
- scan landmarks: Meshlab picked points ``.pp`` (XML ``<point x=".." y=".." z=".."/>``): NoW's official
  evaluation reads the 7 point lines that follow the 8 header lines, i.e. the file's first 7 points;
- predicted landmarks: ``.npy`` (7 x 3) or ``.txt`` (7 lines ``x y z``).

Errors are ``ValueError`` naming the file and what is wrong.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from core.obj import read_obj as read_obj_mesh

__all__ = ["read_obj", "read_ply", "read_mesh", "read_pp", "read_landmarks"]

N_LANDMARKS = 7


# -------------------------------------------------------------------------------------------- meshes

def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int64 triangles (polygons fan-triangulated) of an OBJ file,
    through the project's one OBJ reader (`core.obj`)."""
    mesh = read_obj_mesh(path)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply_header(data: bytes, path) -> tuple[str, list, int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    body = data.index(b"\n", end) + 1
    fmt, elements = None, []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        t = raw.split()
        if not t or t[0] in ("comment", "obj_info"):
            continue
        if t[0] == "format":
            fmt = t[1]
        elif t[0] == "element":
            elements.append((t[1], int(t[2]), []))
        elif t[0] == "property" and elements:
            if t[1] == "list":
                elements[-1][2].append((t[4], "list", _ply_type(t[2], path), _ply_type(t[3], path)))
            else:
                elements[-1][2].append((t[2], _ply_type(t[1], path), None, None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements, body


def _ply_type(name: str, path) -> str:
    if name not in _PLY_TYPES:
        raise ValueError(f"{path}: unknown PLY property type {name!r}")
    return _PLY_TYPES[name]


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int64 triangles of a PLY file (polygons fan-triangulated)."""
    data = Path(path).read_bytes()
    fmt, elements, pos = _ply_header(data, path)
    verts, faces = None, np.zeros((0, 3), np.int64)
    if fmt == "ascii":
        tokens = data[pos:].split()
        k = 0
        for name, count, props in elements:
            rows = []
            for _ in range(count):
                row = []
                for pname, ptype, ctype, itype in props:
                    if ptype == "list":
                        n = int(tokens[k]); k += 1
                        row.append([int(float(x)) for x in tokens[k:k + n]]); k += n
                    else:
                        row.append(float(tokens[k])); k += 1
                rows.append(row)
            verts, faces = _collect(name, props, rows, verts, faces, path)
    else:
        end = "<" if fmt == "binary_little_endian" else ">"
        for name, count, props in elements:
            if all(p[1] != "list" for p in props):  # fixed size: one structured read
                dt = np.dtype([(p[0], end + p[1]) for p in props])
                arr = np.frombuffer(data, dt, count=count, offset=pos)
                pos += dt.itemsize * count
                if name == "vertex":
                    if not {"x", "y", "z"} <= set(arr.dtype.names):
                        raise ValueError(f"{path}: PLY vertices lack x, y or z")
                    verts = np.stack([arr[c].astype(np.float64) for c in ("x", "y", "z")], 1)
                continue  # other fixed-size elements are skipped
            rows = []
            for _ in range(count):
                row = []
                for pname, ptype, ctype, itype in props:
                    if ptype == "list":
                        n = int(np.frombuffer(data, end + ctype, count=1, offset=pos)[0])
                        pos += np.dtype(ctype).itemsize
                        row.append(np.frombuffer(data, end + itype, count=n, offset=pos).astype(np.int64).tolist())
                        pos += np.dtype(itype).itemsize * n
                    else:
                        row.append(float(np.frombuffer(data, end + ptype, count=1, offset=pos)[0]))
                        pos += np.dtype(ptype).itemsize
                rows.append(row)
            verts, faces = _collect(name, props, rows, verts, faces, path)
    if verts is None:
        raise ValueError(f"{path}: PLY file without a 'vertex' element with x, y, z")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"{path}: face indices outside the {len(verts)} vertices")
    return verts, faces


def _collect(name, props, rows, verts, faces, path):
    names = [p[0] for p in props]
    if name == "vertex":
        try:
            cols = [names.index(c) for c in ("x", "y", "z")]
        except ValueError:
            raise ValueError(f"{path}: PLY vertices lack x, y or z") from None
        verts = np.asarray([[r[c] for c in cols] for r in rows], np.float64).reshape(-1, 3)
    elif name == "face":
        lists = [i for i, p in enumerate(props) if p[1] == "list"]
        if not lists:
            raise ValueError(f"{path}: PLY faces without a vertex index list")
        tris = []
        for r in rows:
            idx = r[lists[0]]
            tris += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
        faces = np.asarray(tris, np.int64).reshape(-1, 3)
    return verts, faces


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An ``.obj`` or ``.ply`` mesh: (V, 3) float64, (F, 3) int64."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        v, f = read_obj(path)
    elif suffix == ".ply":
        v, f = read_ply(path)
    else:
        raise ValueError(f"{path}: unsupported mesh format (use .obj or .ply)")
    if len(v) == 0:
        raise ValueError(f"{path}: the mesh has no vertices")
    if not np.isfinite(v).all():
        raise ValueError(f"{path}: the mesh has NaN or infinite vertices")
    return v, f


# ----------------------------------------------------------------------------------------- landmarks

def read_pp(path: str | Path) -> np.ndarray:
    """The first 7 picked points of a Meshlab ``.pp`` file: (7, 3) float64 (NoW's scan landmarks)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not a Meshlab picked-points file ({exc})") from None
    pts = []
    for el in root.iter("point"):
        try:
            pts.append([float(el.attrib[c]) for c in ("x", "y", "z")])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: a <point> without numeric x, y, z") from None
    if len(pts) < N_LANDMARKS:
        raise ValueError(f"{path}: {len(pts)} picked points, NoW needs {N_LANDMARKS}")
    return _check(np.asarray(pts[:N_LANDMARKS], np.float64), path)


def read_landmarks(path: str | Path) -> np.ndarray:
    """7 landmarks (7, 3) float64 from ``.pp``, ``.npy`` or ``.txt`` (whitespace separated ``x y z`` lines)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pp":
        return read_pp(path)
    if suffix == ".npy":
        lm = np.load(path, allow_pickle=False)
    elif suffix == ".txt":
        try:
            lm = np.loadtxt(path, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: not a table of numbers ({exc})") from None
    else:
        raise ValueError(f"{path}: unsupported landmark format (use .pp, .npy or .txt)")
    lm = np.asarray(lm, np.float64)
    if lm.size != N_LANDMARKS * 3:
        raise ValueError(f"{path}: expected 7 landmarks (x y z), found an array of shape {lm.shape}")
    return _check(lm.reshape(N_LANDMARKS, 3), path)


def _check(lm: np.ndarray, path) -> np.ndarray:
    if not np.isfinite(lm).all():
        raise ValueError(f"{path}: landmarks contain NaN or infinity")
    return lm
