"""Binary and ternary weight networks: dong2017's baselines BWN and TWN.

``bwn``  W_i ~ alpha_i * sign(W_i),  alpha_i = mean|W_i| per output filter;            1-bit codes.
``twn``  Delta = 0.7 * mean|W| per layer; alpha_i = mean of |w| over |w| > Delta in filter i;
         W_i ~ alpha_i * {-1, 0, +1} (0 where |w| <= Delta);                           2-bit codes.
         ``center=true``: Delta = 0.7 * mean|W - mean(W)|, as the SQ authors' Caffe code computes
         it (the TWN paper's rule, the default, takes |W| uncentred; the two differ by how far
         the layer's mean is from 0).
Both keep one FP32 scale per output filter (``per_channel=false``: one per layer).
"""

from __future__ import annotations

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_bits, check_flag, signed_scale


class BinaryQuantizer(Quantizer):
    """BWN: sign(w) scaled by the filter's mean magnitude (codes: 1 = +alpha, 0 = -alpha)."""

    kind = "bwn"

    def __init__(self, bits: int = 1, per_channel: bool = True):
        check_bits(self.kind, bits, 1, 1)
        super().__init__(bits, per_channel)

    def _alpha(self, w: torch.Tensor) -> torch.Tensor:
        return self._rows(w).float().abs().mean(dim=1)

    def compute_codes(self, w):
        return (w >= 0).to(torch.int64), {"scale": self._alpha(w)}

    def quantize(self, w):
        # training's hot path: +-alpha directly, the same numbers as dequantize(compute_codes(w))
        if w.dtype != torch.float32:
            return super().quantize(w)
        w = w.detach()
        return signed_scale(self._expand(self._alpha(w), w), w)

    def dequantize(self, codes, params, w_like):
        alpha = self._expand(params["scale"].to(w_like.device, torch.float32), w_like)
        return ((codes.to(w_like.device, torch.float32) * 2 - 1) * alpha).to(w_like.dtype)


class TernaryWeightQuantizer(Quantizer):
    """TWN: threshold at ``threshold`` x mean|W| (per layer; ``center``: x mean|W - mean(W)|),
    per-filter scale over the survivors.

    Codes: 0 = -alpha, 1 = 0, 2 = +alpha.  A filter with no weight above the threshold gets
    alpha = 0 (all its codes are 1 anyway).
    """

    kind = "twn"

    def __init__(self, bits: int = 2, per_channel: bool = True, threshold: float = 0.7, center: bool = False):
        check_bits(self.kind, bits, 2, 2)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 2:
            raise QexpError(f"quant.threshold={threshold!r} is out of range; allowed: a number in (0, 2) "
                            f"(TWN's 0.7 x mean|W|)")
        check_flag(self.kind, "center", center)
        super().__init__(bits, per_channel)
        self.threshold = float(threshold)
        self.center = center

    def delta(self, wf: torch.Tensor, mag: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's threshold: ``threshold`` x mean|W| (``center``: x mean|W - mean(W)|);
        ``mag`` is |W| when the caller has it already."""
        if self.center:
            spread = (wf - wf.mean()).abs()
        else:
            spread = wf.abs() if mag is None else mag
        return spread.sum() * (self.threshold / wf.numel())

    def _split(self, wf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep, alpha): 1.0 where |w| is above the threshold (else 0.0), and each row's mean
        kept magnitude (0 for a row that keeps none).  Float masks throughout: on CPU a bool
        mask costs two to three times a float kernel, and this runs on every training step."""
        mag = wf.abs()
        delta = self.delta(wf, mag)
        # |w| - delta > 0 exactly when |w| > delta (IEEE subtraction is 0 only for equal operands)
        keep = (mag - delta).sign_().clamp_(min=0.0)
        kept = self._rows(mag.mul_(keep)).sum(dim=1)
        count = self._rows(keep).sum(dim=1)
        return keep, kept / count.clamp_min(1.0)  # kept is 0 where count is 0

    def compute_codes(self, w):
        wf = w.float()
        keep, alpha = self._split(wf)
        codes = torch.where(keep > 0, torch.where(wf > 0, 2, 0), 1).to(torch.int64)
        return codes, {"scale": alpha}

    def quantize(self, w):
        # training's hot path: {-alpha, 0, +alpha} directly, as dequantize(compute_codes(w)) gives
        if w.dtype != torch.float32:
            return super().quantize(w)
        w = w.detach()
        keep, alpha = self._split(w)
        return w.sign().mul_(keep).mul_(self._expand(alpha, w))

    def dequantize(self, codes, params, w_like):
        alpha = self._expand(params["scale"].to(w_like.device, torch.float32), w_like)
        return ((codes.to(w_like.device, torch.float32) - 1) * alpha).to(w_like.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threshold={self.threshold}, center={self.center}"
