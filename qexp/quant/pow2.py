"""Power-of-two weights: shift networks (avila2022) and Incremental Network Quantization (INQ,
Zhou et al. 2017, used by chen2021).

Both store a weight as a b-bit code: the top bit is the sign, the low b-1 bits an exponent index
j, with j = 0 meaning the value 0 and j >= 1 meaning 2^(n_hi - j + 1).  ``n_hi`` (the top of the
exponent window, anchored at the layer's largest magnitude) is one int16 side value per layer
(or per output channel), so every decoded weight is exactly 0 or +-2^n.

``pow2``  sign(w) * 2^round(log2|w|) with 2^(b-1) - 1 exponents below n_hi = round(log2 max|w|);
          magnitudes under the window's half-step become 0.  Optional learnable per-layer scale
          s (``learn_scale``): w_q = s * P(w / s), s trained through the STE (dw_q/ds = P(w/s)).
          ``bits >= 3``: at 2 bits the window is the top exponent alone, so every |w| below
          2^(n_hi - 1/2) (0.5 to 1 x max|w|) becomes 0 -- 99.3 % of 1000 and 99.5 % of 100 000
          N(0, 1) weights.  A useful 2-bit power of two would need another
          exponent rule (fitted to the weights' spread, i.e. TWN with a power-of-two scale),
          which is not the shift network's anchored window; ternary weights are ``twn`` or
          ``ternary``.  3 bits (three exponents and zero) keeps about half of such weights
          non-zero (46-48 %), so that is the smallest width accepted, with a one-line error below it.
``inq``   INQ's levels {0, +-2^n2 .. +-2^n1}, n1 = floor(log2(4 max|W| / 3)),
          n2 = n1 + 1 - 2^(b-1)/2 (2^(b-2) exponents; one code is reserved for zero).  Weights
          are quantized and FROZEN in magnitude-ordered partitions, one per stage (``ratios``:
          50 % -> 75 % -> 87.5 % -> 100 % of the layer); the rest keep training in float.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_bits, check_choice, check_ratios
from qexp.quant.pack import pack_mask, unpack_mask

_TINY = torch.finfo(torch.float32).tiny


def pow2_exponents(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """Nearest exponent of |x|: ``log`` rounds log2|x| (geometric midpoints), ``linear`` uses
    INQ's arithmetic midpoints (|x| in [0.75, 1.5) x 2^n -> n)."""
    mag = x.abs().float().clamp_min(_TINY)
    if rounding == "log":
        return torch.round(torch.log2(mag))
    return torch.floor(torch.log2(mag * (4.0 / 3.0)))


def power_of_two(e: torch.Tensor) -> torch.Tensor:
    """2^e for integer-valued float32 ``e`` in [-149, 127]: exact, and one kernel (``ldexp`` is
    two, five times slower on CPU).  Training and decoding both go through here."""
    return torch.exp2(e)


def pow2_codes(x: torch.Tensor, n_hi: torch.Tensor, n_exp: int, bits: int, rounding: str) -> torch.Tensor:
    """Codes of ``x`` on the levels {0, +-2^(n_hi - n_exp + 1) .. +-2^n_hi} (``n_hi`` broadcast
    against ``x``).  Below the lowest level's lower midpoint a weight becomes 0."""
    zero, e = pow2_levels(x, n_hi, n_exp, rounding)
    j = (n_hi - e + 1).to(torch.int64)
    sign = (x < 0).to(torch.int64)
    return torch.where(zero, torch.zeros_like(j), (sign << (bits - 1)) | j)


def pow2_levels(x: torch.Tensor, n_hi: torch.Tensor, n_exp: int, rounding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(zero, e): where ``x`` becomes 0, and elsewhere its exponent clamped into the window
    [n_hi - n_exp + 1, n_hi] (integer-valued floats)."""
    e = pow2_exponents(x, rounding)
    n_lo = n_hi - (n_exp - 1)
    if rounding == "log":
        zero = (x == 0) | (e < n_lo)
    else:  # INQ: 0 below (0 + 2^n_lo) / 2 (a bound that can underflow to 0 when n_lo <= -149)
        zero = (x == 0) | (x.abs().float() < torch.ldexp(torch.ones_like(n_lo), n_lo - 1))
    return zero, torch.minimum(torch.maximum(e, n_lo), n_hi)


def pow2_values(codes: torch.Tensor, n_hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Float32 values of :func:`pow2_codes` codes: exactly 0 or +-2^n."""
    j = codes & ((1 << (bits - 1)) - 1)
    negative = (codes >> (bits - 1)) & 1
    mag = power_of_two(n_hi - j.to(torch.float32) + 1)
    return torch.where(j > 0, torch.where(negative.bool(), -mag, mag), torch.zeros_like(mag))


def top_exponent(rows: torch.Tensor, rounding: str) -> torch.Tensor:
    """n_hi per row of ``rows`` (C, n): the exponent the largest magnitude rounds to (0 for an
    all-zero row)."""
    peak = rows.abs().float().amax(dim=1)
    n = pow2_exponents(peak, rounding)
    return torch.where(peak > 0, n, torch.zeros_like(n)).clamp(-149, 127).to(torch.int16)


class PowerOfTwoQuantizer(Quantizer):
    kind = "pow2"

    def __init__(self, bits: int, per_channel: bool = False, learn_scale: bool = False, rounding: str = "log"):
        if bits == 2:
            raise QexpError("quant.bits=2 is too narrow for quant=pow2: one exponent plus zero zeroes ~99 % of the "
                            "weights; the smallest useful width is bits=3 (for ternary weights use quant=twn or ternary)")
        check_bits(self.kind, bits, 3, 8)
        check_choice(self.kind, "rounding", rounding, ("log", "linear"))
        super().__init__(bits, per_channel)
        self.n_exp = 2 ** (bits - 1) - 1
        self.rounding = rounding
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            self.scale = nn.Parameter(torch.ones(1))

    def _scale(self) -> torch.Tensor:
        return self.scale.abs().clamp_min(1e-12)

    def compute_codes(self, w):
        x = w.float()
        params: dict[str, torch.Tensor] = {}
        if self.learn_scale:
            params["scale"] = self._scale().detach().clone()
            x = x / params["scale"]
        n_hi = top_exponent(self._rows(x), self.rounding)
        codes = pow2_codes(x, self._expand(n_hi.float(), x), self.n_exp, self.bits, self.rounding)
        params["n_hi"] = n_hi
        return codes, params

    def quantize(self, w):
        # training's hot path: +-2^e straight from the exponents, the same numbers as
        # dequantize(compute_codes(w)) (the integer exponents survive the code round trip exactly)
        if w.dtype != torch.float32 or self.learn_scale:
            return super().quantize(w)
        w = w.detach()
        n_hi = self._expand(top_exponent(self._rows(w), self.rounding).float(), w)
        zero, e = pow2_levels(w, n_hi, self.n_exp, self.rounding)
        # copysign differs from the codes' sign bit only at w = -0.0, which is zeroed anyway
        return torch.copysign(power_of_two(e), w).masked_fill_(zero, 0.0)

    def dequantize(self, codes, params, w_like):
        n_hi = self._expand(params["n_hi"].to(w_like.device, torch.float32), w_like)
        v = pow2_values(codes.to(w_like.device), n_hi, self.bits)
        if "scale" in params:
            v = v * params["scale"].to(w_like.device).reshape(())
        return v.to(w_like.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.learn_scale or not self.is_enabled:
            return super().forward(w)
        codes, params = self.compute_codes(w.detach())
        params["scale"] = self._scale()  # same value, but with a gradient path to the scale
        return self.dequantize(codes, params, w) + (w - w.detach())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", exponents={self.n_exp}, rounding={self.rounding}, learn_scale={self.learn_scale}"


class INQQuantizer(Quantizer):
    """Incremental Network Quantization.

    State (buffers, carried by checkpoints): ``frozen`` (bool mask of quantized-and-frozen
    weights), ``frozen_codes`` (their codes: the frozen values are exactly their decoded
    powers of two), ``n1`` (fixed when the first partition is frozen) and ``ratio`` (the
    fraction the current stage freezes).  Freezing happens lazily at the first use after a stage
    starts, from the float weights at that time: the largest-magnitude not-yet-frozen weights
    are added until ``round(ratio * numel)`` are frozen.  The forward is
    ``where(frozen, Q(w), w)``, so frozen entries get no gradient and keep their value.
    ``pretrain_stage`` (default true; the config's null = auto: true unless the run starts from
    trained float weights, ``trainer.init_from``) adds a float stage 0 before the partitions: INQ
    starts from a trained float network.
    """

    kind = "inq"

    def __init__(self, bits: int, ratios: list[float] = (0.5, 0.75, 0.875, 1.0), pretrain_stage: bool | None = True):
        check_bits(self.kind, bits, 2, 8)
        self_ratios = check_ratios(self.kind, ratios, must_end_at_one=True)
        super().__init__(bits, per_channel=False)
        self.n_exp = 2 ** (bits - 2)
        self.ratios = self_ratios
        self.pretrain_stage = pretrain_stage is None or bool(pretrain_stage)
        self.register_buffer("ratio", torch.tensor(0.0 if self.pretrain_stage else self.ratios[0]))
        self.register_buffer("n1", torch.zeros(1, dtype=torch.int16))
        self.register_buffer("frozen", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("frozen_codes", torch.zeros(0, dtype=torch.int16))
        # Python mirrors of ``ratio`` and of how many weights are frozen: the per-step check
        # "does this stage freeze more?" then reads no device memory (no host sync on CUDA)
        self._ratio = float(self.ratio)
        self._n_frozen = 0

    def attach(self, w: torch.Tensor) -> None:
        super().attach(w)
        self.frozen = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        self.frozen_codes = torch.zeros(w.shape, dtype=torch.int16, device=w.device)
        self._n_frozen = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ratio, self._n_frozen = float(self.ratio), int(self.frozen.sum())  # once per load

    def stage_plan(self):
        return ([{"ratio": 0.0}] if self.pretrain_stage else []) + [{"ratio": r} for r in self.ratios]

    def set_stage(self, index: int) -> None:
        super().set_stage(index)
        plan = self.stage_plan()
        self._ratio = plan[min(index, len(plan) - 1)]["ratio"]
        self.ratio.fill_(self._ratio)

    @torch.no_grad()
    def sync(self, w: torch.Tensor) -> None:
        """Freeze the next partition(s) if the stage's ratio asks for more frozen weights."""
        if self.frozen.shape != w.shape:
            self.attach(w)
        target = min(w.numel(), int(math.floor(self._ratio * w.numel() + 0.5)))
        have = self._n_frozen
        if target <= have:
            return
        if have == 0:  # the first partition fixes the levels
            peak = w.abs().float().max().clamp_min(_TINY)
            self.n1.fill_(int(torch.floor(torch.log2(peak * 4.0 / 3.0))))
        score = w.abs().float().reshape(-1).masked_fill(self.frozen.reshape(-1), -1.0)
        idx = torch.topk(score, target - have, sorted=False).indices
        n1 = self.n1.float()
        codes = pow2_codes(w.reshape(-1)[idx], n1, self.n_exp, self.bits, "linear")
        self.frozen_codes.view(-1)[idx] = codes.to(torch.int16)
        self.frozen.view(-1)[idx] = True
        self._n_frozen = target

    def compute_codes(self, w):
        self.sync(w)
        params = {"n_hi": self.n1.clone()}
        if not bool(self.frozen.all()):
            params["frozen"] = pack_mask(self.frozen)
            params["float_values"] = w[~self.frozen].float()
        return self.frozen_codes.to(torch.int64), params

    def dequantize(self, codes, params, w_like):
        n1 = params["n_hi"].to(w_like.device, torch.float32).reshape(())
        v = pow2_values(codes.to(w_like.device).reshape(w_like.shape), n1, self.bits)
        if "frozen" in params:
            mask = unpack_mask(params["frozen"], w_like.numel()).to(w_like.device).reshape(w_like.shape)
            v = v.clone()
            v[~mask] = params["float_values"].to(w_like.device, torch.float32)
        return v.to(w_like.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.is_enabled:
            return w
        self.sync(w.detach())
        # frozen entries: their power of two (no gradient); the rest: the float weight itself
        return torch.where(self.frozen, pow2_values(self.frozen_codes.to(torch.int64), self.n1.float(), self.bits).to(w.dtype), w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", exponents={self.n_exp}, ratios={self.ratios}"
