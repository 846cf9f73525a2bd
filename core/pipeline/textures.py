"""The photo's texture in UV space, and the image encodings of the result folder.

`photo_texture` unwraps the photo into FLAME's UV layout. It samples a *texture crop* (`texture_crop`):
the network crop's square enlarged 1.5x about its centre (DECA's own crop cuts off the forehead),
resampled at the square's size in photo pixels clamped to [224, 640]; in it the camera is the network's
with the scale divided by 1.5. So large photos are used at (up to) full useful resolution, and the
occlusion test rasterizes a bounded image. Texels are kept where they are visible (not occluded, inside the
photo, inside the face region ``uv_face_eye_mask``); the rest is the mean texture, colour-matched to
the visible skin (per-channel gain, clamped to [0.5, 2]); the seam is feathered over a few texels.
"""
from __future__ import annotations

import math

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


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals -> (H, W, 3) in [0, 1] as n * 0.5 + 0.5 (zeros where undefined -> 0.5)."""
    return np.clip(np.asarray(normals, np.float32) * 0.5 + 0.5, 0.0, 1.0)


def displacement_scale(d: np.ndarray) -> float:
    """A scale with |d| <= scale (two significant digits, rounded up; 0.01 for an all-zero map)."""
    m = float(np.max(np.abs(d))) if np.size(d) else 0.0
    if not math.isfinite(m) or m <= 0.0:
        return 0.01
    e = math.floor(math.log10(m)) - 1
    step = 10.0 ** e
    scale = float(f"{math.ceil(m / step) * step:.3g}")
    while scale < m:  # float rounding
        scale = float(f"{scale + step:.3g}")
    return scale


def encode_displacement(d: np.ndarray, scale: float) -> np.ndarray:
    """(S, S) metres -> uint16 ``(d / scale + 1) / 2 * 65535`` (CONVENTIONS.md)."""
    q = np.rint((np.asarray(d, np.float64) / scale + 1.0) / 2.0 * 65535.0)
    return np.clip(q, 0, 65535).astype(np.uint16)


def decode_displacement_png(q: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(q, np.float64) / 65535.0 * 2.0 - 1.0) * scale


def draw_points(image: np.ndarray, points: np.ndarray, colour, radius: float = 1.5) -> np.ndarray:
    """Draw filled discs (continuous pixel coordinates) into an (H, W, 3) float image in place."""
    h, w = image.shape[:2]
    r = int(math.ceil(radius))
    col = np.asarray(colour, np.float32)
    for x, y in np.asarray(points, np.float64):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        cx, cy = int(math.floor(x)), int(math.floor(y))
        for yy in range(cy - r, cy + r + 1):
            for xx in range(cx - r, cx + r + 1):
                if 0 <= yy < h and 0 <= xx < w and (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius ** 2:
                    image[yy, xx] = col
    return image
