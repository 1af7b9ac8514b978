"""The one object every dataset builder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import Dataset

from qexp.tasks.base import Task


@dataclass
class DataBundle:
    """Train/val/test splits, the task that interprets them, and the model's input facts.

    ``test`` may be a dict of named test sets (e.g. GlaS Test A / Test B); their metrics are
    recorded with the set's name as suffix, and the first one provides the primary metric.
    ``model_kwargs`` are passed to the model factory (``in_shape``, ``num_classes``, ...).
    """

    train: Dataset
    val: Dataset
    test: Dataset | dict[str, Dataset]
    task: Task
    model_kwargs: dict[str, Any]
    collate_fn: Callable | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def test_sets(self) -> dict[str, Dataset]:
        return dict(self.test) if isinstance(self.test, dict) else {"test": self.test}
