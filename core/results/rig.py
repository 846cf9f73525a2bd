"""The per-person rig that Blender builds a head from: FLAME with this person's identity baked in.

Blender cannot run FLAME's identity blend shapes (300 of them) as shape keys cheaply, and does not
need to: identity is fixed per person, so it is baked into the rest mesh and the joints, while
expression stays a live basis (shape keys) and pose correctives stay driven by the bones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.flame.model_file import FlameModelData
from core.sizes import N_EXP

# Identity sliders (shape_000..) Blender offers on top of the baked identity: FLAME's first components,
# stored float16 (5023 x 3 x 20 x 2 B = 0.6 MB per result; 100 in float32 would be 6 MB). float16 keeps
# 11 significant bits: under 0.01 mm per unit slider for FLAME's largest shape component (~2 cm).
N_SHAPE_SLIDERS = 20


@dataclass
class Rig:
    template: np.ndarray  # (V, 3) v_template + identity offsets
    expr_basis: np.ndarray  # (V, 3, E)
    posedirs: np.ndarray  # (V, 3, 36)
    weights: np.ndarray  # (V, J)
    joints: np.ndarray  # (J, 3) joints of `template`
    parents: np.ndarray  # (J,)
    shape_basis: np.ndarray | None = None  # (V, 3, N) float16, FLAME's first N identity components


def axis_angle_matrix(aa) -> np.ndarray:
    """Rodrigues: axis-angle (3,) -> (3, 3) rotation matrix, numpy (the torch form is core.flame.lbs)."""
    aa = np.asarray(aa, np.float64).ravel()
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.eye(3)
    k = aa / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def build_rig(model: FlameModelData, shape: np.ndarray, n_expression: int = N_EXP,
              n_shape_sliders: int = N_SHAPE_SLIDERS) -> Rig:
    """Bake `shape` (S,) into FLAME's template; keep the first `n_expression` expression components and the
    first `n_shape_sliders` identity components (float16; 0: none) for identity sliders."""
    shape = np.asarray(shape, np.float64).ravel()
    template = model.v_template + model.shape_basis[:, :, : shape.size] @ shape
    n_expression = min(n_expression, model.n_expression)
    return Rig(
        template=template,
        expr_basis=model.expr_basis[:, :, :n_expression].copy(),
        posedirs=model.posedirs.copy(),
        weights=model.weights.copy(),
        joints=model.J_regressor @ template,
        parents=model.parents.copy(),
        shape_basis=model.shape_basis[:, :, :n_shape_sliders].astype(np.float16) if n_shape_sliders > 0 else None,
    )
