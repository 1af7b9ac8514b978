"""TensorBoard scalars and hparams, a progress bar, and console lines."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

log = logging.getLogger("qexp")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Logger:
    """TensorBoard writer (rank 0 only) plus a tqdm progress bar that hides on non-terminals."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, progress: bool = True):
        self.enabled = enabled
        self.progress = progress and enabled
        self.writer = None
        self.tb_dir = Path(run_dir) / "tb"
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.tb_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(hparams).items()}
        met = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.writer.add_hparams(hp, met, run_name=".")

    def bar(self, iterable: Iterable, total: int, desc: str):
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                    disable=None if self.progress else True, file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
