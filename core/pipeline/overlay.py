"""What every mode draws and stores the same way: detail normals in FLAME's object frame and the overlay image.

`reconstruct` (DECA) and the fit (`core.fitting`) both call these, so their result folders agree by
construction (docs/CONVENTIONS.md).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.flame.lbs import axis_angle_to_matrix
from core.pipeline.textures import to_hwc
from core.results import encodings as enc

# a grey head under a frontal key light, drawn over the photo: the fit and its detail are visible at once
_C0 = 1.0 / math.sqrt(4 * math.pi)
_C1 = (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
OVERLAY_LIGHT = np.zeros((9, 3), np.float32)
OVERLAY_LIGHT[0] = 0.5 / _C0
OVERLAY_LIGHT[3] = 0.45 / _C1  # nz
OVERLAY_LIGHT[2] = 0.12 / _C1  # ny
OVERLAY_GREY = 0.78
OVERLAY_OPACITY = 0.75
RED, GREEN = (1.0, 0.15, 0.1), (0.1, 1.0, 0.2)  # projected model landmarks, detected landmarks


def object_frame_normals(normals: torch.Tensor, global_pose: torch.Tensor) -> torch.Tensor:
    """Posed detail normals (1, 3, S, S) -> FLAME's object frame (R^T n for the global rotation (1, 3) axis-angle),
    unit length (the soft mask edge blends detail and coarse normals); zero stays zero."""
    rot = axis_angle_to_matrix(global_pose)  # (1, 3, 3)
    return F.normalize(torch.einsum("bji,bjhw->bihw", rot.to(normals), normals), dim=1, eps=1e-8)


def render_overlay(face_model, vertices: torch.Tensor, tcam: torch.Tensor, normals: torch.Tensor,
                   crop_image: torch.Tensor, tcrop, detected_px: np.ndarray, projected_px: np.ndarray) -> np.ndarray:
    """The overlay: a grey render with the detail ``normals`` (1, 3, S, S) over the texture crop ``crop_image``
    (1, 3, h, w), detected landmarks (68, 2 photo pixels) in green, the model's projected ones in red.
    Returns (h, w, 3) float32 in [0, 1]."""
    dev = vertices.device
    grey = torch.full((1, 3, 8, 8), OVERLAY_GREY, device=dev)
    light = torch.as_tensor(OVERLAY_LIGHT, device=dev)[None]
    r = face_model.render(vertices, tcam, albedo=grey, light=light, normal_map=normals, image_size=tcrop.size)
    a = r.alpha * OVERLAY_OPACITY
    overlay = to_hwc((crop_image * (1 - a) + r.image.clamp(0, 1) * a).clamp(0, 1))
    radius = max(1.2, tcrop.size / 250)
    enc.draw_points(overlay, tcrop.apply(detected_px), GREEN, radius=radius)
    enc.draw_points(overlay, tcrop.apply(projected_px), RED, radius=radius)
    return overlay
