"""Region-driven expression components for the TEST model (not FLAME's): smile, lips apart, pucker, brow
raise, brow furrow, eye closure, cheek puff, frown, one-sided smile, sneer.

Each component is a sum of smooth handles: a displacement ``d`` (metres, FLAME frame: +x the subject's
left, +y up, +z forward) applied with a Gaussian falloff of radius ``r`` around a point of the face. The
points come from our MediaPipe-to-FLAME embedding (core/frontend/flame_embedding.py) evaluated on the
template, so the components sit where a face's features are. Handles on the upper lip or lid only move
vertices above the mouth / eye line (and lower ones only below), so lips and lids can part. Eyeballs never
move. Magnitudes are per unit coefficient (1 sigma): 2-4 mm at the peak, so 3 sigma is about a centimetre.
"""
from __future__ import annotations

import numpy as np

from core.frontend.flame_embedding import load_mediapipe_embedding

__all__ = ["EXPRESSION_NAMES", "region_expression_basis"]

EXPRESSION_NAMES = ("smile", "lips apart", "pucker", "brow raise", "brow furrow", "eye closure", "cheek puff",
                    "frown", "left smile", "sneer")

MM = 1e-3


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def region_expression_basis(v: np.ndarray, faces: np.ndarray, eyeballs: np.ndarray) -> np.ndarray:
    """(V, 3) template vertices, (F, 3) faces, (V,) bool eyeball mask -> (V, 3, 10) components in metres."""
    emb = load_mediapipe_embedding()
    pts = dict(zip(emb.mediapipe_index.tolist(), emb.points(v, faces)))
    mouth_y = (pts[13][1] + pts[14][1]) / 2.0
    eye_y = {s: (pts[a][1] + pts[b][1]) / 2.0 for s, a, b in ((-1, 159, 145), (1, 386, 374))}
    upper = _sigmoid((v[:, 1] - mouth_y) / (0.7 * MM))  # above the lip line
    lower = 1.0 - upper
    free = ~np.asarray(eyeballs, bool)
    # cheeks: between the outer eye corner and the mouth corner, 1.5 cm further out
    cheek = {s: (pts[e] + pts[m]) / 2.0 + np.array([s * 15 * MM, 0.0, -5 * MM]) for s, e, m in ((-1, 33, 61), (1, 263, 291))}
    corner = {-1: pts[61], 1: pts[291]}
    brows = {-1: [70, 63, 105, 66, 107], 1: [300, 293, 334, 296, 336]}
    lid = {-1: 159, 1: 386}

    def handle(c: np.ndarray, d_mm, r_mm: float, gate: np.ndarray | None = None) -> np.ndarray:
        w = np.exp(-((v - c) ** 2).sum(1) / (2.0 * (r_mm * MM) ** 2))
        if gate is not None:
            w = w * gate
        return w[:, None] * (np.asarray(d_mm, np.float64) * MM)[None]

    comps = []
    # smile: corners up, out and back; cheeks lift
    comps.append(sum(handle(corner[s], (2.0 * s, 2.5, -1.5), 10) + handle(cheek[s], (0.0, 1.2, 1.0), 15)
                     for s in (-1, 1)))
    # lips apart (without the jaw): upper lip up, lower lip down
    comps.append(handle(pts[0], (0, 1.5, 0), 9, upper) + handle(pts[13], (0, 1.0, 0), 7, upper)
                 + handle(pts[17], (0, -2.5, 0.5), 10, lower) + handle(pts[14], (0, -2.0, 0), 8, lower))
    # pucker: corners inward, lips forward
    comps.append(sum(handle(corner[s], (-2.5 * s, 0, 1.0), 9) for s in (-1, 1))
                 + handle(pts[0], (0, 0, 2.0), 10, upper) + handle(pts[17], (0, 0, 2.0), 10, lower))
    # brow raise
    comps.append(sum(handle(pts[i], (0, 3.0 / 2.5, 0), 12) for s in (-1, 1) for i in brows[s]))
    # brow furrow: inner brows down and together
    comps.append(sum(handle(pts[brows[s][-1]], (-1.5 * s, -1.5, 0), 10) for s in (-1, 1)))
    # eye closure: upper lids down (only above each eye's line)
    comps.append(sum(handle(pts[lid[s]], (0, -3.5, 0), 6, _sigmoid((v[:, 1] - eye_y[s]) / (0.5 * MM)))
                     for s in (-1, 1)))
    # cheek puff
    comps.append(sum(handle(cheek[s], (3.0 * s, 0, 2.0), 18) for s in (-1, 1)))
    # frown: corners down
    comps.append(sum(handle(corner[s], (0, -3.0, 0), 10) for s in (-1, 1)))
    # left smile (the subject's left: +x)
    comps.append(handle(corner[1], (2.0, 2.5, -1.5), 10) + handle(cheek[1], (0.0, 1.2, 1.0), 15))
    # sneer: beside the nose up, upper lip up
    comps.append(sum(handle((pts[98 if s < 0 else 327]), (0, 2.0, 0.5), 7) for s in (-1, 1))
                 + handle(pts[0], (0, 1.0, 0), 8, upper))
    basis = np.stack(comps, axis=2)  # (V, 3, 10)
    basis[~free] = 0.0
    return basis
