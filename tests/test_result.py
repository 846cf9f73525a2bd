"""result.npz: every field survives a round trip; wrong files get specific errors."""
from __future__ import annotations

import numpy as np
import pytest

from core.results.result import RESULT_FILE, ReconstructionResult, ResultError, WrinkleModel
from core.results.rig import build_rig
from core.testmodels.procedural_head import build_procedural_head


def make_result(rng) -> ReconstructionResult:
    model = build_procedural_head()
    V, F = model.n_vertices, model.faces.shape[0]
    shape = rng.normal(size=10)
    rig = build_rig(model, shape, n_expression=8)
    K = 4
    wr = WrinkleModel(rng.normal(size=(16, 16)), rng.normal(size=(K, 16, 16)), rng.normal(size=(K, 53)), 0.93)
    return ReconstructionResult(
        source_image="photo.jpg", image_size=np.array([480, 640]), face_index=0,
        shape=shape, exp=rng.normal(size=50), pose=rng.normal(size=6), cam=np.array([8.0, 0.01, -0.02]),
        tex=np.zeros(50), light=rng.normal(size=(9, 3)), detail=rng.normal(size=128),
        vertices=rng.normal(size=(V, 3)), landmarks2d=rng.uniform(0, 400, size=(68, 2)),
        landmarks3d=rng.normal(size=(68, 3)), detected_landmarks=rng.uniform(0, 400, size=(68, 2)),
        crop_matrix=np.array([[0.5, 0, -10.25], [0, 0.5, -20.125], [0, 0, 1]]),
        faces=model.faces, uv_coords=rng.uniform(size=(V, 2)), uv_faces=model.faces,
        rig_template=rig.template, rig_expr_basis=rig.expr_basis, rig_posedirs=rig.posedirs,
        rig_weights=rig.weights, rig_joints=rig.joints, rig_parents=rig.parents,
        displacement=wr.evaluate(np.zeros(50), np.zeros(3)), displacement_scale=0.02, wrinkles=wr,
        flame_model="procedural", is_test_model=True, extra={"note_array": np.arange(3)},
    )


def test_round_trip(tmp_path):
    r = make_result(np.random.default_rng(0))
    path = r.save(tmp_path / "face0")
    assert path.name == RESULT_FILE
    back = ReconstructionResult.load(tmp_path / "face0")
    assert back.source_image == "photo.jpg" and back.face_index == 0 and back.is_test_model is True
    assert back.mode == "deca" and back.animatable_detail is True
    np.testing.assert_array_equal(back.crop_matrix, r.crop_matrix)  # float64 kept for exact mapping
    np.testing.assert_allclose(back.rig_template, r.rig_template, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(back.faces, r.faces)
    np.testing.assert_allclose(back.wrinkles.matrix, r.wrinkles.matrix, rtol=1e-6)
    assert back.wrinkles.explained_variance == pytest.approx(0.93)
    np.testing.assert_array_equal(back.extra["note_array"], np.arange(3))
    # The wrinkle model evaluates the documented formula.
    exp, jaw = np.random.default_rng(1).normal(size=50), np.array([0.2, 0, 0])
    expected = r.wrinkles.base + np.einsum("k,khw->hw", r.wrinkles.matrix @ np.concatenate([exp, jaw]), r.wrinkles.maps)
    np.testing.assert_allclose(back.wrinkles.evaluate(exp, jaw), expected, rtol=1e-5, atol=1e-5)
    with np.load(path, allow_pickle=False) as z:  # pickle-free, so numpy-only readers (Blender) can read it
        assert int(z["schema_version"]) == 1


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ResultError, match="no result file"):
        ReconstructionResult.load(tmp_path)
    (tmp_path / RESULT_FILE).write_bytes(b"garbage")
    with pytest.raises(ResultError, match="truncated or not an .npz"):
        ReconstructionResult.load(tmp_path)
    np.savez(tmp_path / RESULT_FILE, schema_version=np.int64(99))
    with pytest.raises(ResultError, match="schema version 99"):
        ReconstructionResult.load(tmp_path)
    np.savez(tmp_path / RESULT_FILE, schema_version=np.int64(1), shape=np.zeros(100))
    with pytest.raises(ResultError, match="lacks"):
        ReconstructionResult.load(tmp_path)


def test_validate_names_the_broken_field_and_the_writer_refuses_it(tmp_path):
    import dataclasses

    from core.results.writing import FaceImages, write_result_folder

    good = make_result(np.random.default_rng(2))
    assert good.validate() is good
    V = good.vertices.shape[0]
    broken = {
        "exp": (dataclasses.replace(good, exp=np.zeros(49)), "'exp' has shape (49,), expected (50)"),
        "vertices": (dataclasses.replace(good, vertices=np.zeros((V - 1, 3))), "'vertices' has shape"),
        "nan": (dataclasses.replace(good, light=np.full((9, 3), np.nan)), "'light' holds NaN"),
        "faces": (dataclasses.replace(good, faces=good.faces + V), "'faces' indexes outside [0, "),
        "wrinkles": (dataclasses.replace(good, wrinkles=WrinkleModel(good.wrinkles.base, good.wrinkles.maps,
                                                                      good.wrinkles.matrix[:, :50], 0.9)),
                     "'wrinkle_matrix' has shape"),
        "scale": (dataclasses.replace(good, displacement_scale=0.0), "displacement_scale is 0.0"),
    }
    for name, (result, message) in broken.items():
        with pytest.raises(ResultError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            result.validate("the/folder")
    img = np.zeros((8, 8, 3), np.float32)
    images = FaceImages(texture=img, albedo=img, detail_normals=img, overlay=img)
    with pytest.raises(ResultError):
        write_result_folder(broken["nan"][0], images, tmp_path, "face")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder
    folder = write_result_folder(good, images, tmp_path, "face")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["result.npz", "mesh.obj", "mesh.mtl", "texture.png", "albedo.png", "displacement.png",
         "detail_normals.png", "overlay.png"])
    ReconstructionResult.load(folder).validate()


def test_identity_basis_is_optional_float16(tmp_path):
    """rig_shape_basis: FLAME's first identity components in float16 (within half a float16 step of the
    model's), absent from a result written without it, and shape-checked like every rig array."""
    import dataclasses

    model = build_procedural_head()
    rig = build_rig(model, np.zeros(10), n_expression=8)
    assert rig.shape_basis.dtype == np.float16 and rig.shape_basis.shape == (model.n_vertices, 3, 10)
    r = dataclasses.replace(make_result(np.random.default_rng(0)), rig_shape_basis=rig.shape_basis)
    back = ReconstructionResult.load(r.save(tmp_path / "with"))
    assert back.rig_shape_basis.dtype == np.float16
    np.testing.assert_array_equal(back.rig_shape_basis, rig.shape_basis)
    exact = model.shape_basis[:, :, :10]
    step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)  # float16's spacing at each value
    assert np.all(np.abs(back.rig_shape_basis.astype(np.float64) - exact) <= step / 2 + 1e-12)
    assert build_rig(model, np.zeros(10), n_shape_sliders=0).shape_basis is None
    without = ReconstructionResult.load(make_result(np.random.default_rng(0)).save(tmp_path / "without"))
    assert without.rig_shape_basis is None
    with np.load(tmp_path / "without" / RESULT_FILE) as z:
        assert "rig_shape_basis" not in z.files
    with pytest.raises(ResultError, match="rig_shape_basis"):
        dataclasses.replace(r, rig_shape_basis=rig.shape_basis[:-1]).validate()
