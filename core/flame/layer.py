"""The FLAME layer: codes in, vertices, joints and landmarks out (batched, CPU or CUDA, any float dtype)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.flame.landmarks import LandmarkEmbedding, contour_rows, surface_points
from core.flame.lbs import blend_shapes, lbs, regress_joints
from core.flame.model_file import FlameModelData
from core.flame.template import TemplateMesh

DECA_POSE_DIM = 6  # global axis-angle (3) + jaw axis-angle (3)


@dataclass
class FlameOutput:
    """FLAME's outputs for a batch of B.

    vertices (B, V, 3); joints (B, J, 3) posed; rot_mats (B, J, 3, 3) local rotations;
    landmarks2d (B, 68, 3): the fitting form (yaw-dependent jaw contour), to project for 2D losses;
    landmarks3d (B, 68, 3): the fixed 3D form. Landmark fields are None without an embedding.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    rot_mats: torch.Tensor
    landmarks2d: torch.Tensor | None = None
    landmarks3d: torch.Tensor | None = None


def expand_pose(pose: torch.Tensor, n_joints: int = 5) -> torch.Tensor:
    """(B, 6) DECA pose [global, jaw] or (B, 3 * J) full pose -> (B, J, 3) with neck and eyes zero."""
    B = pose.shape[0]
    if pose.shape[1] == DECA_POSE_DIM:
        full = pose.new_zeros(B, n_joints, 3)
        full[:, 0] = pose[:, :3]
        full[:, 2] = pose[:, 3:]
        return full
    if pose.shape[1] == 3 * n_joints:
        return pose.reshape(B, n_joints, 3)
    raise ValueError(f"pose must be (B, 6) [global, jaw] or (B, {3 * n_joints}), got {tuple(pose.shape)}")


class FlameLayer(nn.Module):
    """FLAME as a torch module. Convert with `.to(device, dtype)`; buffers follow.

    Exposes what a renderer or Blender needs as buffers: `v_template`, `shape_basis`, `expr_basis`,
    `posedirs`, `J_regressor`, `weights`, `parents`, `faces`, and with a template mesh `uv_coords`
    (Nuv, 2) and `uv_faces` (F, 3).
    """

    def __init__(self, model: FlameModelData, embedding: LandmarkEmbedding | None = None,
                 n_shape: int | None = None, n_expression: int | None = None,
                 template: TemplateMesh | None = None) -> None:
        super().__init__()
        self.model = model
        n_shape = model.n_shape if n_shape is None else min(n_shape, model.n_shape)
        n_expression = model.n_expression if n_expression is None else min(n_expression, model.n_expression)
        self.n_shape, self.n_expression = n_shape, n_expression
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(model.v_template, dtype=f32))
        self.register_buffer("shape_basis", torch.as_tensor(model.shape_basis[..., :n_shape], dtype=f32))
        self.register_buffer("expr_basis", torch.as_tensor(model.expr_basis[..., :n_expression], dtype=f32))
        self.register_buffer("posedirs", torch.as_tensor(model.posedirs, dtype=f32))
        self.register_buffer("J_regressor", torch.as_tensor(model.J_regressor, dtype=f32))
        self.register_buffer("weights", torch.as_tensor(model.weights, dtype=f32))
        self.register_buffer("parents", torch.as_tensor(model.parents, dtype=torch.long))
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long))
        if template is not None:
            if not np.array_equal(template.faces, model.faces):
                raise ValueError("the template mesh's faces differ from the FLAME model's; UVs would not line up")
            self.register_buffer("uv_coords", torch.as_tensor(template.uv_coords, dtype=f32))
            self.register_buffer("uv_faces", torch.as_tensor(template.uv_faces, dtype=torch.long))
        self.embedding = embedding
        if embedding is not None:
            embedding.check_faces(model.faces.shape[0])
            self.register_buffer("static_lmk_faces", torch.as_tensor(embedding.static_faces, dtype=torch.long))
            self.register_buffer("static_lmk_bary", torch.as_tensor(embedding.static_bary, dtype=f32))
            self.register_buffer("dynamic_lmk_faces", torch.as_tensor(embedding.dynamic_faces, dtype=torch.long))
            self.register_buffer("dynamic_lmk_bary", torch.as_tensor(embedding.dynamic_bary, dtype=f32))
            self.register_buffer("full_lmk_faces", torch.as_tensor(embedding.full_faces, dtype=torch.long))
            self.register_buffer("full_lmk_bary", torch.as_tensor(embedding.full_bary, dtype=f32))

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    def _coeffs(self, x: torch.Tensor | None, n: int, B: int, name: str) -> torch.Tensor:
        ref = self.v_template
        if x is None:
            return ref.new_zeros(B, 0)
        if x.shape[1] > n:
            raise ValueError(f"{name} has {x.shape[1]} coefficients but this FLAME layer has {n}")
        return x.to(ref.dtype)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor | None = None, pose: torch.Tensor | None = None,
                neck_pose: torch.Tensor | None = None, eye_pose: torch.Tensor | None = None) -> FlameOutput:
        """
        Args:
            shape: (B, S) identity, S <= n_shape (DECA: 100).
            expression: (B, E) expression, E <= n_expression (DECA: 50).
            pose: (B, 6) DECA pose [global aa, jaw aa] or (B, 15) all five joints.
            neck_pose: (B, 3), eye_pose: (B, 6) [left, right]; override those joints when given.
        """
        B = shape.shape[0]
        shape = self._coeffs(shape, self.n_shape, B, "shape")
        expression = self._coeffs(expression, self.n_expression, B, "expression")
        dtype = self.v_template.dtype
        full_pose = (expand_pose(pose.to(dtype), self.n_joints) if pose is not None
                     else self.v_template.new_zeros(B, self.n_joints, 3))
        if neck_pose is not None or eye_pose is not None:
            full_pose = full_pose.clone()
            if neck_pose is not None:
                full_pose[:, 1] = neck_pose.to(dtype)
            if eye_pose is not None:
                full_pose[:, 3:5] = eye_pose.to(dtype).reshape(B, 2, 3)
        vertices, joints, rot_mats = lbs(shape, expression, full_pose, self.v_template, self.shape_basis,
                                         self.expr_basis, self.posedirs, self.J_regressor, self.parents, self.weights)
        out = FlameOutput(vertices=vertices, joints=joints, rot_mats=rot_mats)
        if self.embedding is not None:
            out.landmarks2d = self.fitting_landmarks(vertices, rot_mats)
            out.landmarks3d = surface_points(vertices, self.faces, self.full_lmk_faces.expand(B, -1),
                                             self.full_lmk_bary.expand(B, -1, -1))
        return out

    def fitting_landmarks(self, vertices: torch.Tensor, rot_mats: torch.Tensor) -> torch.Tensor:
        """68 landmarks in iBUG order: the yaw-dependent contour (17) then the static 51."""
        B = vertices.shape[0]
        head_rot = rot_mats[:, 0] @ rot_mats[:, 1]  # global @ neck
        rows = contour_rows(head_rot)
        faces = torch.cat([self.dynamic_lmk_faces[rows], self.static_lmk_faces.expand(B, -1)], dim=1)
        bary = torch.cat([self.dynamic_lmk_bary[rows], self.static_lmk_bary.expand(B, -1, -1)], dim=1)
        return surface_points(vertices, self.faces, faces, bary.to(vertices.dtype))

    def rest_joints(self, shape: torch.Tensor, expression: torch.Tensor | None = None) -> torch.Tensor:
        """Joints of the unposed, shaped mesh: (B, J, 3) — the bone heads of a Blender armature."""
        v = self.v_template[None] + blend_shapes(shape.to(self.v_template.dtype), self.shape_basis)
        if expression is not None and expression.shape[1]:
            v = v + blend_shapes(expression.to(v.dtype), self.expr_basis)
        return regress_joints(self.J_regressor, v)

    def shaped_template(self, shape: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) neutral-expression, unposed mesh with the identity baked in."""
        return self.v_template[None] + blend_shapes(shape.to(self.v_template.dtype), self.shape_basis)
