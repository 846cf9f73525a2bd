"""Scoring fitted codes against synthetic ground truth (shared by the benchmark and the tests)."""
from __future__ import annotations

import numpy as np
import torch

from core.evaluation.now import NowErrors, now_errors, now_landmarks


@torch.no_grad()
def meshes_from_codes(face_model, shape, exp, pose) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'neutral': (vertices, 68 landmarks3d), 'posed': (...)} in float64 numpy, FLAME space."""
    ref = face_model.flame.v_template
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32)).reshape(1, -1).to(ref)  # noqa: E731
    s, e, p = t(shape), t(exp), t(pose)
    neu = face_model.flame(s, torch.zeros_like(e), torch.zeros_like(p))
    pos = face_model.flame(s, e, p)
    f64 = lambda x: x[0].double().cpu().numpy()  # noqa: E731
    return {"neutral": (f64(neu.vertices), f64(neu.landmarks3d)), "posed": (f64(pos.vertices), f64(pos.landmarks3d))}


def score_against_gt(face_model, gt: dict, shape, exp, pose, refine: bool = True) -> dict[str, NowErrors]:
    """NoW errors of the fitted mesh vs a synthetic ground truth (`core.evaluation.synthetic`), for the
    neutral identity mesh (NoW's convention) and for the posed mesh (what the photo shows)."""
    faces = np.asarray(gt["faces"], np.int64)
    mask = np.asarray(gt["scan_mask"], bool)
    out = {}
    for geometry, (verts, lmk68) in meshes_from_codes(face_model, shape, exp, pose).items():
        prefix = "neutral_" if geometry == "neutral" else ""
        out[geometry] = now_errors(gt[prefix + "vertices"][mask], gt[prefix + "now_landmarks"], verts, faces,
                                   now_landmarks(lmk68), refine=refine)
    return out
