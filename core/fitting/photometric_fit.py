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
from core.fitting.landmark_fit import CROP_SIZE, LandmarkFitConfig, jaw_prior_std, spd_solve
from core.render import (barycentric_at, orthographic_project, rasterize, sample_uv_map, sh_basis, uv_to_ndc,
                         vertex_normals)
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
    # Render only the fixed face pixels (`FacePixelRenderer`, same colours) instead of the whole crop, and
    # re-rasterize them every `raster_every` steps (the face under a pixel is held in between).
    # Measured on 8 synthetic faces (posed median / mean error, mm; dlib's landmarks, then exact ones):
    # whole-crop render every step 1.189 / 1.580, 0.687 / 0.982 (float rounding alone moves these by ~0.01);
    # face pixels re-rasterized every 2nd step (the default; CPU time of the stage 0.63x) 1.191 / 1.573,
    # 0.688 / 0.981; + a checkerboard of them (pixel_step 2; 0.53x) 1.186 / 1.574 but 0.691 / 0.985, also
    # with all pixels in the last 15 or 30 steps; every 3rd step 1.211 / 1.594; 40 steps 1.212 / 1.610.
    face_pixels_only: bool = True
    raster_every: int = 2
    raster_px: float | None = None  # ... or sooner, once a vertex moved this many pixels since the last time
    pixel_step: int = 1  # use the face pixels with (row + column) % pixel_step == 0 (2: a checkerboard)


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
            out[b, :, ch] = spd_solve(H, A.T @ y).to(out.dtype)
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


def bilinear_upsample_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) matrix M with ``M @ X @ M.T`` = ``F.interpolate(X, (n_out, n_out), mode="bilinear",
    align_corners=False)`` for upsampling (n_out >= n_in): the same source index rule (pixel centres, clamped
    at 0) and the same two-tap weights."""
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    w1 = src - i0
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    M.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    M.index_put_((rows, i1), w1, accumulate=True)
    return M.to(dtype=like.dtype, device=like.device)


class FacePixelRenderer:
    """`FaceModel.render`'s colour (UV albedo x SH shading), computed only at a fixed set of face pixels.

    The photometric energy looks only at the fixed, eroded face mask (a third of the crop or less), so
    everything per pixel (barycentrics, UV, normals, albedo lookup, shading) and its backward pass is done
    there alone, with the same formulas as `core.render.MeshRenderer` (the colours equal its image at those
    pixels to float rounding; tests/test_fitting.py checks it). Which face covers a pixel is a hard,
    gradient-free decision: it is re-rasterized every ``raster_every`` calls (or sooner, once a vertex moved
    ``raster_px`` pixels) and held in between, while the barycentrics always follow the current vertices
    (for the small motions of this stage a pixel rarely changes face; the accuracy this costs is measured
    in `PhotometricFitConfig`'s comment and benchmarks/bench_fitting.py).

    Args:
        mask: (B, 1, H, W) the pixels to render (> 0.5).
        raster_every: rasterize on the first call and then every this many calls.
        raster_px: also rasterize when a vertex moved more than this (pixels) since the last time.
    """

    def __init__(self, face_model, mask: torch.Tensor, raster_every: int = 1,
                 raster_px: float | None = None) -> None:
        r = face_model.renderer
        self.faces = r.faces
        self.face_uvs = r.face_uvs
        self.renormalize = r.renormalize_normals
        B, _, H, W = mask.shape
        self.B, self.H, self.W = B, H, W
        pix = torch.nonzero(mask.reshape(-1) > 0.5).squeeze(1)  # sorted: batch-major
        self.pix = pix
        self.batch = torch.div(pix, H * W, rounding_mode="floor")
        rem = pix - self.batch * (H * W)
        row = torch.div(rem, W, rounding_mode="floor")
        self.centre = torch.stack([rem - row * W, row], 1).to(mask.dtype) + 0.5  # (N, 2) pixel centres (x, y)
        self.raster_every = max(1, int(raster_every))
        self.raster_px = raster_px
        self.calls = 0
        self.rasterizations = 0
        self._vs_raster: torch.Tensor | None = None
        self.face: torch.Tensor | None = None  # (N,) face id per pixel, -1 uncovered

    def gather(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (N, C) at the pixels."""
        return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1]).index_select(0, self.pix)

    def __call__(self, vertices: torch.Tensor, cam: torch.Tensor, albedo: torch.Tensor,
                 light: torch.Tensor) -> torch.Tensor:
        """(N, 3) colours at the pixels (0 where no face covers one), differentiable like the renderer's."""
        vs = orthographic_project(vertices, cam)
        due = self.face is None or self.calls % self.raster_every == 0
        if not due and self.raster_px is not None:  # re-rasterize early once any vertex moved that far
            moved = float((vs.detach()[..., :2] - self._vs_raster).abs().amax()) * max(self.H, self.W) / 2.0
            due = moved > self.raster_px
        if due:
            frag = rasterize(vs.detach(), self.faces, (self.H, self.W), cull_backfaces=False)
            self.face = frag.face_ids.reshape(-1).index_select(0, self.pix)
            self._vs_raster = vs.detach()[..., :2].clone()
            self.calls = 0
            self.rasterizations += 1
        self.calls += 1
        sel = torch.nonzero(self.face >= 0).squeeze(1)
        f = self.face.index_select(0, sel)
        b = self.batch.index_select(0, sel)
        V = vertices.shape[1]
        idx = (self.faces.index_select(0, f) + (b * V)[:, None]).reshape(-1)  # (n * 3,)
        tri = vs[..., :2].reshape(-1, 2).index_select(0, idx).view(-1, 3, 2)
        tri_pix = (tri + 1.0) * tri.new_tensor([self.W / 2.0, self.H / 2.0])
        bary = barycentric_at(tri_pix, self.centre.index_select(0, sel).to(tri.dtype))[..., None]  # (n, 3, 1)
        uv = (bary * self.face_uvs.to(tri.dtype).index_select(0, f)).sum(1)  # (n, 2)
        vn = vertex_normals(vertices, self.faces).reshape(-1, 3).index_select(0, idx).view(-1, 3, 3)
        n = (bary * vn).sum(1)
        if self.renormalize:
            n = n / n.norm(dim=1, keepdim=True).clamp_min(torch.finfo(n.dtype).eps)
        c = torch.tensor(SH_CONSTANTS, dtype=light.dtype, device=light.device)
        basis = sh_basis(n)  # (n, 9)
        grid = uv_to_ndc(uv).to(albedo.dtype)
        counts = torch.bincount(b, minlength=self.B).tolist()
        cols = []
        for k, (g, y) in enumerate(zip(grid.split(counts), basis.split(counts))):
            alb = F.grid_sample(albedo[k:k + 1], g.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                                align_corners=False)[0, :, 0].T  # (n_k, 3)
            cols.append(alb * (y @ (light[k] * c[:, None]).to(y.dtype)))
        colour = torch.cat(cols) if cols else vs.new_zeros(0, 3)
        return vs.new_zeros(self.pix.shape[0], 3).index_put((sel,), colour)


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

        # Bilinear upsampling as two small matrix products (separable, same values as F.interpolate): its
        # backward is a matmul, not upsample_bilinear2d_backward (measured: that was ~10 % of a step).
        up = {n: bilinear_upsample_matrix(n, ALBEDO_SIZE, ref) for n in cfg.albedo_levels if n != ALBEDO_SIZE}

    def log_offset() -> torch.Tensor:
        out = 0
        for lv in levels:
            out = out + (lv if lv.shape[-1] == ALBEDO_SIZE else up[lv.shape[-1]] @ lv @ up[lv.shape[-1]].T)
        return out

    def albedo_now(d: torch.Tensor | None = None) -> torch.Tensor:
        """The albedo; `d` is the log-offset when already computed."""
        if use_tex_space:
            return face_model.albedo(tex)
        d = log_offset() if d is None else d
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

    energy_mask = fixed_mask  # the pixels the energy sums over (the result keeps the whole fixed mask)
    if cfg.pixel_step > 1:
        ii, jj = torch.meshgrid(torch.arange(H, device=ref.device), torch.arange(W, device=ref.device), indexing="ij")
        energy_mask = fixed_mask * ((ii + jj) % cfg.pixel_step == 0).to(fixed_mask)
    pixels = (FacePixelRenderer(face_model, energy_mask, cfg.raster_every, cfg.raster_px) if cfg.face_pixels_only
              else None)
    photo_px = pixels.gather(images) if pixels is not None else None
    n_pix = energy_mask.sum((1, 2, 3)).clamp_min(1.0)

    def energy(full: bool = False):
        light = light_p * light_scale
        c = codes_now(light, tex)
        g = face_model.geometry(c.shape, c.exp, c.pose, c.cam)
        delta = None if use_tex_space else log_offset()
        alb = albedo_now(delta)
        mask = fixed_mask
        if pixels is None or full:
            r = face_model.render(g.vertices, c.cam, albedo=alb, light=light, image_size=(H, W))
            mse = (((r.image - images) ** 2).sum(1, keepdim=True) * energy_mask).sum((1, 2, 3)) / n_pix  # (B,)
        else:
            r = None
            per_px = ((pixels(g.vertices, c.cam, alb, light) - photo_px) ** 2).sum(1)  # (N,)
            mse = per_px.new_zeros(B).index_add(0, pixels.batch, per_px) / n_pix
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
        e, r, mask, g, alb, c = energy(full=True)
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
