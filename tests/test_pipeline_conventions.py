"""Camera / NDC / pixel / crop conventions end to end, with the TEST FLAME model and known codes.

A synthetic photo is rendered from known codes (a 448x448 render pasted into a larger, non-square canvas
at an offset); its projected 68 landmarks are the "rendered landmark points". DECA's crop is computed
from them, and the same codes expressed in the crop's frame must project, through the crop transform's
inverse, onto those points within 0.5 px: once with test-local math, once through the pipeline itself
(oracle networks that return the crop-frame codes, an oracle detector that returns the rendered points).
The pipeline's texture must then reproduce the rendered albedo where the face was visible.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.frontend import crop_from_landmarks, read_png16, write_png
from core.model.face_model import FaceAssets, FaceModel
from core.results.encodings import decode_displacement_png
from core.pipeline.reconstruct import Reconstructor, network_ndc_to_photo_pixels
from core.results.result import ReconstructionResult
from pipeline_support import (OracleDetector, crop_frame_camera, framing_camera, known_codes,
                                   oracle_networks, uv_pattern)

RENDER = 448
CANVAS_HW = (560, 620)
OFFSET = (71.0, 53.0)  # x, y of the render's top-left corner in the canvas


@pytest.fixture(scope="module")
def face_assets(test_flame_pkl, deca_data_dir) -> FaceAssets:
    return FaceAssets.from_paths(test_flame_pkl, deca_data_dir)


@pytest.fixture(scope="module")
def face_model(face_assets) -> FaceModel:
    return FaceModel(face_assets).eval()


@pytest.fixture(scope="module", params=[0.35, -0.6], ids=["yaw+0.35", "yaw-0.6"])
def scene(request, face_model, tmp_path_factory):
    """The synthetic photo (saved as PNG), its rendered landmark points and the codes behind it."""
    shape, exp, pose = known_codes(yaw=request.param)
    cam = framing_camera(face_model, shape, exp, pose)
    t = lambda a: torch.as_tensor(a)[None]  # noqa: E731
    pattern = uv_pattern()
    with torch.no_grad():
        g = face_model.geometry(t(shape), t(exp), t(pose), t(cam))
        r = face_model.render(g.vertices, t(cam), albedo=torch.as_tensor(pattern).permute(2, 0, 1)[None],
                              image_size=RENDER)
    points = (g.landmarks2d[0].double().numpy() + 1) * RENDER / 2 + np.array(OFFSET)
    canvas = np.full(CANVAS_HW + (3,), 0.5, np.float32)
    ox, oy = int(OFFSET[0]), int(OFFSET[1])
    img = r.image[0].permute(1, 2, 0).numpy()
    alpha = r.alpha[0, 0].numpy()[..., None]
    canvas[oy:oy + RENDER, ox:ox + RENDER] = img * alpha + 0.5 * (1 - alpha)
    path = tmp_path_factory.mktemp("conventions") / "synthetic.png"
    write_png(path, canvas)
    return dict(shape=shape, exp=exp, pose=pose, cam=cam, points=points, photo=path, pattern=pattern,
                vertices=g.vertices, canvas=canvas)


@pytest.mark.parametrize("convention", ["deca", "continuous"])
def test_landmarks_land_on_the_rendered_points_through_the_crop(face_model, scene, convention):
    points = scene["points"]
    assert points.min() > 0 and points[:, 0].max() < CANVAS_HW[1] and points[:, 1].max() < CANVAS_HW[0]
    crop = crop_from_landmarks(points, convention=convention)
    cam_crop = crop_frame_camera(scene["cam"], RENDER, OFFSET, crop.ndc_frame())
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64))[None]  # noqa: E731
    fm64 = FaceModel(face_model.assets).double()
    with torch.no_grad():
        g = fm64.geometry(t(scene["shape"]), t(scene["exp"]), t(scene["pose"]), t(cam_crop))
    # test-local math: crop NDC -> crop pixels (DECA: indices, so +0.5 in continuous pixels) -> photo pixels
    crop_px = (g.landmarks2d[0].numpy() + 1) * 224 / 2 + (0.5 if convention == "deca" else 0.0)
    photo_px = crop_px @ np.linalg.inv(crop.matrix)[:2, :2].T + np.linalg.inv(crop.matrix)[:2, 2]
    err = np.linalg.norm(photo_px - points, axis=1)
    assert err.max() < 0.5, err.max()
    # the pipeline's mapping function agrees
    np.testing.assert_allclose(network_ndc_to_photo_pixels(g.landmarks2d[0], crop), photo_px, atol=1e-9)
    # and the crop frame puts the face where DECA's crop puts it: landmarks inside the 224 square
    assert crop_px.min() > 0 and crop_px.max() < 224


@pytest.mark.parametrize("convention", ["deca", "continuous"])
def test_pipeline_maps_network_landmarks_onto_the_photo(face_assets, face_model, scene, tmp_path, convention):
    points = scene["points"]
    crop = crop_from_landmarks(points, convention=convention)
    cam_crop = crop_frame_camera(scene["cam"], RENDER, OFFSET, crop.ndc_frame())
    nets = oracle_networks(scene["shape"], scene["exp"], scene["pose"], cam_crop)
    kw = {} if convention == "deca" else {"conventions": convention}  # deca is the default
    rec = Reconstructor(device="cpu", landmarks=OracleDetector(points), face_assets=face_assets, networks=nets,
                        wrinkle_samples=8, wrinkle_holdout=4, **kw)
    folders = rec.reconstruct_photo(scene["photo"], tmp_path / "out")
    assert len(folders) == 1
    res = ReconstructionResult.load(folders[0])
    np.testing.assert_allclose(res.crop_matrix, crop.matrix, atol=1e-12)
    assert str(res.extra["crop_convention"]) == convention
    np.testing.assert_allclose(res.detected_landmarks, points, atol=1e-4)
    err = np.linalg.norm(res.landmarks2d - points, axis=1)
    assert err.max() < 0.5, f"projected landmarks miss the rendered points by up to {err.max():.3f} px"
    np.testing.assert_array_equal(res.image_size, CANVAS_HW)
    # the codes came through unchanged
    np.testing.assert_allclose(res.pose, scene["pose"], atol=1e-5)
    np.testing.assert_allclose(res.cam, cam_crop, rtol=1e-5, atol=1e-6)
    # posed vertices in FLAME space equal the rendered ones (the camera does not enter them)
    np.testing.assert_allclose(res.vertices, scene["vertices"][0].numpy(), atol=1e-5)

    # the stored landmarks are DECA's inverse (index matrix from DECA's own formula, test_deca_crop) of the
    # network's NDC landmarks, +0.5 into continuous photo pixels
    if convention == "deca":
        from test_deca_crop import deca_landmarks_on_photo, deca_tform

        t64 = lambda a: torch.as_tensor(np.asarray(a, np.float64))[None]  # noqa: E731
        with torch.no_grad():
            ndc = FaceModel(face_model.assets).double().geometry(
                t64(res.shape), t64(res.exp), t64(res.pose), t64(res.cam)).landmarks2d[0].numpy()
        want = deca_landmarks_on_photo(ndc, deca_tform(points - 0.5)) + 0.5
        assert np.abs(res.landmarks2d - want).max() < 1e-3
    # the stored displacements: DECA's unmasked displacement_map = uv_z + fixed, and the masked one the rig
    # and displacement.png use (uv_z * uv_face_eye_mask + fixed), from the decoder run here on the same codes
    with torch.no_grad():
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32))[None]  # noqa: E731
        uv_z = nets.D_detail.decode(t(scene["pose"][3:]), t(scene["exp"]), t(res.detail))[0, 0].numpy()
    fixed, mask = face_model.fixed_displacement[0, 0].numpy(), face_model.uv_face_eye_mask[0, 0].numpy()
    np.testing.assert_allclose(res.extra["displacement_map"], uv_z + fixed, atol=1e-6)
    np.testing.assert_allclose(res.displacement, uv_z * mask + fixed, atol=1e-6)
    assert np.abs(res.extra["displacement_map"] - res.displacement)[mask < 0.5].max() > 1e-4
    q = read_png16(folders[0] / "displacement.png")
    back = decode_displacement_png(q, res.displacement_scale)
    assert np.abs(back - res.displacement).max() <= res.displacement_scale / 65535 * 1.01

    # texture.png reproduces the rendered albedo where the face was visible
    texture = np.asarray(Image.open(folders[0] / "texture.png"), np.float32) / 255
    with torch.no_grad():
        _, visible = face_model.renderer.unwrap_texture(torch.zeros(1, 3, RENDER, RENDER), scene["vertices"],
                                                        torch.as_tensor(scene["cam"])[None], size=512)
    face = torch.nn.functional.interpolate(face_model.uv_face_eye_mask, size=(512, 512), mode="bilinear") > 0.5
    vis = visible[0, 0] & face[0, 0]
    # erode: texels well inside the visible region (away from silhouettes and occlusion edges)
    v = vis.float()[None, None]
    inner = (torch.nn.functional.avg_pool2d(v, 11, stride=1, padding=5) > 0.999)[0, 0].numpy()
    assert inner.sum() > 5000
    diff = np.abs(texture - scene["pattern"]).max(-1)[inner]
    assert np.median(diff) < 0.02 and np.mean(diff < 0.06) > 0.97, (np.median(diff), np.mean(diff < 0.06))
    # and the mean texture (the fill) is far from it there, so this is the photo's colour
    mt = face_assets.mean_texture
    assert mt.shape == (512, 512, 3)
    assert np.abs(mt[inner] - scene["pattern"][inner]).mean() > 0.1


@pytest.mark.parametrize("scene", [0.35], indirect=True, ids=["yaw+0.35"])
def test_albedo_comes_from_the_texture_space_when_installed(face_assets, scene, tmp_path):
    import dataclasses

    rng = np.random.default_rng(4)
    basis = (rng.normal(size=(256, 256, 3, 50)) * 0.01).astype(np.float32)
    assets = dataclasses.replace(face_assets, texture_mean=face_assets.mean_texture[::2, ::2].copy(),
                                 texture_basis=basis)
    tex = rng.normal(size=50).astype(np.float32)
    crop = crop_from_landmarks(scene["points"], convention="deca")
    cam_crop = crop_frame_camera(scene["cam"], RENDER, OFFSET, crop.ndc_frame())
    nets = oracle_networks(scene["shape"], scene["exp"], scene["pose"], cam_crop, tex=tex)
    rec = Reconstructor(device="cpu", landmarks=OracleDetector(scene["points"]), face_assets=assets, networks=nets,
                        wrinkle_samples=8, wrinkle_holdout=4)
    folder = rec.reconstruct_photo(scene["photo"], tmp_path)[0]
    res = ReconstructionResult.load(folder)
    assert str(res.extra["albedo_source"]) == "texture_space"
    np.testing.assert_allclose(res.tex, tex, atol=1e-5)
    want = np.clip(assets.texture_mean + np.einsum("hwck,k->hwc", basis, tex), 0, 1)
    want = torch.nn.functional.interpolate(torch.as_tensor(want).permute(2, 0, 1)[None], size=(512, 512),
                                           mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    albedo = np.asarray(Image.open(folder / "albedo.png"), np.float32) / 255
    assert albedo.shape == (512, 512, 3)
    assert np.abs(albedo - want).max() < 1.0 / 255 + 1e-3
    texture = np.asarray(Image.open(folder / "texture.png"), np.float32) / 255
    assert np.abs(texture - albedo).mean() > 0.01  # texture.png stays the photo's texture
