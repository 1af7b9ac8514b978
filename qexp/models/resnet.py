"""Residual networks: He et al.'s CIFAR ResNet-(6n+2) and torchvision's ImageNet ResNet-18/34/50.

``resnet(in_shape, num_classes, depth)`` picks the variant from the input size: small images
(H, W <= 64: CIFAR, MNIST, digits) get the CIFAR design (3x3 stem, stages of 16/32/64
channels, parameter-free shortcuts), larger ones torchvision's ImageNet design (trained from
scratch, ``weights=None``).  Depths 18/34/50 on small images use the ImageNet blocks with a
3x3 stride-1 stem and no max-pool, the usual "ResNet-18 for CIFAR".
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qexp.errors import QexpError

SMALL_INPUT = 64  # H, W at or below this use the CIFAR stem
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; the shortcut zero-pads channels and subsamples (option A)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. (2016), section 4.2: 3 stages of n blocks, GAP, FC."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise QexpError(f"model.depth={depth}: the CIFAR ResNet needs depth = 6n+2 (20, 32, 44, 56, 110) "
                            f"or one of {', '.join(map(str, IMAGENET_DEPTHS))}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, stride=2 if i > 0 and j == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def imagenet_resnet(depth: int, in_channels: int = 3, num_classes: int = 1000, small_input: bool = False) -> nn.Module:
    """torchvision's ResNet-``depth`` (random init); ``small_input`` swaps in a 3x3 stride-1 stem."""
    import torchvision

    if depth not in IMAGENET_DEPTHS:
        raise QexpError(f"model.depth={depth}: the ImageNet ResNet has depth {', '.join(map(str, IMAGENET_DEPTHS))}")
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if small_input or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def resnet(in_shape: Sequence[int], num_classes: int, depth: int = 20, variant: str = "auto") -> nn.Module:
    """ResNet-``depth`` for ``in_shape`` = (C, H, W).

    ``variant``: ``auto`` (CIFAR design for H, W <= 64 unless ``depth`` is an ImageNet depth),
    ``cifar`` or ``imagenet``.
    """
    if len(in_shape) != 3:
        raise QexpError(f"model=resnet needs image inputs (C, H, W), got in_shape={tuple(in_shape)}")
    c, h, w = in_shape
    small = max(h, w) <= SMALL_INPUT
    if variant == "auto":
        variant = "cifar" if small and depth not in IMAGENET_DEPTHS else "imagenet"
    if variant == "cifar":
        return CifarResNet(depth, c, num_classes)
    if variant == "imagenet":
        return imagenet_resnet(depth, c, num_classes, small_input=small)
    raise QexpError(f"model.variant={variant} is not known; allowed: auto, cifar, imagenet")


def resnet20(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    return resnet(in_shape, num_classes, 20, "cifar")


def resnet32(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    return resnet(in_shape, num_classes, 32, "cifar")


def resnet56(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    return resnet(in_shape, num_classes, 56, "cifar")


def resnet18(in_shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000) -> nn.Module:
    return resnet(in_shape, num_classes, 18)


def resnet34(in_shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000) -> nn.Module:
    return resnet(in_shape, num_classes, 34)
