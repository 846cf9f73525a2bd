"""Orthographic camera and the image-NDC <-> pixel maps of CONVENTIONS.md.

Image NDC: x to the right, y down, ``[-1, 1]`` across the image. Pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)`` in continuous pixel coordinates and its centre is ``(j + 0.5, i + 0.5)``, so
``pixel = (ndc + 1) * size / 2``. This is also the convention of ``grid_sample(..., align_corners=False)``.
"""
from __future__ import annotations

import torch

__all__ = ["orthographic_project", "ndc_to_pixels", "pixels_to_ndc", "image_hw"]


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``224`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def orthographic_project(vertices: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """FLAME space to screen space with DECA's orthographic camera.

    Args:
        vertices: ``(B, V, 3)`` FLAME-space points (metres, +y up, +z towards the viewer).
        cam: ``(B, 3)`` = ``(s, tx, ty)``.

    Returns:
        ``(B, V, 3)``: x, y in image NDC (``xy = s * (X[..., :2] + t)``, then y negated) and
        ``z = -Z`` (smaller is nearer), the depth the rasterizer expects.
    """
    s = cam[:, None, 0:1]
    t = cam[:, None, 1:3]
    xy = s * (vertices[..., :2] + t)
    # y down in image NDC; z negated so that nearer points (larger Z) get smaller depth.
    return torch.cat([xy[..., 0:1], -xy[..., 1:2], -vertices[..., 2:3]], dim=-1)


def ndc_to_pixels(xy: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """``(..., 2)`` image NDC (x, y) -> continuous pixel coordinates (x = column, y = row)."""
    h, w = image_hw(image_size)
    scale = xy.new_tensor([w / 2.0, h / 2.0])
    return (xy + 1.0) * scale


def pixels_to_ndc(pix: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`ndc_to_pixels`."""
    h, w = image_hw(image_size)
    scale = pix.new_tensor([2.0 / w, 2.0 / h])
    return pix * scale - 1.0
