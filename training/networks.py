"""The networks a training run builds: DECA's (the default) or a reduced E_flame for quick CPU runs.

DECA's encoders are ResNet-50s at 224x224. ``model.encoder_blocks`` (blocks per ResNet stage, default
``[3, 4, 6, 3]``) and ``model.encoder_input_size`` (default 224) shrink E_flame's trunk for tests and
debugging: the learning tests train a ``[1, 1, 1, 1]`` trunk on 64x64 inputs in a CPU budget. The state
dict keys keep the official names, so checkpoints of a reduced run still load with
:func:`load_training_networks`, but their shapes differ from DECA's: a reduced run exports no
``deca_model.tar`` (the inference core expects the released architecture).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from core.networks import RESNET50_BLOCKS, DecaNetworks, ResNetTrunk, build_deca_networks

__all__ = ["ResizedTrunk", "is_reduced", "build_training_networks", "load_training_networks"]


class ResizedTrunk(ResNetTrunk):
    """A bottleneck ResNet trunk that first resizes its input to ``input_size`` (bilinear, antialiased).

    Images (B, 3, H, W) in [0, 1] -> features (B, 2048). Same parameter names as :class:`ResNetTrunk`."""

    def __init__(self, blocks: Sequence[int] = RESNET50_BLOCKS, input_size: int = 224) -> None:
        super().__init__(blocks)
        if int(input_size) < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        self.input_size = int(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return super().forward(x)


def is_reduced(model_cfg) -> bool:
    """True when the config asks for an E_flame other than DECA's ResNet-50 at 224."""
    return tuple(model_cfg.encoder_blocks) != tuple(RESNET50_BLOCKS) or int(model_cfg.encoder_input_size) != 224


def build_training_networks(model_cfg) -> DecaNetworks:
    """Freshly initialised networks for ``model_cfg`` (a :class:`~training.config.ModelConfig`)."""
    nets = build_deca_networks()
    if is_reduced(model_cfg):
        nets.E_flame.encoder = ResizedTrunk(model_cfg.encoder_blocks, model_cfg.encoder_input_size)
    return nets


def load_training_networks(path: str | os.PathLike, model_cfg) -> DecaNetworks:
    """Networks of a deca-train checkpoint (or an exported ``deca_model.tar``) built for ``model_cfg``,
    in eval mode."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    nets = build_training_networks(model_cfg)
    for name in ("E_flame", "E_detail", "D_detail"):
        getattr(nets, name).load_state_dict(obj[name])
    return nets.eval()
