"""E_flame's regression head trained on standardised codes (``model.standardise_head``).

Adam moves every weight by about the learning rate whatever its gradient's size, so each output of a linear
head moves at about the same speed in its own units. DECA's codes live on very different scales: the camera
scale is ~10 and varies by +-1.5 between crops, its translation by +-0.05, the head rotation by +-0.3 rad.
From the same start the scale's spread grows slowest and the translation's is noisy (docs/training.md,
"Does it learn?"). The fix is the usual one for regressors: the head predicts standardised codes ``z`` and

    code = mean + std * z        (per output; mean, std: (n_codes,))

so that one Adam step moves every code by about its own spread. This is only a reparametrisation of the
last ``nn.Linear`` (weight ``W = std * V``, bias ``b = std * c + mean``): the trained parameters are ``V``
and ``c``, a forward hook applies ``mean + std * z``, and :func:`folded_state_dict` folds it back into the
official layout for checkpoints and export, which therefore keep DECA's form.

The statistics: the camera's from the orthographic fit of the mean-shape landmarks to every calibration
image's landmarks (data, no ground truth needed); the other groups' from ``model.head_code_std`` priors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.networks.encoders import FLAME_CODE_SIZES

from .data import landmarks_to_ndc

__all__ = ["HeadStandardisation", "code_slices", "landmark_cameras", "head_statistics", "standardise_head",
           "folded_state_dict", "HEAD_LAYER"]

#: name of E_flame's last linear layer in its state dict
HEAD_LAYER = "layers.2"


def code_slices() -> dict[str, slice]:
    """Where each code group lies in E_flame's output: ``{"shape": slice(0, 100), ..., "light": ...}``."""
    out, a = {}, 0
    for k, n in FLAME_CODE_SIZES.items():
        out[k] = slice(a, a + n)
        a += n
    return out


@dataclass
class HeadStandardisation:
    """Per-output offset and scale of E_flame's head: ``code = mean + std * z``. Both (n_codes,)."""

    mean: torch.Tensor
    std: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.detach().cpu(), "std": self.std.detach().cpu()}

    @classmethod
    def from_dict(cls, d) -> "HeadStandardisation":
        return cls(torch.as_tensor(d["mean"]).float(), torch.as_tensor(d["std"]).float())


@torch.no_grad()
def landmark_cameras(face, landmarks_px: torch.Tensor) -> torch.Tensor:
    """Orthographic camera ``(s, tx, ty)`` per image (N, 3) that best maps the mean face's 68 landmarks
    (zero codes, ``cam = (1, 0, 0)``) onto ``landmarks_px`` (N, 68, 2), least squares in NDC."""
    device = landmarks_px.device
    g0 = face.geometry(torch.zeros(1, 100, device=device), torch.zeros(1, 50, device=device),
                       torch.zeros(1, 6, device=device), torch.tensor([[1.0, 0.0, 0.0]], device=device))
    u = g0.landmarks2d[0].double()  # (68, 2): (X, -Y)
    t = landmarks_to_ndc(landmarks_px).double()  # (N, 68, 2)
    uc = u - u.mean(0)
    tc = t - t.mean(1, keepdim=True)
    s = (tc * uc).sum(dim=(1, 2)) / (uc * uc).sum()
    a = t.mean(1) / s[:, None] - u.mean(0)  # translation in the cam=(1,0,0) frame
    return torch.stack([s, a[:, 0], -a[:, 1]], 1).float()


def head_statistics(bias: torch.Tensor, cameras: torch.Tensor, priors: dict[str, float],
                    min_std: float = 1e-2) -> HeadStandardisation:
    """Statistics for a head whose output ``bias`` (n_codes,) already holds the data mean: mean = bias;
    std = ``priors[group]`` (absent: 1, Adam's own unit), for the camera
    by default the spread of the per-image ``cameras`` (N, 3), at least ``min_std`` (a set of identical crops must still train)."""
    sl = code_slices()
    std = torch.ones_like(bias)
    for k, v in priors.items():
        if k not in sl:
            raise ValueError(f"model.head_code_std: unknown code group {k!r} (one of {sorted(sl)})")
        v = torch.as_tensor(v, dtype=std.dtype)  # one number for the group, or one per code
        if not bool((v > 0).all()) or v.numel() not in (1, sl[k].stop - sl[k].start):
            raise ValueError(f"model.head_code_std[{k!r}] needs one number > 0 or one per code, got {v.tolist()}")
        std[sl[k]] = v
    if "cam" not in priors and cameras.shape[0] >= 2:
        std[sl["cam"]] = cameras.to(std).std(0)
    return HeadStandardisation(bias.detach().clone(), std.clamp_min(min_std))


@torch.no_grad()
def standardise_head(layer: nn.Linear, stats: HeadStandardisation) -> torch.utils.hooks.RemovableHandle:
    """Turn ``layer`` (official parameters W, b) into the standardised head: its parameters become
    ``V = W / std``, ``c = (b - mean) / std`` in place (the same Parameter objects, so an optimizer built
    later trains them) and a forward hook returns ``mean + std * (V x + c)``: the same function as before."""
    mean, std = stats.mean.to(layer.weight), stats.std.to(layer.weight)
    layer.weight.div_(std[:, None])
    layer.bias.sub_(mean).div_(std)

    def hook(_module, _inputs, z):
        return z * std + mean

    return layer.register_forward_hook(hook)


@torch.no_grad()
def folded_state_dict(encoder: nn.Module, stats: HeadStandardisation) -> dict[str, torch.Tensor]:
    """``encoder``'s state dict in the official form (W = std * V, b = std * c + mean), on the CPU."""
    sd = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    std, mean = stats.std.cpu(), stats.mean.cpu()
    sd[f"{HEAD_LAYER}.weight"] = sd[f"{HEAD_LAYER}.weight"] * std[:, None]
    sd[f"{HEAD_LAYER}.bias"] = sd[f"{HEAD_LAYER}.bias"] * std + mean
    return sd
