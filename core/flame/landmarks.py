"""The 68 iBUG landmarks on FLAME's surface (DECA's landmark embedding).

Each landmark is a face of the mesh plus barycentric coordinates. For 2D fitting, the 17 jaw-contour
landmarks slide with the head's yaw: the embedding holds one row of contour faces per degree, so the
contour follows the silhouette a 2D detector sees. For 3D use, one fixed set of 68 is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from core.errors import DecaError
from core.safe_pickle import UnsafePickleError, load_restricted, to_array

N_LANDMARKS = 68
N_CONTOUR = 17
MAX_YAW_DEG = 39


class LandmarkEmbeddingError(DecaError, ValueError):
    """The landmark embedding file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Face indices and barycentrics; shapes as in DECA's `landmark_embedding.npy`."""

    static_faces: np.ndarray  # (51,) landmarks 18..68 (1-based iBUG numbering)
    static_bary: np.ndarray  # (51, 3)
    dynamic_faces: np.ndarray  # (79, 17) contour faces per yaw row
    dynamic_bary: np.ndarray  # (79, 17, 3)
    full_faces: np.ndarray  # (68,)
    full_bary: np.ndarray  # (68, 3)

    KEYS = (
        ("static_lmk_faces_idx", "static_faces", (51,)),
        ("static_lmk_bary_coords", "static_bary", (51, 3)),
        ("dynamic_lmk_faces_idx", "dynamic_faces", (79, 17)),
        ("dynamic_lmk_bary_coords", "dynamic_bary", (79, 17, 3)),
        ("full_lmk_faces_idx", "full_faces", (68,)),
        ("full_lmk_bary_coords", "full_bary", (68, 3)),
    )

    @classmethod
    def from_mapping(cls, d, source: str | Path) -> "LandmarkEmbedding":
        values = {}
        for key, attr, shape in cls.KEYS:
            if key not in d:
                raise LandmarkEmbeddingError(f"{source}: lacks '{key}'; not DECA's landmark embedding")
            arr = np.asarray(to_array(d[key]))
            arr = arr.reshape(shape) if arr.size == int(np.prod(shape)) else arr
            if arr.shape != shape:
                raise LandmarkEmbeddingError(f"{source}: '{key}' has shape {arr.shape}, expected {shape}")
            values[attr] = arr.astype(np.int64 if "faces" in attr else np.float64)
        return cls(**values)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, attr) for key, attr, _ in self.KEYS}

    def check_faces(self, n_faces: int, source: str | Path = "landmark embedding") -> None:
        for attr in ("static_faces", "dynamic_faces", "full_faces"):
            arr = getattr(self, attr)
            if arr.min() < 0 or arr.max() >= n_faces:
                raise LandmarkEmbeddingError(f"{source}: '{attr}' indexes face {arr.max()} of a mesh with {n_faces} faces")


def read_official_embedding(path: str | Path) -> LandmarkEmbedding:
    """Read DECA's `landmark_embedding.npy` (a pickled dict with torch tensors) without running code."""
    path = Path(path)
    if not path.is_file():
        raise LandmarkEmbeddingError(f"landmark embedding not found: {path}")
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            npy_format._check_version(version)  # noqa: SLF001 - public read_array_header_* need it
            header = npy_format.read_array_header_1_0(f) if version == (1, 0) else npy_format.read_array_header_2_0(f)
            payload = f.read()
    except (ValueError, OSError) as exc:
        raise LandmarkEmbeddingError(f"{path}: is not a .npy file ({exc})") from exc
    if header[2] != np.dtype(object):
        raise LandmarkEmbeddingError(f"{path}: holds a {header[2]} array, not DECA's pickled dict")
    try:
        obj = load_restricted(payload, path, allow_torch=True)
    except UnsafePickleError as exc:
        raise LandmarkEmbeddingError(str(exc)) from exc
    except Exception as exc:
        raise LandmarkEmbeddingError(f"{path}: is truncated or damaged ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise LandmarkEmbeddingError(f"{path}: holds a {type(obj).__name__}, not a dict")
    return LandmarkEmbedding.from_mapping(obj, path)


def load_embedding(path: str | Path) -> LandmarkEmbedding:
    """Load the embedding from the installed `.npz` (plain arrays) or the official `.npy`."""
    path = Path(path)
    if path.suffix == ".npy":
        return read_official_embedding(path)
    if not path.is_file():
        raise LandmarkEmbeddingError(f"landmark embedding not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return LandmarkEmbedding.from_mapping({k: z[k] for k in z.files}, path)
    except LandmarkEmbeddingError:
        raise
    except Exception as exc:
        raise LandmarkEmbeddingError(f"{path}: is truncated or not an .npz ({exc})") from exc


def rotation_y_euler_deg(rot: torch.Tensor) -> torch.Tensor:
    """The y Euler angle of (B, 3, 3) rotations, in degrees: atan2(-R20, sqrt(R00^2 + R10^2))."""
    sy = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    return torch.atan2(-rot[:, 2, 0], sy) * (180.0 / math.pi)


def contour_rows(head_rot: torch.Tensor) -> torch.Tensor:
    """Row of the dynamic embedding for each head rotation (global @ neck), per REFERENCE.md.

    `a = round(min(euler_y, 39))` in degrees; rows 0..39 hold a >= 0, rows 40..78 hold a = -1..-39
    (row 39 - a), and row 78 also takes everything beyond -39. Note the sign: DECA's code negates the
    angle, but on FLAME's template the rows for positive `a` pull the +x (subject's left) contour
    forward, which is the side that turns away under a positive rotation about y. Without the
    negation the far-side contour lands on the silhouette (tests/test_flame.py checks this), so we
    follow REFERENCE and the geometry.
    """
    a = torch.round(torch.clamp(rotation_y_euler_deg(head_rot), max=MAX_YAW_DEG)).long()
    neg = torch.where(a < -MAX_YAW_DEG, torch.full_like(a, 2 * MAX_YAW_DEG), MAX_YAW_DEG - a)
    return torch.where(a < 0, neg, a)


def surface_points(vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Points on the mesh from faces and barycentrics.

    Args:
        vertices: (B, V, 3); faces: (F, 3) long; face_idx: (B, L) long; bary: (B, L, 3).
    Returns:
        (B, L, 3).
    """
    B, L = face_idx.shape
    tri = faces[face_idx.reshape(-1)].reshape(B, L, 3)  # vertex ids
    batch = torch.arange(B, device=vertices.device)[:, None, None]
    corners = vertices[batch, tri]  # (B, L, 3, 3)
    return (corners * bary[..., None]).sum(-2)
