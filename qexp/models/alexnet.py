"""AlexNet with batch normalisation (the "AlexNet-BN" of the BWN/TWN/SQ papers).

Krizhevsky et al.'s five conv layers (96-256-384-384-256) and two 4096-unit FC layers, each
followed by BN; dropout in the head.  Inputs must be at least 63x63 (224x224 on ImageNet).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from qexp.errors import QexpError

MIN_SIZE = 63


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def fc_bn(cin: int, cout: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.Dropout(dropout)] if dropout > 0 else [])


class AlexNetBN(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, fc: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(in_channels, 96, 11, 4, 2), nn.MaxPool2d(3, 2),
            *conv_bn(96, 256, 5, padding=2), nn.MaxPool2d(3, 2),
            *conv_bn(256, 384, 3, padding=1),
            *conv_bn(384, 384, 3, padding=1),
            *conv_bn(384, 256, 3, padding=1), nn.MaxPool2d(3, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(), *fc_bn(256 * 6 * 6, fc, dropout), *fc_bn(fc, fc, dropout), nn.Linear(fc, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def alexnet_bn(in_shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000, fc: int = 4096,
               dropout: float = 0.5) -> AlexNetBN:
    if len(in_shape) != 3 or min(in_shape[1:]) < MIN_SIZE:
        raise QexpError(f"model=alexnet_bn needs images of at least {MIN_SIZE}x{MIN_SIZE}, got in_shape={tuple(in_shape)}; "
                        f"use an ImageNet-size dataset or resize (e.g. dataset.image_size=64)")
    return AlexNetBN(in_shape[0], num_classes, fc, dropout)
