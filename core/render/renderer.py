"""DECA-style mesh renderer: orthographic camera, UV albedo, SH shading, optional detail normal map.

Gradients reach the vertices (through the recomputed barycentrics, the vertex normals and the depth), the
camera, the light, the albedo texture and the normal map. Which face covers a pixel is a hard decision,
so there are no silhouette gradients (as with DECA's hard rasterizer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .camera import image_hw, orthographic_project
from .interpolate import interpolate_face_attributes, interpolate_vertex_attributes, pixel_barycentrics
from .rasterize import Fragments, rasterize
from .shading import sh_shading, vertex_normals
from .uv import UVRasterization, cached_uv_rasterization, sample_uv_map, unwrap_texture, uv_to_grid
from .visibility import vertex_visibility

__all__ = ["RenderResult", "MeshRenderer"]


@dataclass
class RenderResult:
    """Everything one render produces. Background pixels are 0 in every image unless stated.

    Attributes:
        image: ``(B, 3, H, W)`` albedo * shading (composited over ``background`` when one was given).
        alpha: ``(B, 1, H, W)`` 1 where the mesh covers the pixel centre, else 0 (float, no gradient).
        normal_image: ``(B, 3, H, W)`` unit FLAME-space normals used for shading (the detail normals when a
            normal map was given).
        uv_image: ``(B, 2, H, W)`` per-pixel UV in ``[0, 1]`` (v up); see :attr:`uv_grid`.
        depth: ``(B, 1, H, W)`` screen depth ``z = -Z`` of the visible surface.
        visibility: ``(B, V)`` bool, vertices on the visible surface.
        fragments: the rasterization (face ids, barycentrics, z-buffer).
        verts_screen: ``(B, V, 3)`` projected vertices (image NDC xy, depth z).
        albedo_image: ``(B, 3, H, W)`` albedo sampled from the texture (ones without a texture).
        shading_image: ``(B, 3, H, W)`` SH shading, or None without light.
    """

    image: torch.Tensor
    alpha: torch.Tensor
    normal_image: torch.Tensor
    uv_image: torch.Tensor
    depth: torch.Tensor
    visibility: torch.Tensor
    fragments: Fragments
    verts_screen: torch.Tensor
    albedo_image: torch.Tensor
    shading_image: torch.Tensor | None

    @property
    def mask(self) -> torch.Tensor:
        """``(B, 1, H, W)`` bool coverage."""
        return self.alpha > 0

    @property
    def uv_grid(self) -> torch.Tensor:
        """``(B, H, W, 2)`` grid to sample any UV map: ``grid_sample(uv_map, grid, align_corners=False)``."""
        return uv_to_grid(self.uv_image)


def _normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    # The clamp keeps background zeros at zero (and their gradient finite).
    return x / x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).eps)


class MeshRenderer(nn.Module):
    """Render one fixed topology (FLAME) with DECA's orthographic camera.

    Args:
        faces: ``(F, 3)`` long mesh faces.
        uv_coords: ``(Nuv, 2)`` UVs in ``[0, 1]`` (v up); optional, needed for textures and UV space.
        uv_faces: ``(F, 3)`` long, row-aligned with ``faces``.
        image_size: output size, ``S`` or ``(H, W)``.
        renormalize_normals: renormalise interpolated normals before shading (DECA shades the raw
            interpolation; the difference is below 1e-3 on FLAME-sized faces).
        visibility_tol_px: depth tolerance of the vertex visibility test, in pixels (converted to depth
            units with the camera scale: one pixel is ``2 / (s * min(H, W))`` metres).
        cull_backfaces: rasterize only faces turned towards the camera.
    """

    faces: torch.Tensor
    uv_coords: torch.Tensor
    uv_faces: torch.Tensor
    face_uvs: torch.Tensor

    def __init__(
        self,
        faces: torch.Tensor,
        uv_coords: torch.Tensor | None = None,
        uv_faces: torch.Tensor | None = None,
        image_size: int | tuple[int, int] = 224,
        *,
        renormalize_normals: bool = True,
        visibility_tol_px: float = 1.0,
        cull_backfaces: bool = False,
    ) -> None:
        super().__init__()
        faces = torch.as_tensor(faces).long()
        self.register_buffer("faces", faces, persistent=False)
        if (uv_coords is None) != (uv_faces is None):
            raise ValueError("uv_coords and uv_faces go together")
        self.has_uv = uv_coords is not None
        if uv_coords is not None:
            uv_coords = torch.as_tensor(uv_coords, dtype=torch.get_default_dtype())
            uv_faces = torch.as_tensor(uv_faces).long()
            if uv_faces.shape != faces.shape:
                raise ValueError(f"uv_faces {tuple(uv_faces.shape)} must be row-aligned with faces {tuple(faces.shape)}")
        else:
            uv_coords = torch.zeros((1, 2))
            uv_faces = torch.zeros_like(faces)
        self.register_buffer("uv_coords", uv_coords, persistent=False)
        self.register_buffer("uv_faces", uv_faces, persistent=False)
        self.register_buffer("face_uvs", uv_coords[uv_faces], persistent=False)  # (F, 3, 2)
        self.image_size = image_hw(image_size)
        self.renormalize_normals = renormalize_normals
        self.visibility_tol_px = float(visibility_tol_px)
        self.cull_backfaces = cull_backfaces
        # (size, device, dtype) -> UVRasterization; avoids even hashing the layout on every call.
        self._uv_cache: dict[tuple, UVRasterization] = {}

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        vertices: torch.Tensor,
        cam: torch.Tensor,
        albedo: torch.Tensor | None = None,
        light: torch.Tensor | None = None,
        normal_map: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> RenderResult:
        """Render.

        Args:
            vertices: ``(B, V, 3)`` FLAME-space vertices.
            cam: ``(B, 3)`` orthographic camera ``(s, tx, ty)``.
            albedo: ``(B, 3, Ht, Wt)`` UV albedo texture (row 0 is v = 1); default white.
            light: ``(B, 9, 3)`` SH light; default none (image = albedo).
            normal_map: ``(B, 3, Ht, Wt)`` FLAME-space UV normal map (detail normals) used for shading
                instead of the interpolated vertex normals.
            background: ``(B, 3, H, W)`` image behind the mesh; default black.
            image_size: override of the output size.

        Returns:
            :class:`RenderResult`.
        """
        h, w = image_hw(image_size) if image_size is not None else self.image_size
        faces = self.faces
        verts_screen = orthographic_project(vertices, cam)
        fragments = rasterize(verts_screen, faces, (h, w), cull_backfaces=self.cull_backfaces)
        bary = pixel_barycentrics(fragments, verts_screen, faces)
        alpha = fragments.mask[:, None].to(verts_screen.dtype)

        uv_image = interpolate_face_attributes(fragments, self.face_uvs.to(verts_screen.dtype), bary)
        normals = vertex_normals(vertices, faces)
        normal_image = interpolate_vertex_attributes(fragments, normals, faces, bary)
        if normal_map is not None:
            self._need_uv("a normal map")
            normal_image = sample_uv_map(normal_map, uv_image) * alpha
            normal_image = _normalize(normal_image, 1)
        elif self.renormalize_normals:
            normal_image = _normalize(normal_image, 1)

        if albedo is not None:
            self._need_uv("an albedo texture")
            albedo_image = sample_uv_map(albedo, uv_image) * alpha
        else:
            albedo_image = alpha.expand(-1, 3, -1, -1)
        if light is not None:
            shading_image = sh_shading(normal_image, light)
            image = albedo_image * shading_image
        else:
            shading_image = None
            image = albedo_image
        image = image * alpha
        if background is not None:
            image = image + background * (1.0 - alpha)

        depth = interpolate_vertex_attributes(fragments, verts_screen[..., 2:3], faces, bary)
        pixel_metres = 2.0 / (cam[:, 0].detach().abs().clamp_min(1e-12) * min(h, w))
        visibility = vertex_visibility(verts_screen, faces, fragments, self.visibility_tol_px * pixel_metres)
        return RenderResult(
            image=image,
            alpha=alpha,
            normal_image=normal_image,
            uv_image=uv_image,
            depth=depth,
            visibility=visibility,
            fragments=fragments,
            verts_screen=verts_screen,
            albedo_image=albedo_image,
            shading_image=shading_image,
        )

    # --- UV space -------------------------------------------------------------------------------------
    def _need_uv(self, what: str) -> None:
        if not self.has_uv:
            raise ValueError(f"{what} needs uv_coords and uv_faces")

    def uv_rasterization(self, size: int = 256) -> UVRasterization:
        """The layout rasterized at ``size x size`` (cached per layout, size, device and dtype)."""
        self._need_uv("UV-space rendering")
        key = (int(size), str(self.uv_coords.device), self.uv_coords.dtype)
        if key not in self._uv_cache:
            self._uv_cache[key] = cached_uv_rasterization(self.uv_coords, self.uv_faces, size)
        return self._uv_cache[key]

    def world_to_uv(self, vertex_attrs: torch.Tensor, size: int = 256) -> torch.Tensor:
        """Per-vertex attributes ``(B, V, C)`` (positions, normals, ...) -> UV images ``(B, C, S, S)``."""
        return self.uv_rasterization(size).vertex_attributes_to_uv(vertex_attrs, self.faces)

    def unwrap_texture(
        self,
        image: torch.Tensor,
        vertices: torch.Tensor,
        cam: torch.Tensor,
        size: int = 512,
        occlusion: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unwrap a photo ``(B, 3, H, W)`` (the camera's view) into a ``(B, 3, S, S)`` UV texture.

        Returns ``(texture, visible)`` with ``visible (B, 1, S, S)`` bool; with ``occlusion`` texels hidden
        behind nearer surfaces (depth test at the photo's resolution) are marked invisible.
        """
        h, w = image.shape[-2:]
        verts_screen = orthographic_project(vertices, cam)
        fragments = None
        tol = 0.0
        if occlusion:
            fragments = rasterize(verts_screen, self.faces, (h, w), cull_backfaces=self.cull_backfaces)
            tol = self.visibility_tol_px * 2.0 / (cam[:, 0].detach().abs().clamp_min(1e-12) * min(h, w))
        return unwrap_texture(image, verts_screen, self.faces, self.uv_rasterization(size), fragments, tol)
