"""The loss formulas of DECA's released training code, as written there (not as in the paper).

Facts from github yfeng95/DECA (``decalib/trainer.py``, ``decalib/utils/lossfunc.py``,
``decalib/utils/config.py``); the table in docs/training.md maps each to its released line. Unlike
:mod:`training.losses` (per-image values the trainer averages), these return the **batch scalars** the
released code adds up: its regularisers are *sums* over the batch (``sum(x**2) / 2 * w``), so relative to
the batch-averaged data terms they grow with the batch size.

Landmarks are image NDC ``(B, 68, 2)`` (DECA normalises its landmarks to [-1, 1] the same way).
"""
from __future__ import annotations

import torch

__all__ = ["RELEASE_LANDMARK_WEIGHTS", "release_landmark_weights", "weighted_landmark_loss", "eyelid_distances",
           "lip_distances", "eye_distance_loss", "lip_distance_loss", "sum_regularizer", "light_regularizer",
           "shading_smoothness", "soft_symmetry"]

#: (index range, weight) of ``weighted_landmark_loss``'s landmark weights (others 1), applied in this order
RELEASE_LANDMARK_WEIGHTS: tuple[tuple[slice, float], ...] = (
    (slice(5, 7), 2.0), (slice(10, 12), 2.0),  # jaw line near the chin
    (slice(27, 36), 1.5), (slice(30, 31), 3.0), (slice(31, 32), 3.0), (slice(35, 36), 3.0),  # nose
    (slice(60, 68), 1.5), (slice(48, 60), 1.5), (slice(48, 49), 3.0), (slice(54, 55), 3.0),  # mouth
)
#: upper / lower eyelid landmarks of the released eye distance (0-based iBUG 68)
EYE_UP, EYE_DOWN = (37, 38, 43, 44), (41, 40, 47, 46)
#: upper / lower inner-lip landmarks of the released lip distance
LIP_UP, LIP_DOWN = (61, 62, 63), (67, 66, 65)


def release_landmark_weights() -> torch.Tensor:
    """The 68 weights of the released ``useWlmk`` landmark loss (heavier chin, nose and mouth)."""
    w = torch.ones(68)
    for sl, v in RELEASE_LANDMARK_WEIGHTS:
        w[sl] = v
    return w


def weighted_landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_{b,k} w_k (|dx| + |dy|) / (2 * sum_{b,k} w_k)``: an L1 per *coordinate*, weighted per landmark
    and normalised by the weighted number of coordinates over the whole batch. ``weights`` (68,) default the
    released ones (:func:`release_landmark_weights`); all ones gives the unweighted released loss."""
    w = (release_landmark_weights() if weights is None else weights).to(pred)
    d = (pred - target).abs().sum(-1)  # (B, N)
    wb = w.expand_as(d)
    return (d * wb).sum() / (2.0 * wb.sum() + 1e-8)


def _pair_distances(lm: torch.Tensor, up, down) -> torch.Tensor:
    return (lm[:, list(up)] - lm[:, list(down)]).pow(2).sum(-1).sqrt()


def eyelid_distances(lm: torch.Tensor) -> torch.Tensor:
    """Euclidean upper-to-lower eyelid distances ``(B, 4)``."""
    return _pair_distances(lm, EYE_UP, EYE_DOWN)


def lip_distances(lm: torch.Tensor) -> torch.Tensor:
    """Euclidean upper-to-lower inner-lip distances ``(B, 3)``."""
    return _pair_distances(lm, LIP_UP, LIP_DOWN)


def eye_distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Released eye closure: mean over batch and the 4 pairs of ``|d_pred - d_target|`` (distances, not
    offsets: only the opening counts, not its direction)."""
    return (eyelid_distances(pred) - eyelid_distances(target)).abs().mean()


def lip_distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Released lip closure (weight 0.5 in the released config): the same on the 3 inner-lip pairs."""
    return (lip_distances(pred) - lip_distances(target)).abs().mean()


def sum_regularizer(code: torch.Tensor) -> torch.Tensor:
    """``sum over the batch and dimensions of x**2 / 2`` (shape, expression, albedo codes)."""
    return code.pow(2).sum() / 2.0


def light_regularizer(light: torch.Tensor) -> torch.Tensor:
    """Released light regulariser: mean over ``(B, 9, 3)`` of the squared deviation of each band's RGB from
    its grey mean (weight 1.0 in the released config)."""
    return (light.mean(dim=2, keepdim=True) - light).pow(2).mean()


def shading_smoothness(shading: torch.Tensor) -> torch.Tensor:
    """Released ``shading_smooth_loss`` of the UV shading ``(B, 3, H, W)``: mean squared horizontal plus
    mean squared vertical difference, on the interior rows / columns as released (weight ``reg_diff`` 0.005)."""
    dx = shading[:, :, 1:-1, 1:] - shading[:, :, 1:-1, :-1]
    dy = shading[:, :, 1:, 1:-1] - shading[:, :, :-1, 1:-1]
    return dx.pow(2).mean() + dy.pow(2).mean()


def soft_symmetry(uv_z: torch.Tensor, invisible: torch.Tensor) -> torch.Tensor:
    """Released soft symmetry: ``sum(invisible * |z - flip(z).detach()|)`` over batch and texels; the mirror
    is detached, so only the hidden side is pulled towards the visible one. ``invisible`` (B, 1, H, W)."""
    return (invisible * (uv_z - torch.flip(uv_z, dims=[-1]).detach()).abs()).sum()
