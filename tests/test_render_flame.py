"""core.render on FLAME's real template (``../shared/assets/deca/head_template.obj``); skipped if absent.

Speed-agnostic properties only: coverage, winding, visibility, UV layout.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.obj import read_obj as core_read_obj
from core.render import (
    MeshRenderer,
    orthographic_project,
    rasterize,
    render_uv_space,
    vertex_normals,
    vertex_visibility,
)


def read_obj(path: Path):
    """(vertices, faces, uv_coords, uv_faces) of an OBJ as tensors (core.obj reads it)."""
    m = core_read_obj(path)
    return (torch.tensor(m.vertices, dtype=torch.float64), torch.tensor(m.faces, dtype=torch.long),
            torch.tensor(m.uv_coords, dtype=torch.float64), torch.tensor(m.uv_faces, dtype=torch.long))


@pytest.fixture(scope="module")
def template(deca_data_dir):
    path = deca_data_dir / "head_template.obj"
    if not path.is_file():
        pytest.skip(f"FLAME template not found at {path}")
    verts, faces, uvs, uv_faces = read_obj(path)
    assert verts.shape == (5023, 3) and faces.shape == (9976, 3)
    assert uvs.shape == (5118, 2) and uv_faces.shape == (9976, 3)
    return verts, faces, uvs, uv_faces


def framing_cam(verts: torch.Tensor, fill: float = 0.9) -> torch.Tensor:
    """(1, 3) orthographic camera that centres the mesh and fills `fill` of the image."""
    lo, hi = verts.amin(0), verts.amax(0)
    centre = (lo + hi) / 2
    extent = float((hi - lo)[:2].max())
    return torch.tensor([[2 * fill / extent, -float(centre[0]), -float(centre[1])]], dtype=verts.dtype)


def test_front_view_covers_the_head_and_visibility_is_sane(template):
    verts, faces, uvs, uv_faces = template
    cam = framing_cam(verts)
    renderer = MeshRenderer(faces, uvs, uv_faces, image_size=224)
    res = renderer(verts[None], cam)
    ids = res.fragments.face_ids
    assert ids.min() >= -1 and ids.max() < faces.shape[0]
    # The mask's extent is the projected vertices' extent (to within the pixel-centre sampling).
    pix = (res.verts_screen[0, :, :2] + 1) * 112
    rows, cols = torch.nonzero(res.mask[0, 0], as_tuple=True)
    assert abs(int(cols.min()) - float(pix[:, 0].min())) <= 1.0
    assert abs(int(cols.max()) + 1 - float(pix[:, 0].max())) <= 1.0
    assert abs(int(rows.min()) - float(pix[:, 1].min())) <= 1.0
    assert abs(int(rows.max()) + 1 - float(pix[:, 1].max())) <= 1.0
    assert 0.25 < float(res.alpha.mean()) < 0.6
    # Nose tip (largest Z) is visible, the back of the head (smallest Z) is not.
    vis = res.visibility[0]
    assert vis[verts[:, 2].argmax()]
    assert not vis[verts[:, 2].argmin()]
    back = verts[:, 2] < float(verts[:, 2].min()) + 0.05
    assert not vis[back].any()
    # Most visible normals face the camera (+z).
    m = res.mask[0, 0]
    assert float((res.normal_image[0, 2][m] > 0).float().mean()) > 0.95


def test_flame_winding_is_counter_clockwise_outward(template):
    verts, faces, _, _ = template
    cam = framing_cam(verts)
    plain = MeshRenderer(faces, image_size=128)(verts[None], cam)
    culled = MeshRenderer(faces, image_size=128, cull_backfaces=True)(verts[None], cam)
    m = plain.mask[0, 0]
    assert torch.equal(culled.mask, plain.mask)
    same = (culled.fragments.face_ids == plain.fragments.face_ids)[0][m].float().mean()
    assert same > 0.999
    # Vertex normals of the face region point forward.
    vn = vertex_normals(verts[None], faces)[0]
    assert vn[verts[:, 2].argmax(), 2] > 0.9


def test_uv_rasterization_of_the_flame_layout(template):
    verts, faces, uvs, uv_faces = template
    uvr = render_uv_space(uvs, uv_faces, 256)
    ids = uvr.face_ids
    assert ids.shape == (256, 256)
    assert ids.min() >= -1 and ids.max() < faces.shape[0]
    covered = uvr.mask
    # The layout's UV area (shoelace) is what the texel count estimates.
    tri = uvs[uv_faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert (area > 0).all()  # CCW in UV (v up): no flipped faces
    assert float(covered.float().mean()) == pytest.approx(float(area.sum()), abs=0.01)
    # Every covered texel maps to a point of its face: UV positions interpolate the template.
    pos = uvr.vertex_attributes_to_uv(verts[None], faces)[0]
    f = ids[covered]
    corners = verts[faces[f]]  # (N, 3, 3)
    p = pos.permute(1, 2, 0)[covered]
    assert ((p >= corners.amin(1) - 1e-9) & (p <= corners.amax(1) + 1e-9)).all()
    assert (pos[:, ~covered] == 0).all()
    # Normals mapped into UV space are unit vectors up to interpolation shrinkage.
    normals = uvr.vertex_attributes_to_uv(vertex_normals(verts[None], faces), faces)[0]
    length = normals.norm(dim=0)[covered]
    assert float(length.min()) > 0.5 and float(length.max()) <= 1 + 1e-9
    assert float(length.median()) > 0.99


def test_batch_of_posed_heads_equals_single_renders(template):
    verts, faces, uvs, uv_faces = template
    cam = framing_cam(verts).expand(2, -1).clone()
    angle = torch.tensor(0.5, dtype=torch.float64)
    rot = torch.tensor(
        [[torch.cos(angle), 0, torch.sin(angle)], [0, 1, 0], [-torch.sin(angle), 0, torch.cos(angle)]],
        dtype=torch.float64,
    )
    centre = verts.mean(0)
    turned = (verts - centre) @ rot.T + centre
    batch = torch.stack([verts, turned]).float()
    renderer = MeshRenderer(faces, uvs, uv_faces, image_size=96)
    both = renderer(batch, cam.float())
    for k in range(2):
        one = renderer(batch[k : k + 1], cam[k : k + 1].float())
        assert torch.equal(both.fragments.face_ids[k], one.fragments.face_ids[0])
        assert torch.allclose(both.normal_image[k], one.normal_image[0])
        assert torch.equal(both.visibility[k], one.visibility[0])


def test_visibility_agrees_with_a_high_resolution_reference(template):
    verts, faces, uvs, uv_faces = template
    cam = framing_cam(verts)
    angle = 0.6
    c, s = torch.cos(torch.tensor(angle)).item(), torch.sin(torch.tensor(angle)).item()
    rot = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    centre = verts.mean(0)
    turned = ((verts - centre) @ rot.T + centre)[None]
    res = MeshRenderer(faces, uvs, uv_faces, image_size=224)(turned, cam)
    # Reference: the same depth test at 1024 px with a quarter-pixel tolerance (~0.06 px at 224).
    vs = orthographic_project(turned, cam)
    ref = vertex_visibility(vs, faces, rasterize(vs, faces, 1024), 0.25 * 2 / (float(cam[0, 0]) * 1024))[0]
    vis = res.visibility[0]
    # Disagreements are vertices within about a pixel of a silhouette or occluding edge.
    assert float((vis != ref).sum()) / float(ref.sum()) < 0.08
    assert vis[verts[:, 2].argmax()] and not vis[verts[:, 2].argmin()]
