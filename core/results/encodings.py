"""The result folder's image encodings (docs/CONVENTIONS.md), numpy only so Blender can decode them too.

Normals are stored as ``n * 0.5 + 0.5``; displacement as 16-bit ``(d / scale + 1) / 2 * 65535`` with the
scale written in result.json.
"""
from __future__ import annotations

import math

import numpy as np


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
