"""iBUG-68 points from MediaPipe's 478-point face mesh: a fixed index/weight map.

DECA's crop and its 68-point losses expect the iBUG 300-W semantics (jaw 0-16, brows 17-26, nose 27-35,
eyes 36-47, lips 48-67). MediaPipe's mesh has a different topology, so each iBUG point is a fixed weighted
sum of a few mesh points: ``ibug68 = sum_k weights[i, k] * mesh[indices[i, k]]``.

How the map was chosen (see tests/test_frontend.py::test_mesh68_crop_agrees_with_dlib for the check):

- eyes, brows, nose and lips: the mesh vertex at the same anatomical spot (eye corners and lids, brow
  ridge points from outer to inner, nose bridge to tip, nostril wings, lip corners, Cupid's bow, the inner
  lip line), single vertices;
- the jaw (0-16): iBUG's jaw is the *lower* face contour from one ear to the other, which MediaPipe's face
  oval (``FACEMESH_FACE_OVAL``) follows from vertex 127 (beside the right eye) over the chin (152) to 356.
  The 17 jaw points are evenly spaced along that contour (`JAW_START` vertices in from each end), then
  pushed outward by `JAW_PUSH` (4 %) along the ray from the nose tip (vertex 4): the mesh's oval lies
  slightly inside the visible cheek silhouette that iBUG annotators (and dlib) follow.

Every row's weights sum to 1 (an affine combination), so the map commutes with any 2D/3D similarity.
JAW_START and JAW_PUSH were chosen on the 9 photos of ../shared/photos against dlib's 68 points (crop box
centre / size, the numbers DECA's crop depends on): with them the median crop-centre difference is
1.9 % and the median size difference 2.2 % of the box size (push 0: 2.6 % and 5.1 %). Same photos, no
held-out set: see benchmarks/bench_frontend.py for the measurement.

Subject's right side = photo's left for a frontal face, as in iBUG (point 0 is on the photo's left).
"""
from __future__ import annotations

import numpy as np

__all__ = ["MESH68_INDICES", "MESH68_WEIGHTS", "mesh_to_ibug68"]

# MediaPipe's face oval (FACEMESH_FACE_OVAL) below the temples, photo left to photo right for a frontal
# face: beside the right eye (127) over the chin (152, position 11) to beside the left eye (356).
_LOWER_OVAL = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
               377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)
# iBUG's 17 jaw points are evenly spaced along the contour; they start this far along the polyline
# above (in vertices; chosen against dlib's 68 on the shared photos, see the module docstring).
JAW_START = 0.5
JAW_PUSH = 0.04
_NOSE_TIP = 4


def _jaw() -> list[tuple[int, int, float]]:
    last = len(_LOWER_OVAL) - 1
    out = []
    for t in np.linspace(JAW_START, last - JAW_START, 17):
        i = min(int(np.floor(t)), last - 1)
        f = t - i
        out.append((_LOWER_OVAL[i], _LOWER_OVAL[i + 1], 1.0 - f))
    return out


# (index_a, index_b, weight_of_a); single vertices have weight 1 on a.
_MAP: list[tuple[int, int, float]] = _jaw() + [
    # right brow 17-21 (outer to inner), left brow 22-26 (inner to outer)
    (70, 70, 1.0), (63, 63, 1.0), (105, 105, 1.0), (66, 66, 1.0), (107, 107, 1.0),
    (336, 336, 1.0), (296, 296, 1.0), (334, 334, 1.0), (293, 293, 1.0), (300, 300, 1.0),
    # nose bridge 27-30, nostrils 31-35
    (168, 168, 1.0), (197, 197, 1.0), (5, 5, 1.0), (4, 4, 1.0),
    (75, 75, 1.0), (97, 97, 1.0), (2, 2, 1.0), (326, 326, 1.0), (305, 305, 1.0),
    # right eye 36-41: outer corner, upper lid x2, inner corner, lower lid x2
    (33, 33, 1.0), (160, 160, 1.0), (158, 158, 1.0), (133, 133, 1.0), (153, 153, 1.0), (144, 144, 1.0),
    # left eye 42-47: inner corner, upper lid x2, outer corner, lower lid x2
    (362, 362, 1.0), (385, 385, 1.0), (387, 387, 1.0), (263, 263, 1.0), (373, 373, 1.0), (380, 380, 1.0),
    # outer lip 48-59
    (61, 61, 1.0), (39, 39, 1.0), (37, 37, 1.0), (0, 0, 1.0), (267, 267, 1.0), (269, 269, 1.0),
    (291, 291, 1.0), (405, 405, 1.0), (314, 314, 1.0), (17, 17, 1.0), (84, 84, 1.0), (181, 181, 1.0),
    # inner lip 60-67
    (78, 78, 1.0), (82, 82, 1.0), (13, 13, 1.0), (312, 312, 1.0), (308, 308, 1.0), (317, 317, 1.0),
    (14, 14, 1.0), (87, 87, 1.0),
]
assert len(_MAP) == 68

MESH68_INDICES = np.array([[a, b, _NOSE_TIP] for a, b, _ in _MAP], dtype=np.int64)  # (68, 3)
MESH68_WEIGHTS = np.array([[w, 1.0 - w, 0.0] for _, _, w in _MAP], dtype=np.float64)  # (68, 3), rows sum to 1
MESH68_WEIGHTS[:17] = MESH68_WEIGHTS[:17] * (1.0 + JAW_PUSH) - np.array([0.0, 0.0, JAW_PUSH])


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """(..., 468 or 478, D) mesh points -> (..., 68, D) iBUG-68 points (same units)."""
    m = np.asarray(mesh, dtype=np.float64)
    if m.ndim < 2 or m.shape[-2] < 468:
        raise ValueError(f"expected (..., 468 or 478, D) mesh points, got {m.shape}")
    return (m[..., MESH68_INDICES, :] * MESH68_WEIGHTS[..., None]).sum(axis=-2)
