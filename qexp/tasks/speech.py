"""Speech tasks: CTC character recognition (CER/WER) and spoken-language understanding (slots).

CTC batches are ``(features (B, F, T), feature_lengths (B,), targets (sum L,), target_lengths (B,))``
and the model returns ``(logits (B, T', C), out_lengths)`` with class 0 the CTC blank.
SLU batches are ``(features (B, 1, F, T), slots (B, S))`` and the model returns the logits of
all slot heads side by side, ``(B, sum(slot_sizes))``.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F

from qexp.tasks.base import Task, to_device


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus CER and WER: total edits over total reference characters / words."""
    char_edits = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    word_edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    n_chars = sum(len(r) for r in refs)
    n_words = sum(len(r.split()) for r in refs)
    return {"cer": char_edits / max(n_chars, 1), "wer": word_edits / max(n_words, 1)}


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.  ``logits`` is (B, T, C)."""
    best = logits.argmax(-1).cpu()
    lengths = lengths.cpu().tolist() if lengths is not None else [best.shape[1]] * best.shape[0]
    out = []
    for seq, n in zip(best.tolist(), lengths):
        ids, last = [], None
        for s in seq[: int(n)]:
            if s != last and s != blank:
                ids.append(s)
            last = s
        out.append(ids)
    return out


class CTCRecognition(Task):
    """Character recognition with CTC; greedy decoding; primary metric CER (lower is better)."""

    metric = "cer"
    higher_is_better = False

    def __init__(self, alphabet: str, blank: int = 0):
        self.alphabet = alphabet
        self.blank = int(blank)
        self.num_classes = len(alphabet) + 1

    def decode_text(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i - 1] for i in ids if 0 < i <= len(self.alphabet))

    def _forward(self, model, batch):
        x, x_len, y, y_len = batch
        logits, out_len = model(x, x_len)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, C)
        loss = F.ctc_loss(log_probs, y, out_len, y_len, blank=self.blank, reduction="mean", zero_infinity=True)
        return loss, logits, out_len

    def loss(self, model, batch):
        loss, _, _ = self._forward(model, batch)
        return loss, batch[0].shape[0]

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        refs, hyps = [], []
        loss_sum, total = 0.0, 0
        for batch in batches:
            batch = to_device(batch, device)
            loss, logits, out_len = self._forward(model, batch)
            n = batch[0].shape[0]
            loss_sum += loss.item() * n
            total += n
            y, y_len = batch[2].cpu().tolist(), batch[3].cpu().tolist()
            starts = [0, *itertools.accumulate(y_len)][:-1]
            refs += [self.decode_text(y[s : s + n_]) for s, n_ in zip(starts, y_len)]
            hyps += [self.decode_text(ids) for ids in greedy_decode(logits, out_len, self.blank)]
        out = error_rates(refs, hyps)
        out["sentence_accuracy"] = sum(r == h for r, h in zip(refs, hyps)) / max(len(refs), 1)
        out["loss"] = loss_sum / max(total, 1)
        return out


class SpokenLanguageUnderstanding(Task):
    """Slot filling: one cross-entropy per slot head, summed.  ``accuracy`` counts an utterance
    only when every slot is right (FSC's intent accuracy); ``acc_<slot>`` per slot."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, slot_names: Sequence[str], slot_sizes: Sequence[int], label_smoothing: float = 0.0):
        if len(slot_names) != len(slot_sizes):
            raise ValueError("one size per slot name")
        self.slot_names = list(slot_names)
        self.slot_sizes = [int(s) for s in slot_sizes]
        self.num_classes = sum(self.slot_sizes)
        self.label_smoothing = float(label_smoothing)

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"model emits {logits.shape[-1]} logits, slots need {self.num_classes} ({self.slot_sizes})")
        return list(torch.split(logits, self.slot_sizes, dim=-1))

    def _losses(self, logits, y, smoothing):
        return [F.cross_entropy(part, y[:, i], label_smoothing=smoothing, reduction="none")
                for i, part in enumerate(self.split(logits))]

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return torch.stack(self._losses(logits, y, self.label_smoothing)).sum(0).mean(), y.shape[0]

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        total, all_right, loss_sum = 0, 0, 0.0
        per_slot = [0] * len(self.slot_sizes)
        for batch in batches:
            x, y = to_device(batch, device)
            logits = model(x)
            loss_sum += torch.stack(self._losses(logits, y, 0.0)).sum(0).sum().item()
            right = torch.stack([part.argmax(-1) == y[:, i] for i, part in enumerate(self.split(logits))], 1)
            all_right += right.all(1).sum().item()
            for i in range(len(per_slot)):
                per_slot[i] += right[:, i].sum().item()
            total += y.shape[0]
        out = {"accuracy": all_right / max(total, 1), "loss": loss_sum / max(total, 1)}
        if len(self.slot_names) > 1:
            out.update({f"acc_{name}": c / max(total, 1) for name, c in zip(self.slot_names, per_slot)})
        return out
