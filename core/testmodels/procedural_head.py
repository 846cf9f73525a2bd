"""A tiny procedural **test** head (an ellipsoid with FLAME's five joints). Needs no assets.

For unit tests of code that must run anywhere: skinning, batching, dtype and device handling,
gradients. It has FLAME's structure (5 joints, same parents, pose correctives driven by 4 joints)
but a few hundred vertices and small bases. It is never presented as FLAME.
"""
from __future__ import annotations

import numpy as np

from core.flame.model_file import FLAME_PARENTS, FlameModelData


def ellipsoid_mesh(n_lat: int = 12, n_lon: int = 18, radii=(0.08, 0.11, 0.09)) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV-sphere scaled to head size: vertices (V, 3), faces (F, 3), outward winding."""
    verts = [(0.0, radii[1], 0.0)]
    for i in range(1, n_lat):
        phi = np.pi * i / n_lat
        for j in range(n_lon):
            th = 2 * np.pi * j / n_lon
            verts.append((radii[0] * np.sin(phi) * np.sin(th), radii[1] * np.cos(phi), radii[2] * np.sin(phi) * np.cos(th)))
    verts.append((0.0, -radii[1], 0.0))
    v = np.asarray(verts)
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append((0, ring(1, j), ring(1, j + 1)))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [(a, c, b), (b, c, d)]
    last = len(v) - 1
    for j in range(n_lon):
        faces.append((last, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)))
    f = np.asarray(faces, dtype=np.int64)
    # Make every face wind outwards (normal along the radial direction).
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    flip = (n * v[f].mean(1)).sum(1) < 0
    f[flip] = f[flip][:, [0, 2, 1]]
    return v, f


def build_procedural_head(n_shape: int = 10, n_expression: int = 8, seed: int = 0) -> FlameModelData:
    rng = np.random.default_rng(seed)
    v, f = ellipsoid_mesh()
    V = v.shape[0]
    targets = np.array([
        [0.0, -0.10, -0.01],   # root: base of the neck
        [0.0, -0.03, -0.01],   # neck
        [0.0, -0.04, 0.03],    # jaw
        [0.03, 0.02, 0.06],    # eye_L (+x is the subject's left)
        [-0.03, 0.02, 0.06],   # eye_R
    ])
    # Each joint regresses from its 4 nearest vertices with inverse-distance weights (rows sum to 1).
    J_reg = np.zeros((5, V))
    for j, t in enumerate(targets):
        d = np.linalg.norm(v - t, axis=1)
        near = np.argsort(d)[:4]
        w = 1.0 / (d[near] + 1e-3)
        J_reg[j, near] = w / w.sum()
    joints = J_reg @ v
    # Weights: softmax of negative distance to each joint, so every vertex has a smooth blend.
    d = np.linalg.norm(v[:, None] - joints[None], axis=2)
    logits = -d / 0.02
    W = np.exp(logits - logits.max(1, keepdims=True))
    W /= W.sum(1, keepdims=True)
    p = v / np.abs(v).max()

    def fields(n: int, amp: float) -> np.ndarray:
        out = np.empty((V, 3, n))
        for k in range(n):
            freq = rng.normal(size=(3, 3)) * 2.0
            a = rng.normal(size=(3, 3))
            out[:, :, k] = np.sin(p @ freq + rng.uniform(0, 6.28, 3)) @ a * amp / (1 + k)
        return out

    return FlameModelData(
        v_template=v, shape_basis=fields(n_shape, 0.004), expr_basis=fields(n_expression, 0.003),
        posedirs=fields(36, 0.002), J_regressor=J_reg, weights=W, parents=FLAME_PARENTS.copy(), faces=f,
        source="deca-blender procedural test head (not FLAME)", is_test_model=True, variant="procedural",
    )
