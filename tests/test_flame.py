"""The FLAME layer against an independent float64 numpy implementation written here.

The reference uses scipy's matrix exponential for rotations, explicit 4x4 chains for the kinematics
and scipy's Euler decomposition for the contour yaw, so it shares no code with `core.flame`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.spatial.transform import Rotation

from core.flame import FlameLayer
from core.flame.lbs import axis_angle_to_matrix
from core.testmodels.procedural_head import build_procedural_head


# ---------------------------------------------------------------------------------------------
# Independent reference


def ref_rotation(aa: np.ndarray) -> np.ndarray:
    x, y, z = aa
    return expm(np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=np.float64))


def ref_flame(model, shape, exp, full_pose):
    """One sample: shape (S,), exp (E,), full_pose (5, 3) -> vertices, joints, rotations."""
    v = model.v_template + model.shape_basis[:, :, : len(shape)] @ shape
    if len(exp):
        v = v + model.expr_basis[:, :, : len(exp)] @ exp
    J = model.J_regressor @ v
    R = [ref_rotation(p) for p in full_pose]
    feat = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, len(R))])
    v = v + model.posedirs @ feat
    G = []
    for j, parent in enumerate(model.parents):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[parent] if parent >= 0 else 0)
        G.append(local if parent < 0 else G[parent] @ local)
    A = []
    for j in range(len(G)):
        M = G[j].copy()
        M[:3, 3] -= G[j][:3, :3] @ J[j]
        A.append(M)
    A = np.stack(A)
    T = np.einsum("vj,jab->vab", model.weights, A)
    verts = np.einsum("vab,vb->va", T[:, :3, :3], v) + T[:, :3, 3]
    joints = np.stack([g[:3, 3] for g in G])
    return verts, joints, R


def ref_landmarks(model, emb, verts, R):
    yaw = Rotation.from_matrix(R[0] @ R[1]).as_euler("ZYX", degrees=True)[1]
    a = int(np.round(min(yaw, 39)))
    row = a if a >= 0 else (78 if a < -39 else 39 - a)
    faces = np.concatenate([emb.dynamic_faces[row], emb.static_faces])
    bary = np.concatenate([emb.dynamic_bary[row], emb.static_bary])
    lmk2d = np.einsum("lk,lkc->lc", bary, verts[model.faces[faces]])
    lmk3d = np.einsum("lk,lkc->lc", emb.full_bary, verts[model.faces[emb.full_faces]])
    return lmk2d, lmk3d, row


def random_params(rng, B, n_shape=100, n_exp=50, big=True):
    shape = rng.normal(size=(B, n_shape)) * 2.0
    exp = rng.normal(size=(B, n_exp)) * 1.5
    full = rng.normal(size=(B, 5, 3)) * 0.2
    if big:
        full[:, 0] = rng.normal(size=(B, 3)) * 0.6               # global up to ~90 degrees
        full[:, 0, 1] = rng.uniform(-1.2, 1.2, size=B)            # large yaw, beyond the 39-degree rows
        full[:, 1] = rng.normal(size=(B, 3)) * 0.4                # neck
        full[:, 2] = np.stack([rng.uniform(0.2, 0.6, B), rng.normal(size=B) * 0.1, rng.normal(size=B) * 0.1], 1)
    return shape, exp, full


# ---------------------------------------------------------------------------------------------


def test_rotation_matches_matrix_exponential_including_small_angles():
    rng = np.random.default_rng(1)
    aa = np.concatenate([rng.normal(size=(20, 3)) * 1.5, rng.normal(size=(5, 3)) * 1e-6, np.zeros((1, 3))])
    R = axis_angle_to_matrix(torch.as_tensor(aa)).numpy()
    for a, r in zip(aa, R):
        np.testing.assert_allclose(r, ref_rotation(a), atol=1e-12)
    x = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_layer_matches_numpy_reference_on_test_model(test_flame, embedding):
    layer = FlameLayer(test_flame, embedding).double()
    rng = np.random.default_rng(0)
    shape, exp, full = random_params(rng, B=6)
    out = layer(torch.as_tensor(shape), torch.as_tensor(exp), torch.as_tensor(full.reshape(6, 15)))
    rows = []
    for b in range(6):
        v, j, R = ref_flame(test_flame, shape[b], exp[b], full[b])
        l2, l3, row = ref_landmarks(test_flame, embedding, v, R)
        rows.append(row)
        np.testing.assert_allclose(out.vertices[b].numpy(), v, atol=1e-6)
        np.testing.assert_allclose(out.joints[b].numpy(), j, atol=1e-6)
        np.testing.assert_allclose(out.landmarks2d[b].numpy(), l2, atol=1e-6)
        np.testing.assert_allclose(out.landmarks3d[b].numpy(), l3, atol=1e-6)
    # The random poses must exercise positive, negative and saturated contour rows.
    assert any(0 < r < 39 for r in rows) and any(r >= 40 for r in rows)


def test_deca_pose_vector_and_explicit_neck_eyes(test_flame, embedding):
    layer = FlameLayer(test_flame, embedding).double()
    rng = np.random.default_rng(3)
    shape, exp, full = random_params(rng, B=2)
    deca_pose = np.concatenate([full[:, 0], full[:, 2]], axis=1)
    out = layer(torch.as_tensor(shape), torch.as_tensor(exp), torch.as_tensor(deca_pose),
                neck_pose=torch.as_tensor(full[:, 1]), eye_pose=torch.as_tensor(full[:, 3:].reshape(2, 6)))
    for b in range(2):
        v, _, _ = ref_flame(test_flame, shape[b], exp[b], full[b])
        np.testing.assert_allclose(out.vertices[b].numpy(), v, atol=1e-6)
    # DECA's 6-vector alone leaves neck and eyes at zero.
    out6 = layer(torch.as_tensor(shape), torch.as_tensor(exp), torch.as_tensor(deca_pose))
    full0 = full.copy()
    full0[:, [1, 3, 4]] = 0
    v, _, _ = ref_flame(test_flame, shape[0], exp[0], full0[0])
    np.testing.assert_allclose(out6.vertices[0].numpy(), v, atol=1e-6)


def test_batch_equals_single_and_float32_close(test_flame, embedding):
    layer64 = FlameLayer(test_flame, embedding).double()
    layer32 = FlameLayer(test_flame, embedding)
    rng = np.random.default_rng(5)
    shape, exp, full = random_params(rng, B=5)
    args = [torch.as_tensor(a) for a in (shape, exp, full.reshape(5, 15))]
    batch = layer64(*args)
    for b in range(5):
        single = layer64(*[a[b : b + 1] for a in args])
        torch.testing.assert_close(single.vertices[0], batch.vertices[b], atol=1e-12, rtol=0)
        torch.testing.assert_close(single.landmarks2d[0], batch.landmarks2d[b], atol=1e-12, rtol=0)
    out32 = layer32(*[a.float() for a in args])
    assert out32.vertices.dtype == torch.float32
    np.testing.assert_allclose(out32.vertices.numpy(), batch.vertices.numpy(), atol=2e-5)


def test_gradients_match_finite_differences_procedural():
    model = build_procedural_head()
    layer = FlameLayer(model).double()
    rng = np.random.default_rng(2)
    shape = torch.tensor(rng.normal(size=(2, 4)), requires_grad=True)
    exp = torch.tensor(rng.normal(size=(2, 3)), requires_grad=True)
    pose = torch.tensor(rng.normal(size=(2, 15)) * 0.5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, e, p: layer(s, e, p).vertices, (shape, exp, pose), atol=1e-6)
    assert torch.autograd.gradcheck(lambda s, e, p: layer(s, e, p).joints, (shape, exp, pose), atol=1e-6)


def test_landmark_gradients_on_real_topology(test_flame, embedding):
    layer = FlameLayer(test_flame, embedding).double()
    rng = np.random.default_rng(4)
    shape = torch.tensor(rng.normal(size=(1, 5)), requires_grad=True)
    exp = torch.tensor(rng.normal(size=(1, 5)), requires_grad=True)
    pose = torch.tensor([[0.1, 0.25, 0.05, 0.3, 0.02, -0.01]], dtype=torch.float64, requires_grad=True)
    # The contour row is piecewise constant in yaw; 0.25 rad = 14.3 deg sits inside a row for small steps.
    assert torch.autograd.gradcheck(lambda s, e, p: layer(s, e, p).landmarks2d, (shape, exp, pose), atol=1e-6, eps=1e-6)


_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float32, marks=_CUDA),
    pytest.param("cuda", torch.float64, marks=_CUDA),
])
def test_every_device_and_dtype_matches_the_float64_cpu_layer(test_flame, embedding, device, dtype):
    """CONVENTIONS.md: the same results on CPU or CUDA, float32 or float64, returned on the input's device/dtype."""
    rng = np.random.default_rng(6)
    shape, exp, full = random_params(rng, B=8)
    args = [torch.as_tensor(a, dtype=torch.float64) for a in (shape, exp, full.reshape(8, 15))]
    ref = FlameLayer(test_flame, embedding).double()(*args)
    out = FlameLayer(test_flame, embedding).to(device, dtype)(*[a.to(device, dtype) for a in args])
    assert out.vertices.device.type == device and out.vertices.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(out.vertices.cpu().double().numpy(), ref.vertices.numpy(), atol=tol)
    np.testing.assert_allclose(out.landmarks2d.cpu().double().numpy(), ref.landmarks2d.numpy(), atol=tol)


def test_far_side_contour_follows_the_silhouette(test_flame, embedding):
    """Geometry check of the contour-row sign on FLAME's real template and DECA's embedding.

    When the head turns, the jaw contour on the side turning away must sit on the 2D silhouette.
    """
    from scipy import ndimage

    layer = FlameLayer(test_flame, embedding).double()
    for yaw_deg in (-35, -20, 20, 35):
        pose = torch.zeros(1, 6, dtype=torch.float64)
        pose[0, 1] = np.deg2rad(yaw_deg)
        out = layer(torch.zeros(1, 100, dtype=torch.float64), torch.zeros(1, 50, dtype=torch.float64), pose)
        v = out.vertices[0].numpy()
        lmk = out.landmarks2d[0, :17].numpy()
        res = 0.0005
        lo = v[:, :2].min(0) - 0.01
        ij = ((v[:, :2] - lo) / res).astype(int)
        mask = np.zeros(ij.max(0) + 40, bool)
        mask[ij[:, 0], ij[:, 1]] = True
        mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=6))
        depth_inside = ndimage.distance_transform_edt(mask) * res
        q = ((lmk[:, :2] - lo) / res).astype(int)
        d = depth_inside[q[:, 0], q[:, 1]]
        # The mirrored row (the opposite sign convention) for comparison.
        a = int(round(-yaw_deg))
        mirrored_row = a if a >= 0 else 39 - a
        faces = layer.faces[embedding.dynamic_faces[mirrored_row]].numpy()
        mirrored = np.einsum("lk,lkc->lc", embedding.dynamic_bary[mirrored_row], v[faces])
        qm = ((mirrored[:, :2] - lo) / res).astype(int)
        dm = depth_inside[qm[:, 0], qm[:, 1]]
        far = slice(9, 17) if yaw_deg > 0 else slice(0, 8)  # +yaw turns the subject's left (+x, 9..16) away
        assert d[far].mean() < 0.0025, (yaw_deg, d[far])
        assert d[far].mean() < 0.6 * dm[far].mean(), (yaw_deg, d[far], dm[far])


def test_layer_exposes_what_blender_needs(test_flame, embedding, deca_data_dir):
    from core.flame.template import read_template_obj

    layer = FlameLayer(test_flame, embedding, template=read_template_obj(deca_data_dir / "head_template.obj"))
    assert layer.uv_coords.shape == (5118, 2) and layer.uv_faces.shape == (9976, 3)
    assert layer.v_template.shape == (5023, 3) and layer.expr_basis.shape == (5023, 3, 100)
    assert layer.posedirs.shape == (5023, 3, 36) and layer.weights.shape == (5023, 5)
    assert layer.J_regressor.shape == (5, 5023) and layer.parents.tolist() == [-1, 0, 1, 1, 1]
    np.testing.assert_allclose(layer.weights.sum(1).numpy(), 1.0, atol=1e-6)
