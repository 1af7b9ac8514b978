"""Checkpoints that survive crashes: atomic writes and a SHA-256 header checked on load.

File layout: ``QEXPCKPT1 <sha256 hex>\\n`` followed by the ``torch.save`` payload.  The newest
checkpoint is ``last.pt``; when a new one is written the old one becomes ``prev.pt``, so a
truncated or corrupt ``last.pt`` falls back to ``prev.pt`` with a warning.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from qexp.report.store import atomic_write_bytes

log = logging.getLogger(__name__)
MAGIC = b"QEXPCKPT1 "


class CorruptCheckpoint(Exception):
    pass


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
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
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CorruptCheckpoint(f"{path}: cannot be unpickled ({exc})") from None


def rotate_and_save(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``last.pt`` atomically, keeping the previous one as ``prev.pt``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "next.pt"
    save_checkpoint(tmp, state)
    last = ckpt_dir / "last.pt"
    if last.exists():
        os.replace(last, ckpt_dir / "prev.pt")
    os.replace(tmp, last)
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
