"""Vectorized triangle rasterizer: face ids, barycentrics and depth per pixel (no gradients).

Screen space is image NDC (x right, y down, ``[-1, 1]`` across the image) with ``z`` = depth, smaller is
nearer. Pixel ``(i, j)`` samples its centre ``x = (j + 0.5) * 2 / W - 1``, ``y = (i + 0.5) * 2 / H - 1``.

How it works, and why:

* Each face is reduced to the bounding box of the pixel centres it can cover. Every (face, pixel) pair in
  those boxes is a *candidate*; candidates are enumerated exactly (``repeat_interleave`` over box areas, no
  padding), so work is proportional to the summed box area, not to ``F * H * W``.
* Memory is bounded: a face whose box is larger than ``max_face_pixels`` is cut into row strips, and the
  candidates are processed in chunks of about ``max_candidates``.
* The inside test uses barycentrics normalised by the signed area, so both windings are handled by the
  same test (no backface culling unless asked for).
* The z-buffer is a single ``scatter_reduce(amin)`` over an int64 key ``order(depth) << bits | face_id``:
  the nearest face wins and exact depth ties go to the smaller face id, independent of face order or of
  the (non-deterministic) order of the scatter.
* The winners' barycentrics and depths are recomputed once per covered pixel at the end.

The result is not differentiable; :mod:`core.render.interpolate` recomputes barycentrics with gradients
from the face ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .camera import image_hw

__all__ = ["Fragments", "Foreground", "rasterize", "barycentric_at"]

# Bary tolerance of the inside test: pixel centres exactly on a shared edge must not fall in a crack
# between the two faces because of rounding. Either face may then win; the z-buffer decides.
_INSIDE_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
_SENTINEL = torch.iinfo(torch.int64).max


class Foreground(NamedTuple):
    """Covered pixels of a :class:`Fragments`, packed: all ``(N,)`` long."""

    pix: torch.Tensor  # flat index into B*H*W
    batch: torch.Tensor
    face: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor


@dataclass
class Fragments:
    """Per-pixel rasterization result.

    Attributes:
        face_ids: ``(B, H, W)`` long, index into ``faces``; ``-1`` = background.
        bary: ``(B, H, W, 3)`` barycentrics of the pixel centre in the visible face (>= 0, sum 1);
            0 on the background. Not differentiable (see :func:`core.render.pixel_barycentrics`).
        depth: ``(B, H, W)`` screen depth of the visible surface; ``+inf`` on the background.
    """

    face_ids: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    _fg: Foreground | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool, True where a face is visible."""
        return self.face_ids >= 0

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.face_ids.shape[1]), int(self.face_ids.shape[2])

    def foreground(self) -> Foreground:
        """Packed indices of the covered pixels (computed once, then cached)."""
        if self._fg is None:
            _, h, w = self.face_ids.shape
            flat = self.face_ids.reshape(-1)
            pix = torch.nonzero(flat >= 0).squeeze(1)
            batch = torch.div(pix, h * w, rounding_mode="floor")
            rem = pix - batch * (h * w)
            row = torch.div(rem, w, rounding_mode="floor")
            self._fg = Foreground(pix, batch, flat[pix], row, rem - row * w)
        return self._fg


def barycentric_at(tri_xy: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Barycentric coordinates of points in triangles (differentiable, any winding).

    Args:
        tri_xy: ``(N, 3, 2)`` triangle corners.
        points: ``(N, 2)`` query points.

    Returns:
        ``(N, 3)`` with ``sum = 1``; negative outside the triangle. Degenerate triangles give inf/nan.
    """
    v0 = tri_xy[:, 0]
    e1 = tri_xy[:, 1] - v0
    e2 = tri_xy[:, 2] - v0
    d = points - v0
    # Coordinates relative to v0 keep the precision of small faces far from the origin.
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    b1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / area
    b2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / area
    return torch.stack([1.0 - b1 - b2, b1, b2], dim=1)


def _depth_order_key(z: torch.Tensor) -> torch.Tensor:
    """Map float depths to int64 in ``[0, 2**32)`` preserving order (via float32 bit patterns)."""
    bits = z.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    # Positive floats order like their bit patterns; negative ones in reverse, by magnitude.
    key = torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF) - 1)
    return key + (1 << 31)


def rasterize(
    verts_screen: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    cull_backfaces: bool = False,
    max_candidates: int | None = None,
    max_face_pixels: int = 1 << 16,
) -> Fragments:
    """Rasterize triangle meshes, keeping the nearest face per pixel centre.

    Args:
        verts_screen: ``(B, V, 3)`` x, y in image NDC (x right, y down), z = depth (smaller is nearer).
        faces: ``(F, 3)`` long, shared by the batch.
        image_size: ``S`` or ``(H, W)``.
        cull_backfaces: drop faces seen from behind. Front faces are counter-clockwise as seen by the
            viewer (FLAME/OBJ winding with +y up), i.e. negative signed area in y-down NDC.
        max_candidates: candidate (face, pixel) pairs (and winning pixels) processed per chunk; bounds
            the working memory to about 200 bytes each. Default: 2**16 on the CPU, where chunks that
            stay in cache are fastest, 2**22 elsewhere, where fewer, larger kernels are.
        max_face_pixels: faces whose pixel box is larger are split into row strips of about this size.

    Returns:
        :class:`Fragments` with ``(B, H, W)`` tensors on the input's device; bary/depth in the input's
        float dtype (float32 for lower precisions).
    """
    h, w = image_hw(image_size)
    if verts_screen.ndim != 3 or verts_screen.shape[-1] != 3:
        raise ValueError(f"verts_screen must be (B, V, 3), got {tuple(verts_screen.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if max_candidates is None:
        max_candidates = 1 << 16 if verts_screen.device.type == "cpu" else 1 << 22
    with torch.no_grad():
        return _rasterize(verts_screen, faces.long(), h, w, cull_backfaces, max_candidates, max_face_pixels)


def _rasterize(verts, faces, h, w, cull, max_candidates, max_face_pixels) -> Fragments:
    device = verts.device
    dtype = verts.dtype if verts.dtype in (torch.float32, torch.float64) else torch.float32
    verts = verts.detach().to(dtype)
    b_count = verts.shape[0]
    n_faces = faces.shape[0]
    n_pix = b_count * h * w

    zbuf = torch.full((n_pix,), _SENTINEL, dtype=torch.int64, device=device)
    face_bits = max(1, int(n_faces - 1).bit_length())
    if n_faces > 0 and b_count > 0:
        # --- per face: pixel-space corners, signed area, pixel-centre bounding box ---------------------
        tri = verts[:, faces]  # (B, F, 3, 3)
        px = (tri[..., 0] + 1.0) * (w / 2.0)
        py = (tri[..., 1] + 1.0) * (h / 2.0)
        pz = tri[..., 2]
        e1x, e1y = px[..., 1] - px[..., 0], py[..., 1] - py[..., 0]
        e2x, e2y = px[..., 2] - px[..., 0], py[..., 2] - py[..., 0]
        area = e1x * e2y - e1y * e2x
        # Relative degeneracy test: rounding noise of the cross product scales with the edge lengths.
        scale2 = e1x * e1x + e1y * e1y + e2x * e2x + e2y * e2y
        eps = torch.finfo(dtype).eps
        valid = (area.abs() > 16 * eps * scale2) & torch.isfinite(tri).all(-1).all(-1)
        if cull:
            valid &= area < 0
        # Pixel j is covered only if its centre j + 0.5 lies in [min, max]; clamp in float first so
        # that faces far off-screen cannot overflow the integer conversion.
        col0 = torch.ceil(px.amin(-1) - 0.5).clamp(-1, w).long().clamp_min(0)
        col1 = torch.floor(px.amax(-1) - 0.5).clamp(-1, w).long().clamp_max(w - 1)
        row0 = torch.ceil(py.amin(-1) - 0.5).clamp(-1, h).long().clamp_min(0)
        row1 = torch.floor(py.amax(-1) - 0.5).clamp(-1, h).long().clamp_max(h - 1)
        valid &= (col1 >= col0) & (row1 >= row0)

        # b1 = dx*k1 + dy*k2, b2 = dx*k3 + dy*k4 with (dx, dy) = centre - v0; z = z0 + b1*dz1 + b2*dz2.
        # One row per (batch, face): candidates and winners both read their face's row.
        inv_area = 1.0 / torch.where(valid, area, torch.ones_like(area))
        table = torch.stack(
            [
                px[..., 0], py[..., 0],
                e2y * inv_area, -e2x * inv_area,
                -e1y * inv_area, e1x * inv_area,
                pz[..., 0], pz[..., 1] - pz[..., 0], pz[..., 2] - pz[..., 0],
            ],
            dim=-1,
        ).reshape(b_count * n_faces, 9)
        b_sel, f_sel = torch.nonzero(valid, as_tuple=True)
        if b_sel.numel() > 0:
            sel = (b_sel, f_sel)
            _scatter_candidates(
                zbuf, table.index_select(0, b_sel * n_faces + f_sel), f_sel, b_sel * (h * w),
                col0[sel], col1[sel], row0[sel], row1[sel], w, face_bits,
                _INSIDE_TOL[dtype], max_candidates, max_face_pixels,
            )

    # --- resolve winners, in chunks of covered pixels -------------------------------------------------
    face_ids = torch.full((n_pix,), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((n_pix, 3), dtype=dtype, device=device)
    depth = torch.full((n_pix,), float("inf"), dtype=dtype, device=device)
    covered = torch.nonzero(zbuf != _SENTINEL).squeeze(1)
    for start in range(0, covered.numel(), max_candidates):
        pix = covered[start : start + max_candidates]
        face = zbuf[pix] & ((1 << face_bits) - 1)
        batch = torch.div(pix, h * w, rounding_mode="floor")
        rem = pix - batch * (h * w)
        row = torch.div(rem, w, rounding_mode="floor")
        col = rem - row * w
        p = table.index_select(0, batch * n_faces + face)
        dx = col.to(dtype) + 0.5 - p[:, 0]
        dy = row.to(dtype) + 0.5 - p[:, 1]
        b1 = dx * p[:, 2] + dy * p[:, 3]
        b2 = dx * p[:, 4] + dy * p[:, 5]
        b = torch.stack([1.0 - b1 - b2, b1, b2], dim=1)
        # The inside test allows a hair of tolerance; clamp so that outputs are a proper convex weight.
        b = b.clamp_min(0.0)
        b = b / b.sum(1, keepdim=True)
        face_ids[pix] = face
        bary[pix] = b
        depth[pix] = p[:, 6] + b[:, 1] * p[:, 7] + b[:, 2] * p[:, 8]
    return Fragments(face_ids.view(b_count, h, w), bary.view(b_count, h, w, 3), depth.view(b_count, h, w))


def _scatter_candidates(
    zbuf, params, face_key, pix_base, c0, c1, r0, r1, w, face_bits, tol, max_candidates, max_face_pixels
) -> None:
    """Enumerate (face, pixel) candidates in bounded chunks and z-buffer the inside ones into ``zbuf``."""
    device = zbuf.device
    bw = c1 - c0 + 1
    bh = r1 - r0 + 1
    n_faces = bw.numel()
    # Split faces with a large box into row strips of at most ~max_face_pixels candidates.
    rows_per_strip = torch.clamp(max_face_pixels // bw, min=1)
    n_strips = torch.div(bh + rows_per_strip - 1, rows_per_strip, rounding_mode="floor")
    if int(n_strips.max()) > 1:
        strip_face = torch.repeat_interleave(torch.arange(n_faces, device=device), n_strips)
        first = torch.cumsum(n_strips, 0) - n_strips
        k = torch.arange(strip_face.numel(), device=device) - first[strip_face]
        s_row0 = r0[strip_face] + k * rows_per_strip[strip_face]
        s_rows = torch.minimum(rows_per_strip[strip_face], r1[strip_face] - s_row0 + 1)
        s_col0, s_bw = c0[strip_face], bw[strip_face]
    else:
        strip_face = torch.arange(n_faces, device=device)
        s_row0, s_rows, s_col0, s_bw = r0, bh, c0, bw
    counts = s_bw * s_rows
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1])
    # One gather per candidate for all the integer data of its strip.
    strip_int = torch.stack([s_col0, s_row0, s_bw, starts, strip_face], dim=1)

    # Chunk boundaries at strip granularity: a chunk holds at most max_candidates + max_face_pixels.
    n_strip_total = counts.numel()
    bounds = [0]
    if total > max_candidates:
        cuts = torch.arange(max_candidates, total, max_candidates, device=device)
        bounds += torch.searchsorted(ends, cuts, right=True).tolist()
    bounds.append(n_strip_total)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        cnt = counts[a:b]
        n = int(ends[b - 1] - starts[a])
        if n == 0:
            continue
        rep = torch.repeat_interleave(torch.arange(a, b, device=device), cnt, output_size=n)
        info = strip_int.index_select(0, rep)
        local = torch.arange(n, device=device) + starts[a] - info[:, 3]
        dy = torch.div(local, info[:, 2], rounding_mode="floor")
        col = info[:, 0] + (local - dy * info[:, 2])
        row = info[:, 1] + dy
        fi = info[:, 4]
        p = params.index_select(0, fi)
        dx = col.to(p.dtype) + 0.5 - p[:, 0]
        dyf = row.to(p.dtype) + 0.5 - p[:, 1]
        b1 = dx * p[:, 2] + dyf * p[:, 3]
        b2 = dx * p[:, 4] + dyf * p[:, 5]
        inside = (b1 >= -tol) & (b2 >= -tol) & (b1 + b2 <= 1.0 + tol)
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() == 0:
            continue
        fi = fi.index_select(0, idx)
        zp = p.index_select(0, idx)[:, 6:9]
        z = zp[:, 0] + b1.index_select(0, idx) * zp[:, 1] + b2.index_select(0, idx) * zp[:, 2]
        key = (_depth_order_key(z) << face_bits) | face_key.index_select(0, fi)
        pix = pix_base.index_select(0, fi) + row.index_select(0, idx) * w + col.index_select(0, idx)
        zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
