"""Hwang–Sung ternary / few-level weights with an L2-optimal step and retraining (sung2015).

Levels are {-L..L} x Delta with L = 2^(b-1) - 1: bits=2 gives the ternary {-Delta, 0, +Delta},
bits=3 gives 7 levels {-3..3} x Delta.  Delta (one per layer, or per output channel) is the
step that minimises the L2 quantization error ||W - Q_Delta(W)||^2, found by a vectorised grid
search over Delta in (0, max|W| / L] refined once around the best candidate.

The schedule has two stages, as in the paper: stage 0 trains the float network (quantizer
disabled; ``pretrain_stage``, dropped by default when the run starts from trained float weights,
``trainer.init_from``); stage 1 retrains with quantized weights in the forward pass and float shadow weights
updated through the straight-through estimator.  Delta is fitted at the start of stage 1 from
the trained float weights and then kept (``refit_step=true``: re-fitted at every step).
Without ``quant.stage_epochs`` the trainer splits ``trainer.epochs`` evenly between the stages.
"""

from __future__ import annotations

import torch

from qexp.errors import QexpError
from qexp.quant.base import Quantizer, check_bits

_TINY = torch.finfo(torch.float32).tiny


def grid_error(rows: torch.Tensor, steps: torch.Tensor, levels: int) -> torch.Tensor:
    """Squared error of each row of ``rows`` (C, n) quantized with each step of ``steps`` (K, C):
    returns (K, C).  Processed in chunks so memory stays ~4M elements."""
    out = torch.empty(steps.shape, dtype=torch.float64, device=rows.device)
    chunk = max(1, (1 << 22) // max(1, rows.numel()))
    for start in range(0, steps.shape[0], chunk):
        s = steps[start:start + chunk].unsqueeze(-1)  # (k, C, 1)
        q = torch.clamp(torch.round(rows / s), -levels, levels) * s
        out[start:start + chunk] = (rows - q).double().pow(2).sum(dim=-1)
    return out


def l2_optimal_step(rows: torch.Tensor, levels: int, candidates: int = 64) -> torch.Tensor:
    """Per-row step Delta minimising the L2 error of the {-L..L} x Delta grid (coarse + fine)."""
    rows = rows.float()
    top = (rows.abs().amax(dim=1) / levels).clamp_min(_TINY)  # (C,)
    frac = torch.arange(1, candidates + 1, dtype=torch.float32, device=rows.device) / candidates
    steps = frac[:, None] * top[None, :]  # (K, C)
    best = grid_error(rows, steps, levels).argmin(dim=0)
    centre = steps.gather(0, best[None, :])[0]
    width = top / candidates
    fine = centre[None, :] + (torch.linspace(-1, 1, candidates + 1, device=rows.device)[:, None] * width[None, :])
    fine = fine.clamp_min(_TINY)
    steps = torch.cat([steps, fine])
    best = grid_error(rows, steps, levels).argmin(dim=0)
    return steps.gather(0, best[None, :])[0]


class HwangSungQuantizer(Quantizer):
    kind = "ternary"

    def __init__(self, bits: int = 2, per_channel: bool = False, refit_step: bool = False, candidates: int = 64,
                 pretrain_stage: bool | None = True):
        check_bits(self.kind, bits, 2, 8)
        if not isinstance(candidates, int) or isinstance(candidates, bool) or not 4 <= candidates <= 4096:
            raise QexpError(f"quant.candidates={candidates!r} is out of range; allowed: an integer 4..4096")
        super().__init__(bits, per_channel)
        self.levels = 2 ** (bits - 1) - 1
        self.refit_step = bool(refit_step)
        self.candidates = candidates
        self.pretrain_stage = pretrain_stage is None or bool(pretrain_stage)  # None (auto) unresolved: as in the paper
        # the fitted step(s); 0 = not fitted yet (fitted from the weights at the next use)
        self.register_buffer("step", torch.zeros(1))
        self._fitted = False  # Python mirror of "step is fitted": no host sync per forward

    def attach(self, w: torch.Tensor) -> None:
        super().attach(w)
        self.step = torch.zeros(self._rows(w).shape[0], device=w.device)
        self._fitted = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = bool((self.step > 0).all())  # once per load

    def stage_plan(self):
        return ([{"phase": "float"}] if self.pretrain_stage else []) + [{"phase": "retrain"}]

    def set_stage(self, index: int) -> None:
        super().set_stage(index)
        plan = self.stage_plan()
        self.set_enabled(plan[min(index, len(plan) - 1)]["phase"] == "retrain")
        self.step.zero_()  # re-fit Delta from the weights the new stage starts with
        self._fitted = False

    def fit_step(self, w: torch.Tensor) -> torch.Tensor:
        return l2_optimal_step(self._rows(w), self.levels, self.candidates)

    def _current_step(self, w: torch.Tensor) -> torch.Tensor:
        rows = self._rows(w).shape[0]
        if self.refit_step:
            return self.fit_step(w)
        if self.step.numel() != rows or not self._fitted:
            self.step = self.fit_step(w).to(self.step.device)
            self._fitted = True
        return self.step.clone()

    def compute_codes(self, w):
        step = self._current_step(w)
        q = torch.clamp(torch.round(w.float() / self._expand(step, w)), -self.levels, self.levels)
        return (q + self.levels).to(torch.int64), {"step": step}

    def dequantize(self, codes, params, w_like):
        step = self._expand(params["step"].to(w_like.device, torch.float32), w_like)
        return ((codes.to(w_like.device, torch.float32) - self.levels) * step).to(w_like.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", levels=±{self.levels}, refit_step={self.refit_step}"
