"""DECA's two image encoders and the layout of the FLAME code vector.

``E_flame`` regresses 236 numbers per image, split (in this order) into
shape 100, tex 50, exp 50, pose 6 (global axis-angle 3, jaw axis-angle 3), cam 3 (scale, tx, ty)
and light 27, the light reshaped to ``(9, 3)``: 9 spherical-harmonics bands x RGB (band-major,
as DECA's ``reshape(B, 9, 3)``). ``E_detail`` regresses the 128-d detail code.

Both take RGB images ``(B, 3, 224, 224)`` in ``[0, 1]``; DECA applies no mean/std normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from core import sizes

from .resnet import RESNET_FEATURES, ResNetTrunk

__all__ = [
    "FLAME_CODE_SIZES",
    "FLAME_CODE_DIM",
    "DETAIL_CODE_DIM",
    "INPUT_SIZE",
    "FlameCodes",
    "split_flame_codes",
    "ResnetEncoder",
    "FlameEncoder",
    "DetailEncoder",
]

#: sizes of the parts of E_flame's output, in the official order
FLAME_CODE_SIZES: dict[str, int] = {
    "shape": sizes.N_SHAPE,
    "tex": sizes.N_TEX,
    "exp": sizes.N_EXP,
    "pose": sizes.N_POSE,
    "cam": sizes.N_CAM,
    "light": sizes.N_SH * 3,
}
FLAME_CODE_DIM = sum(FLAME_CODE_SIZES.values())  # 236
DETAIL_CODE_DIM = sizes.N_DETAIL
#: side of the square crops the encoders were trained on
INPUT_SIZE = 224
HIDDEN = 1024


@dataclass
class FlameCodes:
    """The FLAME-side codes of a batch: shape (B,100), tex (B,50), exp (B,50), pose (B,6),
    cam (B,3) = (scale, tx, ty), light (B,9,3) = 9 SH bands x RGB."""

    shape: torch.Tensor
    tex: torch.Tensor
    exp: torch.Tensor
    pose: torch.Tensor
    cam: torch.Tensor
    light: torch.Tensor

    @property
    def global_pose(self) -> torch.Tensor:
        """Global (head) rotation, axis-angle (B, 3)."""
        return self.pose[:, :3]

    @property
    def jaw_pose(self) -> torch.Tensor:
        """Jaw rotation, axis-angle (B, 3): the first input of D_detail."""
        return self.pose[:, 3:]

    @property
    def batch_size(self) -> int:
        return int(self.shape.shape[0])

    def to_vector(self) -> torch.Tensor:
        """Inverse of :func:`split_flame_codes`: the (B, 236) vector in the official order."""
        b = self.batch_size
        return torch.cat([getattr(self, f.name).reshape(b, -1) for f in fields(self)], dim=1)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, *args, **kwargs) -> "FlameCodes":
        return FlameCodes(**{k: v.to(*args, **kwargs) for k, v in self.as_dict().items()})

    def detach(self) -> "FlameCodes":
        return FlameCodes(**{k: v.detach() for k, v in self.as_dict().items()})


def split_flame_codes(params: torch.Tensor) -> FlameCodes:
    """Split E_flame's ``(B, 236)`` output into :class:`FlameCodes` (views, no copy)."""
    if params.dim() != 2 or params.shape[1] != FLAME_CODE_DIM:
        raise ValueError(f"expected a (B, {FLAME_CODE_DIM}) code vector, got shape {tuple(params.shape)}")
    parts = torch.split(params, list(FLAME_CODE_SIZES.values()), dim=1)
    codes = dict(zip(FLAME_CODE_SIZES, parts))
    codes["light"] = codes["light"].reshape(params.shape[0], 9, 3)
    return FlameCodes(**codes)


class ResnetEncoder(nn.Module):
    """ResNet-50 trunk (``encoder``) + MLP head (``layers``: Linear(2048,1024), ReLU, Linear(1024,n))."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)
        self.encoder = ResNetTrunk()
        self.layers = nn.Sequential(
            nn.Linear(RESNET_FEATURES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, self.out_features),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] (224x224 for DECA) -> ``(B, out_features)``."""
        return self.layers(self.encoder(images))


class FlameEncoder(ResnetEncoder):
    """DECA's ``E_flame``: images -> (B, 236) FLAME/camera/light codes."""

    def __init__(self) -> None:
        super().__init__(FLAME_CODE_DIM)

    def encode(self, images: torch.Tensor) -> FlameCodes:
        return split_flame_codes(self(images))


class DetailEncoder(ResnetEncoder):
    """DECA's ``E_detail``: images -> (B, 128) detail code."""

    def __init__(self) -> None:
        super().__init__(DETAIL_CODE_DIM)
