"""Checkpoints that survive crashes: atomic writes and a SHA-256 header checked on load.

File layout: ``QEXPCKPT1 <sha256 hex>\\n`` followed by the ``torch.save`` payload.  The newest
checkpoint is ``last.pt``; when a new one is written the old one becomes ``prev.pt``, so a
truncated or corrupt ``last.pt`` falls back to ``prev.pt`` with a warning.

The checksum detects corruption, not forgery: anyone who can write the folder can recompute
it.  So the payload is read with ``torch.load(weights_only=True)``, which builds only tensors
and plain containers and never runs code from the file; checkpoints therefore hold nothing
else (RNG states as tensors and tuples, no numpy objects).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qexp.errors import one_line
from qexp.report.store import atomic_write_bytes, disk_error

log = logging.getLogger(__name__)
MAGIC = b"QEXPCKPT1 "


class CorruptCheckpoint(Exception):
    pass


def _plain_data(obj: Any) -> Any:
    """numpy scalars/arrays (metrics, RNG keys) as Python numbers/tensors: weights_only reads them."""
    if isinstance(obj, dict):
        return {k: _plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_data(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain_data(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(_plain_data(state), buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and verify; raises :class:`CorruptCheckpoint` naming the file on any mismatch."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"{path}: unreadable ({exc.strerror})") from None
    head, sep, payload = data.partition(b"\n")
    if not sep or not head.startswith(MAGIC):
        raise CorruptCheckpoint(f"{path}: not a qexp checkpoint (bad header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupt)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refused (not plain data) or damaged
        first = one_line(exc, 200)
        raise CorruptCheckpoint(f"{path}: not a plain-data checkpoint, refused ({first})") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{path}: not a qexp checkpoint (payload is a {type(state).__name__})")
    return state


def rotate_and_save(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``last.pt`` atomically, keeping the previous one as ``prev.pt``."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / "next.pt"
    save_checkpoint(tmp, state)
    last = ckpt_dir / "last.pt"
    try:
        if last.exists():
            os.replace(last, ckpt_dir / "prev.pt")
        os.replace(tmp, last)
    except OSError as exc:
        raise disk_error(last, exc) from None
    return last


def latest_valid(ckpt_dir: str | os.PathLike, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, warning about any that do not."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [ckpt_dir / n for n in ("last.pt", "next.pt", "prev.pt") if (ckpt_dir / n).exists()]
    loaded = []
    for path in candidates:
        try:
            loaded.append((path, load_checkpoint(path, map_location)))
        except CorruptCheckpoint as exc:
            log.warning("skipping checkpoint %s", exc)
    if not loaded:
        return None
    return max(loaded, key=lambda item: item[1].get("global_step", -1))
