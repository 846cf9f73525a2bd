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
           "shading_smoothness", "soft_symmetry", "binary_erosion", "self_occlusion_visible", "uv_face_patch",
           "UV_FACE_BOX_2048", "release_mrf_layer", "identity_permutation"]

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


def binary_erosion(mask: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Released ``util.binary_erosion`` (scipy's, a ``size x size`` square, outside the map counts as empty):
    a texel stays 1 when every texel of its window is non-zero. ``mask`` (B, 1, H, W) -> float 0/1, no grad."""
    m = (mask.detach() != 0).to(torch.float32)
    r = size // 2
    # erosion of m = 1 - dilation of (1 - m), with 1 (empty) padded around the border
    hole = torch.nn.functional.pad(1.0 - m, (r, r, r, r), value=1.0)
    return (1.0 - torch.nn.functional.max_pool2d(hole, size, stride=1)).to(mask.dtype)


def self_occlusion_visible(uv_normal_z: torch.Tensor, threshold: float = -0.05) -> torch.Tensor:
    """Released self-occlusion mask: ``uv_pnorm[:, -1] < -0.05`` with ``uv_pnorm`` the UV map of the vertex
    normals of the *screen* vertices (y and z negated), i.e. texels whose surface faces the camera.
    ``uv_normal_z`` (B, 1, H, W) -> float 0/1, no grad."""
    return (uv_normal_z.detach() < threshold).to(uv_normal_z.dtype)


#: the released detail loss's UV face box ``load_local_mask(mode='bbx')[0]``, (left, right, top, bottom) at 2048
UV_FACE_BOX_2048 = (400, 1648, 400, 1648)


def uv_face_patch(uv_map: torch.Tensor, out_size: int = 256) -> torch.Tensor:
    """The released detail losses' crop of a UV map ``(B, C, S, S)``: the face box scaled to ``S`` (truncated to
    ints as released: 50..206 at 256), resized bilinearly to ``out_size`` (``align_corners=False``)."""
    S = uv_map.shape[-1]
    l, r, t, b = (int(v * S / 2048.0) for v in UV_FACE_BOX_2048)
    return torch.nn.functional.interpolate(uv_map[:, :, t:b, l:r], size=(out_size, out_size), mode="bilinear",
                                           align_corners=False)


def release_mrf_layer(gen: torch.Tensor, tar: torch.Tensor, bandwidth: float = 0.5, bias: float = 1.0) -> torch.Tensor:
    """Released ``IDMRFLoss.mrf_loss`` on one VGG layer's features ``(B, C, H, W)``, **summed over the batch**.

    Both are centred by the target's mean over *channels* at each location and normalised per location; with
    ``d = (1 - cos) / 2`` between every generated location j and target location i, ``rel = d / (min_i d + 1e-5)``,
    ``cx = softmax_i((bias - rel) / bandwidth)``; per image ``-log(mean_i max_j cx_ij)``."""
    mean_t = tar.mean(dim=1, keepdim=True)
    g, t = gen - mean_t, tar - mean_t
    g = g / g.norm(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    cos = torch.bmm(t.flatten(2).transpose(1, 2), g.flatten(2))  # (B, N_target, N_generated)
    d = (1.0 - cos) / 2.0
    rel = d / (d.min(dim=1, keepdim=True).values + 1e-5)
    w = torch.exp((bias - rel) / bandwidth)
    cx = w / w.sum(dim=1, keepdim=True)
    return (-torch.log(cx.max(dim=2).values.mean(dim=1))).sum()


def identity_permutation(identity: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Released shape / detail consistency order: a random permutation *within* each identity's images
    (``np.random.permutation(K)`` per person; an image may keep its own code), drawn here from
    ``(seed, step, identity)`` so that resuming and DDP ranks reproduce it. ``identity`` (B,) -> (B,) long."""
    import numpy as np

    ids = identity.detach().cpu().numpy()
    out = np.arange(len(ids))
    for ident in np.unique(ids):
        members = np.flatnonzero(ids == ident)
        perm = np.random.default_rng([int(seed), int(step), int(ident), 5]).permutation(len(members))
        out[members] = members[perm]
    return torch.as_tensor(out, dtype=torch.long, device=identity.device)
