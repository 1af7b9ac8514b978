"""Sweeps through Hydra launchers, skip_completed, failed jobs, preemption (SIGTERM), launcher checks.

The same against a real Slurm: tests/test_slurm.py (make test-slurm)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

SWEEP = ["quant=fp32,uniform", "bits=4", "trainer.epochs=1", "trainer.progress=false"]


def _records(sweep_dir):
    return sorted(sweep_dir.glob("*/record.json"))


def test_multirun_local_launcher_and_skip_completed(tmp_path, cli):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP, f"hydra.sweep.dir={sweep}"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    recs = _records(sweep)
    assert len(recs) == 2
    assert {json.loads(r.read_text())["quant"]["name"] for r in recs} == {"fp32", "uniform"}
    assert all(json.loads(r.read_text())["status"] == "completed" for r in recs)
    stamps = {r: r.stat().st_mtime_ns for r in recs}
    again = cli(*args, "skip_completed=true")
    assert again.returncode == 0, again.stderr
    assert {r: r.stat().st_mtime_ns for r in _records(sweep)} == stamps  # nothing re-ran
    assert "already completed" in again.stdout + again.stderr


def test_sigterm_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "qexp", "train", "quant=uniform", "bits=4", "trainer.epochs=30",
           "trainer.progress=false", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "preempted" in err and "resume" in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "preempted"
    assert not (run / "record.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout + done.stderr
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "completed" and len(record["history"]) == 30


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_a_failed_job_does_not_stop_the_sweep(tmp_path, cli, launcher):
    """Before: the basic launcher stopped at job 0 (a SystemExit inside the job) and job 1 never
    ran; joblib's error did not say which job failed."""
    sweep = tmp_path / "sweep"
    done = cli("train", "-m", *launcher, "trainer.lr=1e30,0.002", "trainer.epochs=1", "trainer.progress=false",
               f"hydra.sweep.dir={sweep}", timeout=300)
    assert done.returncode == 1, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert lines[0] == "error: 1 of 2 jobs failed (details in each job's status.json)"
    assert lines[1].startswith("error: job 0 (trainer.lr=1e+30): loss became nan by step")
    assert len(lines) == 2 and "Traceback" not in done.stderr
    (record,) = _records(sweep)
    assert json.loads(record.read_text())["config"]["trainer"]["lr"] == 0.002
    (status,) = sweep.glob("0_*/status.json")
    assert json.loads(status.read_text())["status"] == "failed"


@pytest.mark.parametrize("limits, smallest", [(["hydra.launcher.timeout_min=0"], 4),
                                               (["hydra.launcher.timeout_min=3"], 4),
                                               (["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"], 3)])
def test_a_time_limit_too_short_for_the_signal_is_one_line_at_launch(tmp_path, cli, limits, smallest):
    """Before: timeout_min <= 3 (signal_delay_s=120) was submitted and requeued at every start,
    forever.  (signal_delay_s + up to 60 s early + 60 s of training) / 60, rounded up."""
    sweep = tmp_path / "sweep"
    done = cli("train", "-m", "hydra/launcher=slurm", *limits, f"hydra.sweep.dir={sweep}", timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: hydra.launcher.timeout_min=") and f"use timeout_min>={smallest} " in line
    assert not sweep.exists() or not any(sweep.iterdir())  # checked before any job is written or submitted


def test_qexp_sbatch_points_to_the_launcher(cli):
    """Before: it printed a script sbatch could not run (a literal SWEEP_DIR, bare python, ...)."""
    done = cli("sbatch", "quant=fp32,uniform")
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "hydra/launcher=slurm" in line and "scripts/sbatch_example.sh" in line
