"""The photo's texture in UV space (the result folder's image encodings are in `core.results.encodings`).

`photo_texture` unwraps the photo into FLAME's UV layout. It samples a *texture crop* (`texture_crop`):
the network crop's square enlarged 1.5x about its centre (DECA's own crop cuts off the forehead),
resampled at the square's size in photo pixels clamped to [224, 640]; in it the camera is the network's
with the scale divided by 1.5. So large photos are used at (up to) full useful resolution, and the
occlusion test rasterizes a bounded image. Texels are kept where they are visible (not occluded, inside the
photo, inside the face region ``uv_face_eye_mask``); the rest is the mean texture, colour-matched to
the visible skin (per-channel gain, clamped to [0.5, 2]); the seam is feathered over a few texels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.frontend import CropTransform

TEXTURE_CROP_MIN, TEXTURE_CROP_MAX = 224, 640
TEXTURE_CROP_ENLARGE = 1.5  # the texture crop's square is this much larger than the network's (same centre)
FEATHER = 7  # texels of the box blur that softens the visibility seam (at 512)


def texture_crop(crop: CropTransform, enlarge: float = TEXTURE_CROP_ENLARGE) -> CropTransform:
    """The texture crop: the network crop's square enlarged by ``enlarge`` about its centre (so the forehead
    and the ears are in it), at its size in photo pixels clamped to [224, 640]. A point's image NDC in it is
    its NDC in the network crop divided by ``enlarge``: the camera is ``(s / enlarge, tx, ty)``."""
    m = crop.matrix
    if abs(m[0, 1]) > 1e-9 * abs(m[0, 0]) or abs(m[1, 0]) > 1e-9 * abs(m[0, 0]):
        raise ValueError("the texture crop needs an axis-aligned crop (DECA's crop never rotates)")
    inv = crop.inverse()
    centre = inv[:2, :2] @ np.array([crop.size / 2.0, crop.size / 2.0]) + inv[:2, 2]
    side = crop.size / crop.scale * enlarge
    size = int(min(TEXTURE_CROP_MAX, max(TEXTURE_CROP_MIN, round(side))))
    return CropTransform.from_square(centre, side, size)


def texture_crop_camera(cam: torch.Tensor, enlarge: float = TEXTURE_CROP_ENLARGE) -> torch.Tensor:
    return cam * cam.new_tensor([1.0 / enlarge, 1.0, 1.0])


def inside_photo_mask(crop: CropTransform, photo_hw: tuple[int, int]) -> np.ndarray:
    """(size, size) float mask of the crop's pixels whose centre maps inside the photo."""
    inverse = crop.inverse()
    c = np.arange(crop.size, dtype=np.float64) + 0.5
    u, v = np.meshgrid(c, c)
    px = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
    py = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
    h, w = photo_hw
    return ((px >= 0) & (px <= w) & (py >= 0) & (py <= h)).astype(np.float32)


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return x
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def photo_texture(face_model, crop_image: torch.Tensor, inside: torch.Tensor, vertices: torch.Tensor,
                  cam: torch.Tensor, size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Unwrap one texture crop into UV space and fill the rest with the colour-matched mean texture.

    Args:
        face_model: the `FaceModel` (renderer, masks, mean texture).
        crop_image: (1, 3, S, S) the texture crop; inside: (1, 1, S, S) 1 where it lies inside the photo.
        vertices: (1, V, 3) posed mesh; cam: (1, 3) its camera in the crop's image NDC.
    Returns:
        texture (1, 3, size, size) in [0, 1] and the weight (1, 1, size, size) of the photo in it.
    """
    img = torch.cat([crop_image, inside.to(crop_image)], 1)
    unwrapped, visible = face_model.renderer.unwrap_texture(img, vertices, cam, size=size, occlusion=True)
    colour, in_photo = unwrapped[:, :3], unwrapped[:, 3:4] > 0.99
    face = F.interpolate(face_model.uv_face_eye_mask, size=(size, size), mode="bilinear", align_corners=False)
    hard = visible.to(colour.dtype) * in_photo.to(colour.dtype) * (face > 0.5).to(colour.dtype)
    mean = face_model.mean_texture
    if mean.shape[-1] != size:
        mean = F.interpolate(mean, size=(size, size), mode="bilinear", align_corners=False)
    mean = mean.to(colour)
    n = hard.sum()
    if float(n) > 64:
        gain = (colour * hard).sum((2, 3)) / (mean * hard).sum((2, 3)).clamp_min(1e-6)
        gain = gain.clamp(0.5, 2.0)
    else:
        gain = torch.ones(1, 3, dtype=colour.dtype, device=colour.device)
    fill = (mean * gain[:, :, None, None]).clamp(0, 1)
    k = max(1, int(round(FEATHER * size / 512)) | 1)
    weight = _box_blur(hard, k) * hard  # fades to 0 at the seam, 0 wherever the photo is not usable
    texture = weight * colour.clamp(0, 1) + (1 - weight) * fill
    return texture, weight


# ------------------------------------------------------------------------------------------------ images

def to_hwc(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) tensor -> (H, W, C) float32 numpy."""
    if t.dim() == 4:
        t = t[0]
    return t.detach().float().permute(1, 2, 0).cpu().numpy()
