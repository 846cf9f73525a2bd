"""core.evaluation: exact closest points, the NoW protocol on meshes with a known error, the folder scorer,
the synthetic ground-truth generator and the `eval` commands.

The known-error tests use FLAME's template (../shared/assets/deca/head_template.obj) as the "scan": every
vertex moved by a known distance along its normal, then the whole mesh moved by a similarity, must give that
distance back.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from core.evaluation.now import (NOW_LANDMARKS_68, MeshDistance, Similarity, closest_points_on_triangles, crop_face,
                                 face_sphere, fit_similarity, now_errors, now_landmarks, summarize)


# ------------------------------------------------------------------------------------------------ helpers

def vertex_normals_np(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-300)


def brute_force_distance(points, v, f):
    tri = v[f]
    best = np.full(len(points), np.inf)
    for j in range(len(f)):
        rep = lambda x: np.repeat(x[None], len(points), 0)  # noqa: E731
        q = closest_points_on_triangles(points, rep(tri[j, 0]), rep(tri[j, 1]), rep(tri[j, 2]))
        best = np.minimum(best, np.linalg.norm(q - points, axis=1))
    return best


@pytest.fixture(scope="module")
def template(deca_data_dir):
    from core.flame.template import read_template_obj

    path = deca_data_dir / "head_template.obj"
    if not path.is_file():
        pytest.skip(f"FLAME template not found at {path}")
    t = read_template_obj(path)
    return t.vertices, t.faces


@pytest.fixture(scope="module")
def template_lmk7(template, embedding):
    v, f = template
    tri = v[f[embedding.full_faces]]  # (68, 3, 3)
    return now_landmarks((tri * embedding.full_bary[..., None]).sum(1))


@pytest.fixture(scope="module")
def skin(template):
    from core.evaluation.synthetic import scan_vertex_mask

    v, f = template
    return scan_vertex_mask(f, len(v))


# ------------------------------------------------------------------------------------------------ geometry

def test_closest_point_on_triangle_is_never_beaten_by_dense_samples():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b, c = rng.normal(size=(3, 3))
        u = rng.uniform(size=(20000, 2))
        u = u[u.sum(1) <= 1]
        samples = a + u[:, :1] * (b - a) + u[:, 1:] * (c - a)
        p = rng.normal(size=(40, 3)) * 2
        q = closest_points_on_triangles(p, *(np.tile(x, (40, 1)) for x in (a, b, c)))
        d = np.linalg.norm(q - p, axis=1)
        d_samples = np.linalg.norm(p[:, None] - samples[None], axis=-1).min(1)
        assert (d <= d_samples + 1e-12).all()
        assert (d_samples - d).max() < 0.05  # and the samples get close to it
    # degenerate triangles (a segment, a point) do not produce NaN
    p = rng.normal(size=(10, 3))
    seg = closest_points_on_triangles(p, np.zeros((10, 3)), np.ones((10, 3)), np.ones((10, 3)) * 0.5)
    pt = closest_points_on_triangles(p, np.ones((10, 3)), np.ones((10, 3)), np.ones((10, 3)))
    assert np.isfinite(seg).all() and np.allclose(pt, 1.0)


def test_mesh_distance_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(120, 3))
    f = rng.integers(0, 120, size=(200, 3))  # large, overlapping, some degenerate triangles
    points = rng.normal(size=(300, 3)) * 1.5
    d, q, face = MeshDistance(v, f).query(points)
    np.testing.assert_allclose(d, brute_force_distance(points, v, f), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(q - points, axis=1), d, atol=1e-12)


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(7, 3))
    T = Similarity(1.7, Rotation.from_rotvec([0.3, -1.0, 0.4]).as_matrix(), np.array([0.1, -2.0, 3.0]))
    est = fit_similarity(src, T.apply(src))
    assert est.scale == pytest.approx(1.7, rel=1e-10)
    np.testing.assert_allclose(est.rotation, T.rotation, atol=1e-10)
    np.testing.assert_allclose(est.apply(src), T.apply(src), atol=1e-10)
    np.testing.assert_allclose(T.inverse_apply(T.apply(src)), src, atol=1e-12)


def test_now_landmarks_are_eye_corners_nose_bottom_mouth_corners():
    assert NOW_LANDMARKS_68 == (36, 39, 42, 45, 33, 48, 54)
    lm = np.arange(68 * 3, dtype=float).reshape(68, 3)
    np.testing.assert_array_equal(now_landmarks(lm)[4], lm[33])


def test_face_crop_on_flame(template, template_lmk7):
    v, f = template
    centre, radius = face_sphere(template_lmk7)
    assert 0.07 < radius < 0.13  # about 100 mm on FLAME's mean head (metres)
    inside = crop_face(v, template_lmk7)
    nose_tip = v[:, 2].argmax()
    assert inside[nose_tip] and not inside[v[:, 2].argmin()]  # the back of the head is out
    assert 0.3 < inside.mean() < 0.8


# ------------------------------------------------------------------------------------------------ known errors

@pytest.mark.parametrize("offset_mm,scale,rotvec,shift", [
    (2.0, 1.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    (1.0, 1.0, (0.2, -0.9, 0.3), (0.05, -1.4, 0.3)),  # rigid transform + 1 mm
    (2.0, 7.5, (-0.4, 0.5, 2.0), (3.0, 1.0, -2.0)),  # a non-metrical prediction (scaled) + 2 mm
])
def test_mesh_displaced_by_a_known_amount_gives_it_back(template, template_lmk7, skin, offset_mm, scale, rotvec, shift):
    """Every vertex moved `offset_mm` along its normal, then a similarity: the landmark alignment (its
    landmarks are the undisplaced surface's, moved by the same similarity) recovers the similarity exactly,
    so every scan point is `offset_mm` from the prediction (up to curvature in creases)."""
    v, f = template
    moved = v + offset_mm * 1e-3 * vertex_normals_np(v, f)
    T = Similarity(scale, Rotation.from_rotvec(rotvec).as_matrix(), np.asarray(shift))
    e = now_errors(v[skin], template_lmk7, T.apply(moved), f, T.apply(template_lmk7), refine=False)
    assert e.median == pytest.approx(offset_mm, abs=0.05)
    # Each scan point's own displaced vertex is `offset_mm` away, so nothing is farther; where the surface
    # folds (lips, nostrils, eyelids) the inflated mesh comes closer.
    assert e.distances.max() <= offset_mm + 1e-6
    assert e.mean > 0.75 * offset_mm
    assert e.transform.scale == pytest.approx(1.0 / scale, rel=1e-9)


def test_identical_mesh_gives_zero_and_refinement_fixes_noisy_landmarks(template, template_lmk7, skin):
    v, f = template
    T = Similarity(0.9, Rotation.from_rotvec([0.1, 0.6, -0.2]).as_matrix(), np.array([0.02, 0.3, -0.1]))
    exact = now_errors(v[skin], template_lmk7, T.apply(v), f, T.apply(template_lmk7), refine=False)
    assert exact.median < 1e-6 and exact.distances.max() < 1e-6
    noisy = T.apply(template_lmk7) + np.random.default_rng(3).normal(scale=0.003, size=(7, 3))
    rough = now_errors(v[skin], template_lmk7, T.apply(v), f, noisy, refine=False)
    refined = now_errors(v[skin], template_lmk7, T.apply(v), f, noisy, refine=True)
    assert rough.median > 0.5
    assert refined.median < 0.05 and refined.mean < 0.05


def test_refinement_lowers_the_squared_error_but_cannot_absorb_a_stretch(template, embedding, skin):
    """A prediction 10 % wider than the scan: no similarity explains it. The refinement lowers the mean
    squared scan-to-mesh distance (the objective it minimises) and the error stays clearly above zero."""
    v, f = template
    centre = v[skin].mean(0)
    wide = (v - centre) * np.array([1.1, 1.0, 1.0]) + centre
    lmk = lambda x: now_landmarks((x[f[embedding.full_faces]] * embedding.full_bary[..., None]).sum(1))  # noqa: E731
    rough = now_errors(v[skin], lmk(v), wide, f, lmk(wide), refine=False)
    refined = now_errors(v[skin], lmk(v), wide, f, lmk(wide), refine=True)
    assert np.mean(refined.distances ** 2) < np.mean(rough.distances ** 2)
    assert refined.median > 0.5 and refined.mean > 0.7


def test_summary_is_over_all_points_of_all_scans():
    s = summarize([np.array([1.0, 2.0]), np.array([3.0, 4.0, 100.0])])
    assert s == {"median_mm": 3.0, "mean_mm": pytest.approx(22.0), "std_mm": pytest.approx(np.std([1, 2, 3, 4, 100])),
                 "n_points": 5}


def test_now_errors_rejects_bad_landmarks(template, template_lmk7):
    v, f = template
    with pytest.raises(ValueError, match="7 finite"):
        now_errors(v, template_lmk7[:6], v, f, template_lmk7)
    with pytest.raises(ValueError, match="no scan point"):
        now_errors(v + 10.0, template_lmk7, v, f, template_lmk7)


# ------------------------------------------------------------------------------------------------ synthetic data

@pytest.fixture(scope="module")
def face_model(test_flame_pkl, deca_data_dir):
    from core.model.face_model import FaceAssets, FaceModel

    return FaceModel(FaceAssets.from_paths(test_flame_pkl, deca_data_dir)).eval()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory, face_model, photos_dir):
    from core.evaluation.synthetic import SyntheticConfig, SyntheticGenerator

    out = tmp_path_factory.mktemp("synth")
    cfg = SyntheticConfig(n=3, sizes=((96, 96), (80, 128)), seed=5, supersample=1, write_obj=True,
                          yaws_deg=(-60.0, 0.0, 45.0))
    SyntheticGenerator(face_model, cfg, photos_dir=photos_dir).write(out)
    return out


def test_synthetic_ground_truth_is_consistent(synth_dir, face_model):
    import torch

    from core.evaluation.synthetic import GT_KEYS, load_ground_truth
    from core.frontend import read_image
    from core.render import orthographic_project

    manifest = json.loads((synth_dir / "manifest.json").read_text())
    assert manifest["is_test_model"] is True and "not FLAME" in manifest["note"]
    assert manifest["faces"] == ["synth_0000", "synth_0001", "synth_0002"]
    for k, name in enumerate(manifest["faces"]):
        gt = load_ground_truth(synth_dir / f"{name}.npz")
        assert set(GT_KEYS) <= set(gt)
        img = read_image(synth_dir / f"{name}.png")
        h, w = gt["image_size"]
        assert img.shape == (h, w, 3) and (h, w) == ((96, 96), (80, 128))[k % 2]
        assert (synth_dir / f"{name}.obj").is_file()
        lm = gt["landmarks2d"]
        assert (lm[:, 0] > 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] > 0).all() and (lm[:, 1] < h).all()
        # The posed mesh and the codes agree, and the landmarks are the projection of the posed landmarks.
        t = lambda a: torch.as_tensor(a)[None].float()  # noqa: E731
        g = face_model.geometry(t(gt["shape"]), t(gt["exp"]), t(gt["pose"]), t(gt["cam"]))
        np.testing.assert_allclose(g.vertices[0].double().numpy(), gt["vertices"], atol=1e-6)
        side = int(gt["render_size"])
        r0, c0 = gt["render_offset"]
        ndc = orthographic_project(g.landmarks2d_3d, t(gt["cam"]))[0, :, :2].double().numpy()
        np.testing.assert_allclose((ndc + 1) * side / 2 - [c0, r0], lm, atol=1e-3)
        # yaw as asked; the neutral mesh has no expression and no pose
        yaw = Rotation.from_rotvec(gt["pose"][:3]).as_euler("YXZ", degrees=True)[0]
        assert yaw == pytest.approx((-60.0, 0.0, 45.0)[k], abs=1e-3)
        gn = face_model.flame(t(gt["shape"]), torch.zeros(1, 50), torch.zeros(1, 6))
        np.testing.assert_allclose(gn.vertices[0].double().numpy(), gt["neutral_vertices"], atol=1e-6)
        np.testing.assert_allclose(gt["now_landmarks"], gt["landmarks3d"][list(NOW_LANDMARKS_68)])
        assert gt["scan_mask"].sum() < len(gt["scan_mask"])  # the eyeballs are not skin
        # pixels at the nose differ from the pure background: the head is really rendered there
        assert img.std() > 0.02


def test_eval_now_command_on_known_errors(synth_dir, tmp_path, embedding):
    """Predictions with a known error through `deca-blender eval now`: one as NoW's OBJ + 7 landmarks."""
    from core.cli import main
    from core.evaluation.synthetic import load_ground_truth

    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("synth_0000", "synth_0001"):
        gt = load_ground_truth(synth_dir / f"{name}.npz")
        v, f = gt["neutral_vertices"], gt["faces"]
        moved = v + 1e-3 * vertex_normals_np(v, f)  # 1 mm everywhere
        lines = [f"v {x} {y} {z}" for x, y, z in moved] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
        (pred / f"{name}.obj").write_text("\n".join(lines) + "\n")
        np.save(pred / f"{name}.npy", gt["neutral_now_landmarks"])
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["eval", "now", "--pred", str(pred), "--gt", str(synth_dir), "--json", "--no-refine"])
    assert rc == 0
    report = json.loads(buf.getvalue())
    assert [it["name"] for it in report["items"]] == ["synth_0000", "synth_0001"]
    assert report["missing"] == ["synth_0002"]
    assert report["overall"]["median_mm"] == pytest.approx(1.0, abs=0.05)
    # human-readable form, and a usage error for a missing folder
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["eval", "now", "--pred", str(pred), "--gt", str(synth_dir)]) == 0
    assert "median" in buf.getvalue()
    assert main(["eval", "now", "--pred", str(tmp_path / "nope"), "--gt", str(synth_dir)]) == 2


def test_eval_synth_command_with_the_test_model(tmp_path, shared_dir, monkeypatch):
    from core.cli import main

    monkeypatch.setenv("DECA_SHARED", str(shared_dir))
    out = tmp_path / "s"
    assert main(["eval", "synth", "--out", str(out), "-n", "2", "--sizes", "64,96x64", "--test-model"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "synth_0000.npz", "synth_0000.png",
                                                     "synth_0001.npz", "synth_0001.png"]
    assert main(["eval", "synth", "--out", str(out), "--sizes", "12", "--test-model"]) == 2
