"""DECA's detail decoder ``D_detail``: codes -> 256x256 UV displacement.

Input (B, 181) = ``[jaw pose (3), exp (50), detail code (128)]`` in that order. ``l1`` maps it to
128x8x8; ``conv_blocks`` is BatchNorm(128) followed by five up-sampling blocks
``[Upsample x2 bilinear, Conv3x3, BatchNorm(eps=0.8), LeakyReLU(0.2)]`` with output channels
128, 64, 64, 32, 16 and a final ``Conv3x3 -> 1`` + tanh; the result is scaled by 0.01, so the
displacement lies in (-0.01, 0.01).

The Sequential indices (``conv_blocks.0`` first batch norm, ``.2/.3`` first conv/bn, ...,
``.21`` final conv) are those of the release's state dict. The up-sampling is bilinear with
``align_corners=False`` (PyTorch's default, which DECA relied on).
"""
from __future__ import annotations

import torch
from torch import nn

from core import sizes

from .encoders import DETAIL_CODE_DIM

__all__ = ["DetailDecoder", "DETAIL_DECODER_INPUT", "DETAIL_MAP_SIZE", "DETAIL_OUT_SCALE"]

JAW_DIM = sizes.N_JAW
EXP_DIM = sizes.N_EXP
DETAIL_DECODER_INPUT = JAW_DIM + EXP_DIM + DETAIL_CODE_DIM  # 181
INIT_SIZE = 8
INIT_CHANNELS = 128
UP_CHANNELS = (128, 64, 64, 32, 16)
DETAIL_MAP_SIZE = INIT_SIZE * 2 ** len(UP_CHANNELS)  # 256
DETAIL_OUT_SCALE = 0.01


class DetailDecoder(nn.Module):
    """``D_detail``: (B, 181) -> (B, 1, 256, 256) displacement in (-0.01, 0.01)."""

    def __init__(self, out_scale: float = DETAIL_OUT_SCALE) -> None:
        super().__init__()
        self.out_scale = float(out_scale)
        self.l1 = nn.Sequential(nn.Linear(DETAIL_DECODER_INPUT, INIT_CHANNELS * INIT_SIZE * INIT_SIZE))
        blocks: list[nn.Module] = [nn.BatchNorm2d(INIT_CHANNELS)]
        c_in = INIT_CHANNELS
        for c_out in UP_CHANNELS:
            blocks += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1),
                nn.BatchNorm2d(c_out, eps=0.8),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c_out
        blocks += [nn.Conv2d(c_in, 1, kernel_size=3, stride=1, padding=1), nn.Tanh()]
        self.conv_blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 181) = [jaw (3), exp (50), detail (128)] -> (B, 1, 256, 256)."""
        if x.dim() != 2 or x.shape[1] != DETAIL_DECODER_INPUT:
            raise ValueError(
                f"D_detail expects (B, {DETAIL_DECODER_INPUT}) = [jaw 3, exp 50, detail 128], "
                f"got shape {tuple(x.shape)}")
        h = self.l1(x).view(x.shape[0], INIT_CHANNELS, INIT_SIZE, INIT_SIZE)
        return self.conv_blocks(h) * self.out_scale

    @staticmethod
    def make_input(jaw: torch.Tensor, exp: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Concatenate ``[jaw (B,3), exp (B,50), detail (B,128)]`` into the (B, 181) input."""
        for name, t, n in (("jaw", jaw, JAW_DIM), ("exp", exp, EXP_DIM), ("detail", detail, DETAIL_CODE_DIM)):
            if t.dim() != 2 or t.shape[1] != n:
                raise ValueError(f"{name} must be (B, {n}), got shape {tuple(t.shape)}")
        if not (jaw.shape[0] == exp.shape[0] == detail.shape[0]):
            raise ValueError(
                f"batch sizes differ: jaw {jaw.shape[0]}, exp {exp.shape[0]}, detail {detail.shape[0]}")
        return torch.cat([jaw, exp, detail], dim=1)

    def decode(self, jaw: torch.Tensor, exp: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Displacement (B, 1, 256, 256) from jaw axis-angle (B,3), exp (B,50), detail code (B,128)."""
        return self(self.make_input(jaw, exp, detail))
