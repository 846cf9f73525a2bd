"""Analytic tests of core.render: rasterizer, interpolation, SH shading, renderer, UV space.

All geometry is built here (planes, an icosphere) so that the expected values are known in closed form.
Screen conventions (CONVENTIONS.md): image NDC x right, y down; pixel (i, j) samples
x = (j + 0.5) * 2 / W - 1, y = (i + 0.5) * 2 / H - 1; depth z smaller is nearer.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.render import (
    SH_CONSTANTS,
    MeshRenderer,
    cached_uv_rasterization,
    face_normals,
    interpolate_attributes,
    interpolate_face_attributes,
    orthographic_project,
    pixel_barycentrics,
    rasterize,
    render_uv_space,
    sh_shading,
    vertex_normals,
)

# ----------------------------------------------------------------------------------------------------
# geometry helpers


def icosphere(subdivisions: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere with counter-clockwise (outward) faces: (V, 3), (F, 3)."""
    t = (1.0 + 5.0**0.5) / 2.0
    verts = [
        (-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0),
        (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
        (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1),
    ]
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]
    verts = [np.array(v, dtype=np.float64) / np.linalg.norm(v) for v in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return torch.tensor(np.array(verts), dtype=dtype), torch.tensor(faces, dtype=torch.long)


def quad(x0, x1, y0, y1, z=0.0, dtype=torch.float64):
    """Screen-space rectangle as two triangles: verts (4, 3), faces (2, 3)."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=dtype)
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


def grid_mesh(n: int, dtype=torch.float64):
    """Flat n x n vertex grid over [-0.5, 0.5]^2 at Z = 0 (FLAME-like world: +y up, facing +z).

    Returns world verts (V, 3), CCW faces (F, 3) and uv = (X + 0.5, Y + 0.5) (V, 2).
    """
    s = torch.linspace(-0.5, 0.5, n, dtype=dtype)
    yy, xx = torch.meshgrid(s, s, indexing="ij")
    verts = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j + 1, (i + 1) * n + j
            faces += [(a, b, c), (a, c, d)]
    return verts, torch.tensor(faces), verts[:, :2] + 0.5


def pixel_centres(h: int, w: int, dtype=torch.float64):
    """(H, W) NDC x and y of the pixel centres."""
    x = (torch.arange(w, dtype=dtype) + 0.5) * 2 / w - 1
    y = (torch.arange(h, dtype=dtype) + 0.5) * 2 / h - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return xx, yy


# ----------------------------------------------------------------------------------------------------
# rasterizer


@pytest.mark.parametrize("flip_winding", [False, True])
def test_plane_coverage_matches_analytic_count(flip_winding):
    h, w = 37, 53  # non-square, odd sizes: x and y scales differ
    x0, x1, y0, y1 = -0.61, 0.437, -0.293, 0.814
    v, f = quad(x0, x1, y0, y1)
    if flip_winding:
        f = f.flip(1)
    frag = rasterize(v[None], f, (h, w))
    xx, yy = pixel_centres(h, w)
    # No pixel centre lies on the boundary, so the expected set is unambiguous.
    assert min((xx - x0).abs().min(), (xx - x1).abs().min(), (yy - y0).abs().min(), (yy - y1).abs().min()) > 1e-3
    expected = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    n_cols = int(((xx[0] >= x0) & (xx[0] <= x1)).sum())
    n_rows = int(((yy[:, 0] >= y0) & (yy[:, 0] <= y1)).sum())
    assert int(frag.mask.sum()) == n_cols * n_rows == int(expected.sum())
    assert torch.equal(frag.mask[0], expected)
    # The shared diagonal leaves no crack and no pixel is assigned twice (ids are 0 or 1).
    assert set(frag.face_ids[frag.mask].tolist()) == {0, 1}

    bary = frag.bary[0][expected]
    assert torch.allclose(bary.sum(-1), torch.ones_like(bary[:, 0]))
    assert (bary >= 0).all()
    # Interpolating the vertex positions reproduces the pixel centres.
    pos = interpolate_attributes(frag, v[None], f)[0]
    assert torch.allclose(pos[0][expected], xx[expected], atol=1e-12)
    assert torch.allclose(pos[1][expected], yy[expected], atol=1e-12)
    assert (pos[:, ~expected] == 0).all()  # background is exactly 0
    assert torch.isinf(frag.depth[0][~expected]).all()


def test_tilted_plane_depth_is_exact():
    h = w = 32
    v, f = quad(-0.9, 0.8, -0.7, 0.95)
    v[:, 2] = 2.0 + 0.3 * v[:, 0] - 0.5 * v[:, 1]  # z = 2 + 0.3x - 0.5y is affine, so exact
    frag = rasterize(v[None], f, h)
    xx, yy = pixel_centres(h, w)
    m = frag.mask[0]
    assert torch.allclose(frag.depth[0][m], (2.0 + 0.3 * xx - 0.5 * yy)[m], atol=1e-12)


def test_offscreen_degenerate_and_nonfinite_faces():
    h = w = 16
    verts = torch.tensor(
        [
            [-50.0, -50.0, 1.0], [50.0, -50.0, 1.0], [0.0, 80.0, 1.0],  # covers the whole image
            [-0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0],  # collinear: degenerate
            [1e30, 0.0, 0.0], [-1e30, 1.0, 0.0], [0.0, -1e30, 0.0],  # huge but finite
            [float("nan"), 0.0, -5.0], [0.5, 0.5, -5.0], [-0.5, 0.5, -5.0],  # nan vertex
            [1.5, 1.5, -5.0], [3.0, 1.5, -5.0], [1.5, 3.0, -5.0],  # entirely off-screen
        ],
        dtype=torch.float32,
    )
    faces = torch.arange(15).view(5, 3)
    frag = rasterize(verts[None], faces, (h, w))
    assert frag.mask.all()
    ids = set(frag.face_ids.unique().tolist())
    assert 1 not in ids and 3 not in ids and 4 not in ids  # degenerate, nan, off-screen never win
    # The huge face is nearer (z=0) where it covers; whatever wins must be face 0 or 2.
    assert ids <= {0, 2}


def test_nearest_face_wins_regardless_of_order():
    h = w = 24
    va, fa = quad(-0.8, 0.3, -0.8, 0.3, z=1.0)
    vb, fb = quad(-0.3, 0.8, -0.3, 0.8, z=0.5)  # nearer (smaller z)
    verts = torch.cat([va, vb])
    faces = torch.cat([fa, fb + 4])
    xx, yy = pixel_centres(h, w)
    in_a = (xx >= -0.8) & (xx <= 0.3) & (yy >= -0.8) & (yy <= 0.3)
    in_b = (xx >= -0.3) & (xx <= 0.8) & (yy >= -0.3) & (yy <= 0.8)
    for order in (faces, faces.flip(0), faces[torch.tensor([2, 0, 3, 1])]):
        frag = rasterize(verts[None], order, (h, w))
        winner = order[frag.face_ids[0].clamp_min(0)][..., 0]  # first vertex tells the quad: 0 -> A, 4 -> B
        assert torch.equal(frag.mask[0], in_a | in_b)
        assert (winner[in_b] == 4).all()
        assert (winner[in_a & ~in_b] == 0).all()
        assert torch.allclose(frag.depth[0][in_b], torch.tensor(0.5, dtype=torch.float64))


def test_exact_depth_tie_goes_to_smaller_face_id():
    v, f = quad(-0.5, 0.5, -0.5, 0.5, z=0.25)
    faces = torch.cat([f, f.flip(1), f])  # the same surface three times, either winding
    frag = rasterize(v[None], faces, 16)
    assert set(frag.face_ids[frag.mask].tolist()) == {0, 1}


def test_negative_depths_order_correctly():
    va, fa = quad(-0.5, 0.5, -0.5, 0.5, z=-1.0)
    vb, fb = quad(-0.5, 0.5, -0.5, 0.5, z=-3.0)  # more negative = nearer
    frag = rasterize(torch.cat([va, vb])[None], torch.cat([fa, fb + 4]), 8)
    assert (frag.face_ids[frag.mask] >= 2).all()


def test_chunking_and_strips_do_not_change_the_result():
    verts, faces = icosphere(2)
    vs = verts.clone()
    vs[:, 2] = -vs[:, 2]
    big_v, big_f = quad(-1.2, 1.1, -0.9, 1.3, z=0.3)  # one large face crossing the image border
    allv = torch.cat([vs * 0.8, big_v])[None]
    allf = torch.cat([faces, big_f + verts.shape[0]])
    ref = rasterize(allv, allf, 64)
    small = rasterize(allv, allf, 64, max_candidates=257, max_face_pixels=50)
    assert torch.equal(ref.face_ids, small.face_ids)
    assert torch.equal(ref.bary, small.bary)


def test_batch_equals_single_images_and_float32_matches_float64():
    verts, faces = icosphere(2)
    batch = []
    for k, (s, dx) in enumerate([(0.7, 0.0), (0.5, 0.3), (0.9, -0.2)]):
        v = verts * s
        v[:, 0] += dx
        v[:, 1] -= dx / 2
        batch.append(v)
    vb = torch.stack(batch)
    frag_b = rasterize(vb, faces, (40, 48))
    for k in range(3):
        frag_k = rasterize(vb[k : k + 1], faces, (40, 48))
        assert torch.equal(frag_b.face_ids[k], frag_k.face_ids[0])
        assert torch.equal(frag_b.bary[k], frag_k.bary[0])
        assert torch.equal(frag_b.depth[k], frag_k.depth[0])
    frag32 = rasterize(vb.float(), faces, (40, 48))
    assert frag32.bary.dtype == torch.float32 and frag_b.bary.dtype == torch.float64
    same = (frag32.face_ids == frag_b.face_ids).float().mean()
    assert same > 0.995  # only pixel centres within rounding of an edge may differ
    m = frag_b.mask
    assert torch.allclose(frag32.depth[m].double(), frag_b.depth[m], atol=1e-2)


# ----------------------------------------------------------------------------------------------------
# sphere under the orthographic camera


@pytest.fixture(scope="module")
def sphere_render():
    verts, faces = icosphere(3)  # 642 vertices, 1280 faces
    r, size = 0.8, 128
    renderer = MeshRenderer(faces, image_size=size)
    cam = torch.tensor([[r, 0.0, 0.0]], dtype=torch.float64)  # s = r: the unit sphere has radius r in NDC
    res = renderer(verts[None], cam)
    return verts, faces, r, size, res


def test_sphere_coverage_is_pi_r_squared(sphere_render):
    verts, faces, r, size, res = sphere_render
    covered = float(res.alpha.sum())
    radius_px = r * size / 2  # 51.2 px
    analytic = math.pi * radius_px**2
    # Two bounded error sources. (1) The silhouette is a polygon inscribed in the circle, with edges of at
    # most `max_edge` (9.4 deg for 3 subdivisions): its radius is at least cos(max_edge / 2) r, so the
    # area deficit is below 1 - cos^2(max_edge / 2) ~ 0.7%. (2) Counting pixel centres inside a disc of
    # radius R differs from pi R^2 by O(R^(2/3)) (Gauss circle problem), ~ 15 px = 0.2% here: 0.4% margin.
    max_edge = float(torch.acos((verts[faces[:, 0]] * verts[faces[:, 1]]).sum(-1).min()))
    lower = analytic * math.cos(max_edge / 2) ** 2 * (1 - 0.004)
    upper = analytic * (1 + 0.004)
    assert lower < covered < upper
    # The icosphere is symmetric under x -> -x and y -> -y, so with centre sampling the covered pixels'
    # centroid is the image centre; sampling pixel corners instead would move it by half a pixel.
    xx, yy = pixel_centres(size, size)
    m = res.mask[0, 0]
    centroid_px = torch.stack([xx[m].mean(), yy[m].mean()]) * size / 2
    assert centroid_px.abs().max() < 0.02


def test_sphere_depth_and_normals_match_analytic(sphere_render):
    _, _, r, size, res = sphere_render
    xx, yy = pixel_centres(size, size)
    rho2 = xx**2 + yy**2
    interior = rho2 < (0.9 * r) ** 2
    assert res.alpha[0, 0][interior].all()
    # Front surface: Z = +sqrt(r^2 - x^2 - y^2) (in units of r: world = ndc / r); depth = -Z.
    z_world = torch.sqrt((1 - rho2 / r**2).clamp_min(0))
    depth = res.depth[0, 0]
    # Flat facets lie inside the unit sphere by at most their sagitta 1 - cos(a), a = the angular
    # circumradius of the face (~5 deg here, sagitta ~ 4.6e-3). Measured along z the gap grows by at most
    # 1 / n_z, and n_z >= sqrt(1 - 0.9^2) = 0.436 within rho < 0.9 r; 10% margin for facet tilt.
    verts, faces = sphere_render[0], sphere_render[1]
    centroid = torch.nn.functional.normalize(verts[faces].mean(1), dim=-1)
    max_angle = torch.acos((verts[faces] * centroid[:, None]).sum(-1).clamp(max=1).min())
    tol = 1.1 * (1 - math.cos(float(max_angle))) / math.sqrt(1 - 0.81)
    assert tol < 0.015
    err = (depth[interior] + z_world[interior]).abs()
    assert err.max() < tol
    assert (depth[interior] >= -z_world[interior] - 1e-12).all()  # facets are inside: never nearer
    n_expected = torch.stack([xx / r, -yy / r, z_world])  # world normal (+y up)
    cos = (res.normal_image[0] * n_expected).sum(0)[interior]
    assert cos.min() > 0.9995  # interpolated vertex normals are within ~1.8 deg of the true normals
    assert (res.normal_image[:, :, ~res.mask[0, 0]] == 0).all()


def test_sphere_visibility_and_backface_culling(sphere_render):
    verts, faces, r, size, res = sphere_render
    z = verts[:, 2]
    vis = res.visibility[0]
    # A vertex within one pixel (1/51.2 of the radius) of the silhouette is ambiguous at this resolution:
    # that band is |Z| < sqrt(2 / 51.2) ~ 0.2. Outside it, visibility must be exact.
    assert vis[z > 0.2].all()
    assert not vis[z < -0.2].any()
    # Culling back faces keeps exactly the front hemisphere: same face ids as the z-buffered render.
    renderer = MeshRenderer(faces, image_size=size, cull_backfaces=True)
    cam = torch.tensor([[r, 0.0, 0.0]], dtype=torch.float64)
    culled = renderer(verts[None], cam)
    assert torch.equal(culled.fragments.face_ids, res.fragments.face_ids)
    # With the winding flipped, the back hemisphere faces the viewer: culling now shows the far side.
    inside_out = MeshRenderer(faces.flip(1), image_size=size, cull_backfaces=True)(verts[None], cam)
    m = inside_out.mask[0, 0] & res.mask[0, 0]
    interior = (res.depth[0, 0] < -0.2) & m
    assert torch.allclose(inside_out.depth[0, 0][interior], -res.depth[0, 0][interior], atol=1e-2)


# ----------------------------------------------------------------------------------------------------
# shading


def numpy_sh(normals: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Independent SH evaluation from REFERENCE.md: normals (N, 3), light (9, 3) -> (N, 3)."""
    pi = np.pi
    c = np.array(
        [
            1 / np.sqrt(4 * pi),
            2 * pi / 3 * np.sqrt(3 / (4 * pi)),
            2 * pi / 3 * np.sqrt(3 / (4 * pi)),
            2 * pi / 3 * np.sqrt(3 / (4 * pi)),
            pi / 4 * 3 * np.sqrt(5 / (12 * pi)),
            pi / 4 * 3 * np.sqrt(5 / (12 * pi)),
            pi / 4 * 3 * np.sqrt(5 / (12 * pi)),
            pi / 4 * 1.5 * np.sqrt(5 / (12 * pi)),
            pi / 4 * 0.5 * np.sqrt(5 / (4 * pi)),
        ]
    )
    out = np.zeros((normals.shape[0], 3))
    for i, (x, y, z) in enumerate(normals):
        basis = [1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]
        for k in range(9):
            out[i] += light[k] * c[k] * basis[k]
    return out


def test_sh_constants_are_the_reference_ones():
    assert SH_CONSTANTS[0] == pytest.approx(0.28209479177)  # 1 / sqrt(4 pi)
    assert SH_CONSTANTS[1] == pytest.approx(1.02332670795)  # (2 pi / 3) sqrt(3 / (4 pi))
    assert SH_CONSTANTS[4] == pytest.approx(0.85808553080)
    assert SH_CONSTANTS[7] == pytest.approx(0.42904276540)
    assert SH_CONSTANTS[8] == pytest.approx(0.24770795610)


def test_constant_light_gives_constant_shading():
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64), dim=1)
    light = torch.zeros(2, 9, 3, dtype=torch.float64)
    light[:, 0] = torch.tensor([[0.4, 0.9, 1.7], [2.0, 0.1, 0.5]], dtype=torch.float64)
    shading = sh_shading(n, light)
    expected = light[:, 0] * SH_CONSTANTS[0]
    assert shading.shape == (2, 3, 5, 7)
    assert torch.allclose(shading, expected[:, :, None, None].expand_as(shading))


@pytest.mark.parametrize("bands", [[1, 2, 3], list(range(9))])
def test_sh_shading_matches_numpy(bands):
    g = torch.Generator().manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(1, 40, 3, generator=g, dtype=torch.float64), dim=-1)
    light = torch.zeros(1, 9, 3, dtype=torch.float64)
    light[:, bands] = torch.randn(1, len(bands), 3, generator=g, dtype=torch.float64)
    got = sh_shading(n, light)[0].numpy()
    assert np.allclose(got, numpy_sh(n[0].numpy(), light[0].numpy()), atol=1e-12)
    # Image layout gives the same numbers.
    img = sh_shading(n.permute(0, 2, 1).reshape(1, 3, 5, 8), light)
    assert np.allclose(img.reshape(1, 3, 40).permute(0, 2, 1)[0].numpy(), got)


def test_vertex_normals_are_area_weighted():
    # Vertex 0 is shared by a unit face in the z = 0 plane (area 1/2) and a face in the x = 0 plane
    # with area 2: the normal is (2 * e_x + 0.5 * e_z) normalised.
    verts = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 2], [0, 2, 0]], dtype=torch.float64
    )[None]
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])
    fn = face_normals(verts, faces)
    assert torch.allclose(fn[0], torch.tensor([[0.0, 0, 1], [1, 0, 0]], dtype=torch.float64))
    vn = vertex_normals(verts, faces)[0, 0]
    expected = torch.tensor([2.0, 0, 0.5], dtype=torch.float64)
    assert torch.allclose(vn, expected / expected.norm())


def test_icosphere_vertex_normals_are_radial():
    verts, faces = icosphere(2)
    vn = vertex_normals(verts[None], faces)[0]
    # Outward for the CCW winding; area weighting on the slightly irregular icosphere tilts them < 2.5 deg.
    assert ((vn * verts).sum(-1) > 0.999).all()
    assert torch.allclose(vn.norm(dim=-1), torch.ones(()).double())


# ----------------------------------------------------------------------------------------------------
# renderer: camera, UV texture sampling, normal maps


def ramp_texture(size: int, dtype=torch.float64) -> torch.Tensor:
    """(1, 3, S, S): channel 0 = u, channel 1 = v (row 0 is v = 1), channel 2 = 0.5, at texel centres."""
    c = (torch.arange(size, dtype=dtype) + 0.5) / size
    u = c[None, :].expand(size, size)
    v = (1 - c)[:, None].expand(size, size)
    return torch.stack([u, v, torch.full_like(u, 0.5)])[None]


def test_renderer_uv_image_and_texture_follow_the_conventions():
    verts, faces, uv = grid_mesh(5)
    size, s, tx, ty = 48, 1.6, 0.05, -0.1
    renderer = MeshRenderer(faces, uv, faces, image_size=size)
    cam = torch.tensor([[s, tx, ty]], dtype=torch.float64)
    res = renderer(verts[None], cam, albedo=ramp_texture(64))
    xx, yy = pixel_centres(size, size)
    # Invert the camera: x = s (X + tx), y = -s (Y + ty)  =>  u = X + 0.5, v = Y + 0.5.
    u = xx / s - tx + 0.5
    v = -yy / s - ty + 0.5
    m = res.mask[0, 0]
    expected_mask = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    assert torch.equal(m, expected_mask)
    assert torch.allclose(res.uv_image[0, 0][m], u[m], atol=1e-12)
    assert torch.allclose(res.uv_image[0, 1][m], v[m], atol=1e-12)
    # Bilinear sampling of a linear ramp is exact away from the outer half texel.
    inner = m & (u > 1 / 64) & (u < 1 - 1 / 64) & (v > 1 / 64) & (v < 1 - 1 / 64)
    assert torch.allclose(res.image[0, 0][inner], u[inner], atol=1e-12)
    assert torch.allclose(res.image[0, 1][inner], v[inner], atol=1e-12)
    assert (res.image[:, :, ~m] == 0).all()
    # uv_grid samples any UV map the way the albedo was sampled.
    resampled = torch.nn.functional.grid_sample(ramp_texture(64), res.uv_grid, align_corners=False)
    assert torch.allclose(resampled * res.alpha, res.albedo_image)
    # Depth is -Z = 0 on the plane; the grid faces +z, so all vertices are visible.
    assert torch.allclose(res.depth[0, 0][m], torch.zeros(()).double())
    assert res.visibility.all()
    # The grid's normals point to the viewer: +z.
    assert torch.allclose(res.normal_image[0, 2][m], torch.ones(()).double())


def test_renderer_light_albedo_background_and_normal_map():
    verts, faces, uv = grid_mesh(4)
    renderer = MeshRenderer(faces, uv, faces, image_size=32)
    cam = torch.tensor([[1.5, 0.0, 0.0]], dtype=torch.float64)
    albedo = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    light = torch.zeros(1, 9, 3, dtype=torch.float64)
    light[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    light[0, 1] = torch.tensor([0.5, -0.5, 0.2])  # x band: no effect on a +z normal
    light[0, 3] = torch.tensor([0.3, 0.1, -0.4])  # z band
    bg = torch.full((1, 3, 32, 32), 0.25, dtype=torch.float64)
    res = renderer(verts[None], cam, albedo=albedo, light=light, background=bg)
    m = res.mask[0, 0]
    shade = light[0, 0] * SH_CONSTANTS[0] + light[0, 3] * SH_CONSTANTS[3]
    assert torch.allclose(res.shading_image[0][:, m], shade[:, None].expand(3, int(m.sum())))
    assert torch.allclose(res.image[0][:, m], (res.albedo_image[0] * shade[:, None, None])[:, m])
    assert torch.allclose(res.image[0][:, ~m], torch.tensor(0.25, dtype=torch.float64))
    # A UV normal map overrides the geometric normals: constant (1, 0, 1)/sqrt(2).
    nmap = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    nmap[:, 0] = 1.0
    nmap[:, 2] = 1.0
    res_n = renderer(verts[None], cam, albedo=albedo, light=light, normal_map=nmap)
    k = 1 / math.sqrt(2)
    shade_n = light[0, 0] * SH_CONSTANTS[0] + k * (light[0, 1] * SH_CONSTANTS[1] + light[0, 3] * SH_CONSTANTS[3])
    assert torch.allclose(res_n.shading_image[0][:, m], shade_n[:, None].expand(3, int(m.sum())))
    assert torch.allclose(res_n.normal_image[0, 0][m], torch.tensor(k, dtype=torch.float64))


def test_orthographic_projection_convention():
    v = torch.tensor([[[0.1, 0.2, 0.3]]], dtype=torch.float64)
    cam = torch.tensor([[2.0, 0.5, -0.1]], dtype=torch.float64)
    p = orthographic_project(v, cam)
    assert torch.allclose(p, torch.tensor([[[1.2, -0.2, -0.3]]], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------
# gradients


def test_gradcheck_interpolation_wrt_positions_and_attributes():
    v, f = quad(-0.7, 0.6, -0.5, 0.8)
    v[2, 0] += 0.1  # not a parallelogram: barycentrics are non-trivial
    v[:, 2] = torch.tensor([0.1, 0.4, -0.2, 0.3], dtype=torch.float64)
    frag = rasterize(v[None], f, 8)
    attrs = torch.randn(1, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def fn(verts, a):
        bary = pixel_barycentrics(frag, verts, f)
        return interpolate_attributes(frag, a, f, bary)

    assert torch.autograd.gradcheck(fn, (v[None].clone().requires_grad_(), attrs.requires_grad_()))


def _sphere_scene(dtype=torch.float64):
    verts, faces = icosphere(1)
    # UVs: a smooth non-linear map of the position so that the albedo varies within faces.
    uv = torch.stack([0.5 + 0.4 * verts[:, 0], 0.5 + 0.3 * verts[:, 1] + 0.1 * verts[:, 2]], -1)
    renderer = MeshRenderer(faces, uv, faces, image_size=20)
    g = torch.Generator().manual_seed(5)
    albedo = torch.rand(1, 3, 12, 12, generator=g, dtype=dtype)
    light = torch.randn(1, 9, 3, generator=g, dtype=dtype) * 0.5
    light[:, 0] += 2.0
    cam = torch.tensor([[0.8, 0.03, -0.02]], dtype=dtype)
    return renderer, verts[None].to(dtype), cam, albedo, light


def test_image_gradient_wrt_vertices_matches_finite_differences():
    renderer, verts, cam, albedo, light = _sphere_scene()
    base = renderer(verts, cam, albedo, light)
    weights = torch.randn(base.image.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    eps = 1e-6
    front = torch.nonzero(verts[0, :, 2] > 0.3).squeeze(1)[:4].tolist()
    checked = 0
    for vi in front:
        for axis in range(3):
            plus, minus = verts.clone(), verts.clone()
            plus[0, vi, axis] += eps
            minus[0, vi, axis] -= eps
            rp, rm = renderer(plus, cam, albedo, light), renderer(minus, cam, albedo, light)
            # Only pixels whose face does not change under the perturbation are differentiable.
            stable = (rp.fragments.face_ids == base.fragments.face_ids) & (
                rm.fragments.face_ids == base.fragments.face_ids
            )
            w = weights * stable[:, None]
            fd = ((rp.image - rm.image) * w).sum() / (2 * eps)
            x = verts.clone().requires_grad_()
            (renderer(x, cam, albedo, light).image * w).sum().backward()
            ad = x.grad[0, vi, axis]
            assert float(abs(ad)) > 1e-6  # the vertex does influence the image
            assert float(ad) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)
            checked += 1
    assert checked == 12


def test_gradcheck_wrt_light_albedo_and_camera():
    renderer, verts, cam, albedo, light = _sphere_scene()

    def fn(lt, alb, c):
        return renderer(verts, c, alb, lt).image

    # The camera only moves vertices within their faces for a tiny perturbation: the same hard
    # decisions as at the base point, so a small eps is safe.
    assert torch.autograd.gradcheck(
        fn,
        (light.clone().requires_grad_(), albedo.clone().requires_grad_(), cam.clone().requires_grad_()),
        eps=1e-7,
        atol=1e-5,
        fast_mode=True,
    )


# ----------------------------------------------------------------------------------------------------
# UV space


def test_uv_rasterization_reproduces_positions_and_is_cached():
    verts, faces, uv = grid_mesh(6)
    size = 32
    uvr = render_uv_space(uv, faces, size)
    assert uvr.mask.all()  # the layout covers [0, 1]^2
    pos = uvr.vertex_attributes_to_uv(verts[None], faces)[0]  # (3, S, S)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    u = c[None, :].expand(size, size)
    v = (1 - c)[:, None].expand(size, size)  # texel row 0 is v = 1
    assert torch.allclose(pos[0], u - 0.5, atol=1e-12)
    assert torch.allclose(pos[1], v - 0.5, atol=1e-12)
    # Batch > 1 equals single items; face attributes agree with vertex attributes.
    batch = torch.stack([verts, 2 * verts + 1])
    both = uvr.vertex_attributes_to_uv(batch, faces)
    assert torch.allclose(both[0], pos) and torch.allclose(both[1], 2 * pos + 1)
    assert torch.allclose(uvr.face_attributes_to_uv(batch[:, faces]), both)
    assert torch.allclose(interpolate_attributes(uvr.as_fragments(2), batch, faces), both)
    # The cache returns the very same object for the same layout and size (and not across sizes).
    a = cached_uv_rasterization(uv, faces, size)
    assert cached_uv_rasterization(uv.clone(), faces.clone(), size) is a
    assert cached_uv_rasterization(uv, faces, 16) is not a


def test_uv_layout_with_a_hole_and_float32():
    # Two separate islands; texels between them are uncovered (-1) and their attributes are 0.
    uv = torch.tensor([[0.1, 0.1], [0.4, 0.1], [0.1, 0.9], [0.6, 0.1], [0.9, 0.1], [0.9, 0.9]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    uvr = render_uv_space(uv, faces, 20)
    assert uvr.bary.dtype == torch.float32
    assert set(uvr.face_ids.unique().tolist()) == {-1, 0, 1}
    vals = uvr.vertex_attributes_to_uv(torch.ones(1, 6, 1), faces)
    assert torch.equal(vals[0, 0] > 0, uvr.mask)
    assert torch.allclose(vals[0, 0][uvr.mask], torch.ones(()))


def test_unwrap_texture_recovers_the_rendered_texture():
    verts, faces, uv = grid_mesh(5)
    renderer = MeshRenderer(faces, uv, faces, image_size=96)
    cam = torch.tensor([[1.8, 0.0, 0.0]], dtype=torch.float64)
    tex = ramp_texture(32)
    res = renderer(verts[None], cam, albedo=tex)
    unwrapped, visible = renderer.unwrap_texture(res.image, verts[None], cam, size=32)
    assert visible.shape == (1, 1, 32, 32)
    # The plane fills most of the image; texels away from the layout border are visible and the
    # double bilinear resampling of a linear ramp gives the ramp back.
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[2:-2, 2:-2] = True
    assert visible[0, 0][inner].all()
    assert torch.allclose(unwrapped[0, :2][:, inner], tex[0, :2][:, inner], atol=1e-9)


def test_unwrap_marks_occluded_texels_invisible():
    verts, faces = icosphere(2)
    uv = torch.stack([0.5 + 0.45 * verts[:, 0], 0.5 + 0.45 * verts[:, 1]], -1)  # front and back overlap
    # Use a layout that separates hemispheres: u in [0, 0.5) for the back, [0.5, 1] for the front.
    uv[:, 0] = torch.where(verts[:, 2] >= 0, 0.75 + 0.24 * verts[:, 0], 0.25 + 0.24 * verts[:, 0])
    keep = ((verts[faces, 2] >= 0).all(1)) | ((verts[faces, 2] < 0).all(1))  # faces not on the seam
    faces = faces[keep]
    renderer = MeshRenderer(faces, uv, faces, image_size=64)
    cam = torch.tensor([[0.9, 0.0, 0.0]], dtype=torch.float64)
    image = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    _, visible = renderer.unwrap_texture(image, verts[None], cam, size=64)
    uvr = renderer.uv_rasterization(64)
    tex_z = renderer.world_to_uv(verts[None], 64)[0, 2]  # Z of each texel's surface point
    # Image radius 0.9 * 32 = 28.8 px: points within a pixel of the silhouette (|Z| < sqrt(2 / 28.8)
    # ~ 0.26) are ambiguous; beyond that the front is visible and the back is not.
    assert visible[0, 0][uvr.mask & (tex_z > 0.3)].all()
    assert not visible[0, 0][uvr.mask & (tex_z < -0.3)].any()
    assert not visible[0, 0][~uvr.mask].any()


_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float32, marks=_CUDA),
    pytest.param("cuda", torch.float64, marks=_CUDA),
])
def test_every_device_and_dtype_matches_the_float64_cpu_render(device, dtype):
    renderer, verts, cam, albedo, light = _sphere_scene(torch.float64)
    ref = renderer(verts, cam, albedo, light)
    ref_uv = renderer.uv_rasterization(64)
    r = renderer.to(device)
    out = r(*[t.to(device, dtype) for t in (verts, cam, albedo, light)])
    assert out.image.device.type == device and out.image.dtype == dtype
    assert (out.fragments.face_ids.cpu() == ref.fragments.face_ids).float().mean() > 0.999
    assert torch.allclose(out.image.cpu().double(), ref.image, atol=1e-4 if dtype == torch.float32 else 1e-7)
    uv = render_uv_space(renderer.uv_coords.to(device, dtype), renderer.uv_faces.to(device), 64)
    assert torch.equal(uv.face_ids.cpu(), ref_uv.face_ids)


def test_face_attributes_and_double_precision_pipeline():
    verts, faces = icosphere(2)
    frag = rasterize(verts[None] * 0.9, faces, 24)
    fa = verts[faces][None]  # (1, F, 3, 3) face-corner attributes = positions
    a = interpolate_face_attributes(frag, fa)
    b = interpolate_attributes(frag, verts[None], faces)
    assert a.dtype == torch.float64 and torch.allclose(a, b)
