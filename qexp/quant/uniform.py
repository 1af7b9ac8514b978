"""Uniform k-bit weight grids: the general uniform quantizer and chen2021's fixed-point format.

``uniform``  symmetric or asymmetric, per-tensor or per-channel, any float step.
``fixed``    fixed-point Q-format: the step is a power of two, 2^-f (f fractional bits).
"""

from __future__ import annotations

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_bits, signed_scale

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

    def _grid(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The side tensors of ``w``'s grid: ``scale`` (and ``zero`` when asymmetric), per row."""
        rows = self._rows(w).float()
        k = self.bits
        if self.symmetric:
            if k == 1:
                return {"scale": rows.abs().mean(dim=1).clamp_min(_EPS)}
            return {"scale": (rows.abs().amax(dim=1) / (2 ** (k - 1) - 1)).clamp_min(_EPS)}
        lo = rows.amin(dim=1).clamp(max=0.0)
        hi = rows.amax(dim=1).clamp(min=0.0)
        scale = ((hi - lo) / (2**k - 1)).clamp_min(_EPS)
        return {"scale": scale, "zero": torch.round(-lo / scale)}

    def _levels(self, w: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Integer-valued float levels: q in [-2^(k-1), 2^(k-1)) (symmetric) or [0, 2^k)."""
        k = self.bits
        scaled = torch.round(w / self._expand(params["scale"], w))
        if self.symmetric:
            return scaled.clamp_(-(2 ** (k - 1)), 2 ** (k - 1) - 1)
        return scaled.add_(self._expand(params["zero"], w)).clamp_(0, 2**k - 1)

    def compute_codes(self, w):
        params = self._grid(w)
        if self.symmetric and self.bits == 1:
            return (w >= 0).to(torch.int64), params
        shift = 2 ** (self.bits - 1) if self.symmetric else 0
        return (self._levels(w, params) + shift).to(torch.int64), params

    def quantize(self, w):
        # the hot path of training: the same numbers dequantize(compute_codes(w)) gives (the
        # levels are small integers, exact in float32), without the int64 round trip
        if w.dtype != torch.float32:
            return super().quantize(w)
        w = w.detach()
        params = self._grid(w)
        scale = self._expand(params["scale"], w)
        if self.symmetric and self.bits == 1:
            return signed_scale(scale, w)
        q = self._levels(w, params)
        if not self.symmetric:
            q.sub_(self._expand(params["zero"], w))
        return q.mul_(scale)

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


class FixedPointQuantizer(Quantizer):
    """Fixed-point weights with k bits, f of them fractional (chen2021).

        w_q = 2^-f * clip(round(w * 2^f), -2^(k-1), 2^(k-1) - 1)

    ``frac_bits=None`` picks f from the layer's range each step: the largest f for which the
    biggest magnitude still fits, f = (k - 1) - ceil(log2 max|w|) (per output channel with
    ``per_channel``).  Codes are the k-bit two's-complement integers shifted to [0, 2^k); f is
    stored as one int16 per layer (or channel), so decoding needs nothing else.
    """

    kind = "fixed"

    def __init__(self, bits: int, frac_bits: int | None = None, per_channel: bool = False):
        check_bits(self.kind, bits, 2, 16)
        if frac_bits is not None and (not isinstance(frac_bits, int) or isinstance(frac_bits, bool)
                                      or not -64 <= frac_bits <= 64):
            raise QexpError(f"quant.frac_bits={frac_bits!r} is out of range; allowed: null (from the layer's range) "
                            f"or an integer -64..64")
        super().__init__(bits, per_channel)
        self.frac_bits = frac_bits

    def _frac(self, w: torch.Tensor) -> torch.Tensor:
        rows = self._rows(w).float()
        if self.frac_bits is not None:
            return torch.full((rows.shape[0],), self.frac_bits, dtype=torch.int16, device=w.device)
        peak = rows.abs().amax(dim=1)
        int_bits = torch.ceil(torch.log2(peak.clamp_min(_EPS)))
        int_bits = torch.where(peak > 0, int_bits, torch.zeros_like(int_bits))
        return ((self.bits - 1) - int_bits).clamp(-64, 64).to(torch.int16)

    def compute_codes(self, w):
        f = self._frac(w)
        half = 2 ** (self.bits - 1)
        scaled = torch.ldexp(w.float(), self._expand(f, w).float())
        q = torch.clamp(torch.round(scaled), -half, half - 1)
        return (q + half).to(torch.int64), {"frac_bits": f}

    def dequantize(self, codes, params, w_like):
        f = params["frac_bits"].to(w_like.device, torch.float32)
        q = codes.to(w_like.device, torch.float32) - 2 ** (self.bits - 1)
        return torch.ldexp(q, -self._expand(f, w_like)).to(w_like.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", frac_bits={self.frac_bits}"
