"""Differentiable barycentrics and attribute interpolation over rasterized fragments.

The rasterizer decides *which* face covers a pixel (a discrete, non-differentiable choice). Given that
choice, the barycentrics of the pixel centre are a smooth function of the face's screen positions, so they
are recomputed here in torch: gradients reach the vertex positions through them (no silhouette gradients,
as with a hard rasterizer). Only covered pixels are computed; the background stays exactly 0.
"""
from __future__ import annotations

import torch

from .rasterize import Fragments, barycentric_at

__all__ = [
    "pixel_barycentrics",
    "interpolate_attributes",
    "interpolate_vertex_attributes",
    "interpolate_face_attributes",
]


def _scatter_pixels(fragments: Fragments, values: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` values of the covered pixels -> ``(B, H, W, C)`` with zeros elsewhere (differentiable)."""
    b, h, w = fragments.face_ids.shape
    fg = fragments.foreground()
    out = values.new_zeros((b * h * w, values.shape[-1]))
    out = out.index_put((fg.pix,), values)
    return out.view(b, h, w, values.shape[-1])


def pixel_barycentrics(fragments: Fragments, verts_screen: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Barycentrics of the pixel centres in their visible faces, differentiable w.r.t. ``verts_screen``.

    Args:
        fragments: from :func:`core.render.rasterize` on (a detached copy of) the same vertices.
        verts_screen: ``(B, V, 3)`` screen-space vertices (image NDC xy); only xy matters.
        faces: ``(F, 3)`` long.

    Returns:
        ``(B, H, W, 3)``; equal to ``fragments.bary`` in value (up to the rasterizer's clamping of
        rounding noise), 0 on the background.
    """
    h, w = fragments.image_size
    fg = fragments.foreground()
    tri = _gather_corners(fragments, verts_screen[..., :2], faces)  # (N, 3, 2)
    tri_pix = (tri + 1.0) * tri.new_tensor([w / 2.0, h / 2.0])
    centre = torch.stack([fg.col, fg.row], dim=1).to(tri.dtype) + 0.5
    return _scatter_pixels(fragments, barycentric_at(tri_pix, centre))


def _gather_corners(fragments: Fragments, vertex_attrs: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(B, V, C)`` or ``(V, C)`` -> ``(N, 3, C)``: the attributes of the covered pixels' face corners."""
    fg = fragments.foreground()
    vid = faces.to(fg.face.device).index_select(0, fg.face)  # (N, 3)
    c = vertex_attrs.shape[-1]
    if vertex_attrs.ndim == 2:
        flat, idx = vertex_attrs, vid
    else:
        # One flat index_select is much faster than two-tensor advanced indexing (same gradient).
        n_verts = vertex_attrs.shape[1]
        flat = vertex_attrs.reshape(-1, c)
        idx = vid + (fg.batch * n_verts)[:, None]
    return flat.index_select(0, idx.reshape(-1)).view(-1, 3, c)


def _fg_bary(fragments: Fragments, bary: torch.Tensor | None) -> torch.Tensor:
    fg = fragments.foreground()
    src = fragments.bary if bary is None else bary
    return src.reshape(-1, 3)[fg.pix]


def interpolate_vertex_attributes(
    fragments: Fragments,
    vertex_attrs: torch.Tensor,
    faces: torch.Tensor,
    bary: torch.Tensor | None = None,
) -> torch.Tensor:
    """Interpolate per-vertex attributes at the pixel centres.

    Args:
        fragments: rasterization of the mesh.
        vertex_attrs: ``(B, V, C)`` (or ``(V, C)``, shared by the batch).
        faces: ``(F, 3)`` long, indexing ``vertex_attrs``.
        bary: optional ``(B, H, W, 3)`` barycentrics (e.g. from :func:`pixel_barycentrics` for
            gradients w.r.t. positions); default ``fragments.bary``.

    Returns:
        ``(B, C, H, W)``, 0 on the background.
    """
    vals = _gather_corners(fragments, vertex_attrs, faces)  # (N, 3, C)
    out = (_fg_bary(fragments, bary).unsqueeze(-1).to(vals.dtype) * vals).sum(1)
    return _scatter_pixels(fragments, out).permute(0, 3, 1, 2)


def interpolate_face_attributes(
    fragments: Fragments,
    face_attrs: torch.Tensor,
    bary: torch.Tensor | None = None,
) -> torch.Tensor:
    """Interpolate per-face-corner attributes at the pixel centres.

    Args:
        fragments: rasterization of the mesh.
        face_attrs: ``(B, F, 3, C)`` or ``(F, 3, C)`` (shared by the batch), e.g. UVs of each corner.
        bary: optional ``(B, H, W, 3)`` barycentrics; default ``fragments.bary``.

    Returns:
        ``(B, C, H, W)``, 0 on the background.
    """
    fg = fragments.foreground()
    if face_attrs.ndim == 3:
        vals = face_attrs.index_select(0, fg.face)
    else:
        n_faces = face_attrs.shape[1]
        vals = face_attrs.reshape(-1, *face_attrs.shape[2:]).index_select(0, fg.batch * n_faces + fg.face)
    out = (_fg_bary(fragments, bary).unsqueeze(-1).to(vals.dtype) * vals).sum(1)
    return _scatter_pixels(fragments, out).permute(0, 3, 1, 2)


def interpolate_attributes(
    fragments: Fragments,
    attributes: torch.Tensor,
    faces: torch.Tensor | None = None,
    bary: torch.Tensor | None = None,
) -> torch.Tensor:
    """Interpolate vertex attributes (``(B, V, C)`` with ``faces``) or face attributes (``(B, F, 3, C)``
    or ``(F, 3, C)`` without) at the pixel centres -> ``(B, C, H, W)``, 0 on the background."""
    if faces is not None:
        return interpolate_vertex_attributes(fragments, attributes, faces, bary)
    return interpolate_face_attributes(fragments, attributes, bary)
