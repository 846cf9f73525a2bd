"""Skin masks from MediaPipe's face mesh: the face oval minus the eyes, the eyebrows and the lips.

The regions are MediaPipe's own connection sets (``mediapipe.solutions.face_mesh_connections``), stored
here as ordered outlines so that this module needs neither mediapipe nor OpenCV: each outline is the
cycle its edge set forms (face oval, each eye, the outer lip line), and for the eyebrows, whose edge
sets are two open strokes, the convex hull of their points. Polygons are filled in continuous pixel
coordinates (docs/CONVENTIONS.md) with PIL.

Intended users: texture extraction (photo pixels that are skin) and `deca-train prepare` (a label
without the colour heuristic); both live outside core/frontend and may call `skin_mask`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FACE_OVAL", "LEFT_EYE", "RIGHT_EYE", "LIPS_OUTER", "LEFT_EYEBROW", "RIGHT_EYEBROW", "skin_mask"]

# Ordered outlines (MediaPipe indices), read off the cycles of the connection sets of mediapipe 0.10.14.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
RIGHT_EYEBROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LEFT_EYEBROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)


def _hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of (N, 2) points, counter-clockwise."""
    p = sorted(map(tuple, pts))

    def half(seq):
        out: list = []
        for q in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(q)
        return out

    lower, upper = half(p), half(reversed(p))
    return np.array(lower[:-1] + upper[:-1])


def skin_mask(mesh: np.ndarray, image_hw: tuple[int, int], brow_margin: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in the face oval and outside eyes, eyebrows and lips.

    mesh: (468 or 478, 2 or 3) MediaPipe points in continuous photo pixels (only x, y are used).
    brow_margin: grow the eyebrow hulls by this fraction of their size (hair beyond the points).
    """
    from PIL import Image, ImageDraw

    m = np.asarray(mesh, np.float64)
    if m.ndim != 2 or m.shape[0] < 468 or m.shape[1] < 2:
        raise ValueError(f"expected (468 or 478, 2 or 3) mesh points, got {m.shape}")
    h, w = int(image_hw[0]), int(image_hw[1])
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    # PIL fills pixels by their integer corner coordinates; continuous x maps to PIL x - 0.5 (centres).
    poly = lambda idx_or_pts: [tuple(p) for p in (np.asarray(idx_or_pts) - 0.5)]  # noqa: E731
    draw.polygon(poly(m[list(FACE_OVAL), :2]), fill=255)
    for outline in (RIGHT_EYE, LEFT_EYE, LIPS_OUTER):
        draw.polygon(poly(m[list(outline), :2]), fill=0)
    for brow in (RIGHT_EYEBROW, LEFT_EYEBROW):
        hull = _hull(m[list(brow), :2])
        c = hull.mean(0)
        draw.polygon(poly(c + (hull - c) * (1.0 + brow_margin)), fill=0)
    return np.asarray(img) > 127
