"""The task interface the trainer relies on."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Task:
    """Subclasses define ``loss`` and ``evaluate``; ``metric`` names the primary metric."""

    metric: str = "accuracy"
    higher_is_better: bool = True

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch and the number of samples it covers."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device) -> dict[str, float]:
        """Metrics over all ``batches`` (already an iterable of CPU batches)."""
        raise NotImplementedError

    def better(self, a: float, b: float | None) -> bool:
        """True when metric value ``a`` beats ``b``."""
        if b is None:
            return True
        return a > b if self.higher_is_better else a < b
