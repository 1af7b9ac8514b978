"""Encoder-decoder FCN for gland segmentation, in the spirit of the suggestive-annotation network
(Yang et al., MICCAI 2017) that chen2021 quantizes: residual (basic or bottleneck) encoder blocks
between 2x poolings, an upsampling decoder fed by skip connections, per-pixel class logits
(background / gland, plus a contour class when the data asks for it).

Inputs of any size work: the image is padded to a multiple of ``2**(len(widths)-1)`` and the
logits are cropped back, so whole-image inference needs no tiling.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qexp.errors import QexpError

BLOCKS = ("basic", "bottleneck")
UPSAMPLING = ("bilinear", "transposed")


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected when widths differ) identity, then ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce (to cout/4) - 3x3 - 1x1 expand, plus a (projected) identity, then ReLU."""

    def __init__(self, cin: int, cout: int, reduction: int = 4):
        super().__init__()
        mid = max(1, cout // reduction)
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (nn.Identity() if cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def make_stage(block: str, cin: int, cout: int, n: int) -> nn.Sequential:
    cls = BasicBlock if block == "basic" else Bottleneck
    return nn.Sequential(*[cls(cin if i == 0 else cout, cout) for i in range(n)])


class Up(nn.Module):
    """Upsample the deeper map 2x, concatenate the skip, fuse with conv-BN-ReLU (+ residual blocks)."""

    def __init__(self, cdeep: int, cskip: int, mode: str, block: str, n_blocks: int):
        super().__init__()
        self.mode = mode
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(cdeep, cskip, 2, stride=2, bias=False)
            cdeep = cskip
        self.fuse = conv_bn_relu(cdeep + cskip, cskip)
        self.blocks = make_stage(block, cskip, cskip, n_blocks)

    def forward(self, deep, skip):
        if self.mode == "transposed":
            deep = self.up(deep)
        else:
            deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.blocks(self.fuse(torch.cat([deep, skip], 1)))


class FCN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks: int | Sequence[int] = 1, decoder_blocks: int = 0, block: str = "basic",
                 upsample: str = "bilinear", dropout: float = 0.0):
        super().__init__()
        widths = [int(w) for w in widths]
        blocks = [int(blocks)] * len(widths) if isinstance(blocks, int) else [int(b) for b in blocks]
        self.factor = 2 ** (len(widths) - 1)
        self.stem = conv_bn_relu(in_channels, widths[0])
        self.encoder = nn.ModuleList()
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = make_stage(block, cin, w, n)
            self.encoder.append(stage if i == 0 else nn.Sequential(nn.MaxPool2d(2), *stage))
            cin = w
        self.decoder = nn.ModuleList(
            Up(widths[i + 1], widths[i], upsample, block, decoder_blocks) for i in reversed(range(len(widths) - 1))
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        y = self.stem(x)
        skips = []
        for stage in self.encoder:
            y = stage(y)
            skips.append(y)
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            y = up(y, skip)
        return self.head(self.dropout(y))[..., :h, :w]


def fcn(in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64), width_mult: float = 1.0,
        blocks: int | Sequence[int] = 1, decoder_blocks: int = 0, block: str = "basic", upsample: str = "bilinear",
        dropout: float = 0.0) -> FCN:
    """``widths`` per resolution level (len = depth; each level after the first halves the size),
    ``blocks`` residual blocks per encoder level (an int or one per level), ``decoder_blocks``
    extra residual blocks after each decoder fusion."""
    if block not in BLOCKS:
        raise QexpError(f"model.block={block} is not known; allowed: {', '.join(BLOCKS)}")
    if upsample not in UPSAMPLING:
        raise QexpError(f"model.upsample={upsample} is not known; allowed: {', '.join(UPSAMPLING)}")
    if not widths or any(int(w) < 1 for w in widths):
        raise QexpError(f"model.widths={list(widths)} must be a non-empty list of positive integers")
    if not isinstance(blocks, int) and len(blocks) != len(widths):
        raise QexpError(f"model.blocks={list(blocks)} needs one entry per level ({len(widths)}) or one integer")
    widths = [max(1, int(round(int(w) * width_mult))) for w in widths]
    return FCN(int(in_shape[0]), int(num_classes), widths, blocks, decoder_blocks, block, upsample, dropout)
