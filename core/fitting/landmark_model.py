"""FLAME evaluated only where the 68 fitting landmarks are: cheap enough for exact Jacobians.

Landmark fitting needs the 68 fitting-form landmarks, i.e. at most 204 vertices (the corners of the 51
static faces and of the 17 contour faces of the current yaw row), not 5023. The joints are linear in the
shape and expression codes, so their regressions are precomputed (`J_regressor @ basis`). The rest uses
`core.flame.lbs`'s functions on the gathered vertices, so the result equals `FlameLayer`'s landmarks
(tests/test_fitting.py checks this to float precision).
"""
from __future__ import annotations

import torch

from core.flame.landmarks import contour_rows
from core.flame.layer import FlameLayer, expand_pose
from core.flame.lbs import axis_angle_to_matrix, pose_feature, rigid_transforms


class LandmarkModel:
    """68 fitting-form landmarks (FLAME space) of a `FlameLayer` with an embedding."""

    def __init__(self, flame: FlameLayer, extra_faces=None, extra_bary=None) -> None:
        """``extra_faces`` (N,) / ``extra_bary`` (N, 3): further fixed surface points (e.g. MediaPipe's,
        core/frontend/flame_embedding.py) returned after the 68."""
        if flame.embedding is None:
            raise ValueError("the FLAME layer has no landmark embedding")
        self.flame = flame
        dev = flame.v_template.device
        self.extra_faces = None if extra_faces is None else torch.as_tensor(extra_faces, dtype=torch.long, device=dev)
        self.extra_bary = None if extra_bary is None else torch.as_tensor(extra_bary, device=dev)
        Jr = flame.J_regressor
        self.J_template = Jr @ flame.v_template  # (J, 3)
        self.J_shape = torch.einsum("jv,vcn->jcn", Jr, flame.shape_basis)  # (J, 3, S)
        self.J_exp = torch.einsum("jv,vcn->jcn", Jr, flame.expr_basis)  # (J, 3, E)

    def rows(self, pose: torch.Tensor) -> torch.Tensor:
        """Contour rows (B,) of the dynamic embedding for DECA poses (B, 6) (neck zero)."""
        rot = axis_angle_to_matrix(pose[:, :3].detach())
        return contour_rows(rot)

    def landmarks(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 68 [+ N], 3) fitting-form landmarks (then the extra points) in FLAME space. `rows` fixes the
        contour rows (e.g. for Jacobians); by default they follow the pose."""
        fl = self.flame
        B = pose.shape[0]
        if rows is None:
            rows = self.rows(pose)
        face_idx = torch.cat([fl.dynamic_lmk_faces[rows], fl.static_lmk_faces.expand(B, -1)], 1)  # (B, 68)
        bary = torch.cat([fl.dynamic_lmk_bary[rows], fl.static_lmk_bary.expand(B, -1, -1)], 1)
        if self.extra_faces is not None:
            face_idx = torch.cat([face_idx, self.extra_faces.expand(B, -1)], 1)
            bary = torch.cat([bary, self.extra_bary.to(bary).expand(B, -1, -1)], 1)
        vid = fl.faces[face_idx]  # (B, 68, 3)
        S, E = shape.shape[1], exp.shape[1]
        v = fl.v_template[vid] + torch.einsum("bn,blkcn->blkc", shape, fl.shape_basis[vid][..., :S])
        if E:
            v = v + torch.einsum("bn,blkcn->blkc", exp, fl.expr_basis[vid][..., :E])
        joints = self.J_template[None] + torch.einsum("bn,jcn->bjc", shape, self.J_shape[..., :S])
        if E:
            joints = joints + torch.einsum("bn,jcn->bjc", exp, self.J_exp[..., :E])
        rot = axis_angle_to_matrix(expand_pose(pose, fl.n_joints))
        pf = pose_feature(rot)  # (B, 36)
        v = v + torch.einsum("blkcp,bp->blkc", fl.posedirs[vid], pf)
        _, transforms = rigid_transforms(rot, joints, fl.parents)
        T = torch.einsum("blkj,bjmn->blkmn", fl.weights[vid], transforms)  # (B, 68, 3, 4, 4)
        v = (T[..., :3, :3] @ v[..., None])[..., 0] + T[..., :3, 3]
        return (v * bary[..., None].to(v.dtype)).sum(-2)


def project(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) FLAME-space points, (B, 3) cameras -> (B, N, 2) image NDC (DECA's orthographic camera)."""
    xy = cam[:, None, 0:1] * (points[..., :2] + cam[:, None, 1:3])
    return torch.stack([xy[..., 0], -xy[..., 1]], -1)


__all__ = ["LandmarkModel", "project"]
