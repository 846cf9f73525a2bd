"""Detail normals in UV space, as DECA's released code computes them (``DECA.displacement2normal``).

Every texel of the UV map is a vertex of a dense grid mesh: the coarse surface point under it plus the
displacement along the coarse normal. The grid's triangles are DECA's ``generate_triangles(h, w,
margin_x=2, margin_y=5)``: quads only for columns ``2 <= x < w - 3`` and rows ``5 <= y < h - 6``, so the
border texels belong to no triangle and get a zero normal (outside ``uv_face_eye_mask``, which is 0 there,
so the blend below gives them the coarse normal anyway). Vertex normals are the area-weighted sums of the
triangles' cross products normalised like ``F.normalize(eps=1e-6)``: a sum shorter than 1e-6 is divided by
1e-6, not by its length (DECA's ``util.vertex_normals``). The result blends
``detail * mask + coarse * (1 - mask)``.

``margins=(0, 0)`` covers the whole grid (every texel gets a normal of its own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DECA_GRID_MARGINS", "DECA_NORMAL_EPS", "uv_grid_faces", "deca_vertex_normals", "displacement_normals"]

DECA_GRID_MARGINS = (2, 5)  # (margin_x, margin_y) of DECA's dense UV grid triangles
DECA_NORMAL_EPS = 1e-6  # F.normalize's eps in DECA's util.vertex_normals


def uv_grid_faces(height: int, width: int | None = None, margins: tuple[int, int] = DECA_GRID_MARGINS) -> torch.Tensor:
    """Triangles of a ``height x width`` texel grid (row-major vertex ids ``y * width + x``): ``(F, 3)`` long.

    Two per quad with top-left corner ``(x, y)``, ``margin_x <= x < width - 1 - margin_x`` and
    ``margin_y <= y < height - 1 - margin_y``: ``(p, p + width, p + 1)`` and ``(p + 1, p + width, p + width + 1)``
    (DECA's orientation), quads in DECA's order (x outer, y inner) so that float32 sums round alike."""
    width = height if width is None else width
    mx, my = (int(m) for m in margins)
    if mx < 0 or my < 0:
        raise ValueError(f"grid margins must be >= 0, got {margins}")
    if width - 1 - 2 * mx < 1 or height - 1 - 2 * my < 1:
        raise ValueError(f"a {height}x{width} grid with margins {margins} has no quads")
    idx = torch.arange(height * width).reshape(height, width)
    p = idx[my:height - 1 - my, mx:width - 1 - mx].T.reshape(-1)
    t0 = torch.stack([p, p + width, p + 1], 1)
    t1 = torch.stack([p + 1, p + width, p + width + 1], 1)
    return torch.stack([t0, t1], 1).reshape(-1, 3)


def deca_vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, eps: float = DECA_NORMAL_EPS) -> torch.Tensor:
    """Area-weighted vertex normals normalised with ``F.normalize(eps)``: ``(B, V, 3)`` from ``(B, V, 3)`` and
    ``(F, 3)``. Vertices in no face get 0; sums shorter than ``eps`` stay shorter than unit (as in DECA)."""
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    # Twice the area times the unit normal, computed per corner from that corner's edges and accumulated in
    # DECA's order (corner 1, 2, 0): equal in exact arithmetic, but where a sum cancels (texels of the mask
    # outside the UV charts) only the same rounding gives DECA's exact zero instead of noise blown up by eps.
    acc = torch.zeros_like(vertices)
    acc = acc.index_add(1, faces[:, 1], torch.cross(v2 - v1, v0 - v1, dim=-1))
    acc = acc.index_add(1, faces[:, 2], torch.cross(v0 - v2, v1 - v2, dim=-1))
    acc = acc.index_add(1, faces[:, 0], torch.cross(v1 - v0, v2 - v0, dim=-1))
    return F.normalize(acc, dim=-1, eps=eps)


def displacement_normals(uv_vertices: torch.Tensor, uv_normals: torch.Tensor, uv_z: torch.Tensor,
                         mask: torch.Tensor, fixed: torch.Tensor, faces: torch.Tensor,
                         eps: float = DECA_NORMAL_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """DECA's ``displacement2normal`` on maps already in UV space.

    Args:
        uv_vertices, uv_normals: (B, 3, H, W) coarse surface points and normals per texel.
        uv_z: (B, 1, H, W) the detail decoder's displacement; fixed: (1 or B, 1, H, W) the fixed map.
        mask: (1 or B, 1, H, W) ``uv_face_eye_mask``: masks ``uv_z`` and blends detail with coarse normals.
        faces: (F, 3) the dense grid's triangles (`uv_grid_faces`).
    Returns:
        normals (B, 3, H, W) and the displaced texel positions (B, 3, H, W).
    """
    B, _, H, W = uv_vertices.shape
    # DECA's order of operations (the two terms added separately), so float32 rounds the same
    detail_vertices = uv_vertices + (uv_z * mask) * uv_normals + fixed * uv_normals
    dense = detail_vertices.permute(0, 2, 3, 1).reshape(B, H * W, 3)
    dense_normals = deca_vertex_normals(dense, faces, eps).reshape(B, H, W, 3).permute(0, 3, 1, 2)
    return dense_normals * mask + uv_normals * (1 - mask), detail_vertices
