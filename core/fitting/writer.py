"""The result of a fit: the same files and keys as the regressor's (docs/CONVENTIONS.md).

The fit builds a `ReconstructionResult` and `FaceImages` with the regressor's helpers (``core.pipeline.textures``:
texture crop and photo unwrap; ``core.pipeline.overlay``: object-frame normals and the overlay) and writes them
with the one folder writer, `core.results.writing.write_result_folder`, so a fit's folder is
indistinguishable in layout from ``reconstruct``'s. Differences are recorded in the data:
``mode`` (``fit`` / ``deca+fit``), ``animatable_detail`` and ``extra_*`` keys:

- ``extra_albedo_source``: ``texture_space`` or ``fitted_per_texel`` (stage 2) or ``mean_texture``;
- ``extra_detail_source``: ``shading (static, not animatable)`` or ``deca_detail_decoder``;
- ``extra_now_landmarks`` / ``extra_now_landmarks_neutral``: the 7 NoW landmarks (3D) of the posed and of
  the neutral identity mesh, for `core.evaluation`;
- ``extra_fit_*``: reprojection errors (pixels of the 224 crop) after each stage, the photometric RMSE,
  the stage times.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.evaluation.now import NOW_LANDMARKS_68
from core.fitting.detail import displacement_from_shading, placeholder_wrinkles
from core.frontend import warp_image
from core.pipeline import overlay
from core.pipeline import textures as tx
from core.results import encodings as enc
from core.results import writing
from core.results.result import ReconstructionResult
from core.results.rig import build_rig
from core.results.writing import FaceImages
from core.sizes import N_DETAIL, N_EXP, N_TEX, TEXTURE_SIZE


def crop_ndc_to_photo(points_ndc: np.ndarray, crop) -> np.ndarray:
    return crop.apply_inverse((np.asarray(points_ndc, np.float64) + 1.0) * crop.size / 2.0)


@torch.no_grad()
def build_outputs(fitter, fit) -> tuple[ReconstructionResult, FaceImages]:
    """The ReconstructionResult and the images of one fitted face."""
    fm = fitter.face_model
    c = fit.codes
    dev = fm.flame.v_template.device
    geom = fm.geometry(c.shape, c.exp, c.pose, c.cam)
    lmk_photo = crop_ndc_to_photo(geom.landmarks2d[0].cpu().numpy(), fit.crop)

    # --- details
    animatable = False
    wrinkles = None
    detail_code = np.zeros(N_DETAIL, np.float32)
    if fit.mode == "deca+fit" and fit.detail is not None and fitter.reconstructor is not None:
        rec = fitter.reconstructor
        detail_code = np.asarray(fit.detail, np.float32)
        dt = torch.as_tensor(detail_code[None], device=rec.device)
        exp_np, jaw_np = c.exp[0].cpu().numpy(), c.pose[0, 3:].cpu().numpy()
        disp = np.asarray(rec.decode_displacement_code(detail_code, exp_np, jaw_np), np.float32)
        uv_z = (torch.as_tensor(disp, device=dev)[None, None] - fm.fixed_displacement) / fm.uv_face_eye_mask.clamp_min(1e-6)
        uv_z = uv_z * (fm.uv_face_eye_mask > 0).to(uv_z)
        wrinkles, _ = rec.fit_wrinkles(dt)
        animatable = True
        detail_source = "deca_detail_decoder"
    else:
        if fit.stage2 is not None:
            render = fit.stage2.render
            mask = fit.stage2.mask
        else:
            render = fm.render(geom.vertices, c.cam, albedo=fm.mean_texture, light=c.light,
                               image_size=fit.crop_image.shape[-2:]).image
            mask = (render.abs().sum(1, keepdim=True) > 0).to(render)
        uv_z = displacement_from_shading(fm, fit.crop_image.to(render), render, mask, geom.vertices, c.cam)
        disp = fm.displacement(uv_z)[0, 0].cpu().numpy()
        detail_source = "shading (static, not animatable)"
    normals, _ = fm.detail_normals(geom.vertices, uv_z.to(geom.vertices))
    normals_object = overlay.object_frame_normals(normals, c.pose[:, :3])
    if wrinkles is None:
        wrinkles = placeholder_wrinkles(disp)

    # --- textures: the photo unwrapped (as the regressor does), the fitted albedo
    tcrop = tx.texture_crop(fit.crop)
    crop_img = warp_image(fit.image, tcrop)[None].to(dev)
    inside = torch.as_tensor(tx.inside_photo_mask(tcrop, fit.image.shape[:2]), device=dev)[None, None]
    tcam = tx.texture_crop_camera(c.cam)
    texture, _ = tx.photo_texture(fm, crop_img, inside, geom.vertices, tcam, size=TEXTURE_SIZE)
    if fm.has_texture_space and fit.albedo is not None:
        albedo, albedo_source = fm.albedo(c.tex), "texture_space"
    elif fit.albedo is not None:
        albedo, albedo_source = fit.albedo, "fitted_per_texel"
    else:
        albedo, albedo_source = fm.mean_texture, "mean_texture"
    if albedo.shape[-1] != TEXTURE_SIZE:
        albedo = F.interpolate(albedo, size=(TEXTURE_SIZE, TEXTURE_SIZE), mode="bilinear", align_corners=False)

    # --- overlay: grey render with the detail normals over the texture crop, landmarks
    overlay_np = overlay.render_overlay(fm, geom.vertices, tcam, normals, crop_img, tcrop, fit.detection.landmarks,
                                        lmk_photo)

    # --- the result
    np1 = lambda t: t[0].detach().float().cpu().numpy()  # noqa: E731
    shape = np1(c.shape)
    rig = build_rig(fitter.face_assets.flame, shape, n_expression=N_EXP)
    h, w = fit.image.shape[:2]
    t = fitter.face_assets.template
    s1, s2 = fit.stage1, fit.stage2
    zeros = torch.zeros_like
    neutral = fm.flame(c.shape, zeros(c.exp), zeros(c.pose))
    sel = list(NOW_LANDMARKS_68)
    extra = {
        "now_landmarks": np1(geom.landmarks3d)[sel],
        "now_landmarks_neutral": np1(neutral.landmarks3d)[sel],
        "albedo_source": np.str_(albedo_source),
        "detail_source": np.str_(detail_source),
        "detector": np.str_(fit.detection.detector),
        "crop_convention": np.str_(fit.crop.convention),
        **fit.detection.record(),
        "texture_crop_size": np.int64(tcrop.size),
        "faces_in_photo": np.int64(fit.faces_in_photo),  # lets a rerun tell a finished photo
        "fit_reprojection_px_stage1": np.float64(s1.reprojection_px[0]) if s1 is not None else np.float64(np.nan),
        "fit_reprojection_px": np.float64(s2.reprojection_px[0] if s2 is not None else
                                          (s1.reprojection_px[0] if s1 is not None else np.nan)),
        "fit_photo_rmse": np.float64(s2.photo_rmse[0]) if s2 is not None else np.float64(np.nan),
        "fit_seconds_stage1": np.float64(fit.timings.get("stage1", np.nan)),
        "fit_seconds_stage2": np.float64(fit.timings.get("stage2", np.nan)),
        "fit_stage1_shape": c_np(fit.codes_stage1.shape),
        "fit_stage1_exp": c_np(fit.codes_stage1.exp),
        "fit_stage1_pose": c_np(fit.codes_stage1.pose),
        "fit_stage1_cam": c_np(fit.codes_stage1.cam),
    }
    result = ReconstructionResult(
        source_image=str(fit.source), image_size=np.array([h, w], np.int64), face_index=int(fit.face_index),
        shape=shape, exp=np1(c.exp), pose=np1(c.pose), cam=np1(c.cam),
        tex=np1(c.tex) if fm.has_texture_space else np.zeros(N_TEX, np.float32), light=np1(c.light),
        detail=detail_code, vertices=np1(geom.vertices), landmarks2d=lmk_photo, landmarks3d=np1(geom.landmarks3d),
        detected_landmarks=fit.detection.landmarks.copy(), crop_matrix=fit.crop.matrix.copy(),
        faces=np.asarray(fitter.face_assets.flame.faces, np.int64), uv_coords=np.asarray(t.uv_coords, np.float64),
        uv_faces=np.asarray(t.uv_faces, np.int64), rig_template=rig.template, rig_expr_basis=rig.expr_basis,
        rig_posedirs=rig.posedirs, rig_weights=rig.weights, rig_joints=rig.joints, rig_parents=rig.parents,
        rig_shape_basis=rig.shape_basis,
        displacement=disp, displacement_scale=enc.displacement_scale(disp), wrinkles=wrinkles,
        flame_model=fitter.flame_description, is_test_model=bool(fitter.face_assets.flame.is_test_model),
        animatable_detail=animatable, mode=fit.mode, extra=extra,
    )
    images = FaceImages(texture=tx.to_hwc(texture), albedo=tx.to_hwc(albedo), detail_normals=tx.to_hwc(normals_object),
                        overlay=overlay_np)
    return result, images


def c_np(t: torch.Tensor) -> np.ndarray:
    return t[0].detach().float().cpu().numpy()


def write_fit_result(fitter, fit, out_dir: str | Path, name: str, overwrite: bool = False) -> Path:
    """Write one fitted face's result folder atomically; returns its final path."""
    result, images = build_outputs(fitter, fit)
    return writing.write_result_folder(result, images, out_dir, name, overwrite)
