"""The result folder of a fit: the same files and keys as the regressor's (docs/CONVENTIONS.md).

Built from `core.pipeline`'s public helpers (``writing``: temporary folder, OBJ/MTL, PNG encoding, atomic
commit; ``textures``: the texture crop, the photo unwrap, the displacement and normal encodings) so a fit's
folder is indistinguishable in layout from ``reconstruct``'s. Differences are recorded in the data:
``mode`` (``fit`` / ``deca+fit``), ``animatable_detail`` and ``extra_*`` keys:

- ``extra_albedo_source``: ``texture_space`` or ``fitted_per_texel`` (stage 2) or ``mean_texture``;
- ``extra_detail_source``: ``shading (static, not animatable)`` or ``deca_detail_decoder``;
- ``extra_now_landmarks`` / ``extra_now_landmarks_neutral``: the 7 NoW landmarks (3D) of the posed and of
  the neutral identity mesh, for `core.evaluation`;
- ``extra_fit_*``: reprojection errors (pixels of the 224 crop) after each stage, the photometric RMSE,
  the stage times.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from core.evaluation.now import NOW_LANDMARKS_68
from core.fitting.detail import displacement_from_shading, placeholder_wrinkles
from core.flame.lbs import axis_angle_to_matrix
from core.frontend import warp_image
from core.pipeline import textures as tx
from core.pipeline import writing
from core.pipeline.result import ReconstructionResult
from core.pipeline.rig import build_rig

TEXTURE_SIZE = 512
_C0 = 1.0 / math.sqrt(4 * math.pi)
_C1 = (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
_OVERLAY_LIGHT = np.zeros((9, 3), np.float32)
_OVERLAY_LIGHT[0] = 0.5 / _C0
_OVERLAY_LIGHT[3] = 0.45 / _C1
_OVERLAY_LIGHT[2] = 0.12 / _C1
_RED, _GREEN = (1.0, 0.15, 0.1), (0.1, 1.0, 0.2)


def crop_ndc_to_photo(points_ndc: np.ndarray, crop) -> np.ndarray:
    return crop.apply_inverse((np.asarray(points_ndc, np.float64) + 1.0) * crop.size / 2.0)


@torch.no_grad()
def build_outputs(fitter, fit) -> tuple[ReconstructionResult, dict]:
    """The ReconstructionResult and the images of one fitted face."""
    fm = fitter.face_model
    c = fit.codes
    dev = fm.flame.v_template.device
    geom = fm.geometry(c.shape, c.exp, c.pose, c.cam)
    lmk_photo = crop_ndc_to_photo(geom.landmarks2d[0].cpu().numpy(), fit.crop)

    # --- details
    animatable = False
    wrinkles = None
    detail_code = np.zeros(128, np.float32)
    if fit.mode == "deca+fit" and fit.detail is not None and fitter.reconstructor is not None:
        rec = fitter.reconstructor
        detail_code = np.asarray(fit.detail, np.float32)
        dt = torch.as_tensor(detail_code[None], device=rec.device)
        exp_np, jaw_np = c.exp[0].cpu().numpy(), c.pose[0, 3:].cpu().numpy()

        fields = SimpleNamespace(detail=detail_code, source_image=fit.source)  # what decode_displacement reads
        disp = np.asarray(rec.decode_displacement(fields, exp_np, jaw_np), np.float32)
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
    rot = axis_angle_to_matrix(c.pose[:, :3])
    normals_object = F.normalize(torch.einsum("bji,bjhw->bihw", rot.to(normals), normals), dim=1, eps=1e-8)
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
    grey = torch.full((1, 3, 8, 8), 0.78, device=dev)
    light = torch.as_tensor(_OVERLAY_LIGHT, device=dev)[None]
    r = fm.render(geom.vertices, tcam, albedo=grey, light=light, normal_map=normals, image_size=tcrop.size)
    a = r.alpha * 0.75
    overlay = tx.to_hwc((crop_img * (1 - a) + r.image.clamp(0, 1) * a).clamp(0, 1))
    radius = max(1.2, tcrop.size / 250)
    tx.draw_points(overlay, tcrop.apply(fit.detection.landmarks), _GREEN, radius=radius)
    tx.draw_points(overlay, tcrop.apply(lmk_photo), _RED, radius=radius)

    # --- the result
    np1 = lambda t: t[0].detach().float().cpu().numpy()  # noqa: E731
    shape = np1(c.shape)
    rig = build_rig(fitter.face_assets.flame, shape, n_expression=50)
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
        **fit.detection.record(),
        "texture_crop_size": np.int64(tcrop.size),
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
        tex=np1(c.tex) if fm.has_texture_space else np.zeros(50, np.float32), light=np1(c.light),
        detail=detail_code, vertices=np1(geom.vertices), landmarks2d=lmk_photo, landmarks3d=np1(geom.landmarks3d),
        detected_landmarks=fit.detection.landmarks.copy(), crop_matrix=fit.crop.matrix.copy(),
        faces=np.asarray(fitter.face_assets.flame.faces, np.int64), uv_coords=np.asarray(t.uv_coords, np.float64),
        uv_faces=np.asarray(t.uv_faces, np.int64), rig_template=rig.template, rig_expr_basis=rig.expr_basis,
        rig_posedirs=rig.posedirs, rig_weights=rig.weights, rig_joints=rig.joints, rig_parents=rig.parents,
        displacement=disp, displacement_scale=tx.displacement_scale(disp), wrinkles=wrinkles,
        flame_model=fitter.flame_description, is_test_model=bool(fitter.face_assets.flame.is_test_model),
        animatable_detail=animatable, mode=fit.mode, extra=extra,
    )
    images = {"texture": texture, "albedo": albedo, "normals_object": tx.to_hwc(normals_object), "overlay": overlay}
    return result, images


def c_np(t: torch.Tensor) -> np.ndarray:
    return t[0].detach().float().cpu().numpy()


def write_fit_result(fitter, fit, out_dir: str | Path, name: str, overwrite: bool = False) -> Path:
    """Write one fitted face's result folder atomically; returns its final path."""
    result, images = build_outputs(fitter, fit)
    out = Path(out_dir)
    tmp = writing.new_temp_folder(out, name)
    try:
        result.save(tmp)
        writing.write_obj(tmp, result.vertices, result.faces, result.uv_coords, result.uv_faces)
        png = writing.encode_png
        writing.write_bytes(tmp / "texture.png", png(tx.to_hwc(images["texture"])))
        writing.write_bytes(tmp / "albedo.png", png(tx.to_hwc(images["albedo"])))
        writing.write_bytes(tmp / "displacement.png",
                            png(tx.encode_displacement(result.displacement, result.displacement_scale), bits=16))
        writing.write_bytes(tmp / "detail_normals.png", png(tx.encode_normals(images["normals_object"])))
        writing.write_bytes(tmp / "overlay.png", png(images["overlay"]))
        return writing.commit_folder(tmp, out / name, overwrite)
    except BaseException:
        writing.discard(tmp)
        raise
