"""Stage 2: analysis by synthesis with the project's renderer.

Starting from stage 1, the photo crop (224 x 224) is compared with a render of the model
(`FaceModel.render`: UV albedo times 9-band SH shading) on the face: pixels covered by the mesh whose UV
falls in DECA's ``uv_face_eye_mask``. Free: shape, expression, global pose, jaw, camera, the SH light
(9 x 3) and the albedo:

- FLAME's texture space when installed (50 codes, N(0, 1) prior), or else
- a per-texel albedo at 256 x 256, ``albedo = mean_texture * exp(delta)`` (the mean texture at its full
  resolution, 512, times the upsampled exponential of a 256 x 256 per-texel log-offset from the
  mean texture), regularised by the squared differences of neighbouring texels (smoothness) and by
  ``|delta|^2`` (stay near the mean texture where the photo says nothing). ``delta`` is parameterised as
  a sum of grids (16, 64 and 256 texels, bilinearly upsampled) so that Adam's per-element steps move
  smooth fields first instead of roughening single texels.

Energy (minimised with Adam):

    E = w_photo * mean_face_pixels |render - photo|^2
      + the stage-1 landmark energy and priors (see landmark_fit)
      + w_smooth * sum |grad delta|^2 + w_albedo * sum delta^2  (per-texel albedo)  or |tex|^2 / 2

The face pixels are chosen once, from the stage-1 render, and shrunk by a few pixels: the rasterizer gives
no gradient for pixels entering or leaving the mask, so a mask recomputed at every step would make the
energy disagree with its gradient (measured: steps along the gradient then raise the error). With the
fixed, eroded mask the energy is smooth in the parameters for the small motions of this stage.

The light is initialised by linear least squares (shading is linear in the SH coefficients) on the
stage-1 geometry with the initial albedo, then refined with everything else. The rasterizer's visibility
decision has no gradient (no silhouette term): geometry is pulled by shading (normals) and by where the
texture is sampled (barycentrics), as in DECA.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core.fitting.codes import FitCodes
from core.fitting.landmark_fit import CROP_SIZE, LandmarkFitConfig, jaw_prior_std
from core.render import sample_uv_map, sh_basis
from core.render.shading import SH_CONSTANTS

ALBEDO_SIZE = 256


@dataclass
class PhotometricFitConfig:
    iterations: int = 60
    optimizer: str = "adam"  # adam | lbfgs
    w_photo: float = 2.0e4  # weight of the mean squared colour error over the face pixels
    w_smooth: float = 100.0  # per-texel albedo: squared neighbour differences of the log-offset
    w_albedo: float = 0.05  # per-texel albedo: squared log-offset
    tex_std: float = 1.0  # texture-space prior
    landmarks: LandmarkFitConfig = field(default_factory=LandmarkFitConfig)
    landmark_weight: float = 1.0  # multiplies the stage-1 landmark energy
    lr_shape: float = 0.03
    lr_exp: float = 0.03
    lr_pose: float = 0.002
    lr_cam: float = 0.002
    lr_light: float = 0.01  # relative to the light's ambient level
    albedo_base_size: int | None = 256  # resolution of the mean texture during the fit (None: as installed)
    appearance_warmup: int = 0  # first iterations update only light and albedo
    albedo_levels: tuple[int, ...] = (16, 64, 256)  # the per-texel log-offset is a sum of these grids
    lr_albedo_levels: tuple[float, ...] = (0.02, 0.01, 0.003)
    lr_tex: float = 0.05
    fit_shape: bool = True
    mask_threshold: float = 0.5
    erode_px: int = 3  # the face mask, fixed from stage 1, shrunk by this much (see fit_photometric)


@dataclass
class PhotometricFitInfo:
    photo_rmse: np.ndarray  # (B,) RMS colour error on the face pixels, final
    photo_rmse_initial: np.ndarray  # (B,) the same with the stage-1 geometry and the initial light
    reprojection_px: np.ndarray  # (B,) mean landmark distance after the stage, pixels of the crop
    iterations: int
    albedo: torch.Tensor = field(repr=False)  # (B, 3, S, S) the fitted albedo
    render: torch.Tensor = field(repr=False)  # (B, 3, 224, 224) the final render
    mask: torch.Tensor = field(repr=False)  # (B, 1, 224, 224) the face pixels used


def face_pixel_mask(face_model, render, threshold: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) float: covered pixels whose UV lies in the UV face(-eye) mask."""
    m = sample_uv_map(face_model.uv_face_eye_mask.expand(render.uv_image.shape[0], -1, -1, -1).to(render.alpha),
                      render.uv_image)
    return ((m > threshold).to(render.alpha) * render.alpha).detach()


@torch.no_grad()
def solve_light(normals: torch.Tensor, albedo_image: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                ridge: float = 1e-4) -> torch.Tensor:
    """Least-squares SH light (B, 9, 3): image ~ albedo * sum_k light_k c_k Y_k(n) on the mask."""
    B = normals.shape[0]
    c = torch.tensor(SH_CONSTANTS, dtype=normals.dtype, device=normals.device)
    Y = sh_basis(normals, dim=1) * c[None, :, None, None]  # (B, 9, H, W)
    out = torch.zeros(B, 9, 3, dtype=normals.dtype, device=normals.device)
    for b in range(B):
        m = mask[b, 0] > 0
        if int(m.sum()) < 20:
            out[b, 0] = 1.0 / c[0]
            continue
        Yb = Y[b][:, m].T.double()  # (N, 9)
        for ch in range(3):
            A = Yb * albedo_image[b, ch][m].double()[:, None]
            y = image[b, ch][m].double()
            H = A.T @ A
            H = H + ridge * H.diagonal().mean() * torch.eye(9, dtype=H.dtype, device=H.device)
            out[b, :, ch] = torch.linalg.solve(H, A.T @ y).to(out.dtype)
    return out


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Binary erosion of a (B, 1, H, W) mask by `px` pixels (square structuring element)."""
    if px <= 0:
        return mask
    return 1.0 - F.max_pool2d(1.0 - mask, 2 * px + 1, stride=1, padding=px)


def _albedo_smoothness(delta: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    dx = (delta[..., :, 1:] - delta[..., :, :-1]) * (valid[..., :, 1:] * valid[..., :, :-1])
    dy = (delta[..., 1:, :] - delta[..., :-1, :]) * (valid[..., 1:, :] * valid[..., :-1, :])
    return (dx ** 2).sum() + (dy ** 2).sum()


def fit_photometric(face_model, images: torch.Tensor, init: FitCodes, target_ndc: torch.Tensor | None = None,
                    config: PhotometricFitConfig | None = None, shared_shape: bool = False,
                    landmark_weights: torch.Tensor | None = None) -> tuple[FitCodes, PhotometricFitInfo]:
    """Refine stage-1 codes photometrically.

    Args:
        face_model: `FaceModel` (image_size 224 or any; renders at the crop's size).
        images: (B, 3, 224, 224) photo crops in [0, 1] (the crop the codes' camera refers to).
        init: codes from stage 1 (or a regressor).
        target_ndc: (B, 68, 2) landmarks in crop NDC for the landmark term (None: no landmark term).
        shared_shape: one shape for the batch (one person).
    Returns:
        refined codes (with light and, with a texture space, tex) and `PhotometricFitInfo`.
    """
    cfg = config or PhotometricFitConfig()
    ref = face_model.flame.v_template
    images = images.to(ref)
    B, _, H, W = images.shape
    init = FitCodes(**{k: v.detach().to(ref) for k, v in init.__dict__.items()})
    lcfg = cfg.landmarks
    use_tex_space = bool(face_model.has_texture_space)

    # --- parameters
    shape0 = init.shape.mean(0, keepdim=True) if shared_shape else init.shape
    shape = torch.nn.Parameter(shape0.clone())
    exp = torch.nn.Parameter(init.exp.clone())
    glob = torch.nn.Parameter(init.pose[:, :3].clone())
    jaw = torch.nn.Parameter(init.pose[:, 3:].clone())
    s0 = init.cam[:, :1].abs().clamp_min(1e-6)
    log_s = torch.nn.Parameter(torch.zeros_like(s0))
    t_ndc = torch.nn.Parameter(init.cam[:, 1:] * s0)

    def codes_now(light_t, tex_t) -> FitCodes:
        sh = shape.expand(B, -1) if shared_shape else shape
        cam = torch.cat([s0 * log_s.exp(), t_ndc / s0], 1)
        return FitCodes(sh, exp, torch.cat([glob, jaw], 1), cam, tex_t, light_t)

    mean_tex = face_model.mean_texture.to(ref)
    if cfg.albedo_base_size and mean_tex.shape[-1] != cfg.albedo_base_size:
        mean_tex = F.interpolate(mean_tex, size=(cfg.albedo_base_size,) * 2, mode="bilinear", align_corners=False,
                                 antialias=True)
    mean_tex = mean_tex.expand(B, -1, -1, -1)
    tex_size = mean_tex.shape[-1]
    uv_valid = face_model.renderer.uv_rasterization(ALBEDO_SIZE).mask.to(ref)[None, None]
    if use_tex_space:
        tex = torch.nn.Parameter(init.tex.clone())
        delta = None
    else:
        tex = init.tex.clone()
        levels = [torch.nn.Parameter(torch.zeros(B, 3, n, n, dtype=ref.dtype, device=ref.device))
                  for n in cfg.albedo_levels]

    def log_offset() -> torch.Tensor:
        out = 0
        for lv in levels:
            out = out + (lv if lv.shape[-1] == ALBEDO_SIZE else
                         F.interpolate(lv, size=(ALBEDO_SIZE, ALBEDO_SIZE), mode="bilinear", align_corners=False))
        return out

    def albedo_now() -> torch.Tensor:
        if use_tex_space:
            return face_model.albedo(tex)
        d = log_offset()
        if tex_size != ALBEDO_SIZE:
            d = F.interpolate(d, size=(tex_size, tex_size), mode="bilinear", align_corners=False)
        return (mean_tex * d.exp()).clamp(0, 1)

    target = None if target_ndc is None else target_ndc.to(ref).detach()
    w_lmk = torch.as_tensor(lcfg.landmark_weights, dtype=ref.dtype, device=ref.device).expand(B, 68).clone()
    if landmark_weights is not None:
        w_lmk = w_lmk * torch.as_tensor(landmark_weights, dtype=ref.dtype, device=ref.device).expand(B, 68)

    # --- light: closed form on the stage-1 geometry
    with torch.no_grad():
        c0 = codes_now(init.light, tex)
        g0 = face_model.geometry(c0.shape, c0.exp, c0.pose, c0.cam)
        alb0 = albedo_now()
        r0 = face_model.render(g0.vertices, c0.cam, albedo=alb0, image_size=(H, W))
        mask0 = face_pixel_mask(face_model, r0, cfg.mask_threshold)
        fixed_mask = erode(mask0, cfg.erode_px)
        light0 = solve_light(r0.normal_image, r0.albedo_image, images, mask0)
        r0l = face_model.render(g0.vertices, c0.cam, albedo=alb0, light=light0, image_size=(H, W))
        rmse0 = _rmse(r0l.image, images, mask0)
    light_scale = light0[:, :1, :].abs().clamp_min(1e-3)  # ambient level per colour: the light's step size
    light_p = torch.nn.Parameter(light0 / light_scale)

    groups = [
        {"params": [glob, jaw], "lr": cfg.lr_pose},
        {"params": [log_s, t_ndc], "lr": cfg.lr_cam},
        {"params": [exp], "lr": cfg.lr_exp},
        {"params": [light_p], "lr": cfg.lr_light},
    ]
    if cfg.fit_shape:
        groups.append({"params": [shape], "lr": cfg.lr_shape})
    if use_tex_space:
        groups.append({"params": [tex], "lr": cfg.lr_tex})
    else:
        for lv, lr in zip(levels, cfg.lr_albedo_levels):
            groups.append({"params": [lv], "lr": lr})
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    n_shape_vec = 1 if shared_shape else B

    def energy():
        light = light_p * light_scale
        c = codes_now(light, tex)
        g = face_model.geometry(c.shape, c.exp, c.pose, c.cam)
        alb = albedo_now()
        r = face_model.render(g.vertices, c.cam, albedo=alb, light=light, image_size=(H, W))
        mask = fixed_mask
        n_pix = mask.sum((1, 2, 3)).clamp_min(1.0)
        mse = (((r.image - images) ** 2).sum(1, keepdim=True) * mask).sum((1, 2, 3)) / n_pix  # (B,)
        e = cfg.w_photo * mse.sum()
        e = e + (c.shape[:n_shape_vec] ** 2).sum() / (2 * lcfg.shape_std ** 2)
        e = e + (c.exp ** 2).sum() / (2 * lcfg.exp_std ** 2)
        e = e + ((c.pose[:, 3:] / jaw_prior_std(lcfg, c.pose)) ** 2).sum() / 2
        if target is not None and cfg.landmark_weight > 0:
            d2 = (((g.landmarks2d - target) * (CROP_SIZE / 2.0)) ** 2).sum(-1)
            e = e + cfg.landmark_weight * (w_lmk * d2).sum() / (2 * lcfg.sigma_px ** 2)
        if use_tex_space:
            e = e + (tex ** 2).sum() / (2 * cfg.tex_std ** 2)
        else:
            delta = log_offset()
            e = e + cfg.w_smooth * _albedo_smoothness(delta, uv_valid) + cfg.w_albedo * ((delta * uv_valid) ** 2).sum()
        return e, r, mask, g, alb, c

    it = 0
    if cfg.optimizer == "lbfgs":
        params = [p for g in groups for p in g["params"]]
        lb = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.iterations, history_size=20, tolerance_grad=1e-7,
                               tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            lb.zero_grad(set_to_none=True)
            e, *_ = energy()
            e.backward()
            return e
        lb.step(closure)
        it = int(lb.state[lb._params[0]].get("n_iter", cfg.iterations))
    else:
        geometry_params = [glob, jaw, log_s, t_ndc, exp, shape]
        for it in range(1, cfg.iterations + 1):
            opt.zero_grad(set_to_none=True)
            e, *_ = energy()
            e.backward()
            if it <= cfg.appearance_warmup:
                for p in geometry_params:
                    p.grad = None
            opt.step()
    with torch.no_grad():
        e, r, mask, g, alb, c = energy()
        rmse = _rmse(r.image, images, mask)
        reproj = (((g.landmarks2d - target) * (CROP_SIZE / 2.0)).norm(dim=-1).mean(1).cpu().numpy()
                  if target is not None else np.full(B, np.nan))
    out = FitCodes(c.shape.detach().clone(), c.exp.detach().clone(), c.pose.detach().clone(), c.cam.detach().clone(),
                   c.tex.detach().clone() if use_tex_space else torch.zeros_like(init.tex), c.light.detach().clone())
    return out, PhotometricFitInfo(photo_rmse=rmse, photo_rmse_initial=rmse0, reprojection_px=reproj, iterations=it,
                                   albedo=alb.detach(), render=r.image.detach(), mask=mask)


def _rmse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    n = mask.sum((1, 2, 3)).clamp_min(1.0)
    return ((((a - b) ** 2).sum(1, keepdim=True) * mask).sum((1, 2, 3)) / (3 * n)).sqrt().detach().cpu().numpy()
