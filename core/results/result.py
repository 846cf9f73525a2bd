"""The result folder's `result.npz`: one dataclass, its schema, atomic writing and checked reading.

docs/CONVENTIONS.md documents every key. The Blender add-on reads this file with numpy alone (no
torch in Blender's UI process), so it is a plain, pickle-free `.npz`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from core import sizes
from core.atomic import atomic_write_bytes
from core.errors import DecaError

SCHEMA_VERSION = 1
RESULT_FILE = "result.npz"


class ResultError(DecaError, ValueError):
    """A result file is missing, from another schema version, or malformed; names the file."""


@dataclass
class WrinkleModel:
    """A linear model of the detail decoder for one person.

    displacement(x) ~= base + sum_k (matrix @ x)_k * maps[k], with x = [exp (N_EXP = 50), jaw axis-angle (3)].
    base (S, S), maps (K, S, S), matrix (K, 53); explained_variance is measured on held-out samples.
    """

    base: np.ndarray
    maps: np.ndarray
    matrix: np.ndarray
    explained_variance: float

    def evaluate(self, exp: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.asarray(exp, np.float64).ravel(), np.asarray(jaw, np.float64).ravel()])
        w = self.matrix @ x
        return self.base + np.tensordot(w, self.maps, axes=1)


@dataclass
class ReconstructionResult:
    """Everything reconstructed for one face of one photo. Shapes as in docs/CONVENTIONS.md."""

    source_image: str
    image_size: np.ndarray  # (2,) height, width
    face_index: int
    # DECA's codes
    shape: np.ndarray  # (100,)
    exp: np.ndarray  # (50,)
    pose: np.ndarray  # (6,)
    cam: np.ndarray  # (3,)
    tex: np.ndarray  # (50,)
    light: np.ndarray  # (9, 3)
    detail: np.ndarray  # (128,)
    # geometry in FLAME space and on the photo
    vertices: np.ndarray  # (5023, 3)
    landmarks2d: np.ndarray  # (68, 2) photo pixels
    landmarks3d: np.ndarray  # (68, 3)
    detected_landmarks: np.ndarray  # (68, 2) photo pixels
    crop_matrix: np.ndarray  # (3, 3) photo -> crop pixels
    faces: np.ndarray  # (F, 3)
    uv_coords: np.ndarray  # (Nuv, 2)
    uv_faces: np.ndarray  # (F, 3)
    # the rig Blender builds from
    rig_template: np.ndarray  # (V, 3)
    rig_expr_basis: np.ndarray  # (V, 3, E)
    rig_posedirs: np.ndarray  # (V, 3, 36)
    rig_weights: np.ndarray  # (V, 5)
    rig_joints: np.ndarray  # (5, 3)
    rig_parents: np.ndarray  # (5,)
    # details
    displacement: np.ndarray  # (256, 256)
    displacement_scale: float
    wrinkles: WrinkleModel
    flame_model: str
    is_test_model: bool
    animatable_detail: bool = True  # False for a static displacement from shading (fit-only mode)
    mode: str = "deca"  # deca | fit | deca+fit
    rig_shape_basis: np.ndarray | None = None  # (V, 3, N) float16, optional: identity sliders
    extra: dict = field(default_factory=dict)  # further arrays a mode adds (saved as extra_<name>)

    # ------------------------------------------------------------------ checking

    def validate(self, where: str | Path | None = None) -> "ReconstructionResult":
        """Check every array's shape against the others and docs/CONVENTIONS.md, indices against their
        ranges, and that nothing is NaN or infinite. Raises `ResultError` naming the field (and ``where``);
        returns self. The writer calls it before writing, the Blender importer after reading."""
        name = f"{where}: " if where is not None else (f"{self.source_image}: " if self.source_image else "")
        V = np.shape(self.rig_template)[0] if np.ndim(self.rig_template) == 2 else -1
        J = np.shape(self.rig_joints)[0] if np.ndim(self.rig_joints) == 2 else -1
        F = np.shape(self.faces)[0] if np.ndim(self.faces) == 2 else -1
        K = np.shape(self.wrinkles.maps)[0] if np.ndim(self.wrinkles.maps) == 3 else -1
        S = np.shape(self.displacement)[0] if np.ndim(self.displacement) == 2 else -1
        L = sizes.N_LANDMARKS
        expected = {  # None: any size (but the number of dimensions is fixed)
            "image_size": (self.image_size, (2,)),
            "shape": (self.shape, (None,)), "exp": (self.exp, (sizes.N_EXP,)), "pose": (self.pose, (sizes.N_POSE,)),
            "cam": (self.cam, (sizes.N_CAM,)), "tex": (self.tex, (sizes.N_TEX,)), "light": (self.light, (sizes.N_SH, 3)),
            "detail": (self.detail, (sizes.N_DETAIL,)),
            "vertices": (self.vertices, (V, 3)), "landmarks2d": (self.landmarks2d, (L, 2)),
            "landmarks3d": (self.landmarks3d, (L, 3)), "detected_landmarks": (self.detected_landmarks, (L, 2)),
            "crop_matrix": (self.crop_matrix, (3, 3)), "faces": (self.faces, (F, 3)),
            "uv_coords": (self.uv_coords, (None, 2)), "uv_faces": (self.uv_faces, (F, 3)),
            "rig_template": (self.rig_template, (V, 3)), "rig_expr_basis": (self.rig_expr_basis, (V, 3, None)),
            "rig_posedirs": (self.rig_posedirs, (V, 3, 36)), "rig_weights": (self.rig_weights, (V, J)),
            "rig_joints": (self.rig_joints, (J, 3)), "rig_parents": (self.rig_parents, (J,)),
            "displacement": (self.displacement, (S, S)),
            "wrinkle_base": (self.wrinkles.base, (S, S)), "wrinkle_maps": (self.wrinkles.maps, (K, S, S)),
            "wrinkle_matrix": (self.wrinkles.matrix, (K, sizes.N_EXP + sizes.N_JAW)),
        }
        if self.rig_shape_basis is not None:
            expected["rig_shape_basis"] = (self.rig_shape_basis, (V, 3, None))
        for key, (value, shape) in expected.items():
            a = np.asarray(value)
            if a.ndim != len(shape) or any(s is not None and n != s for n, s in zip(a.shape, shape)):
                want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
                raise ResultError(f"{name}'{key}' has shape {a.shape}, expected {want}; the result is damaged")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise ResultError(f"{name}'{key}' holds NaN or infinite values; the result is damaged")
        if V < 1 or J < 1 or F < 1:
            raise ResultError(f"{name}the mesh is empty ({V} vertices, {F} faces, {J} joints)")
        for key, idx, n in (("faces", self.faces, V), ("uv_faces", self.uv_faces, len(self.uv_coords)),
                            ("rig_parents", np.asarray(self.rig_parents)[1:], J)):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ResultError(f"{name}'{key}' indexes outside [0, {n}); the result is damaged")
        if not (np.isfinite(self.displacement_scale) and self.displacement_scale > 0):
            raise ResultError(f"{name}displacement_scale is {self.displacement_scale}; it must be positive")
        return self

    # ------------------------------------------------------------------ saving

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"schema_version": np.int64(SCHEMA_VERSION)}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:  # an optional array left out (rig_shape_basis)
                continue
            if f.name == "wrinkles":
                out["wrinkle_base"] = np.asarray(value.base, np.float32)
                out["wrinkle_maps"] = np.asarray(value.maps, np.float32)
                out["wrinkle_matrix"] = np.asarray(value.matrix, np.float32)
                out["wrinkle_explained_variance"] = np.float64(value.explained_variance)
            elif f.name == "extra":
                for k, v in value.items():
                    out[f"extra_{k}"] = np.asarray(v)
            elif isinstance(value, str):
                out[f.name] = np.str_(value)
            elif isinstance(value, (bool, np.bool_)):
                out[f.name] = np.bool_(value)
            elif isinstance(value, (int, np.integer)):
                out[f.name] = np.int64(value)
            elif isinstance(value, float):
                out[f.name] = np.float64(value)
            else:
                arr = np.asarray(value)
                if arr.dtype == np.float64 and f.name not in ("crop_matrix",):
                    arr = arr.astype(np.float32)  # halves the file; crop keeps float64 for exact mapping
                out[f.name] = arr
        return out

    def save(self, folder: str | Path) -> Path:
        """Write `folder/result.npz` atomically. Returns its path."""
        path = Path(folder) / RESULT_FILE
        arrays = self.to_arrays()
        atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
        return path

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> "ReconstructionResult":
        path = Path(path)
        if path.is_dir():
            path = path / RESULT_FILE
        if not path.is_file():
            raise ResultError(f"no result file at {path}; a result folder holds {RESULT_FILE}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:
            raise ResultError(f"{path}: is truncated or not an .npz ({type(exc).__name__}: {exc})") from exc
        version = int(data.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise ResultError(f"{path}: has schema version {version}; this deca-blender reads version {SCHEMA_VERSION}")
        kwargs = {}
        missing = []
        for f in fields(cls):
            if f.name == "wrinkles":
                keys = ("wrinkle_base", "wrinkle_maps", "wrinkle_matrix", "wrinkle_explained_variance")
                if all(k in data for k in keys):
                    kwargs["wrinkles"] = WrinkleModel(data[keys[0]], data[keys[1]], data[keys[2]], float(data[keys[3]]))
                else:
                    missing.append("wrinkle_*")
            elif f.name == "extra":
                kwargs["extra"] = {k[6:]: v for k, v in data.items() if k.startswith("extra_")}
            elif f.name in data:
                v = data[f.name]
                if f.type in ("str",):
                    v = str(v)
                elif f.type in ("bool",):
                    v = bool(v)
                elif f.type in ("int",):
                    v = int(v)
                elif f.type in ("float",):
                    v = float(v)
                kwargs[f.name] = v
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        if missing:
            raise ResultError(f"{path}: lacks {missing}; it was not written by deca-blender's reconstruct")
        return cls(**kwargs)
