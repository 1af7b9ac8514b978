"""Uniform k-bit weight quantization (symmetric or asymmetric, per-tensor or per-channel)."""

from __future__ import annotations

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, channel_view, per_row

_EPS = torch.finfo(torch.float32).tiny


class UniformQuantizer(Quantizer):
    """k-bit uniform grid.

    symmetric:  q = clip(round(w / s), -2^(k-1), 2^(k-1) - 1),  s = max|w| / (2^(k-1) - 1)
                (k = 1: q in {-1, +1} with s = mean|w|, i.e. a binary grid)
    asymmetric: q = clip(round(w / s) + z, 0, 2^k - 1), s = (max - min) / (2^k - 1), z = round(-min / s)
    Codes are q shifted to [0, 2^k); scales (and zero points) are stored per output channel or
    per tensor.
    """

    kind = "uniform"

    def __init__(self, bits: int, per_channel: bool = True, symmetric: bool = True):
        super().__init__(bits, per_channel)
        if bits > 16:
            raise QexpError(f"quant=uniform supports bits 1..16, got bits={bits}")
        self.symmetric = bool(symmetric)

    def _stat_rows(self, w: torch.Tensor) -> torch.Tensor:
        rows = channel_view(w)
        return rows if self.per_channel else rows.reshape(1, -1)

    def _expand(self, stat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return per_row(stat, w) if self.per_channel else stat.reshape(())

    def compute_codes(self, w):
        rows = self._stat_rows(w).float()
        k = self.bits
        if self.symmetric:
            if k == 1:
                scale = rows.abs().mean(dim=1).clamp_min(_EPS)
                codes = (w >= 0).to(torch.int64)
                return codes, {"scale": scale}
            qmax = 2 ** (k - 1) - 1
            scale = (rows.abs().amax(dim=1) / qmax).clamp_min(_EPS)
            q = torch.clamp(torch.round(w / self._expand(scale, w)), -(qmax + 1), qmax)
            return (q + 2 ** (k - 1)).to(torch.int64), {"scale": scale}
        lo = rows.amin(dim=1).clamp(max=0.0)
        hi = rows.amax(dim=1).clamp(min=0.0)
        scale = ((hi - lo) / (2**k - 1)).clamp_min(_EPS)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / self._expand(scale, w)) + self._expand(zero, w), 0, 2**k - 1)
        return q.to(torch.int64), {"scale": scale, "zero": zero}

    def dequantize(self, codes, params, w_like):
        scale = self._expand(params["scale"].to(w_like.device, torch.float32), w_like)
        k = self.bits
        if self.symmetric:
            if k == 1:
                q = codes.to(torch.float32) * 2 - 1
            else:
                q = codes.to(torch.float32) - 2 ** (k - 1)
        else:
            q = codes.to(torch.float32) - self._expand(params["zero"].to(w_like.device, torch.float32), w_like)
        return (q * scale).to(w_like.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", symmetric={self.symmetric}"
