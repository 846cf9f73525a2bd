"""Fit-only details: a static displacement from the shading the coarse fit does not explain.

Without DECA's detail decoder there is no model of how wrinkles move with expression. What the photo does
show is fine shading the coarse mesh cannot explain. A simple shape-from-shading heuristic turns it into a
*static* displacement map:

1. ratio = luminance(photo) / luminance(render) on the fitted face pixels (the render is albedo x shading
   of the coarse fit, so the ratio is what the coarse surface misses);
2. high-pass its logarithm (minus a Gaussian blur of ``HIGHPASS_SIGMA_PX`` pixels of the 224 crop): keeps
   creases and pores, drops what the albedo or light fit left at low frequency;
3. map it into UV (unwrap with occlusion), keep the visible texels inside ``uv_face_eye_mask``, smooth the
   seam;
4. darker than explained = deeper: ``uv_z = -GAIN_M * highpass`` clipped to +-``CLIP_M`` (about a
   millimetre, the size of DECA's details).

This is not metric; it is marked as not animatable (``animatable_detail = False``) and the wrinkle model is
a placeholder that returns this map for every expression (`placeholder_wrinkles`: one zero map, zero
matrix, ``explained_variance = 0``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.results.result import WrinkleModel

HIGHPASS_SIGMA_PX = 3.0
GAIN_M = 0.002  # metres of displacement per unit of high-passed log-luminance ratio
CLIP_M = 0.0015
UV_SIZE = 256
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _masked_blur(x: torch.Tensor, m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised convolution: blur of x inside the mask m (no bleeding from outside)."""
    return _gaussian_blur(x * m, sigma) / _gaussian_blur(m, sigma).clamp_min(1e-6)


@torch.no_grad()
def displacement_from_shading(face_model, image: torch.Tensor, render_image: torch.Tensor, mask: torch.Tensor,
                              vertices: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Static ``uv_z`` (B, 1, 256, 256), metres along the normal (see the module docstring).

    Args:
        image: (B, 3, H, W) photo crop; render_image: (B, 3, H, W) the fitted render of that crop;
        mask: (B, 1, H, W) the face pixels the fit used; vertices (B, V, 3) and cam (B, 3) of the fit.
    """
    luma = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    lp = (image * luma).sum(1, keepdim=True).clamp_min(1e-3)
    lr = (render_image * luma).sum(1, keepdim=True).clamp_min(1e-3)
    m = (mask > 0.5).to(image.dtype)
    log_ratio = torch.log(lp / lr) * m
    high = (log_ratio - _masked_blur(log_ratio, m, HIGHPASS_SIGMA_PX)) * m
    img = torch.cat([high, m], 1)
    uv, visible = face_model.renderer.unwrap_texture(img, vertices, cam, size=UV_SIZE, occlusion=True)
    weight = (uv[:, 1:2] > 0.99).to(image.dtype) * visible.to(image.dtype) * face_model.uv_face_eye_mask.to(image)
    weight = weight * (_gaussian_blur(weight, 1.5) > 0.95).to(image.dtype)  # away from the seam
    uv_z = (-GAIN_M * uv[:, :1] * weight).clamp(-CLIP_M, CLIP_M)
    return uv_z


def placeholder_wrinkles(displacement: np.ndarray) -> WrinkleModel:
    """A wrinkle model that returns `displacement` for every expression (not animatable)."""
    d = np.asarray(displacement, np.float32)
    return WrinkleModel(base=d.copy(), maps=np.zeros((1,) + d.shape, np.float32),
                        matrix=np.zeros((1, 53), np.float32), explained_variance=0.0)
