"""Recurrent acoustic model (chen2021's speech RNN): LSTM or GRU over feature frames.

``task="ctc"``: per-frame character logits for CTC, ``forward(x, lengths) -> (logits (B, T', C),
out_lengths)``.  ``task="slu"``: the frame outputs are averaged over the valid frames and one
linear layer gives utterance logits ``(B, C)``.  Input is ``(B, n_mels, T)`` (or
``(B, 1, n_mels, T)``); ``subsample`` stacks that many neighbouring frames into one step,
shortening the sequence (cheaper, and CTC still needs T' >= transcript length).

Each layer and direction is its own one-layer ``nn.LSTM``/``nn.GRU`` run on the padded batch:
the backward direction reads every utterance reversed *within its own length*, so padding never
reaches a valid frame (the same result as packed sequences, several times faster on CPU).  The
weights are plain LSTM/GRU parameters (``rnn.layers.<i>.<fwd|bwd>.weight_ih_l0`` /
``weight_hh_l0``), so a quantizer attached with ``torch.nn.utils.parametrize`` is used in every
forward pass (``RNNBase.forward`` refetches weights that were recomputed).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from qexp.errors import QexpError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, F) within its length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    n = lengths.to(x.device)[:, None]
    idx = torch.where(t < n, n - 1 - t, t)
    return x.gather(1, idx[..., None].expand_as(x))


class BiRNN(nn.Module):
    """Stacked (bi)directional LSTM/GRU over padded batches with exact per-length reversal."""

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        rnn_cls = CELLS[cell]
        dirs = ("fwd", "bwd") if bidirectional else ("fwd",)
        self.layers = nn.ModuleList()
        size = input_size
        for _ in range(layers):
            self.layers.append(nn.ModuleDict({d: rnn_cls(size, hidden, batch_first=True) for d in dirs}))
            size = hidden * len(dirs)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output_size = size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            outs = [layer["fwd"](x)[0]]
            if "bwd" in layer:
                outs.append(reverse_padded(layer["bwd"](reverse_padded(x, lengths))[0], lengths))
            x = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
        return x


class SpeechRNN(nn.Module):
    def __init__(self, in_features: int, num_classes: int, cell: str = "lstm", hidden: int = 128, layers: int = 2,
                 bidirectional: bool = True, dropout: float = 0.0, subsample: int = 1, task: str = "ctc"):
        super().__init__()
        if cell not in CELLS:
            raise QexpError(f"model.cell={cell} is not known; allowed: {', '.join(CELLS)}")
        if task not in ("ctc", "slu"):
            raise QexpError(f"model.task={task} is not known; allowed: ctc, slu")
        if subsample < 1 or hidden < 1 or layers < 1:
            raise QexpError(f"model.subsample/hidden/layers must be >= 1 (got {subsample}/{hidden}/{layers})")
        self.task, self.subsample = task, int(subsample)
        self.rnn = BiRNN(cell, in_features * self.subsample, int(hidden), int(layers), bool(bidirectional), dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.rnn.output_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        if x.dim() == 4:  # (B, 1, F, T)
            x = x.flatten(1, 2)
        x = x.transpose(1, 2)  # (B, T, F)
        b, t, f = x.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
        k = self.subsample
        if k > 1:
            pad = (-t) % k
            if pad:
                x = nn.functional.pad(x, (0, 0, 0, pad))
            x = x.reshape(b, (t + pad) // k, f * k)
            lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
        lengths = lengths.to(x.device).clamp(1, x.shape[1])
        out = self.dropout(self.rnn(x, lengths))
        mask = (torch.arange(out.shape[1], device=x.device)[None, :] < lengths[:, None]).to(out.dtype)
        if self.task == "slu":
            return self.fc((out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        return self.fc(out), lengths


def rnn(in_shape: Sequence[int], num_classes: int, cell: str = "lstm", hidden: int = 128, layers: int = 2,
        bidirectional: bool = True, dropout: float = 0.0, subsample: int = 1, task: str = "ctc") -> SpeechRNN:
    """``in_shape`` is ``(n_mels, T)`` or ``(1, n_mels, T)``: the feature size is ``in_shape[-2]``."""
    return SpeechRNN(int(in_shape[-2]), num_classes, cell, hidden, layers, bidirectional, dropout, subsample, task)
