"""ResNet-50 trunk, the feature extractor of DECA's encoders.

Parameter names follow the torchvision layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4`` made of
``Bottleneck`` blocks with ``conv1/bn1/conv2/bn2/conv3/bn3`` and ``downsample.0`` (1x1 conv) /
``downsample.1`` (batch norm) on the first block of each stage), so a trunk placed under the
attribute ``encoder`` has exactly the ``encoder.*`` keys of DECA's ``E_flame`` / ``E_detail``.

The classifier (``fc``) is removed: the trunk ends with a global average pool and returns
``(B, 2048)`` features. The stride of a down-sampling block sits on its 3x3 convolution (the
"ResNet v1.5" arrangement that torchvision, and therefore DECA's ImageNet initialisation, uses).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNetTrunk", "resnet50_trunk", "RESNET50_BLOCKS", "RESNET_FEATURES"]

#: blocks per stage of ResNet-50
RESNET50_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 3)
#: width of the pooled feature vector of a Bottleneck ResNet
RESNET_FEATURES = 2048


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus the identity / projection."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNetTrunk(nn.Module):
    """Bottleneck ResNet without its classifier: images ``(B, 3, H, W)`` -> features ``(B, 2048)``.

    Any input size of at least 32x32 works (the pool is a mean over the final feature map); DECA
    feeds 224x224 crops, for which the final map is 7x7 exactly as in the original network.
    """

    def __init__(self, blocks: Sequence[int] = RESNET50_BLOCKS) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise ValueError(f"blocks must be four positive counts, got {tuple(blocks)}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_channels = 64
        self.layer1 = self._make_stage(64, blocks[0], stride=1)
        self.layer2 = self._make_stage(128, blocks[1], stride=2)
        self.layer3 = self._make_stage(256, blocks[2], stride=2)
        self.layer4 = self._make_stage(512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 512 * Bottleneck.expansion
        self.reset_parameters()

    def _make_stage(self, width: int, n_blocks: int, stride: int) -> nn.Sequential:
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [Bottleneck(self._in_channels, width, stride, downsample)]
        self._in_channels = out_channels
        blocks += [Bottleneck(out_channels, width) for _ in range(1, int(n_blocks))]
        return nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        """He (fan-out) initialisation for convolutions, identity batch norms."""
        if self.conv1.weight.is_meta:
            # Built on the meta device (layout checks, checkpoint loading): nothing to initialise, and
            # torch's meta normal_ goes through Python decompositions that import torch._dynamo (~6 s cold).
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map before pooling, ``(B, 2048, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)


def resnet50_trunk() -> ResNetTrunk:
    """A randomly initialised ResNet-50 trunk (load DECA's weights on top of it)."""
    return ResNetTrunk(RESNET50_BLOCKS)
