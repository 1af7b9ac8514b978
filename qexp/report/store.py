"""Run records: ``status.json`` while a run lives, ``record.json`` only when it completed.

Both are written atomically (temp file in the same folder, fsync, rename), so a reader never
sees a half-written file and a crashed run never leaves a completed-looking record.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from qexp.errors import QexpError

RECORD = "record.json"
STATUS = "status.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise QexpError(f"no space left on the device while writing {path}; free disk space and resume") from None
        raise QexpError(f"cannot write {path}: {exc.strerror}") from None


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become null, tuples lists, numpy/torch scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n").encode())


def write_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> None:
    atomic_write_json(
        Path(run_dir) / STATUS,
        {"status": status, "heartbeat": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields},
    )


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD
    atomic_write_json(path, record)
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A record dict, or None when the file is missing or unreadable (never half a record)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The commit the code runs from (with ``+dirty`` when the tree has changes)."""
    here = Path(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
