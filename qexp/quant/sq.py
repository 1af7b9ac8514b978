"""Stochastic quantization (dong2017): quantize a random, error-weighted subset of filters.

At every training forward, over a base quantizer Q (BWN, TWN or uniform k-bit):

  e_i = ||W_i - Q(W_i)||_1 / ||W_i||_1           quantization error of output filter i
  p_i = f(1 / (e_i + eps)) / sum_j f(1 / (e_j + eps)),  f = constant | linear | softmax | sigmoid
  round(r * m) of the m filters are drawn by roulette selection WITHOUT replacement with
  probabilities p (``torch.multinomial``, torch's global RNG: reproducible and resumable);
  the drawn filters use Q(W_i), the others stay in float.

The ratio r follows the stage schedule ``ratios`` (50 % -> 75 % -> 87.5 % -> 100 %); it is a
buffer, and so is the current selection.  In eval mode no new draw is made: the model is
evaluated with the selection of the last training step (at r = 1, the last stage, every filter
is quantized, which is the paper's test-time model).  ``encode`` stores the selected rows as
codes of the base quantizer and the float rows as FP32 side tensors, plus a bit mask of which
rows are which (omitted when every row is quantized), so the measured memory is honest.
"""

from __future__ import annotations

import math

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, channel_view, check_choice, check_ratios, per_row, ste
from qexp.quant.binary import BinaryQuantizer, TernaryWeightQuantizer
from qexp.quant.pack import pack_mask, unpack_mask
from qexp.quant.uniform import UniformQuantizer

PROBS = ("linear", "constant", "softmax", "sigmoid")
BASES = ("auto", "bwn", "twn", "uniform")
_EPS = 1e-7


def selection_probabilities(errors: torch.Tensor, prob: str = "linear", eps: float = _EPS) -> torch.Tensor:
    """dong2017's p_i = f(q_i) / sum_j f(q_j) with q_i = 1 / (e_i + eps)."""
    x = 1.0 / (errors.float() + eps)  # float32 is plenty: the largest value is 1/eps = 1e7
    if prob == "constant":
        f = torch.ones_like(x)
    elif prob == "linear":
        f = x
    elif prob == "softmax":
        f = torch.softmax(x, dim=0)
    elif prob == "sigmoid":
        f = torch.sigmoid(x)
    else:
        raise ValueError(prob)
    return f / f.sum()


def roulette_without_replacement(p: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """A bool mask with ``n`` of ``len(p)`` entries drawn without replacement with probabilities
    ``p`` (sequential roulette: each pick removes its entry and renormalises the rest), written
    into ``out`` when given (no allocation on the training path)."""
    m = p.numel()
    selected = torch.zeros(m, dtype=torch.bool, device=p.device) if out is None else out.zero_()
    if n >= m:
        selected.fill_(True)
    elif n > 0:
        # Efraimidis-Spirakis: the n largest p_i / E_i (E_i ~ Exp(1)) are a sequential roulette
        # draw without replacement; the algorithm torch.multinomial uses, minus its input checks
        # (a third of an SQ forward on CPU, and a host sync on CUDA)
        keys = p / torch.empty_like(p).exponential_()
        selected.index_fill_(0, torch.topk(keys, n, sorted=False).indices, True)
    return selected


def _base_quantizer(base: str, bits: int, per_channel: bool) -> Quantizer:
    if base == "auto":
        base = {1: "bwn", 2: "twn"}.get(bits, "uniform")
    if base == "bwn":
        if bits != 1:
            raise QexpError(f"quant.base=bwn is 1-bit but bits={bits}; use bits=1, or quant.base=auto|uniform")
        return BinaryQuantizer(1, per_channel)
    if base == "twn":
        if bits != 2:
            raise QexpError(f"quant.base=twn is 2-bit but bits={bits}; use bits=2, or quant.base=auto|uniform")
        return TernaryWeightQuantizer(2, per_channel)
    return UniformQuantizer(bits, per_channel)


class StochasticQuantizer(Quantizer):
    kind = "sq"

    def __init__(self, bits: int, base: str = "auto", prob: str = "linear",
                 ratios: list[float] = (0.5, 0.75, 0.875, 1.0), per_channel: bool = True):
        check_choice(self.kind, "base", base, BASES)
        check_choice(self.kind, "prob", prob, PROBS)
        self_ratios = check_ratios(self.kind, ratios)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise QexpError(f"quant.bits={bits!r} is out of range for quant=sq; allowed: an integer 1..16")
        base_q = _base_quantizer(base, bits, per_channel)
        super().__init__(base_q.bits, per_channel)
        self.base = base
        self.base_q = base_q
        self.prob = prob
        self.ratios = self_ratios
        self.register_buffer("ratio", torch.tensor(self.ratios[0]))
        self._ratio = self.ratios[0]  # Python mirror of the buffer: no device sync per forward
        self.register_buffer("selected", torch.ones(0, dtype=torch.bool))

    # -- state ------------------------------------------------------------------------------
    def attach(self, w: torch.Tensor) -> None:
        super().attach(w)
        self.selected = torch.ones(channel_view(w).shape[0], dtype=torch.bool, device=w.device)

    def _ensure(self, w: torch.Tensor) -> None:
        rows = channel_view(w).shape[0]
        if self.selected.numel() != rows:
            self.selected = torch.ones(rows, dtype=torch.bool, device=w.device)

    def stage_plan(self):
        return [{"ratio": r} for r in self.ratios]

    def set_stage(self, index: int) -> None:
        super().set_stage(index)
        self._ratio = self.ratios[min(index, len(self.ratios) - 1)]
        self.ratio.fill_(self._ratio)
        if self._ratio >= 1.0:
            self.selected.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ratio = float(self.ratio)

    def n_selected(self, rows: int) -> int:
        return min(rows, int(math.floor(self._ratio * rows + 0.5)))

    # -- the stochastic part ----------------------------------------------------------------
    def row_errors(self, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        rows, qrows = channel_view(w).float(), channel_view(q).float()
        return (rows - qrows).abs().sum(dim=1) / rows.abs().sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)

    def draw(self, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """A fresh selection for ``w`` given its base-quantized value ``q``, into ``selected``."""
        n = self.n_selected(self.selected.numel())
        if n >= self.selected.numel():
            return self.selected.fill_(True)
        return roulette_without_replacement(selection_probabilities(self.row_errors(w, q), self.prob), n,
                                            out=self.selected)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.is_enabled:
            return w
        wd = w.detach()
        self._ensure(wd)
        q = self.base_q.quantize(wd)
        if self.training:
            self.draw(wd, q)
            if self.n_selected(self.selected.numel()) >= self.selected.numel():
                return ste(w, q)  # every row quantized (the last stage): nothing to mix
        # the same values dequantize() rebuilds from the export: base values on selected rows
        # (elementwise, so computing them for every row changes nothing), float rows as they are
        return ste(w, torch.where(per_row(self.selected, wd), q, wd))

    # -- codes: selected rows through the base quantizer, float rows as they are -----------
    def _compose(self, w, codes, params, selected):
        rows = channel_view(w).shape[0]
        out = {k: (v[selected] if self.per_channel and v.dim() >= 1 and v.shape[0] == rows else v)
               for k, v in params.items()}
        if not bool(selected.all()):
            out["selected"] = pack_mask(selected)
            out["float_rows"] = channel_view(w)[~selected].float()
        return channel_view(codes)[selected].reshape(-1), out

    def compute_codes(self, w):
        self._ensure(w)
        codes, params = self.base_q.compute_codes(w)
        return self._compose(w, codes, params, self.selected)

    def dequantize(self, codes, params, w_like):
        shape = tuple(w_like.shape)
        rows = shape[0] if shape else 1
        tail = shape[1:]
        if "selected" in params:
            selected = unpack_mask(params["selected"], rows).to(w_like.device)
        else:
            selected = torch.ones(rows, dtype=torch.bool, device=w_like.device)
        n = int(selected.sum())
        like = torch.empty((n, *tail), dtype=w_like.dtype, device=w_like.device)
        base_params = {k: v for k, v in params.items() if k not in ("selected", "float_rows")}
        q = self.base_q.dequantize(codes.to(w_like.device).reshape(like.shape), base_params, like)
        if n == rows:
            return q.reshape(shape)
        out = torch.empty((rows, math.prod(tail)), dtype=w_like.dtype, device=w_like.device)
        out[selected] = q.reshape(n, -1)
        out[~selected] = params["float_rows"].to(w_like.device, w_like.dtype).reshape(rows - n, -1)
        return out.reshape(shape)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", base={self.base_q.kind}, prob={self.prob}, ratios={self.ratios}")
