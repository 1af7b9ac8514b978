"""ResNet over a log-Mel spectrogram for spoken-language understanding (avila2022's shift ResNet).

The input is a fixed-size spectrogram ``(1, n_mels, frames)``.  A stem convolution, stages of
basic residual blocks (the first block of every later stage halves the resolution), global
average pooling and one linear layer that emits the logits of every slot head side by side
(``num_classes = sum(slot sizes)``; the SLU task splits them into action / object / location).
With ``num_classes`` = number of classes it is a plain spectrogram classifier (keyword spotting).

``conv="1d"`` (default) convolves along time with the mel bands as input channels (a temporal
ResNet, as in TC-ResNet for keyword spotting): every filter sees the whole spectrum, which trains
much faster on CPU.  ``conv="2d"`` treats the spectrogram as a one-channel image.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from qexp.errors import QexpError

_LAYERS = {"1d": (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d), "2d": (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, kernel: int, conv: str):
        super().__init__()
        Conv, Norm, _ = _LAYERS[conv]
        self.conv1 = Conv(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = Norm(cout)
        self.conv2 = Conv(cout, cout, kernel, 1, kernel // 2, bias=False)
        self.bn2 = Norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(Conv(cin, cout, 1, stride, bias=False), Norm(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNetSLU(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (64, 96, 128),
                 blocks: Sequence[int] = (1, 1, 1), kernel: int = 9, stem_kernel: int = 3, stem_stride: int = 1,
                 conv: str = "1d", dropout: float = 0.0):
        super().__init__()
        if conv not in _LAYERS:
            raise QexpError(f"model.conv={conv} is not known; allowed: 1d, 2d")
        if len(widths) != len(blocks) or not widths:
            raise QexpError(f"model.widths={list(widths)} and model.blocks={list(blocks)} must be non-empty lists of one length")
        Conv, Norm, Pool = _LAYERS[conv]
        self.conv = conv
        self.stem = nn.Sequential(Conv(in_channels, widths[0], stem_kernel, stem_stride, stem_kernel // 2, bias=False),
                                  Norm(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(int(n)):
                stages.append(BasicBlock(cin, int(w), 2 if (j == 0 and i > 0) else 1, kernel, conv))
                cin = int(w)
        self.stages = nn.Sequential(*stages)
        self.pool = Pool(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        if self.conv == "1d":
            if x.dim() == 4:  # (B, 1, n_mels, T): mel bands become channels
                x = x.flatten(1, 2)
        elif x.dim() == 3:  # (B, n_mels, T) -> one image channel
            x = x.unsqueeze(1)
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def resnet_slu(in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (64, 96, 128),
               blocks: Sequence[int] = (1, 1, 1), width_mult: float = 1.0, kernel: int = 9, stem_kernel: int = 3,
               stem_stride: int = 1, conv: str = "1d", dropout: float = 0.0, task: str = "slu") -> ResNetSLU:
    """``in_shape`` is ``(1, n_mels, frames)`` (or ``(n_mels, frames)``); ``task`` must be slu."""
    if task != "slu":
        raise QexpError(f"model=resnet_slu classifies whole utterances (task slu), not {task}; use model=rnn for CTC")
    widths = [max(1, int(round(w * width_mult))) for w in widths]
    if conv == "1d":
        in_channels = in_shape[-2] * (in_shape[0] if len(in_shape) == 3 else 1)
    else:
        in_channels = in_shape[0] if len(in_shape) == 3 else 1
    return ResNetSLU(in_channels, num_classes, widths, blocks, kernel, stem_kernel, stem_stride, conv, dropout)
