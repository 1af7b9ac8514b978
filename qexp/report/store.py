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
RECORD_FORMAT = 1  # bumped when a reader of an older qexp would misread a newer record
STATUS = "status.json"


TMP_SUFFIX = ".tmp"  # atomic_write_bytes' temp files: ``.<name>.<random>.tmp`` beside the target


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (0666 minus the umask); mkstemp's is 0600."""
    try:
        with open("/proc/self/status") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def disk_error(path: str | os.PathLike, exc: OSError) -> QexpError:
    """One line for a file-system fault while writing ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QexpError(f"no space left on the device while writing {path}; free disk space and resume")
    return QexpError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise disk_error(path, exc) from None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files an interrupted :func:`atomic_write_bytes` left in ``folder`` (call only
    while holding the run's lock: a live writer's temp file looks the same)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


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


def write_final_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> bool:
    """Best effort for the last word of a run that is failing anyway: atomically if possible,
    else in place over the old ``status.json`` (its blocks are already allocated, so this works
    on a full disk); never raises.  Returns whether the status was written."""
    try:
        write_status(run_dir, status, **fields)
        return True
    except QexpError:
        pass
    path = Path(run_dir) / STATUS
    body = {"status": status, "heartbeat": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
            **{k: v for k, v in fields.items() if k != "traceback"}}
    try:
        with open(path, "r+b") as fh:
            fh.write(json.dumps(_clean(body)).encode() + b"\n")
            fh.truncate()
        return True
    except OSError:
        return False


STALE_AFTER_S = 300  # a running run's heartbeat is written at least every epoch/checkpoint


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def effective_status(status: dict[str, Any], now: float | None = None) -> str:
    """``status.json``'s status, except that a ``running`` run whose heartbeat is older than
    :data:`STALE_AFTER_S` and whose process (on this host) is gone reads as ``stale``."""
    state = str(status.get("status", "unknown"))
    if state != "running":
        return state
    age = (now or time.time()) - float(status.get("heartbeat") or 0)
    same_host = status.get("host") == socket.gethostname()
    pid = status.get("pid")
    if age > STALE_AFTER_S and same_host and isinstance(pid, int) and not pid_alive(pid):
        return "stale"
    return state


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD
    atomic_write_json(path, record)
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A record dict, or None when the file is missing or unreadable (never half a record)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
