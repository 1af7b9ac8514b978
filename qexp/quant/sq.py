"""Stochastic quantization (dong2017): quantize a random, error-weighted subset of filters.

At every training forward, over a base quantizer Q (BWN, TWN or uniform k-bit):

  e_i = ||W_i - Q(W_i)||_1 / ||W_i||_1           quantization error of output filter i

and a roulette selection WITHOUT replacement (each pick removes its filter and renormalises the
rest; torch's global RNG: reproducible and resumable) decides which filters use Q(W_i) and
which stay in float.  ``selection`` picks which of the two published rules draws them:

``paper``      (default; the paper's Sec. 3.2) round(r * m) of the m filters are drawn *to be
               quantized*, with p_i = f(1 / (e_i + eps)) / sum_j f(1 / (e_j + eps)),
               f = constant | linear | softmax | sigmoid.
``reference``  (the authors' Caffe code, ``Roulette()`` in their binary/ternary conv layers)
               floor((1 - r) * m) filters are drawn *to stay in float*, with p_i = e_i / sum_j e_j
               (``prob=constant``: uniform); the other m - floor((1 - r) * m) are quantized.
               The code has no other f, so softmax/sigmoid are refused here.

The two give different inclusion probabilities: for e = [.05, .1, .2, .4, .8] and r = 0.4, a
filter is quantized with probability .825/.598/.325/.168/.085 (paper) or .816/.645/.357/.143/.040
(reference).  ``center`` is passed to a TWN base (the authors' code centres TWN's threshold).

The ratio r follows the stage schedule ``ratios`` (50 % -> 75 % -> 87.5 % -> 100 %); it is a
buffer, and so is the current selection.  In eval mode no new draw is made: the model is
evaluated with the selection of the last training step (at r = 1, the last stage, every filter
is quantized, which is the paper's test-time model).  ``encode`` stores the selected rows as
codes of the base quantizer and the float rows as FP32 side tensors, plus a bit mask of which
rows are which (omitted when every row is quantized), so the measured memory is honest.

Everything works on the weight's rows (one per output channel, :class:`ChannelLayout`): the
base quantizer sees the (out_channels, fan_in) matrix, so transposed convolutions select and
scale their output channels like any other layer.
"""

from __future__ import annotations

import math

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_choice, check_flag, check_ratios, ste
from qexp.quant.binary import BinaryQuantizer, TernaryWeightQuantizer
from qexp.quant.pack import pack_mask, unpack_mask
from qexp.quant.uniform import UniformQuantizer

PROBS = ("linear", "constant", "softmax", "sigmoid")
BASES = ("auto", "bwn", "twn", "uniform")
SELECTIONS = ("paper", "reference")
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


def reference_probabilities(errors: torch.Tensor, prob: str = "linear") -> torch.Tensor:
    """The authors' code's p_i = e_i / sum_j e_j of staying in float (uniform for
    ``prob=constant``, or when every error is 0)."""
    e = errors.float()
    total = e.sum()
    if prob == "constant" or not bool(total > 0):
        return torch.full_like(e, 1.0 / e.numel())
    return e / total


def quantized_count(m: int, ratio: float, selection: str = "paper") -> int:
    """How many of ``m`` filters a draw quantizes: round(r m) (paper) or m - floor((1 - r) m)
    (reference; the 1e-9 keeps e.g. (1 - 0.7) * 10 = 2.9999999999999996 at 3)."""
    if selection == "paper":
        return min(m, int(math.floor(ratio * m + 0.5)))
    return m - min(m, int(math.floor((1.0 - ratio) * m + 1e-9)))


def draw_selection(errors: torch.Tensor, ratio: float, selection: str = "paper", prob: str = "linear",
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the filters to quantize, drawn from their errors by ``selection``'s rule."""
    m = errors.numel()
    n = quantized_count(m, ratio, selection)
    if selection == "paper":
        return roulette_without_replacement(selection_probabilities(errors, prob), n, out=out)
    floats = roulette_without_replacement(reference_probabilities(errors, prob), m - n, out=out)
    return floats.logical_not_()


def _base_quantizer(base: str, bits: int, per_channel: bool, center: bool) -> Quantizer:
    if base == "auto":
        base = {1: "bwn", 2: "twn"}.get(bits, "uniform")
    if center and base != "twn":
        raise QexpError(f"quant.center=true centres TWN's threshold, but this SQ's base is {base}; "
                        f"use bits=2 with quant.base=auto|twn, or quant.center=false")
    if base == "bwn":
        if bits != 1:
            raise QexpError(f"quant.base=bwn is 1-bit but bits={bits}; use bits=1, or quant.base=auto|uniform")
        return BinaryQuantizer(1, per_channel)
    if base == "twn":
        if bits != 2:
            raise QexpError(f"quant.base=twn is 2-bit but bits={bits}; use bits=2, or quant.base=auto|uniform")
        return TernaryWeightQuantizer(2, per_channel, center=center)
    return UniformQuantizer(bits, per_channel)


class StochasticQuantizer(Quantizer):
    kind = "sq"

    def __init__(self, bits: int, base: str = "auto", prob: str = "linear",
                 ratios: list[float] = (0.5, 0.75, 0.875, 1.0), per_channel: bool = True,
                 selection: str = "paper", center: bool = False):
        check_choice(self.kind, "base", base, BASES)
        check_choice(self.kind, "prob", prob, PROBS)
        check_choice(self.kind, "selection", selection, SELECTIONS)
        check_flag(self.kind, "center", center)
        if selection == "reference" and prob not in ("linear", "constant"):
            raise QexpError(f"quant.prob={prob} has no counterpart in quant.selection=reference (the authors' code "
                            f"draws float filters with p ~ e); allowed: linear, constant")
        self_ratios = check_ratios(self.kind, ratios)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise QexpError(f"quant.bits={bits!r} is out of range for quant=sq; allowed: an integer 1..16")
        base_q = _base_quantizer(base, bits, per_channel, center)
        super().__init__(base_q.bits, per_channel)
        self.base = base
        self.base_q = base_q
        self.prob = prob
        self.selection = selection
        self.center = center
        self.ratios = self_ratios
        self.register_buffer("ratio", torch.tensor(self.ratios[0]))
        self._ratio = self.ratios[0]  # Python mirror of the buffer: no device sync per forward
        self.register_buffer("selected", torch.ones(0, dtype=torch.bool))

    # -- state ------------------------------------------------------------------------------
    def attach(self, w: torch.Tensor) -> None:
        super().attach(w)
        self._ensure(w)

    def _ensure(self, w: torch.Tensor) -> None:
        rows = self.layout.out_channels(tuple(w.shape))
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
        return quantized_count(rows, self._ratio, self.selection)

    # -- the stochastic part (on rows: one per output channel) -------------------------------
    @staticmethod
    def row_errors(rows: torch.Tensor, qrows: torch.Tensor) -> torch.Tensor:
        rows, qrows = rows.float(), qrows.float()
        return (rows - qrows).abs().sum(dim=1) / rows.abs().sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)

    def draw(self, rows: torch.Tensor, qrows: torch.Tensor) -> torch.Tensor:
        """A fresh selection for the weight ``rows`` given their base-quantized ``qrows``, into
        ``selected``."""
        if self.n_selected(self.selected.numel()) >= self.selected.numel():
            return self.selected.fill_(True)
        return draw_selection(self.row_errors(rows, qrows), self._ratio, self.selection, self.prob,
                              out=self.selected)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.is_enabled:
            return w
        wd = w.detach()
        self._ensure(wd)
        rows = self.layout.rows(wd)  # a view, except for transposed convolutions
        q = self.base_q.quantize(rows)
        if self.training:
            self.draw(rows, q)
            if self.n_selected(self.selected.numel()) >= self.selected.numel():
                return ste(w, self.layout.from_plain(q, wd.shape))  # the last stage: nothing to mix
        # the same values dequantize() rebuilds from the export: base values on selected rows
        # (elementwise, so computing them for every row changes nothing), float rows as they are
        return ste(w, self.layout.from_plain(torch.where(self.selected[:, None], q, rows), wd.shape))

    # -- codes: selected rows through the base quantizer, float rows as they are -----------
    def compute_codes(self, w):
        self._ensure(w)
        rows = self.layout.rows(w)
        codes, params = self.base_q.compute_codes(rows)
        selected = self.selected
        out = {k: (v[selected] if self.per_channel and v.dim() >= 1 and v.shape[0] == rows.shape[0] else v)
               for k, v in params.items()}
        if not bool(selected.all()):
            out["selected"] = pack_mask(selected)
            out["float_rows"] = rows[~selected].float()
        return codes[selected].reshape(-1), out

    def dequantize(self, codes, params, w_like):
        shape = tuple(w_like.shape)
        rows = self.layout.out_channels(shape)
        fan_in = w_like.numel() // rows
        if "selected" in params:
            selected = unpack_mask(params["selected"], rows).to(w_like.device)
        else:
            selected = torch.ones(rows, dtype=torch.bool, device=w_like.device)
        n = int(selected.sum())
        like = torch.empty((n, fan_in), dtype=w_like.dtype, device=w_like.device)
        base_params = {k: v for k, v in params.items() if k not in ("selected", "float_rows")}
        q = self.base_q.dequantize(codes.to(w_like.device).reshape(like.shape), base_params, like)
        if n < rows:
            out = torch.empty((rows, fan_in), dtype=w_like.dtype, device=w_like.device)
            out[selected] = q
            out[~selected] = params["float_rows"].to(w_like.device, w_like.dtype).reshape(rows - n, -1)
            q = out
        return self.layout.from_plain(q, shape)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", base={self.base_q.kind}, prob={self.prob}, selection={self.selection}, "
                f"ratios={self.ratios}")
