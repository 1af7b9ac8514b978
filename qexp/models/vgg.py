"""VGG-style networks: stages of 3x3 conv-BN-ReLU with max-pooling, flattened into an FC head.

``vgg9`` is dong2017's CIFAR network (2x64C3-MP-2x128C3-MP-2x256C3-MP-2x512FC-classes);
``vgg`` builds any such stack, e.g. zhao2019-style CNNs whose FC layers dominate the size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from qexp.errors import QexpError


class VGG(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, stages: Sequence[Sequence[int]],
                 fc: Sequence[int] = (512, 512), dropout: float = 0.5, batch_norm: bool = True):
        super().__init__()
        if len(in_shape) != 3:
            raise QexpError(f"VGG-style models need image inputs (C, H, W), got in_shape={tuple(in_shape)}")
        layers: list[nn.Module] = []
        cin = int(in_shape[0])
        for stage in stages:
            for width in stage:
                layers += [nn.Conv2d(cin, int(width), 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(int(width))] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                cin = int(width)
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        for width in fc:
            head += [nn.Linear(flat, int(width), bias=not batch_norm)]
            head += [nn.BatchNorm1d(int(width))] if batch_norm else []
            head += [nn.ReLU(inplace=True)]
            head += [nn.Dropout(dropout)] if dropout > 0 else []
            flat = int(width)
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg(in_shape: Sequence[int], num_classes: int, stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256)),
        fc: Sequence[int] = (512, 512), width_mult: float = 1.0, dropout: float = 0.5, batch_norm: bool = True) -> VGG:
    stages = [[max(1, round(w * width_mult)) for w in stage] for stage in stages]
    return VGG(in_shape, num_classes, stages, fc, dropout, batch_norm)


def vgg9(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width_mult: float = 1.0,
         dropout: float = 0.5) -> VGG:
    """dong2017's VGG-9: 6 conv + 3 FC layers, BN after each hidden layer, dropout in the head."""
    return vgg(in_shape, num_classes, ((64, 64), (128, 128), (256, 256)), (512, 512), width_mult, dropout)
