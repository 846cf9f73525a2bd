"""Visibility of points and vertices against a rasterization's front surface."""
from __future__ import annotations

import torch

from .rasterize import Fragments, barycentric_at

__all__ = ["surface_depth_at", "vertex_visibility"]


def surface_depth_at(
    points: torch.Tensor,
    verts_screen: torch.Tensor,
    faces: torch.Tensor,
    fragments: Fragments,
) -> torch.Tensor:
    """Depth of the front surface at arbitrary screen points (no gradients).

    The pixel containing each point gives the visible face; that face's plane is evaluated at the point's
    exact position (extrapolating slightly past the face when needed). Comparing a point with its own
    surface then agrees to second order even on steep slopes, where the pixel-centre depth would differ
    by up to a pixel times the slope.

    Args:
        points: ``(B, N, 2)`` image-NDC positions.
        verts_screen: ``(B, V, 3)`` the vertices that produced ``fragments``.
        faces: ``(F, 3)`` long.
        fragments: rasterization of ``verts_screen``.

    Returns:
        ``(B, N)``: the surface depth; ``+inf`` on background pixels and outside the image.
    """
    with torch.no_grad():
        b, n, _ = points.shape
        h, w = fragments.image_size
        device = points.device
        pts = points.detach().to(verts_screen.dtype)
        pix = (pts + 1.0) * pts.new_tensor([w / 2.0, h / 2.0])
        col_f, row_f = torch.floor(pix[..., 0]), torch.floor(pix[..., 1])
        inside = (col_f >= 0) & (col_f < w) & (row_f >= 0) & (row_f < h)
        col = col_f.clamp(0, w - 1).long()
        row = row_f.clamp(0, h - 1).long()
        bidx = torch.arange(b, device=device)[:, None].expand(b, n)
        face = fragments.face_ids[bidx, row, col]
        hit = inside & (face >= 0)
        out = torch.full((b, n), float("inf"), dtype=pts.dtype, device=device)
        if bool(hit.any()):
            hb, hf, hp = bidx[hit], face[hit], pix[hit]
            tri = verts_screen.detach()[hb[:, None], faces[hf]]  # (M, 3, 3)
            tri_pix = (tri[..., :2] + 1.0) * tri.new_tensor([w / 2.0, h / 2.0])
            bary = barycentric_at(tri_pix, hp)
            out[hit] = (bary * tri[..., 2]).sum(1)
        return out


def vertex_visibility(
    verts_screen: torch.Tensor,
    faces: torch.Tensor,
    fragments: Fragments,
    depth_tol: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Which vertices lie on the visible (front) surface.

    A vertex is visible if it projects inside the image and is not behind the front surface at its own
    position: ``z <= surface + depth_tol`` with :func:`surface_depth_at`. A background pixel counts as
    unoccluded (that happens within a pixel of the silhouette).

    The test is per vertex on purpose: marking every corner of a face that wins a pixel would also mark
    far corners of faces seen through thin gaps (e.g. FLAME's lip slit shows the inside of the back of the
    head in a front view). On FLAME at 224 px, a 1-pixel tolerance agrees with a 2048-px reference on
    about 95% of the visible vertices; the misses are within a pixel of the silhouette or of an occluding
    edge.

    Args:
        verts_screen: ``(B, V, 3)`` screen-space vertices that produced ``fragments``.
        faces: ``(F, 3)`` long.
        fragments: rasterization of ``verts_screen``.
        depth_tol: tolerance in depth units, scalar or ``(B,)``.

    Returns:
        ``(B, V)`` bool.
    """
    with torch.no_grad():
        vs = verts_screen.detach()
        surface = surface_depth_at(vs[..., :2], vs, faces, fragments)
        in_image = (vs[..., :2].abs() <= 1).all(-1)
        tol = torch.as_tensor(depth_tol, dtype=vs.dtype, device=vs.device).reshape(-1, 1)
        return in_image & (vs[..., 2] <= surface + tol)
