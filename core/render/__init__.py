"""Differentiable mesh rendering in pure torch (CPU or CUDA, float32 or float64).

* :func:`rasterize` -> :class:`Fragments` (face ids, barycentrics, depth per pixel; no gradients)
* :func:`pixel_barycentrics`, :func:`interpolate_attributes` -> differentiable per-pixel attributes
* :func:`sh_shading`, :func:`vertex_normals`, :func:`face_normals` -> DECA's SH lighting
* :class:`MeshRenderer` -> :class:`RenderResult` (image, alpha, normals, UVs, depth, visibility)
* :func:`displacement_normals`, :func:`uv_grid_faces`, :func:`deca_vertex_normals` -> DECA's UV detail normals
* :func:`render_uv_space` / :class:`UVRasterization` -> per-vertex attributes into UV maps
"""
from .camera import image_hw, ndc_to_pixels, orthographic_project, pixels_to_ndc
from .detail_normals import deca_vertex_normals, displacement_normals, uv_grid_faces
from .interpolate import (
    interpolate_attributes,
    interpolate_face_attributes,
    interpolate_vertex_attributes,
    pixel_barycentrics,
)
from .rasterize import Foreground, Fragments, barycentric_at, rasterize
from .renderer import MeshRenderer, RenderResult
from .shading import SH_CONSTANTS, face_normals, sh_basis, sh_shading, vertex_normals
from .uv import (
    UVRasterization,
    cached_uv_rasterization,
    render_uv_space,
    sample_uv_map,
    unwrap_texture,
    uv_to_grid,
    uv_to_ndc,
)
from .visibility import surface_depth_at, vertex_visibility

__all__ = [
    "Foreground",
    "Fragments",
    "MeshRenderer",
    "RenderResult",
    "SH_CONSTANTS",
    "UVRasterization",
    "barycentric_at",
    "cached_uv_rasterization",
    "deca_vertex_normals",
    "displacement_normals",
    "face_normals",
    "image_hw",
    "interpolate_attributes",
    "interpolate_face_attributes",
    "interpolate_vertex_attributes",
    "ndc_to_pixels",
    "orthographic_project",
    "pixel_barycentrics",
    "pixels_to_ndc",
    "rasterize",
    "render_uv_space",
    "sample_uv_map",
    "sh_basis",
    "sh_shading",
    "surface_depth_at",
    "unwrap_texture",
    "uv_grid_faces",
    "uv_to_grid",
    "uv_to_ndc",
    "vertex_normals",
    "vertex_visibility",
]
