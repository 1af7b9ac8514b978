"""Sweeps through Hydra launchers, skip_completed, preemption (SIGTERM), and the sbatch script."""

import json
import signal
import subprocess
import sys
import time

from qexp.launch import sbatch_script
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


def test_sbatch_script_has_configured_resources():
    text = sbatch_script(["hydra.launcher.partition=gpu-long", "hydra.launcher.gpus_per_node=4",
                          "hydra.launcher.timeout_min=720", "hydra.launcher.tasks_per_node=4"], num_jobs=6)
    assert "#SBATCH --partition=gpu-long" in text
    assert "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --time=720" in text
    assert "#SBATCH --ntasks-per-node=4" in text
    assert "#SBATCH --array=0-5%" in text
    assert "--signal=USR2@" in text  # the time-limit warning that triggers checkpoint + requeue
