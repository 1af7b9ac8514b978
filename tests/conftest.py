import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# fast, quiet runs in tests
FAST = ["trainer.progress=false"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``qexp <args>`` in a subprocess (the way a user does)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "qexp", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def compose_cfg():
    from qexp.config import compose

    def _compose(*overrides: str):
        return compose([*FAST, *overrides])

    return _compose


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_logging():
    """An in-process ``qexp train`` lets Hydra configure logging with handlers bound to this test's
    captured streams, which pytest closes afterwards; put every logger's own handlers back so a
    later test does not log into a closed stream (it did: 'Logging error ... I/O operation on
    closed file').  pytest's capture handlers come and go per test phase: left to pytest."""
    import logging

    def loggers():
        return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger))]

    def from_pytest(handler):
        return type(handler).__module__.startswith("_pytest")

    saved = {lg: ([h for h in lg.handlers if not from_pytest(h)], lg.level, lg.propagate, lg.disabled)
             for lg in loggers()}
    yield
    for lg in loggers():
        handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
        lg.handlers[:] = handlers + [h for h in lg.handlers if from_pytest(h)]
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled
