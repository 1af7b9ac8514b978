"""Multi-layer perceptron (also sung2015's fully-connected FFDNN when widened)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn


class MLP(nn.Sequential):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.0, activation: str = "relu"):
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), acts[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def mlp(in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
        activation: str = "relu") -> MLP:
    return MLP(math.prod(in_shape), num_classes, hidden, dropout, activation)


def ffdnn(in_shape: Sequence[int], num_classes: int, width: int = 128, depth: int = 3, dropout: float = 0.0) -> MLP:
    """sung2015's feed-forward DNN: ``depth`` hidden layers of ``width`` units."""
    return MLP(math.prod(in_shape), num_classes, [width] * depth, dropout)
