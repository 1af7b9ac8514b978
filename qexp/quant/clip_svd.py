"""Space-efficient quantization (zhao2019): <= 8-bit uniform weights with dynamic clipping, plus a
truncated SVD of fully-connected weights.

Clipping: each step the clip boundary is re-estimated from the current weights,
b = min(max|w|, |mean(w)| + clip_sigma * std(w)) per output channel (or per tensor), and
w is quantized on the symmetric k-bit grid of step b / (2^(k-1) - 1) (values beyond b saturate).

SVD (2-D weights: nn.Linear and recurrent matrices; conv weights are only clipped + quantized):
W ~ U_r diag(s_r) V_r^T with r = ``svd_rank`` or the smallest r keeping ``svd_energy`` of
sum(s^2).  The factors A = (U_r diag(s_r))^T (r x out) and B = V_r^T (r x in) are each
clipped + quantized per row (per rank-1 component), and the forward weight is A_q^T B_q.  The
export stores exactly those codes and the 2r scales, so the measured memory includes the SVD
saving.  A layer whose factors would not be smaller than the dense matrix is stored dense.
"""

from __future__ import annotations

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_bits

_TINY = torch.finfo(torch.float32).tiny


def clip_boundary(rows: torch.Tensor, clip_sigma: float | None) -> torch.Tensor:
    """Per-row clip boundary: |mean| + clip_sigma * std, never beyond the row's max magnitude."""
    peak = rows.abs().amax(dim=1)
    if clip_sigma is None:
        return peak
    std, mean = torch.std_mean(rows, dim=1, correction=0)
    return torch.minimum(peak, mean.abs() + clip_sigma * std)


def clip_quantize_rows(rows: torch.Tensor, bits: int, clip_sigma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int64 in [0, 2^bits)) and per-row scales of a (C, n) tensor."""
    rows = rows.float()
    qmax = 2 ** (bits - 1) - 1
    scale = (clip_boundary(rows, clip_sigma) / qmax).clamp_min(_TINY)
    q = torch.clamp(torch.round(rows / scale[:, None]), -(qmax + 1), qmax)
    return (q + qmax + 1).to(torch.int64), scale


def svd_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Rank kept: ``rank`` if given, else the smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    if rank is not None:
        return max(1, min(int(rank), s.numel()))
    e = s.double().pow(2)
    cum = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
    return min(s.numel(), int((cum < energy - 1e-12).sum()) + 1)


class ClipSVDQuantizer(Quantizer):
    kind = "clip_svd"

    def __init__(self, bits: int, clip_sigma: float | None = 3.0, svd_rank: int | None = None,
                 svd_energy: float | None = 0.8, per_channel: bool = True):
        check_bits(self.kind, bits, 2, 8)
        if clip_sigma is not None and (not isinstance(clip_sigma, (int, float)) or isinstance(clip_sigma, bool)
                                       or clip_sigma <= 0):
            raise QexpError(f"quant.clip_sigma={clip_sigma!r} is out of range; allowed: a number > 0 "
                            f"(boundary mean + c*std) or null (no clipping)")
        if svd_rank is not None and (not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or svd_rank < 1):
            raise QexpError(f"quant.svd_rank={svd_rank!r} is out of range; allowed: null or an integer >= 1")
        if svd_energy is not None and (not isinstance(svd_energy, (int, float)) or isinstance(svd_energy, bool)
                                       or not 0 < svd_energy <= 1):
            raise QexpError(f"quant.svd_energy={svd_energy!r} is out of range; allowed: null or a fraction in (0, 1]")
        super().__init__(bits, per_channel)
        self.clip_sigma = None if clip_sigma is None else float(clip_sigma)
        self.svd_rank = svd_rank
        self.svd_energy = None if svd_energy is None else float(svd_energy)

    @property
    def uses_svd(self) -> bool:
        return self.svd_rank is not None or self.svd_energy is not None

    def compute_codes(self, w):
        if w.dim() == 2 and self.uses_svd:
            out_f, in_f = w.shape
            u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
            r = svd_rank(s, self.svd_rank, self.svd_energy)
            if r * (out_f + in_f) < out_f * in_f:
                codes_a, scale_a = clip_quantize_rows((u[:, :r] * s[:r]).T, self.bits, self.clip_sigma)
                codes_b, scale_b = clip_quantize_rows(vh[:r], self.bits, self.clip_sigma)
                return torch.cat([codes_a.reshape(-1), codes_b.reshape(-1)]), {"scale_a": scale_a, "scale_b": scale_b}
        codes, scale = clip_quantize_rows(self._rows(w), self.bits, self.clip_sigma)
        return self._unrows(codes, w.shape), {"scale": scale}

    def dequantize(self, codes, params, w_like):
        half = 2 ** (self.bits - 1)
        codes = codes.to(w_like.device)
        if "scale_a" in params:
            out_f, in_f = w_like.shape
            sa = params["scale_a"].to(w_like.device, torch.float32)
            sb = params["scale_b"].to(w_like.device, torch.float32)
            r = sa.numel()
            flat = codes.reshape(-1).to(torch.float32) - half
            a = flat[: r * out_f].reshape(r, out_f) * sa[:, None]
            b = flat[r * out_f:].reshape(r, in_f) * sb[:, None]
            return (a.T @ b).to(w_like.dtype)
        scale = self._expand(params["scale"].to(w_like.device, torch.float32), w_like)
        return ((codes.reshape(w_like.shape).to(torch.float32) - half) * scale).to(w_like.dtype)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", clip_sigma={self.clip_sigma}, svd_rank={self.svd_rank}, "
                f"svd_energy={self.svd_energy}")
