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


@dataclass
class Rig:
    template: np.ndarray  # (V, 3) v_template + identity offsets
    expr_basis: np.ndarray  # (V, 3, E)
    posedirs: np.ndarray  # (V, 3, 36)
    weights: np.ndarray  # (V, J)
    joints: np.ndarray  # (J, 3) joints of `template`
    parents: np.ndarray  # (J,)


def build_rig(model: FlameModelData, shape: np.ndarray, n_expression: int = N_EXP) -> Rig:
    """Bake `shape` (S,) into FLAME's template; keep the first `n_expression` expression components."""
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
    )
