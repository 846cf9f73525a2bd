"""The differentiable face model DECA decodes into: FLAME + camera + albedo + SH light + UV details.

One place that turns codes into geometry, landmarks, textures, detail normals and renders, shared by
the reconstruction pipeline, the training package and the fitting mode, so all three agree on every
convention (docs/CONVENTIONS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import sizes
from core.assets import AssetManager
from core.assets import catalog
from core.flame import FlameLayer, FlameModelData, LandmarkEmbedding, load_embedding, load_flame_model
from core.flame.template import TemplateMesh, read_template_obj
from core.render import MeshRenderer, RenderResult
from core.render.camera import orthographic_project
from core.render.detail_normals import deca_vertex_normals, displacement_normals, uv_grid_faces

N_SHAPE, N_TEX, N_EXP = sizes.N_SHAPE, sizes.N_TEX, sizes.N_EXP
UV_SIZE, TEX_SIZE = sizes.DISPLACEMENT_SIZE, sizes.TEXTURE_SIZE


@dataclass
class FaceAssets:
    """Everything read from disk that the face model needs (numpy, float32 images in [0, 1])."""

    flame: FlameModelData
    embedding: LandmarkEmbedding
    template: TemplateMesh
    uv_face_eye_mask: np.ndarray  # (256, 256) soft mask in [0, 1]
    uv_face_mask: np.ndarray  # (256, 256)
    fixed_displacement: np.ndarray  # (256, 256)
    mean_texture: np.ndarray  # (S, S, 3) RGB
    texture_mean: np.ndarray | None = None  # (S, S, 3) RGB in [0, 1]
    texture_basis: np.ndarray | None = None  # (S, S, 3, K)

    @classmethod
    def from_paths(cls, flame: str | Path, data_dir: str | Path, texture_space: str | Path | None = None) -> "FaceAssets":
        """From a FLAME file and a folder laid out like DECA's `data/` (installed or as released)."""
        data_dir = Path(data_dir)
        emb_path = data_dir / "landmark_embedding.npz"
        if not emb_path.is_file():
            emb_path = data_dir / "landmark_embedding.npy"
        tex_mean = tex_basis = None
        if texture_space is not None:
            with np.load(texture_space, allow_pickle=False) as z:
                own_layout = {"mean", "basis"} <= set(z.files)
                if own_layout:
                    tex_mean, tex_basis = z["mean"], z["basis"]
            if not own_layout:  # DECA's published files: FLAME_texture.npz, FLAME_albedo_from_BFM.npz (MU/PC)
                from core.assets.manager import read_texture_space

                tex_mean, tex_basis = read_texture_space(Path(texture_space))
        return cls(
            flame=load_flame_model(flame),
            embedding=load_embedding(emb_path),
            template=read_template_obj(data_dir / "head_template.obj"),
            uv_face_eye_mask=_read_mask(data_dir / "uv_face_eye_mask.png"),
            uv_face_mask=_read_mask(data_dir / "uv_face_mask.png"),
            fixed_displacement=np.load(data_dir / "fixed_displacement_256.npy", allow_pickle=False).astype(np.float32),
            mean_texture=_read_rgb(data_dir / "mean_texture.jpg"),
            texture_mean=tex_mean,
            texture_basis=tex_basis,
        )

    @classmethod
    def from_manager(cls, manager: AssetManager | None = None) -> "FaceAssets":
        manager = manager or AssetManager()
        names = ["flame_model"] + [s.name for s in catalog.DATA_FILES]
        paths = manager.require(*names)
        tex = manager.path("texture_space")
        return cls.from_paths(paths["flame_model"], paths["head_template"].parent, tex if tex.is_file() else None)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGBA") if im.mode not in ("L", "RGB", "RGBA") else im, dtype=np.float32)
    channel = arr[..., 0] if arr.ndim == 3 else arr
    return channel / 255.0


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@dataclass
class Geometry:
    """vertices (B, V, 3), joints (B, 5, 3), landmarks2d (B, 68, 2) image NDC (fitting form, projected),
    landmarks3d (B, 68, 3) FLAME space, landmarks2d_3d (B, 68, 3) the fitting-form points in FLAME space,
    verts_screen (B, V, 3) projected vertices."""

    vertices: torch.Tensor
    joints: torch.Tensor
    landmarks2d: torch.Tensor
    landmarks3d: torch.Tensor
    landmarks2d_3d: torch.Tensor
    verts_screen: torch.Tensor


class FaceModel(nn.Module):
    """FLAME, the renderer and DECA's UV data as one module (move with `.to(device, dtype)`)."""

    def __init__(self, assets: FaceAssets, image_size: int = 224, n_shape: int = N_SHAPE, n_exp: int = N_EXP) -> None:
        super().__init__()
        self.assets = assets
        self.flame = FlameLayer(assets.flame, assets.embedding, n_shape=n_shape, n_expression=n_exp)
        t = assets.template
        if not np.array_equal(t.faces, assets.flame.faces):
            raise ValueError("the template OBJ's faces differ from the FLAME model's faces; "
                             "they must come from the same topology")
        self.image_size = image_size
        self.renderer = MeshRenderer(self.flame.faces, torch.as_tensor(t.uv_coords, dtype=torch.float32),
                                     torch.as_tensor(t.uv_faces), image_size=image_size)
        f32 = torch.float32
        self.register_buffer("uv_face_eye_mask", torch.as_tensor(_resize(assets.uv_face_eye_mask, UV_SIZE), dtype=f32)[None, None])
        self.register_buffer("uv_face_mask", torch.as_tensor(_resize(assets.uv_face_mask, UV_SIZE), dtype=f32)[None, None])
        self.register_buffer("fixed_displacement", torch.as_tensor(assets.fixed_displacement, dtype=f32)[None, None])
        self.register_buffer("mean_texture", torch.as_tensor(assets.mean_texture, dtype=f32).permute(2, 0, 1)[None])
        self.has_texture_space = assets.texture_basis is not None
        if self.has_texture_space:
            self.register_buffer("texture_mean", torch.as_tensor(assets.texture_mean, dtype=f32).permute(2, 0, 1)[None])
            self.register_buffer("texture_basis", torch.as_tensor(assets.texture_basis[..., :N_TEX], dtype=f32).permute(3, 2, 0, 1))
        # DECA's dense grid (margins 2, 5): border texels in no triangle, as in its displacement2normal
        self.register_buffer("dense_faces", uv_grid_faces(UV_SIZE), persistent=False)

    @property
    def is_test_model(self) -> bool:
        return self.assets.flame.is_test_model

    # ------------------------------------------------------------------ geometry

    def geometry(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor, cam: torch.Tensor) -> Geometry:
        out = self.flame(shape, exp, pose)
        verts_screen = orthographic_project(out.vertices, cam)
        lmk = orthographic_project(out.landmarks2d, cam)[..., :2]
        return Geometry(out.vertices, out.joints, lmk, out.landmarks3d, out.landmarks2d, verts_screen)

    # ------------------------------------------------------------------ appearance

    def albedo(self, tex: torch.Tensor | None, batch_size: int | None = None) -> torch.Tensor:
        """(B, 3, S, S) albedo: FLAME's texture space when installed, else the mean texture."""
        B = tex.shape[0] if tex is not None else (batch_size or 1)
        if self.has_texture_space:
            if tex is None:
                return self.texture_mean.expand(B, -1, -1, -1)
            basis = self.texture_basis[: tex.shape[1]]
            return (self.texture_mean + torch.einsum("bk,kchw->bchw", tex.to(basis.dtype), basis)).clamp(0, 1)
        return self.mean_texture.expand(B, -1, -1, -1)

    def detail_normals(self, vertices: torch.Tensor, uv_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detail normals from a displacement map, exactly DECA's ``displacement2normal``
        (`core.render.detail_normals`: its grid margins and ``F.normalize`` eps, also for the coarse normals).

        Args:
            vertices: (B, V, 3) coarse mesh; uv_z: (B, 1, 256, 256) decoder displacement.
        Returns:
            uv_detail_normals (B, 3, 256, 256) and uv_detail_vertices (B, 3, 256, 256).
        """
        uv_vertices = self.renderer.world_to_uv(vertices, UV_SIZE)
        uv_normals = self.renderer.world_to_uv(deca_vertex_normals(vertices, self.flame.faces), UV_SIZE)
        return displacement_normals(uv_vertices, uv_normals, uv_z, self.uv_face_eye_mask, self.fixed_displacement,
                                    self.dense_faces)

    def displacement(self, uv_z: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) total displacement along the normal: masked decoder output + fixed map."""
        return uv_z * self.uv_face_eye_mask + self.fixed_displacement

    def render(self, vertices: torch.Tensor, cam: torch.Tensor, albedo: torch.Tensor | None = None,
               light: torch.Tensor | None = None, normal_map: torch.Tensor | None = None,
               background: torch.Tensor | None = None, image_size: int | None = None) -> RenderResult:
        return self.renderer(vertices, cam, albedo=albedo, light=light, normal_map=normal_map,
                             background=background, image_size=image_size)


def _resize(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
