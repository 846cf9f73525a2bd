"""Our MediaPipe-to-FLAME landmark embedding: where MediaPipe's fixed face-mesh points lie on FLAME.

``data/mediapipe_flame_embedding.npz`` (derived by scripts/derive_mediapipe_embedding.py, provenance in
``data/README_mediapipe_flame_embedding.md``) holds, for the mesh points that sit on a fixed spot of the
face surface (eyes, brows, nose, lips, irises; not the face oval, which slides with the silhouette):

- ``mediapipe_index`` (N,) int64: the MediaPipe point (0-477);
- ``face_index`` (N,) int64: the FLAME triangle it lies on (FLAME 2020 / 2023 topology, 9976 triangles);
- ``bary`` (N, 3) float64: its barycentric coordinates in that triangle (>= 0, sum 1);
- ``spread_mm`` (N,): median distance of the per-view back-projections from the chosen point (how well
  the views agreed), for information.

No file under a non-commercial licence went into it (see the README).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MediaPipeEmbedding", "load_mediapipe_embedding", "EMBEDDING_PATH"]

EMBEDDING_PATH = Path(__file__).with_name("data") / "mediapipe_flame_embedding.npz"


@dataclass(frozen=True)
class MediaPipeEmbedding:
    """See the module docstring; ``points`` evaluates it on any FLAME-topology mesh."""

    mediapipe_index: np.ndarray
    face_index: np.ndarray
    bary: np.ndarray
    spread_mm: np.ndarray

    def points(self, vertices, faces):
        """(..., V, 3) vertices (numpy or torch) and (F, 3) faces -> (..., N, 3) embedded points."""
        tri = faces[self.face_index]  # (N, 3)
        corners = vertices[..., tri, :]  # (..., N, 3, 3)
        bary = self.bary
        if not isinstance(vertices, np.ndarray):  # torch
            bary = vertices.new_tensor(bary)
        return (corners * bary[..., None]).sum(-2)


@functools.lru_cache(maxsize=1)
def load_mediapipe_embedding(path: str | Path = EMBEDDING_PATH) -> MediaPipeEmbedding:
    with np.load(path, allow_pickle=False) as z:
        emb = MediaPipeEmbedding(np.asarray(z["mediapipe_index"], np.int64), np.asarray(z["face_index"], np.int64),
                                 np.asarray(z["bary"], np.float64), np.asarray(z["spread_mm"], np.float64))
    n = len(emb.mediapipe_index)
    if emb.face_index.shape != (n,) or emb.bary.shape != (n, 3) or not np.allclose(emb.bary.sum(1), 1.0):
        raise ValueError(f"{path}: not a MediaPipe-to-FLAME embedding (shapes {emb.face_index.shape}, "
                         f"{emb.bary.shape})")
    return emb
