"""Reading FLAME model files: the official pickles (2020, 2023, 2023 Open) and our compact `.npz`.

The official files are Python-2 pickles holding chumpy objects and a scipy sparse joint regressor;
`core.safe_pickle` unpickles them without chumpy and without running code. Every failure names the
file and what is wrong with it, because users download these by hand and mix them up.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.errors import DecaError
from core.atomic import atomic_write_bytes
from core.safe_pickle import UnsafePickleError, load_restricted, to_array

N_VERTICES = 5023
N_FACES = 9976
N_JOINTS = 5
JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
FLAME_PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
NPZ_FORMAT_VERSION = 1
FLAME_DOWNLOAD_PAGE = "https://flame.is.tue.mpg.de/download.php"

REQUIRED_PICKLE_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


class FlameModelError(DecaError, ValueError):
    """A FLAME file is missing, unreadable or not a FLAME model. The message names the file."""


@dataclass(frozen=True)
class FlameModelData:
    """FLAME's arrays in float64 numpy, as the torch layer and the Blender add-on consume them.

    Shapes with V vertices, F faces, J joints: `v_template (V, 3)`, `shape_basis (V, 3, S)`,
    `expr_basis (V, 3, E)`, `posedirs (V, 3, 9 * (J - 1))`, `J_regressor (J, V)` dense,
    `weights (V, J)`, `parents (J,)` with -1 for the root, `faces (F, 3)` int64.
    """

    v_template: np.ndarray
    shape_basis: np.ndarray
    expr_basis: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    source: str = ""
    is_test_model: bool = False
    variant: str = "unknown"  # flame2020 | flame2023 | flame2023_open | test | procedural | unknown
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shape_basis.shape[2]

    @property
    def n_expression(self) -> int:
        return self.expr_basis.shape[2]

    @property
    def n_joints(self) -> int:
        return self.J_regressor.shape[0]

    @property
    def has_flame_topology(self) -> bool:
        return self.n_vertices == N_VERTICES and self.faces.shape[0] == N_FACES

    def with_source(self, source: str) -> "FlameModelData":
        return replace(self, source=source)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def guess_variant(path: Path, is_test_model: bool) -> str:
    if is_test_model:
        return "test"
    name = path.name.lower()
    if "2023" in name:
        return "flame2023_open" if "open" in name else "flame2023"
    if "generic_model" in name or "2020" in name:
        return "flame2020"
    return "unknown"


def _parents_from_kintree(kintree: np.ndarray, path: Path) -> np.ndarray:
    kintree = np.asarray(kintree)
    if kintree.ndim != 2 or kintree.shape[0] != 2:
        raise FlameModelError(f"{path}: 'kintree_table' has shape {kintree.shape}, expected (2, J)")
    parents = kintree[0].astype(np.int64)
    # Python 2 wrote the root's parent as uint32 4294967295; anything out of range is the root.
    parents[(parents < 0) | (parents >= kintree.shape[1])] = -1
    return parents


def validate(data: FlameModelData, path: str | Path, require_flame_topology: bool = True) -> FlameModelData:
    """Check shapes and consistency; raise FlameModelError naming the file and the first problem."""
    path = Path(path)
    V = data.v_template.shape[0] if data.v_template.ndim == 2 else -1
    if data.v_template.ndim != 2 or data.v_template.shape[1] != 3:
        raise FlameModelError(f"{path}: 'v_template' has shape {data.v_template.shape}, expected (V, 3)")
    if require_flame_topology and V != N_VERTICES:
        raise FlameModelError(
            f"{path}: has {V} vertices but FLAME has {N_VERTICES}; this is a model of another topology "
            f"(SMPL, BFM, a decimated FLAME?), not a FLAME model file. Download FLAME from {FLAME_DOWNLOAD_PAGE}"
        )
    if data.faces.ndim != 2 or data.faces.shape[1] != 3:
        raise FlameModelError(f"{path}: 'f' has shape {data.faces.shape}, expected (F, 3)")
    if require_flame_topology and data.faces.shape[0] != N_FACES:
        raise FlameModelError(
            f"{path}: has {data.faces.shape[0]} faces but FLAME has {N_FACES}; not a FLAME model of the expected topology"
        )
    if data.faces.size and (data.faces.min() < 0 or data.faces.max() >= V):
        raise FlameModelError(f"{path}: 'f' indexes vertex {data.faces.max()} but there are only {V} vertices")
    J = data.J_regressor.shape[0]
    checks = [
        ("shapedirs (identity part)", data.shape_basis, (V, 3, None)),
        ("shapedirs (expression part)", data.expr_basis, (V, 3, None)),
        ("posedirs", data.posedirs, (V, 3, 9 * (J - 1))),
        ("J_regressor", data.J_regressor, (J, V)),
        ("weights", data.weights, (V, J)),
        ("kintree_table", data.parents, (J,)),
    ]
    for name, arr, expected in checks:
        ok = arr.ndim == len(expected) and all(e is None or s == e for s, e in zip(arr.shape, expected))
        if not ok:
            exp = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
            raise FlameModelError(f"{path}: '{name}' has shape {arr.shape}, expected {exp}")
    if require_flame_topology and J != N_JOINTS:
        raise FlameModelError(f"{path}: has {J} joints but FLAME has {N_JOINTS}")
    if data.shape_basis.shape[2] == 0:
        raise FlameModelError(f"{path}: has no identity (shape) basis")
    for name, arr in (("v_template", data.v_template), ("shapedirs", data.shape_basis), ("posedirs", data.posedirs),
                      ("weights", data.weights), ("J_regressor", data.J_regressor)):
        if not np.all(np.isfinite(arr)):
            raise FlameModelError(f"{path}: '{name}' contains NaN or infinite values; the file is damaged")
    if data.parents[0] != -1 or any(not (0 <= p < i) for i, p in enumerate(data.parents[1:], start=1)):
        raise FlameModelError(f"{path}: 'kintree_table' parents {data.parents.tolist()} are not a tree rooted at joint 0")
    return data


def _from_pickled_dict(d: dict, path: Path, n_shape_total: int = 300) -> FlameModelData:
    missing = [k for k in REQUIRED_PICKLE_KEYS if k not in d]
    if missing:
        raise FlameModelError(
            f"{path}: is a pickle of a dict but lacks FLAME's keys {missing} (it has {sorted(map(str, d))[:12]}). "
            "Is this a FLAME model file?"
        )
    try:
        arrays = {k: np.asarray(to_array(d[k])) for k in REQUIRED_PICKLE_KEYS}
    except (KeyError, ValueError, TypeError, UnsafePickleError) as exc:
        raise FlameModelError(f"{path}: could not read FLAME's arrays: {exc}") from exc
    shapedirs = arrays["shapedirs"].astype(np.float64)
    if shapedirs.ndim != 3:
        raise FlameModelError(f"{path}: 'shapedirs' has shape {shapedirs.shape}, expected (5023, 3, 400)")
    n_id = min(n_shape_total, shapedirs.shape[2])
    is_test = bool(d.get("deca_blender_test_model", False))
    data = FlameModelData(
        v_template=arrays["v_template"].astype(np.float64),
        shape_basis=np.ascontiguousarray(shapedirs[:, :, :n_id]),
        expr_basis=np.ascontiguousarray(shapedirs[:, :, n_id:]),
        posedirs=arrays["posedirs"].astype(np.float64),
        J_regressor=arrays["J_regressor"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        parents=_parents_from_kintree(arrays["kintree_table"], path),
        faces=arrays["f"].astype(np.int64),
        source=str(path),
        is_test_model=is_test,
        variant=guess_variant(path, is_test),
    )
    return data


def load_flame_pickle(path: str | Path, require_flame_topology: bool = True) -> FlameModelData:
    """Load an official FLAME `.pkl` without chumpy and without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"FLAME model file not found: {path}. Download it from {FLAME_DOWNLOAD_PAGE}")
    raw = path.read_bytes()
    if not raw:
        raise FlameModelError(f"{path}: is empty (0 bytes); the download did not complete")
    try:
        obj = load_restricted(raw, path)
    except UnsafePickleError as exc:
        raise FlameModelError(str(exc)) from exc
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise FlameModelError(
            f"{path}: is truncated or not a pickle ({type(exc).__name__}: {exc}); download it again"
        ) from exc
    if not isinstance(obj, dict):
        raise FlameModelError(f"{path}: holds a {type(obj).__name__}, not FLAME's dict of arrays")
    return validate(_from_pickled_dict(obj, path), path, require_flame_topology)


def _stored_npz_arrays(path: Path, zf: zipfile.ZipFile, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """``{key: array}`` of an `.npz` whose members are all stored (what `save_flame_npz` writes), as
    read-only views of the file mapped into memory, or None (deflated members, an unusual npy header):
    `np.load` reads those. The caller converts (copies) each array, so the views do not outlive the load.

    ``np.load`` reads each member into fresh memory and the loader then converts that copy again: the
    mapping skips the first copy (27 MB, ~0.02-0.04 s of a cold start). Each member's CRC-32 is checked
    as zipfile does on reading, so a damaged file still fails (`zipfile.BadZipFile`), as before."""
    infos = {k: zf.getinfo(k + ".npy") for k in keys}
    if any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 0x1 for i in infos.values()):
        return None
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    out = {}
    for k, info in infos.items():
        h = info.header_offset
        local = view[h:h + 30]
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header of {info.filename}")
        start = h + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        member = view[start:start + info.file_size]
        if len(member) != info.file_size:
            raise zipfile.BadZipFile(f"{info.filename} is truncated")
        if zlib.crc32(member) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
        header = io.BytesIO(member[:1024].tobytes())
        version = np.lib.format.read_magic(header)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(header)
        if dtype.hasobject:
            return None
        count = int(np.prod(shape, dtype=np.int64))
        if header.tell() + count * dtype.itemsize != info.file_size:
            raise ValueError(f"{info.filename}: its header does not match its size")
        arr = np.frombuffer(member, dtype=dtype, count=count, offset=header.tell())
        out[k] = arr.reshape(shape, order="F" if fortran else "C")
    return out


def load_flame_npz(path: str | Path, require_flame_topology: bool = True) -> FlameModelData:
    """Load the project's compact `.npz` form (no pickles inside: allow_pickle is off)."""
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"FLAME model file not found: {path}")
    keys = ("v_template", "shape_basis", "expr_basis", "posedirs", "J_regressor", "weights", "parents", "faces")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise FlameModelError(f"{path}: is an .npz but lacks the keys {missing}; not a deca-blender FLAME file")
            arrays = _stored_npz_arrays(path, z.zip, keys) or {k: z[k] for k in keys}
            is_test = bool(z["is_test_model"]) if "is_test_model" in z.files else False
            variant = str(z["variant"]) if "variant" in z.files else guess_variant(path, is_test)
    except FlameModelError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError...
        raise FlameModelError(f"{path}: is truncated or not a valid .npz ({type(exc).__name__}: {exc})") from exc
    # every astype below copies: nothing refers to the file's mapping afterwards
    data = FlameModelData(
        v_template=arrays["v_template"].astype(np.float64),
        shape_basis=arrays["shape_basis"].astype(np.float64),
        expr_basis=arrays["expr_basis"].astype(np.float64),
        posedirs=arrays["posedirs"].astype(np.float64),
        J_regressor=arrays["J_regressor"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        parents=arrays["parents"].astype(np.int64),
        faces=arrays["faces"].astype(np.int64),
        source=str(path),
        is_test_model=is_test,
        variant=variant,
    )
    return validate(data, path, require_flame_topology)


def load_flame_model(path: str | Path, require_flame_topology: bool = True) -> FlameModelData:
    """Load a FLAME model from an official `.pkl` or the compact `.npz`, chosen by content."""
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"FLAME model file not found: {path}. Download it from {FLAME_DOWNLOAD_PAGE}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return load_flame_npz(path, require_flame_topology)
    return load_flame_pickle(path, require_flame_topology)


def save_flame_npz(data: FlameModelData, path: str | Path) -> None:
    """Write the compact form: float32 arrays (FLAME's own precision), no pickles. Stored, not deflated:
    FLAME's float bases barely compress (27 -> 23 MB) and inflating them cost 0.2-0.4 s of every cold
    start (0.04-0.1 s stored, measured at load 9); files written deflated by older versions still load."""

    def write(f) -> None:
        np.savez(
            f,
            format_version=np.int64(NPZ_FORMAT_VERSION),
            v_template=data.v_template.astype(np.float32),
            shape_basis=data.shape_basis.astype(np.float32),
            expr_basis=data.expr_basis.astype(np.float32),
            posedirs=data.posedirs.astype(np.float32),
            J_regressor=data.J_regressor.astype(np.float32),
            weights=data.weights.astype(np.float32),
            parents=data.parents.astype(np.int64),
            faces=data.faces.astype(np.int64),
            is_test_model=np.bool_(data.is_test_model),
            variant=np.str_(data.variant),
        )

    atomic_write_bytes(Path(path), write)
