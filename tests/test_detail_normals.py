"""Detail normals against DECA's ``displacement2normal`` written here from its released code.

Reference (yfeng95/DECA ``decalib/deca.py`` ``displacement2normal``, ``decalib/utils/util.py``
``generate_triangles`` and ``vertex_normals``, ``decalib/utils/renderer.py`` ``dense_faces``):

- ``generate_triangles(h, w, margin_x=2, margin_y=5)``: for x in [2, w-3), y in [5, h-6): triangles
  ``[y*w+x, y*w+x+1, (y+1)*w+x]`` and ``[y*w+x+1, (y+1)*w+x+1, (y+1)*w+x]``, then columns reordered [0, 2, 1];
- ``vertex_normals``: per corner the cross product of its two edges, index-added, ``F.normalize(eps=1e-6)``;
- ``displacement2normal``: ``uv_detail_vertices = uv_coarse_vertices + (uv_z * mask) * uv_coarse_normals +
  fixed * uv_coarse_normals``, dense normals of it, blended ``* mask + uv_coarse_normals * (1 - mask)``;
  the coarse normals are ``vertex_normals`` of the posed FLAME mesh, both taken to UV by ``world2uv``.

``world2uv`` (the UV rasterization) is the project's own and is given to both sides.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.model.face_model import FaceAssets, FaceModel
from core.render.detail_normals import uv_grid_faces


def deca_generate_triangles(h, w, margin_x=2, margin_y=5):
    tris = []
    for x in range(margin_x, w - 1 - margin_x):
        for y in range(margin_y, h - 1 - margin_y):
            tris.append([y * w + x, y * w + x + 1, (y + 1) * w + x])
            tris.append([y * w + x + 1, (y + 1) * w + x + 1, (y + 1) * w + x])
    return np.array(tris)[:, [0, 2, 1]]


def deca_vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    bs, nv = vertices.shape[:2]
    normals = torch.zeros(bs * nv, 3, dtype=vertices.dtype)
    f = faces[None].expand(bs, -1, -1) + (torch.arange(bs) * nv)[:, None, None]
    vf = vertices.reshape(bs * nv, 3)[f].reshape(-1, 3, 3)
    f = f.reshape(-1, 3)
    normals.index_add_(0, f[:, 1], torch.cross(vf[:, 2] - vf[:, 1], vf[:, 0] - vf[:, 1], dim=-1))
    normals.index_add_(0, f[:, 2], torch.cross(vf[:, 0] - vf[:, 2], vf[:, 1] - vf[:, 2], dim=-1))
    normals.index_add_(0, f[:, 0], torch.cross(vf[:, 1] - vf[:, 0], vf[:, 2] - vf[:, 0], dim=-1))
    return F.normalize(normals, eps=1e-6, dim=1).reshape(bs, nv, 3)


def deca_displacement2normal(fm: FaceModel, uv_z, verts):
    B = uv_z.shape[0]
    mask, fixed = fm.uv_face_eye_mask, fm.fixed_displacement
    uv_v = fm.renderer.world_to_uv(verts, 256)
    uv_n = fm.renderer.world_to_uv(deca_vertex_normals(verts, fm.flame.faces), 256)
    uv_detail = uv_v + (uv_z * mask) * uv_n + fixed * uv_n
    dense = uv_detail.permute(0, 2, 3, 1).reshape(B, -1, 3)
    faces = torch.as_tensor(deca_generate_triangles(256, 256))
    n = deca_vertex_normals(dense, faces).reshape(B, 256, 256, 3).permute(0, 3, 1, 2)
    return n * mask + uv_n * (1 - mask), faces


@pytest.fixture(scope="module")
def face_model(test_flame_pkl, deca_data_dir) -> FaceModel:
    return FaceModel(FaceAssets.from_paths(test_flame_pkl, deca_data_dir)).eval()


def test_uv_grid_faces_are_decas_triangles():
    for h, w, m in [(256, 256, (2, 5)), (12, 9, (2, 5)), (7, 6, (0, 0)), (10, 10, (1, 3))]:
        # the same triangles, corner order and row order as DECA's (so float32 sums round alike)
        np.testing.assert_array_equal(uv_grid_faces(h, w, margins=m).numpy(), deca_generate_triangles(h, w, *m))
    with pytest.raises(ValueError, match="no quads"):
        uv_grid_faces(10, 4, margins=(2, 0))


def test_detail_normals_equal_decas_displacement2normal(face_model):
    g = torch.Generator().manual_seed(0)
    B = 2
    shape = torch.randn(B, 100, generator=g) * 0.8
    exp = torch.randn(B, 50, generator=g) * 0.8
    pose = torch.zeros(B, 6)
    pose[:, 1] = torch.tensor([0.3, -0.5])
    pose[:, 3] = 0.15
    cam = torch.tensor([[8.0, 0.0, 0.0]] * B)
    # a decoder-like displacement: smooth bumps of a few tenths of a millimetre plus texel noise
    uv_z = (F.interpolate(torch.randn(B, 1, 32, 32, generator=g), size=(256, 256), mode="bilinear") * 5e-4
            + torch.randn(B, 1, 256, 256, generator=g) * 1e-4)
    with torch.no_grad():
        geom = face_model.geometry(shape, exp, pose, cam)
        ours, _ = face_model.detail_normals(geom.vertices, uv_z)
        ref, faces = deca_displacement2normal(face_model, uv_z, geom.vertices)
    covered = torch.zeros(256 * 256, dtype=torch.bool)
    covered[faces.reshape(-1)] = True
    covered = covered.reshape(256, 256)
    diff = (ours - ref).abs().amax(1)  # (B, 256, 256)
    assert covered.sum() > 0.9 * 256 * 256 and not covered[:, :2].any() and not covered[:5].any()
    assert diff[:, covered].max() < 1e-4, diff[:, covered].max()
    assert diff.max() < 1e-4  # also the uncovered border (coarse normals there, as in DECA)
    # the eps matters on this mesh: some detail normals are visibly shorter than unit in DECA's formula
    m = face_model.uv_face_eye_mask[0, 0] > 0.99
    lengths = ref.norm(dim=1)[:, m]
    print(f"\n[detail normals] max |ours - DECA| {diff.max():.2e} on {int(covered.sum())} covered texels; "
          f"DECA's lengths in the face mask {lengths.min():.3f}..{lengths.max():.3f}")
    # the previous full-grid unit-normal formula is measurably different from DECA's (so the test can fail)
    from core.render.detail_normals import displacement_normals
    uv_v = face_model.renderer.world_to_uv(geom.vertices, 256)
    uv_n = face_model.renderer.world_to_uv(deca_vertex_normals(geom.vertices, face_model.flame.faces), 256)
    full, _ = displacement_normals(uv_v, uv_n, uv_z, face_model.uv_face_eye_mask, face_model.fixed_displacement,
                                   uv_grid_faces(256, margins=(0, 0)), eps=1e-30)
    assert (full - ref).abs().max() > 100 * max(float(diff.max()), 1e-6)
