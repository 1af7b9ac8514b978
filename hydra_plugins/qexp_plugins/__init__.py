"""qexp's Hydra plugins (Hydra instantiates plugins only from the ``hydra_plugins`` package).

- ``Sweeper`` (``hydra/sweeper=qexp``, the default): Hydra's basic sweeper, except that a failed job
  does not stop the sweep.  Every job runs, whatever the launcher; at the end the sweep exits 1
  with one line per failed job: its overrides and its one-line error.
- ``SlurmLauncher`` (``hydra/launcher=slurm``): hydra-submitit-launcher's SLURM launcher with its
  time limit checked before anything is submitted, and sbatch's refusals reported as one line.

Both run in the launching process, outside any job, so they end it the way the CLI does: the
lines on stderr and a non-zero exit (a raised error would come with Hydra's traceback hint).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
from omegaconf import OmegaConf

# Slurm checks time limits about once a minute, so the time-limit signal can come up to 60 s
# before `signal_delay_s`; a job must be able to train at least a minute before that.
SIGNAL_EARLY_S = 60
MIN_WORK_S = 60


def _exit(lines: list[str], code: int) -> None:
    print("\n".join(f"error: {line}" for line in lines), file=sys.stderr)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    from qexp.errors import JobFailed

    text = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _varying(batch: Sequence[Sequence[str]]) -> list[set[str]]:
    """For each job, the overrides that differ between jobs (what names the job in a sweep)."""
    shared = set(batch[0]).intersection(*map(set, batch[1:])) if len(batch) > 1 else set()
    return [set(job) - shared for job in batch]


class Sweeper(BasicSweeper):
    """The basic sweeper that runs every job and reports all failed ones at the end."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        failed: list[str] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for num, (names, ret) in enumerate(zip(_varying(batch), results), initial_job_idx):
                if ret.status == JobStatus.FAILED:
                    shown = " ".join(o for o in batch[num - initial_job_idx] if o in names)
                    failed.append(f"job {num}{f' ({shown})' if shown else ''}: {_one_line(ret._return_value)}")
            initial_job_idx += len(batch)
            returns.append(results)
        if failed:
            _exit([f"{len(failed)} of {initial_job_idx} jobs failed (details in each job's status.json)", *failed], 1)
        return returns


def check_time_limit(timeout_min: Any, signal_delay_s: Any) -> None:
    """A time limit that leaves no time to train before the time-limit signal would requeue the
    job at every start, forever."""
    delay = int(signal_delay_s or 0)
    smallest = math.ceil((delay + SIGNAL_EARLY_S + MIN_WORK_S) / 60)
    if timeout_min is not None and int(timeout_min) < smallest:  # None: the partition's limit
        _exit([(f"hydra.launcher.timeout_min={timeout_min} is too short for signal_delay_s={delay}: Slurm may "
                f"send the time-limit signal up to {SIGNAL_EARLY_S} s early, so the job would be requeued before it "
                f"trains; use timeout_min>={smallest} (or a smaller hydra.launcher.signal_delay_s)")], 2)


class _SacctOnce(logging.Filter):
    """Without Slurm accounting every status poll repeats the same sacct warning (three lines each
    time); say it once.  submitit still sees each job end through its result file."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args = "sacct is unavailable (no Slurm accounting): following jobs by their result files", ()
        return True


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit's SLURM launcher, checked before it submits and with one-line errors."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_time_limit(self.params.get("timeout_min"), self.params.get("signal_delay_s"))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        quiet = _SacctOnce()
        logging.getLogger("submitit").addFilter(quiet)
        try:
            return super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            if any(ln.startswith("sbatch: error:") for ln in lines):  # bad partition, resources, ...
                refusal = [ln.removeprefix("sbatch: error: ") for ln in lines if ln.startswith("sbatch: error:")]
                _exit([f"sbatch refused the jobs: {'; '.join(refusal)}"], 2)
            # a job that ended without a result (killed, out of memory, node failure)
            folder = str(self.params["submitit_folder"]).replace("%j", "<job id>")
            _exit([f"a job ended without a result ({lines[0] if lines else type(exc).__name__}); its log is under {folder}"],
                  1)
        except FileNotFoundError as exc:
            _exit([f"hydra/launcher=slurm needs Slurm's sbatch on this machine ({exc})"], 2)
        finally:
            logging.getLogger("submitit").removeFilter(quiet)
