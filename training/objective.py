"""One training step's forward pass and losses for each stage (the module DDP wraps).

* ``pretrain``: E_flame -> FLAME -> projected landmarks; L_lmk, L_eye (+ optional lip), shape/expression
  regularizers. No rendering.
* ``coarse``: as pretrain, plus the render of the coarse face (albedo, SH light): photometric loss on the
  skin mask, identity loss (when a face-recognition network is given), shape consistency L_sc (every image
  re-rendered with the shape code of another image of the same person, scored by the same data terms),
  albedo regularizer (and optional light / jaw regularizers).
* ``detail``: E_flame frozen; E_detail -> detail code, D_detail(jaw, exp, code) -> displacement -> detail
  normals -> render; detail photometric loss on the skin mask x UV face-eye region, ID-MRF (when VGG
  weights are given), detail consistency L_dc (detail code swapped with another image of the same person,
  expression and jaw kept), displacement regularizer L_regD and soft symmetry L_sym.

Weights: ``total = sum_k w_k * mean_batch(term_k)`` with ``w`` from :class:`~training.config.LossConfig`;
the composite terms ``sc`` and ``dc`` already carry the weights of their inner data terms.

That is the ``paper`` preset. The default ``release`` preset (``loss.formulas``) runs ``_coarse_release`` /
``_detail_release`` instead: DECA's released ``training_step``, the consistency terms as a doubled batch and
the detail losses in UV space (table in docs/training.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.networks import DecaNetworks, split_flame_codes

from .config import TrainingConfig
from .data import landmarks_to_ndc
from .losses import (detail_consistency_loss, displacement_regularizer, eye_closure_loss, identity_swap_index,
                     l2_regularizer, landmark_loss, lip_closure_loss, photometric_loss, symmetry_loss,
                     white_light_regularizer)

__all__ = ["DecaObjective", "StepOutput", "TERM_WEIGHTS"]

#: logged term -> LossConfig field weighting it in the total
TERM_WEIGHTS = {
    "lmk": "lmk", "eye": "eye", "lip": "lip", "pho": "pho", "id": "id", "sc": "sc",
    "reg_shape": "reg_shape", "reg_exp": "reg_exp", "reg_tex": "reg_tex", "reg_light": "reg_light",
    "reg_jaw": "reg_jaw", "pho_detail": "pho_detail", "mrf": "mrf", "dc": "dc", "sym": "sym",
    "reg_detail": "reg_detail", "reg_shading": "reg_shading",
}


@dataclass
class StepOutput:
    total: torch.Tensor  # scalar, differentiable
    terms: dict[str, torch.Tensor]  # unweighted batch means (detached scalars)
    vis: dict[str, torch.Tensor] | None = None  # (n, 3, H, W) images for TensorBoard


class DecaObjective(nn.Module):
    """Holds the networks (the only registered submodule, so DDP synchronises just them) and computes
    :class:`StepOutput` for a batch. The face model and the frozen perceptual networks are kept outside the
    module's parameters/buffers."""

    def __init__(self, nets: DecaNetworks, face, cfg: TrainingConfig, identity: nn.Module | None = None,
                 mrf: nn.Module | None = None, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.nets = nets
        self._aux = {"face": face, "identity": identity, "mrf": mrf}
        self.cfg = cfg
        self.stage = cfg.stage
        self.w = cfg.loss
        self.amp_dtype = amp_dtype
        lw = cfg.loss.landmark_weights
        self.lmk_weights = torch.tensor(lw, dtype=torch.float32) if lw else None

    @property
    def face(self):
        return self._aux["face"]

    def weight(self, term: str) -> float:
        return float(getattr(self.w, TERM_WEIGHTS[term]))

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------- terms
    def _data_terms(self, g, images, lmk_gt, skin, render=None, step_terms=None) -> dict[str, torch.Tensor]:
        """lmk / eye / lip (+ pho / id when ``render`` is given), per image."""
        t: dict[str, torch.Tensor] = {}
        lw = self.lmk_weights.to(g.landmarks2d.device) if self.lmk_weights is not None else None
        t["lmk"] = landmark_loss(g.landmarks2d, lmk_gt, lw)
        t["eye"] = eye_closure_loss(g.landmarks2d, lmk_gt)
        if self.w.lip > 0:
            t["lip"] = lip_closure_loss(g.landmarks2d, lmk_gt)
        if render is not None:
            t["pho"] = photometric_loss(render.image, images, skin)
            ident = self._aux["identity"]
            if ident is not None and self.w.id > 0:
                composite = render.image * render.alpha + images * (1.0 - render.alpha)
                t["id"] = ident(images, composite)
        return t

    def _weighted(self, per_image: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for k, v in per_image.items():
            term = self.weight(k) * v
            total = term if total is None else total + term
        return total

    # ------------------------------------------------------------------------------------------- stages
    def forward(self, batch: dict[str, torch.Tensor], step: int = 0, want_vis: bool = False) -> StepOutput:
        if self.stage == "detail":
            return self._detail(batch, step, want_vis)
        return self._coarse(batch, step, want_vis)

    def _encode(self, batch):
        """E_flame on the batch: ``(images, landmarks in NDC, skin mask, FlameCodes)``."""
        images = batch["image"]
        with self._autocast(images.device):
            params = self.nets.E_flame(images)
        return images, landmarks_to_ndc(batch["landmarks"]), batch["skin_mask"], split_flame_codes(params.float())

    def _coarse(self, batch, step: int, want_vis: bool) -> StepOutput:
        if self.w.formulas == "release":
            return self._coarse_release(batch, step, want_vis)
        face = self.face
        images, lmk_gt, skin, codes = self._encode(batch)
        B = images.shape[0]
        g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
        render = None
        terms: dict[str, torch.Tensor] = {}
        if self.stage == "coarse":
            albedo = face.albedo(codes.tex, B)
            render = face.render(g.vertices, codes.cam, albedo, codes.light)
        per = self._data_terms(g, images, lmk_gt, skin, render)
        if self.stage == "coarse" and self.w.sc > 0:
            swap = identity_swap_index(batch["identity"], self.cfg.train.seed, step)
            if bool((swap != torch.arange(B, device=swap.device)).any()):
                g2 = face.geometry(codes.shape[swap], codes.exp, codes.pose, codes.cam)
                r2 = face.render(g2.vertices, codes.cam, albedo, codes.light)
                per["sc"] = self._weighted(self._data_terms(g2, images, lmk_gt, skin, r2))
        per["reg_shape"] = l2_regularizer(codes.shape)
        per["reg_exp"] = l2_regularizer(codes.exp)
        if self.w.reg_jaw > 0:
            per["reg_jaw"] = l2_regularizer(codes.jaw_pose)
        if self.stage == "coarse":
            per["reg_tex"] = l2_regularizer(codes.tex)
            if self.w.reg_light > 0:
                per["reg_light"] = white_light_regularizer(codes.light)
        total = self._weighted({k: v.mean() for k, v in per.items()})
        terms = {k: v.detach().mean() for k, v in per.items()}
        vis = None
        if want_vis:
            vis = self._vis_coarse(images, batch["landmarks"], g, codes, render)
        return StepOutput(total, terms, vis)

    def _coarse_release(self, batch, step: int, want_vis: bool) -> StepOutput:
        """The released trainer's coarse / pretrain step (``decalib/trainer.py`` ``training_step``).

        Shape consistency doubles the batch: the codes of every image once with its own shape code and once
        with the shape code of another image of the same person, every term computed over the 2B images
        (batch means of the data terms, batch *sums* of the regularisers). Returned terms are the released
        batch scalars, unweighted; ``total = sum_k w_k * term_k``."""
        from .release_losses import (eye_distance_loss, identity_permutation, light_regularizer, lip_distance_loss,
                                     sum_regularizer, weighted_landmark_loss)

        face = self.face
        images, lmk_gt, skin, codes = self._encode(batch)
        B = images.shape[0]
        shape, exp, pose, cam, tex, light = codes.shape, codes.exp, codes.pose, codes.cam, codes.tex, codes.light
        if self.stage == "coarse" and self.w.sc > 0:
            # released: the batch is doubled whenever shape consistency is on, whatever the permutation drew
            perm = identity_permutation(batch["identity"], self.cfg.train.seed, step)
            shape = torch.cat([shape, shape[perm]])
            exp, pose, cam, tex, light = (torch.cat([x, x]) for x in (exp, pose, cam, tex, light))
            images, lmk_gt, skin = torch.cat([images, images]), torch.cat([lmk_gt, lmk_gt]), torch.cat([skin, skin])
        g = face.geometry(shape, exp, pose, cam)
        lw = self.lmk_weights.to(g.landmarks2d) if self.lmk_weights is not None else None
        t: dict[str, torch.Tensor] = {"lmk": weighted_landmark_loss(g.landmarks2d, lmk_gt, lw),
                                      "eye": eye_distance_loss(g.landmarks2d, lmk_gt)}
        if self.w.lip > 0:
            t["lip"] = lip_distance_loss(g.landmarks2d, lmk_gt)
        render = None
        if self.stage == "coarse":
            n = shape.shape[0]
            albedo = face.albedo(tex, n)
            render = face.render(g.vertices, cam, albedo, light)
            face_eye = F.grid_sample(face.uv_face_eye_mask.expand(n, -1, -1, -1).to(images), render.uv_grid.detach(),
                                     mode="bilinear", align_corners=False)
            predicted = render.image * face_eye * render.alpha
            if self.w.pho > 0:
                # useSeg: compared on the segmentation (skin) mask
                t["pho"] = (skin * (predicted - images).abs()).mean()
            ident = self._aux["identity"]
            if ident is not None and self.w.id > 0:
                # albedo and light detached (the identity loss shapes geometry only), face-eye region composited
                from core.render import sh_shading

                shading = sh_shading(render.normal_image, light.detach())
                albedo_img = F.grid_sample(albedo.detach(), render.uv_grid, mode="bilinear", align_corners=False)
                overlay = albedo_img * shading * face_eye + images * (1.0 - face_eye)
                t["id"] = ident(images, overlay).mean()
            t["reg_tex"] = sum_regularizer(tex)
            t["reg_light"] = light_regularizer(light)
        t["reg_shape"] = sum_regularizer(shape)
        t["reg_exp"] = sum_regularizer(exp)
        if self.w.reg_jaw > 0:
            t["reg_jaw"] = sum_regularizer(pose[:, 3:])
        total = None
        for k, v in t.items():
            total = self.weight(k) * v if total is None else total + self.weight(k) * v
        terms = {k: v.detach() for k, v in t.items()}
        vis = None
        if want_vis:
            vis = self._vis_coarse(images[:B], batch["landmarks"], g, codes, render)
        return StepOutput(total, terms, vis)

    def _detail(self, batch, step: int, want_vis: bool) -> StepOutput:
        if self.w.formulas == "release":
            return self._detail_release(batch, step, want_vis)
        face = self.face
        nets = self.nets
        images = batch["image"]
        skin = batch["skin_mask"]
        B = images.shape[0]
        with torch.no_grad():
            with self._autocast(images.device):
                params = nets.E_flame(images)
            codes = split_flame_codes(params.float())
            g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
            albedo = face.albedo(codes.tex, B)
        with self._autocast(images.device):
            detail = nets.E_detail(images)
        detail = detail.float()
        uv_z = nets.D_detail.decode(codes.jaw_pose, codes.exp, detail).float()
        normals, _ = face.detail_normals(g.vertices, uv_z)
        render = face.render(g.vertices, codes.cam, albedo, codes.light, normal_map=normals)
        region = F.grid_sample(face.uv_face_eye_mask.expand(B, -1, -1, -1).to(images), render.uv_grid,
                               mode="bilinear", align_corners=False)
        mask = skin * region * render.alpha
        mrf = self._aux["mrf"] if self.w.mrf > 0 else None

        def detail_image_loss(pred, target, m):
            out = self.w.pho_detail * photometric_loss(pred, target, m)
            if mrf is not None:
                out = out + self.w.mrf * mrf(pred, target, m)
            return out

        per: dict[str, torch.Tensor] = {"pho_detail": photometric_loss(render.image, images, mask)}
        if mrf is not None:
            per["mrf"] = mrf(render.image, images, mask)
        if self.w.dc > 0:
            swap = identity_swap_index(batch["identity"], self.cfg.train.seed, step)
            if bool((swap != torch.arange(B, device=swap.device)).any()):
                per["dc"] = detail_consistency_loss(face, nets.D_detail, codes, g.vertices, detail, swap, images,
                                                    skin * region, albedo=albedo, image_loss=detail_image_loss,
                                                    base=render)
        uv_mask = face.uv_face_eye_mask.to(uv_z)
        per["sym"] = symmetry_loss(uv_z, uv_mask)
        per["reg_detail"] = displacement_regularizer(uv_z, uv_mask)
        total = self._weighted({k: v.mean() for k, v in per.items()})
        terms = {k: v.detach().mean() for k, v in per.items()}
        vis = None
        if want_vis:
            with torch.no_grad():
                coarse = face.render(g.vertices, codes.cam, albedo, codes.light)
            vis = {"input": images, "coarse": _over(coarse, images), "detail": _over(render, images),
                   "detail_shading": _gray(render), "displacement": (uv_z / 0.01 * 0.5 + 0.5).clamp(0, 1)}
        return StepOutput(total, terms, vis)

    def _detail_release(self, batch, step: int, want_vis: bool) -> StepOutput:
        """The released trainer's detail step (``decalib/trainer.py`` ``training_step``, detail branch).

        Detail consistency doubles the batch (every code twice, the detail codes once as they are and once
        permuted within each person). Everything is compared in UV space: the detail texture
        ``albedo.detach() * SH(detail normals, light.detach())`` against the photo unwrapped through the
        screen vertices, on ``visibility = unwrapped segmentation x self-occlusion (normal z) x face-eye mask``,
        both cut to the UV face box and resized to 256 (:func:`release_losses.uv_face_patch`). Terms (returned
        unweighted, the released batch scalars): ``pho_detail`` (mean L1, x ``pho_detail``), ``mrf`` (released
        ID-MRF summed over the batch, x ``pho_detail * mrf``), ``reg_detail`` (mean ``|uv_z|`` over the whole
        map), ``reg_shading`` (shading smoothness), ``sym`` (soft symmetry on the eroded invisible texels)."""
        from core.render import sh_shading
        from core.render.detail_normals import deca_vertex_normals

        from .release_losses import (binary_erosion, identity_permutation, self_occlusion_visible,
                                     shading_smoothness, soft_symmetry, uv_face_patch)

        face = self.face
        nets = self.nets
        images, skin = batch["image"], batch["skin_mask"]
        with torch.no_grad():
            with self._autocast(images.device):
                params = nets.E_flame(images)
            codes = split_flame_codes(params.float())
        with self._autocast(images.device):
            detail = nets.E_detail(images)
        detail = detail.float()
        shape, exp, pose, cam, tex, light = codes.shape, codes.exp, codes.pose, codes.cam, codes.tex, codes.light
        if self.w.dc > 0:
            perm = identity_permutation(batch["identity"], self.cfg.train.seed, step)
            detail = torch.cat([detail, detail[perm]])
            shape, exp, pose, cam, tex, light = (torch.cat([x, x]) for x in (shape, exp, pose, cam, tex, light))
            images, skin = torch.cat([images, images]), torch.cat([skin, skin])
        n = images.shape[0]
        with torch.no_grad():
            g = face.geometry(shape, exp, pose, cam)
            albedo = face.albedo(tex, n)
        uv_z = nets.D_detail.decode(pose[:, 3:], exp, detail).float()
        uv_size = uv_z.shape[-1]
        if albedo.shape[-1] != uv_size:  # released FLAMETex: F.interpolate to the UV size (nearest)
            albedo = F.interpolate(albedo, size=(uv_size, uv_size))
        normals, _ = face.detail_normals(g.vertices, uv_z)
        uv_shading = sh_shading(normals, light.detach())
        uv_texture = albedo.detach() * uv_shading
        renderer = face.renderer
        with torch.no_grad():
            # released trans_verts: s * (X + t), y and z negated (z scaled by s too, unlike our screen depth)
            trans = torch.cat([g.verts_screen[..., :2], -cam[:, None, 0:1] * g.vertices[..., 2:3]], dim=-1)
            uv_pverts = renderer.world_to_uv(trans, uv_size)
            uv_gt = F.grid_sample(torch.cat([images, skin], dim=1), uv_pverts.permute(0, 2, 3, 1)[..., :2],
                                  mode="bilinear", align_corners=False)
            uv_texture_gt, uv_mask_gt = uv_gt[:, :3], uv_gt[:, 3:]
            uv_pnorm = renderer.world_to_uv(deca_vertex_normals(trans, face.flame.faces), uv_size)
            uv_vis = uv_mask_gt * self_occlusion_visible(uv_pnorm[:, 2:3]) * face.uv_face_eye_mask.to(uv_z)
        tex_patch, gt_patch, vis_patch = (uv_face_patch(x) for x in (uv_texture, uv_texture_gt, uv_vis))
        t: dict[str, torch.Tensor] = {"pho_detail": (tex_patch * vis_patch - gt_patch * vis_patch).abs().mean()}
        mrf = self._aux["mrf"] if self.w.mrf > 0 else None
        if mrf is not None:
            t["mrf"] = mrf(tex_patch * vis_patch, gt_patch * vis_patch)
        t["reg_detail"] = uv_z.abs().mean()
        t["reg_shading"] = shading_smoothness(uv_shading)
        if self.w.sym > 0:
            t["sym"] = soft_symmetry(uv_z, 1.0 - binary_erosion(uv_vis))
        weights = {k: self.weight(k) for k in t}
        if "mrf" in t:  # released: mrf_loss(...) * photo_D * mrf
            weights["mrf"] = self.w.pho_detail * self.w.mrf
        total = sum(weights[k] * v for k, v in t.items())
        terms = {k: v.detach() for k, v in t.items()}
        vis = None
        if want_vis:
            with torch.no_grad():
                B = batch["image"].shape[0]
                coarse = face.render(g.vertices[:B], cam[:B], albedo[:B], light[:B])
                detail_img = F.grid_sample(uv_texture[:B].detach(), coarse.uv_grid, align_corners=False) * coarse.alpha
            vis = {"input": batch["image"], "coarse": _over(coarse, batch["image"]),
                   "detail": (detail_img + batch["image"] * (1 - coarse.alpha)).clamp(0, 1),
                   "uv_visibility": uv_vis[:B].expand(-1, 3, -1, -1),
                   "displacement": (uv_z[:B].detach() / 0.01 * 0.5 + 0.5).clamp(0, 1)}
        return StepOutput(total, terms, vis)

    @torch.no_grad()
    def _vis_coarse(self, images, lmk_px, g, codes, render) -> dict[str, torch.Tensor]:
        from core.render import ndc_to_pixels

        out = {"input": images, "landmarks": _draw_points(images, [lmk_px, ndc_to_pixels(g.landmarks2d, images.shape[-1])],
                                                          [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0)])}
        if render is not None:
            out["render"] = _over(render, images)
            shape_only = self.face.render(g.vertices, codes.cam, None, _white_light(codes.light))
            out["shape"] = _gray(shape_only)
        return out


def _over(render, images: torch.Tensor) -> torch.Tensor:
    return (render.image * render.alpha + images * (1 - render.alpha)).clamp(0, 1).detach()


def _gray(render) -> torch.Tensor:
    if render.shading_image is None:
        return render.alpha.expand(-1, 3, -1, -1)
    s = render.shading_image.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return (s * render.alpha).clamp(0, 1).detach()


def _white_light(light: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(light)
    out[:, 0] = 3.0
    out[:, 3] = 1.0
    return out


def _draw_points(images: torch.Tensor, point_sets, colours, radius: int = 1) -> torch.Tensor:
    """Copies of ``images`` with small squares at each point set (pixels, (B, N, 2))."""
    out = images.detach().clone()
    B, _, H, W = out.shape
    for pts, col in zip(point_sets, colours):
        c = torch.tensor(col, dtype=out.dtype, device=out.device).view(3, 1)
        p = pts.detach().floor().long()
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                x = (p[..., 0] + dx).clamp(0, W - 1)
                y = (p[..., 1] + dy).clamp(0, H - 1)
                for b in range(B):
                    out[b, :, y[b], x[b]] = c
    return out
