"""One process per run folder: an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for the life
of a run, with the holder's PID and host written in the file so a second process can say who
holds it.

The kernel drops a flock when its holder dies, so a lock left by a killed run is normally just
taken.  A lock still held although the PID written in it is gone on this host (a leftover child
kept the file open) is taken over with a warning, by replacing the lock file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from qexp.errors import QexpError
from qexp.report.store import disk_error, pid_alive

log = logging.getLogger("qexp")
LOCK = ".lock"


def _holder(path: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, "?"


def _dead_holder(path: Path) -> tuple[int, str] | None:
    """The holder named in a held lock file when it is a process of this host that no longer
    exists.  Read twice: a process that has just locked may not have written its PID yet."""
    first = _holder(path)
    pid, host = first
    if pid is None or host != socket.gethostname() or pid_alive(pid):
        return None
    time.sleep(0.5)
    return (pid, host) if _holder(path) == first else None


class RunLock:
    """``with RunLock(run_dir):`` holds the folder; a second holder gets a one-line QexpError."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def _try(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                return False
            raise
        self.fd = fd
        return True

    def acquire(self) -> RunLock:
        try:
            got = self._try()
            dead = None if got else _dead_holder(self.path)
            if dead is not None:
                log.warning("taking over the lock of %s: its holder (PID %d on %s) is gone", self.path.parent, *dead)
                self.path.unlink(missing_ok=True)
                got = self._try()
            if not got:
                pid, host = _holder(self.path)
                raise QexpError(f"{self.path.parent} is in use by another qexp process (PID {pid} on {host}); "
                                f"wait for it to finish or choose another hydra.run.dir")
            pid, host = _holder(self.path)
            if pid is not None and (pid, host) != (os.getpid(), socket.gethostname()):
                log.warning("took over the lock of %s left by PID %d on %s", self.path.parent, pid, host)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:
            self.release()
            raise disk_error(self.path, exc) from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # the folder is free: no holder to name
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
