"""Small VGG-style CNN whose width scales with one factor (sung2015's CIFAR width study)."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """[conv-bn-relu x convs_per_stage, maxpool] per stage, then global pooling and an FC head."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64),
                 convs_per_stage: int = 1, fc: int = 0, dropout: float = 0.0):
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            for _ in range(convs_per_stage):
                blocks.append(conv_bn(cin, int(w)))
                cin = int(w)
            blocks.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten()]
        if fc:
            head += [nn.Linear(cin, fc), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = fc
        elif dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(cin, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def cnn(in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 64), width_mult: float = 1.0,
        convs_per_stage: int = 1, fc: int = 0, dropout: float = 0.0) -> SmallCNN:
    widths = [max(1, int(round(w * width_mult))) for w in widths]
    return SmallCNN(in_shape[0], num_classes, widths, convs_per_stage, fc, dropout)
