"""Linear blend skinning as FLAME defines it (Li et al. 2017, eq. 1-4), in batched torch.

    T_P(beta, theta, psi) = T + B_S(beta) + B_E(psi) + B_P(theta)
    M(beta, theta, psi)   = W(T_P, J(beta, psi), theta, weights)

All functions are pure and differentiable; shapes are given with B the batch, V vertices, J joints.
"""
from __future__ import annotations

import torch


def axis_angle_to_matrix(rot_vecs: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, exact and with finite gradients at zero rotation.

    Args:
        rot_vecs: (..., 3) axis-angle vectors.
    Returns:
        (..., 3, 3) rotation matrices.

    R = I + A K + B K^2 with K the cross-product matrix of the *unnormalised* vector, A = sin t / t and
    B = (1 - cos t) / t^2. Near t = 0 both use their Taylor series, so no epsilon perturbs the result.
    """
    theta2 = (rot_vecs * rot_vecs).sum(-1, keepdim=True)
    small = theta2 < 1e-8
    safe_theta2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe_theta = safe_theta2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe_theta) / safe_theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe_theta)) / safe_theta2)
    x, y, z = rot_vecs.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(rot_vecs.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def blend_shapes(coeffs: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Per-vertex offsets of a linear basis.

    Args:
        coeffs: (B, N) coefficients.
        basis: (V, 3, N') with N' >= N; only the first N columns are used.
    Returns:
        (B, V, 3) offsets.
    """
    return torch.einsum("bn,vcn->bvc", coeffs, basis[..., : coeffs.shape[1]])


def regress_joints(J_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """(J, V) regressor, (B, V, 3) vertices -> (B, J, 3) joints."""
    return torch.einsum("jv,bvc->bjc", J_regressor, vertices)


def pose_feature(rot_mats: torch.Tensor) -> torch.Tensor:
    """FLAME's pose-corrective input: (R_j - I) of every non-root joint, flattened row-major.

    Args:
        rot_mats: (B, J, 3, 3) local joint rotations.
    Returns:
        (B, 9 * (J - 1)).
    """
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).reshape(rot_mats.shape[0], -1)


def rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World transforms along the kinematic chain.

    Args:
        rot_mats: (B, J, 3, 3) local rotations.
        joints: (B, J, 3) rest-pose joint positions.
        parents: (J,) parent index, -1 for the root; parents precede children.
    Returns:
        posed_joints (B, J, 3) and skinning transforms (B, J, 4, 4) that map rest-pose points to posed
        points (the world transform with the rest joint position removed).
    """
    B, J = joints.shape[:2]
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([rot_mats, rel_joints[..., None]], dim=-1)  # (B, J, 3, 4)
    bottom = torch.zeros(B, J, 1, 4, dtype=joints.dtype, device=joints.device)
    bottom[..., 3] = 1.0
    local = torch.cat([local, bottom], dim=-2)  # (B, J, 4, 4)
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[int(parents[j])] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[:, :, :3, 3]
    # Subtract R_world @ j_rest so the transform applies to rest-pose vertex coordinates.
    shift = (world[:, :, :3, :3] @ joints[..., None])[..., 0]
    skin = world.clone()
    skin[:, :, :3, 3] = world[:, :, :3, 3] - shift
    return posed_joints, skin


def skin_vertices(vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning.

    Args:
        vertices: (B, V, 3) rest-pose (shaped and pose-corrected) vertices.
        weights: (V, J) skinning weights.
        transforms: (B, J, 4, 4) from `rigid_transforms`.
    Returns:
        (B, V, 3) posed vertices.
    """
    T = torch.einsum("vj,bjkl->bvkl", weights, transforms)
    return (T[..., :3, :3] @ vertices[..., None])[..., 0] + T[..., :3, 3]


def lbs(
    shape: torch.Tensor,
    expression: torch.Tensor,
    full_pose: torch.Tensor,
    v_template: torch.Tensor,
    shape_basis: torch.Tensor,
    expr_basis: torch.Tensor,
    posedirs: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FLAME forward model.

    Args:
        shape: (B, S) identity coefficients; expression: (B, E) expression coefficients.
        full_pose: (B, J, 3) axis-angle per joint (root, neck, jaw, eye_L, eye_R for FLAME).
        v_template (V, 3), shape_basis (V, 3, S'), expr_basis (V, 3, E'), posedirs (V, 3, 9(J-1)),
        J_regressor (J, V), parents (J,), weights (V, J).
    Returns:
        vertices (B, V, 3), posed joints (B, J, 3), rotation matrices (B, J, 3, 3).
    """
    B = full_pose.shape[0]
    v_shaped = v_template[None] + blend_shapes(shape, shape_basis)
    if expression.shape[1] > 0:
        v_shaped = v_shaped + blend_shapes(expression, expr_basis)
    joints = regress_joints(J_regressor, v_shaped)
    rot_mats = axis_angle_to_matrix(full_pose)
    V = v_template.shape[0]
    corrective = pose_feature(rot_mats) @ posedirs.reshape(V * 3, -1).T  # (B, V*3)
    v_posed = v_shaped + corrective.reshape(B, V, 3)
    posed_joints, transforms = rigid_transforms(rot_mats, joints, parents)
    vertices = skin_vertices(v_posed, weights, transforms)
    return vertices, posed_joints, rot_mats
