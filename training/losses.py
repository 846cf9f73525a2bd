"""DECA's training losses, written from the paper's definitions (Feng et al. 2021, Sec. 3-4).

Every loss returns a **per-image** tensor ``(B,)``; the trainer averages over the batch. Keeping the
reduction per image makes a DistributedDataParallel run (which averages gradients over processes with
equal per-process batches) exactly equivalent to one process with the whole batch.

Units: landmarks in image NDC (``[-1, 1]`` across the 224 crop; 1 NDC unit = 112 pixels), images in [0, 1],
displacements in metres (D_detail's output, at most 0.01).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "EYE_PAIRS", "LIP_PAIRS", "landmark_loss", "closure_loss", "eye_closure_loss", "lip_closure_loss",
    "photometric_loss", "l2_regularizer", "white_light_regularizer", "cosine_identity_loss",
    "identity_swap_index", "displacement_regularizer", "symmetry_loss", "detail_render",
    "detail_consistency_loss", "shade_with_normal_map",
]

#: upper / lower eyelid landmark pairs (iBUG 68, 0-based): left eye 37-41, 38-40; right eye 43-47, 44-46
EYE_PAIRS: tuple[tuple[int, int], ...] = ((37, 41), (38, 40), (43, 47), (44, 46))
#: upper / lower inner-lip pairs (61-67, 62-66, 63-65)
LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_lmk: L1 distance between projected and detected 2D landmarks, ``(B, N, 2)`` image NDC each.

    Per image: ``sum_k w_k (|dx_k| + |dy_k|) / sum_k w_k`` (the paper's sum over the 68 landmarks, divided
    by the number of landmarks so the scale does not depend on it). ``weights`` (N,) default all ones.
    """
    d = (pred - target).abs().sum(-1)  # (B, N)
    if weights is None:
        return d.mean(-1)
    w = weights.to(d)
    return (d * w).sum(-1) / w.sum().clamp_min(1e-12)


def closure_loss(pred: torch.Tensor, target: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Relative landmark offsets: ``mean over pairs (i, j) of |(p_i - p_j) - (t_i - t_j)|_1`` per image.

    Insensitive to a common translation, so it constrains the opening (of eyelids / lips) independently of
    where the landmarks sit: DECA's eye-closure loss L_eye with the eyelid pairs."""
    i = torch.tensor([p[0] for p in pairs], device=pred.device)
    j = torch.tensor([p[1] for p in pairs], device=pred.device)
    dp = pred[:, i] - pred[:, j]
    dt = target[:, i] - target[:, j]
    return (dp - dt).abs().sum(-1).mean(-1)


def eye_closure_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_eye (paper eq. 6) on the four upper/lower eyelid pairs."""
    return closure_loss(pred, target, EYE_PAIRS)


def lip_closure_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same on the inner lips (not in the paper; DECA's released code has it). Off by default."""
    return closure_loss(pred, target, LIP_PAIRS)


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_pho = ||V (I - I_r)||_{1,1}, normalised per image by its pixel count: ``mean_{c,h,w} V |I - I_r|``.

    ``pred``/``target`` (B, 3, H, W), ``mask`` (B, 1, H, W) in [0, 1] (skin mask x rendered coverage)."""
    return (mask * (pred - target).abs()).mean(dim=(1, 2, 3))


def l2_regularizer(x: torch.Tensor) -> torch.Tensor:
    """``||x||_2^2`` per image (L_reg on shape beta, expression psi, albedo alpha)."""
    return x.reshape(x.shape[0], -1).pow(2).sum(-1)


def white_light_regularizer(light: torch.Tensor) -> torch.Tensor:
    """Penalises coloured light: squared deviation of each SH band's RGB from its mean, ``(B, 9, 3)``.
    (DECA's released code; not in the paper; off by default.)"""
    return (light - light.mean(-1, keepdim=True)).pow(2).sum(dim=(1, 2))


def cosine_identity_loss(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """L_id = 1 - cos(f(I), f(I_r)) per image."""
    return 1.0 - F.cosine_similarity(feat_a.flatten(1), feat_b.flatten(1), dim=1, eps=1e-8)


def identity_swap_index(identity: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """For every image, the index of **another** image of the same identity in the batch (itself when the
    identity has one image there). Within each identity group the images are rotated by a shift drawn from
    ``(seed, step, identity)``, so the result does not depend on the rest of the batch (nor on the process
    that holds the group under DDP). Used by the shape-consistency (L_sc) and detail-consistency (L_dc) swaps.
    """
    import numpy as np

    ids = identity.detach().cpu().numpy()
    out = np.arange(len(ids))
    for ident in np.unique(ids):
        members = np.flatnonzero(ids == ident)
        n = len(members)
        if n < 2:
            continue
        shift = int(np.random.default_rng([int(seed), int(step), int(ident), 3]).integers(1, n))
        out[members] = members[(np.arange(n) + shift) % n]
    return torch.as_tensor(out, dtype=torch.long, device=identity.device)


def displacement_regularizer(uv_z: torch.Tensor, uv_mask: torch.Tensor) -> torch.Tensor:
    """L_regD = ||D||_{1,1} on the region where details apply, per image mean over texels (metres)."""
    return (uv_z.abs() * uv_mask).mean(dim=(1, 2, 3))


def symmetry_loss(uv_z: torch.Tensor, uv_mask: torch.Tensor) -> torch.Tensor:
    """L_sym = ||V_uv (D - flip(D))||_{1,1}: FLAME's UV layout is mirror-symmetric about u = 0.5, so a
    horizontal flip of the displacement map maps each texel to its mirror texel (soft symmetry)."""
    return ((uv_z - torch.flip(uv_z, dims=[-1])).abs() * uv_mask).mean(dim=(1, 2, 3))


def detail_render(face, decoder, codes, vertices: torch.Tensor, detail_code: torch.Tensor,
                  albedo: torch.Tensor | None = None):
    """Render the detailed face: displacement ``F_d(jaw, exp, detail_code)`` applied along the coarse
    normals (``FaceModel.detail_normals``), shaded with the codes' SH light.

    Returns ``(render result, uv_z (B, 1, 256, 256))``. ``codes`` are the coarse FlameCodes (their jaw and
    expression drive the decoder), ``vertices`` the coarse mesh."""
    uv_z = decoder.decode(codes.jaw_pose.float(), codes.exp.float(), detail_code.float())
    normals, _ = face.detail_normals(vertices, uv_z)
    if albedo is None:
        albedo = face.albedo(codes.tex, vertices.shape[0])
    r = face.render(vertices, codes.cam, albedo, codes.light, normal_map=normals)
    return r, uv_z


def shade_with_normal_map(base, normal_map: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Re-shade a render ``base`` (a ``RenderResult`` of the same mesh and camera) with another UV normal
    map: the image ``MeshRenderer`` would produce with ``normal_map``, without rasterizing again."""
    from core.render import sample_uv_map, sh_shading

    n = sample_uv_map(normal_map, base.uv_image) * base.alpha
    n = n / n.norm(dim=1, keepdim=True).clamp_min(torch.finfo(n.dtype).eps)
    return base.albedo_image * sh_shading(n, light) * base.alpha


def detail_consistency_loss(face, decoder, codes, vertices: torch.Tensor, detail_code: torch.Tensor,
                            swap: torch.Tensor, images: torch.Tensor, mask: torch.Tensor,
                            albedo: torch.Tensor | None = None, image_loss=None, base=None) -> torch.Tensor:
    """L_dc (paper eq. 11): image i re-rendered with **the detail code of image swap[i]** (same person)
    while keeping image i's expression, jaw pose, shape, pose, albedo, light and camera; compared with
    image i by the detail photometric loss (``image_loss(pred, target, mask) -> (B,)``, default
    :func:`photometric_loss`; the trainer adds ID-MRF when it has VGG weights). ``mask`` (B, 1, H, W) is
    multiplied by the render's coverage.

    ``base``: an existing render of the same (coarse) mesh and camera; its rasterization is reused (the
    trainer passes the image's own detail render). Without it the swapped face is rendered from scratch.

    Zero when the swapped codes equal the own codes and the own render matches the image; it grows when
    codes that do not describe the image's person are swapped in.
    """
    image_loss = image_loss or photometric_loss
    if base is None:
        r, _ = detail_render(face, decoder, codes, vertices, detail_code[swap], albedo)
        return image_loss(r.image, images, mask * r.alpha)
    uv_z = decoder.decode(codes.jaw_pose.float(), codes.exp.float(), detail_code[swap].float())
    normals, _ = face.detail_normals(vertices, uv_z)
    image = shade_with_normal_map(base, normals, codes.light)
    return image_loss(image, images, mask * base.alpha)
