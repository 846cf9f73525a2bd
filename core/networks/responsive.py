"""Random DECA weights whose outputs depend on the input: for measuring fidelity without the release.

PyTorch's default initialisation (and small random weights) makes ``D_detail`` barely respond to its
input, so a model fitted to it looks better than it would on trained weights. The recipe below (issue 11)
scales a random checkpoint so that every network responds strongly and nonlinearly to its input, with the
codes in DECA's ranges:

- conv and linear weights ``N(0, 2 / fan_in)`` (He), biases 0;
- batch norms at identity (weight 1, bias 0, running mean 0, running var 1), except the last batch norm of
  each ResNet bottleneck block, whose weight is 0.2 (keeps the residual stream from exploding over 16 blocks);
- the last linear layer of ``E_flame`` and ``E_detail`` scaled by 0.3; ``E_flame``'s output bias puts the
  camera scale at 8 and the ambient light band at 3 (so a face is in view and lit);
- ``D_detail``'s last conv scaled by 1.5 (displacement standard deviation about 1 mm).

    nets = responsive_networks(seed=0)          # DecaNetworks, eval mode, float32, CPU
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checkpoint import DecaNetworks
from .encoders import FLAME_CODE_SIZES
from .resnet import Bottleneck

__all__ = ["responsive_networks", "make_responsive", "CAMERA_SCALE", "AMBIENT_LIGHT"]

CAMERA_SCALE = 8.0
AMBIENT_LIGHT = 3.0
_BLOCK_LAST_BN = 0.2
_ENCODER_HEAD = 0.3
_DECODER_LAST_CONV = 1.5


def _offset(name: str) -> int:
    """First index of a part of E_flame's output vector."""
    out = 0
    for k, n in FLAME_CODE_SIZES.items():
        if k == name:
            return out
        out += n
    raise KeyError(name)


@torch.no_grad()
def make_responsive(nets: DecaNetworks, seed: int = 0) -> DecaNetworks:
    """Re-initialise ``nets`` in place with the recipe of the module docstring; returns it in eval mode."""
    g = torch.Generator().manual_seed(int(seed))
    for module in nets.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            fan_in = w[0].numel()
            w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    for module in nets.modules():
        if isinstance(module, Bottleneck):
            module.bn3.weight.fill_(_BLOCK_LAST_BN)
    for enc in (nets.E_flame, nets.E_detail):
        enc.layers[-1].weight.mul_(_ENCODER_HEAD)
    head = nets.E_flame.layers[-1]
    head.bias[_offset("cam")] = CAMERA_SCALE
    light = _offset("light")
    head.bias[light:light + 3] = AMBIENT_LIGHT  # band 0 (ambient), RGB
    last_conv = [m for m in nets.D_detail.conv_blocks if isinstance(m, nn.Conv2d)][-1]
    last_conv.weight.mul_(_DECODER_LAST_CONV)
    return nets.eval()


def responsive_networks(seed: int = 0) -> DecaNetworks:
    """Fresh :class:`DecaNetworks` (CPU, float32, eval) with input-dependent random weights."""
    return make_responsive(DecaNetworks(), seed)
