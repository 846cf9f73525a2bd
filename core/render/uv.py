"""UV-space rasterization: which face and barycentrics cover each texel of a UV map.

UV conventions (CONVENTIONS.md): ``uv`` in ``[0, 1]`` with v up; UV images are stored top row first, so
``uv_ndc = (2u - 1, 1 - 2v)``, and texel ``(r, c)`` of an ``S x S`` map samples
``u = (c + 0.5) / S``, ``v = 1 - (r + 0.5) / S`` -- the same grid ``grid_sample(align_corners=False)``
reads. The rasterization depends only on the layout and the size, so it is computed once and reused
(:func:`cached_uv_rasterization`); mapping per-vertex attributes into UV space is then a gather and a
weighted sum, differentiable w.r.t. the attributes.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .rasterize import Fragments, rasterize
from .visibility import surface_depth_at

__all__ = [
    "UVRasterization",
    "render_uv_space",
    "cached_uv_rasterization",
    "uv_to_ndc",
    "uv_to_grid",
    "sample_uv_map",
    "unwrap_texture",
]


def uv_to_ndc(uv: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` UV in ``[0, 1]`` (v up) -> image NDC of a UV image (x right, y down)."""
    return torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], dim=-1)


def uv_to_grid(uv_image: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` per-pixel UV -> ``(B, H, W, 2)`` grid for ``grid_sample(texture, grid, align_corners=False)``."""
    return uv_to_ndc(uv_image.permute(0, 2, 3, 1))


@dataclass
class UVRasterization:
    """Texel -> (face, barycentrics) of a UV layout at one size.

    Attributes:
        face_ids: ``(S, S)`` long, ``-1`` where no face covers the texel centre.
        bary: ``(S, S, 3)`` barycentrics of the texel centre in that face, 0 elsewhere.
    """

    face_ids: torch.Tensor
    bary: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.face_ids.shape[0])

    @property
    def mask(self) -> torch.Tensor:
        """``(S, S)`` bool, texels covered by the layout."""
        return self.face_ids >= 0

    def to(self, device=None, dtype=None) -> "UVRasterization":
        return UVRasterization(self.face_ids.to(device), self.bary.to(device=device, dtype=dtype))

    def _packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Covered texels: flat index ``(N,)``, face ``(N,)``, barycentrics ``(N, 3)`` (computed once)."""
        packed = self.__dict__.get("_packed_cache")
        if packed is None:
            pix = torch.nonzero(self.face_ids.reshape(-1) >= 0).squeeze(1)
            packed = (pix, self.face_ids.reshape(-1)[pix], self.bary.reshape(-1, 3)[pix])
            self.__dict__["_packed_cache"] = packed
        return packed

    def _splat(self, corner_vals: torch.Tensor) -> torch.Tensor:
        """``(B, N, 3, C)`` corner values of the covered texels -> ``(B, C, S, S)``."""
        b, _, _, c = corner_vals.shape
        s = self.size
        pix, _, bary = self._packed()
        pix = pix.to(corner_vals.device)
        out_fg = torch.einsum("nk,bnkc->bcn", bary.to(corner_vals), corner_vals)
        out = corner_vals.new_zeros((b, c, s * s)).index_copy(2, pix, out_fg)
        return out.view(b, c, s, s)

    def vertex_attributes_to_uv(self, vertex_attrs: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Map per-vertex attributes into UV space (e.g. ``uv_vertices``, ``uv_normals``).

        Args:
            vertex_attrs: ``(B, V, C)`` attributes of the mesh vertices.
            faces: ``(F, 3)`` mesh faces, row-aligned with the ``uv_faces`` of the layout.

        Returns:
            ``(B, C, S, S)``, 0 on texels outside the layout; differentiable w.r.t. ``vertex_attrs``.
        """
        b, _, c = vertex_attrs.shape
        _, face, _ = self._packed()
        vid = faces.to(vertex_attrs.device).index_select(0, face.to(vertex_attrs.device))  # (N, 3)
        vals = vertex_attrs.index_select(1, vid.reshape(-1)).view(b, -1, 3, c)
        return self._splat(vals)

    def face_attributes_to_uv(self, face_attrs: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, C)`` per-corner attributes -> ``(B, C, S, S)``, 0 outside the layout."""
        _, face, _ = self._packed()
        return self._splat(face_attrs.index_select(1, face.to(face_attrs.device)))

    def as_fragments(self, batch_size: int = 1) -> Fragments:
        """The same data as a batch of :class:`Fragments` (depth 0 where covered)."""
        depth = torch.where(self.mask, 0.0, float("inf")).to(self.bary)
        return Fragments(
            self.face_ids.expand(batch_size, -1, -1).contiguous(),
            self.bary.expand(batch_size, -1, -1, -1).contiguous(),
            depth.expand(batch_size, -1, -1).contiguous(),
        )


def render_uv_space(uv_coords: torch.Tensor, uv_faces: torch.Tensor, size: int) -> UVRasterization:
    """Rasterize a UV layout into an ``S x S`` map.

    Args:
        uv_coords: ``(Nuv, 2)`` in ``[0, 1]``, v up.
        uv_faces: ``(F, 3)`` long, indexing ``uv_coords`` (row-aligned with the mesh faces).
        size: ``S``.

    Returns:
        :class:`UVRasterization` on ``uv_coords``' device and float dtype. Overlapping UV islands resolve
        deterministically to the smaller face id (all depths are equal).
    """
    ndc = uv_to_ndc(uv_coords)
    verts = torch.cat([ndc, torch.zeros_like(ndc[:, :1])], dim=-1)[None]
    frag = rasterize(verts, uv_faces, size)
    return UVRasterization(frag.face_ids[0], frag.bary[0])


_CACHE: "OrderedDict[tuple, UVRasterization]" = OrderedDict()
_CACHE_MAX = 8


def cached_uv_rasterization(uv_coords: torch.Tensor, uv_faces: torch.Tensor, size: int) -> UVRasterization:
    """:func:`render_uv_space`, memoised on the layout's content, the size, the device and the dtype.

    The key hashes the layout's bytes (a few tens of kB for FLAME), which is far cheaper than
    rasterizing again; a small LRU keeps memory bounded.
    """
    h = hashlib.sha1()
    h.update(uv_coords.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    h.update(uv_faces.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    key = (h.hexdigest(), int(size), str(uv_coords.device), uv_coords.dtype)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    result = render_uv_space(uv_coords, uv_faces, size)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_MAX:
        _CACHE.popitem(last=False)
    return result


def sample_uv_map(uv_map: torch.Tensor, uv_image: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample a UV map ``(B, C, Ht, Wt)`` at per-pixel UVs ``(B, 2, H, W)`` -> ``(B, C, H, W)``."""
    grid = uv_to_grid(uv_image).to(uv_map.dtype)
    return F.grid_sample(uv_map, grid, mode=mode, padding_mode="border", align_corners=False)


def unwrap_texture(
    image: torch.Tensor,
    verts_screen: torch.Tensor,
    faces: torch.Tensor,
    uv_raster: UVRasterization,
    fragments: Fragments | None = None,
    depth_tol: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unwrap a photo into the UV layout: each texel samples the photo where its surface point projects.

    Args:
        image: ``(B, C, H, W)`` photo (or rendered image) the mesh was projected into.
        verts_screen: ``(B, V, 3)`` screen-space vertices (image NDC xy, depth z) for that image.
        faces: ``(F, 3)`` mesh faces, row-aligned with the layout's ``uv_faces``.
        uv_raster: the layout's :class:`UVRasterization` at the texture size ``S``.
        fragments: optional rasterization of ``verts_screen`` at the image size; when given, texels
            hidden behind nearer surfaces (depth test with ``depth_tol``, in depth units, ``(B,)`` or
            scalar) are marked invisible.
        depth_tol: depth tolerance of that test.

    Returns:
        ``texture (B, C, S, S)`` (differentiable w.r.t. ``image`` and ``verts_screen``) and
        ``visible (B, 1, S, S)`` bool: inside the layout, projecting inside the image and, with
        ``fragments``, not occluded.
    """
    pos = uv_raster.vertex_attributes_to_uv(verts_screen, faces)  # (B, 3, S, S)
    grid = pos[:, :2].permute(0, 2, 3, 1).to(image.dtype)
    texture = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    with torch.no_grad():
        x, y, z = pos[:, 0].detach(), pos[:, 1].detach(), pos[:, 2].detach()
        visible = uv_raster.mask.to(pos.device)[None] & (x.abs() <= 1) & (y.abs() <= 1)
        if fragments is not None:
            b = pos.shape[0]
            points = pos[:, :2].detach().permute(0, 2, 3, 1).reshape(b, -1, 2)
            surface = surface_depth_at(points, verts_screen, faces, fragments).view_as(z)
            tol = torch.as_tensor(depth_tol, dtype=z.dtype, device=z.device).reshape(-1, 1, 1)
            # A background pixel (+inf) means nothing occludes the point (silhouette texels).
            visible &= z <= surface.to(z.dtype) + tol
    return texture, visible[:, None]
