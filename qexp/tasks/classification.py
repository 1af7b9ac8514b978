"""Single-label classification: cross-entropy, top-1 (and top-5 when there are many classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qexp.tasks.base import Task, to_device


class Classification(Task):
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, num_classes: int, label_smoothing: float = 0.0):
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), y.shape[0]

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        correct = correct5 = total = 0
        loss_sum = 0.0
        for batch in batches:
            x, y = to_device(batch, device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            if self.num_classes > 5:
                top5 = logits.topk(5, dim=1).indices
                correct5 += (top5 == y[:, None]).any(1).sum().item()
            total += y.shape[0]
        out = {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}
        if self.num_classes > 5:
            out["top5"] = correct5 / max(total, 1)
        return out
