"""Normals and DECA's 9-band spherical-harmonics lighting (REFERENCE.md, "SH lighting").

``shading(n) = sum_k light[k] * c[k] * Y_k(n)`` per colour channel, with

* ``c = [1/sqrt(4pi), (2pi/3)sqrt(3/(4pi)) x3, (pi/4)*3*sqrt(5/(12pi)) x3, (pi/4)(3/2)sqrt(5/(12pi)),
  (pi/4)(1/2)sqrt(5/(4pi))]``
* ``Y = [1, nx, ny, nz, nx*ny, nx*nz, ny*nz, nx^2 - ny^2, 3nz^2 - 1]``.

The normals are used as given (no renormalisation here): callers decide whether interpolated normals are
renormalised first.
"""
from __future__ import annotations

import math

import torch

__all__ = ["SH_CONSTANTS", "sh_basis", "sh_shading", "face_normals", "vertex_normals"]

_PI = math.pi
SH_CONSTANTS: tuple[float, ...] = (
    1.0 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * math.sqrt(5 / (4 * _PI)),
)


def sh_basis(normals: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The 9 SH basis values ``Y`` (without the constants ``c``).

    Args:
        normals: ``(..., 3)``, or the 3 components along ``dim``.
        dim: the component axis; the output has the 9 values along it.

    Returns:
        ``(..., 9)`` (``dim = -1``).
    """
    nx, ny, nz = normals.unbind(dim)
    return torch.stack(
        [torch.ones_like(nx), nx, ny, nz, nx * ny, nx * nz, ny * nz, nx * nx - ny * ny, 3 * nz * nz - 1],
        dim=dim,
    )


def sh_shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """SH shading of normals under per-sample RGB SH light.

    Args:
        normals: ``(B, 3, H, W)`` normal image or ``(B, N, 3)`` normals.
        light: ``(B, 9, 3)`` SH coefficients (9 bands x RGB), as DECA's encoder predicts them.

    Returns:
        ``(B, 3, H, W)`` for an image input, ``(B, N, 3)`` for a point input.
    """
    if light.ndim != 3 or light.shape[1:] != (9, 3):
        raise ValueError(f"light must be (B, 9, 3), got {tuple(light.shape)}")
    c = torch.tensor(SH_CONSTANTS, dtype=light.dtype, device=light.device)
    weighted = (light * c[None, :, None]).transpose(1, 2)  # (B, 3, 9)
    if normals.ndim == 4:
        if normals.shape[1] != 3:
            raise ValueError(f"normal image must be (B, 3, H, W), got {tuple(normals.shape)}")
        b, _, h, w = normals.shape
        # Channel-first basis so that one (3 x 9) @ (9 x HW) product lands in the output layout
        # (an einsum over the trailing axis becomes a skinny, much slower bmm).
        basis = sh_basis(normals, dim=1).reshape(b, 9, h * w)
        return torch.bmm(weighted.to(basis.dtype), basis).view(b, 3, h, w)
    if normals.ndim == 3 and normals.shape[-1] == 3:
        return torch.bmm(sh_basis(normals), weighted.transpose(1, 2).to(normals.dtype))
    raise ValueError(f"normals must be (B, 3, H, W) or (B, N, 3), got {tuple(normals.shape)}")


def face_normals(verts: torch.Tensor, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Face normals ``(v1 - v0) x (v2 - v0)``: outward for counter-clockwise faces.

    Args:
        verts: ``(B, V, 3)``.
        faces: ``(F, 3)`` long.
        normalize: unit length if True, else length = twice the face area.

    Returns:
        ``(B, F, 3)``.
    """
    v0, v1, v2 = verts[:, faces[:, 0]], verts[:, faces[:, 1]], verts[:, faces[:, 2]]
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    if normalize:
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny ** 0.5)
    return n


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted, normalised vertex normals.

    Args:
        verts: ``(B, V, 3)``.
        faces: ``(F, 3)`` long.

    Returns:
        ``(B, V, 3)``; vertices used by no face get 0.
    """
    # The unnormalised cross product is already weighted by (twice) the face area.
    fn = face_normals(verts, faces, normalize=False)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn = vn.index_add(1, faces[:, k], fn)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(vn.dtype).tiny ** 0.5)
