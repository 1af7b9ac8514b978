"""Sweeps through submitit on a real single-node Slurm (scripts/slurm_local.sh): completion,
skip_completed, a failing job, preemption with requeue and resume, and bad launcher values.

Run with ``make test-slurm`` (installs Slurm when missing, starts the cluster, runs this module
and prints its wall time).  ``pytest -m slurm`` alone uses the cluster that ``SLURM_CONF`` names
when one answers, else starts one in a temporary folder; where Slurm cannot be started the
module is skipped with the reason (``make test-slurm`` makes that a failure instead).  Every qexp
call has a timeout, so a hang fails the test instead of stalling CI.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
# small jobs on an honest 1-CPU share of the node; a time limit that passes the launcher's check
LAUNCHER = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]
TINY = ["trainer.epochs=1", "trainer.progress=false"]
TIMEOUT = 180  # seconds for one sweep of tiny jobs (a hang is a failure)


def _answers(env: dict) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unavailable(reason: str):
    if os.environ.get("QEXP_REQUIRE_SLURM"):
        pytest.fail(f"Slurm is required here but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_env():
    """The environment for commands that talk to the cluster (SLURM_CONF), cluster started if needed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if env.get("SLURM_CONF") and _answers(env):
        yield env
        return
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"Slurm is not installed ({', '.join(missing)} missing; make test-slurm installs it)")
    folder = Path(tempfile.mkdtemp(prefix="qexp-slurm-"))
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=90)
    try:
        if started.returncode != 0:
            _unavailable(f"the local Slurm cluster did not start: {started.stderr.strip()[-500:]}")
        env["SLURM_CONF"] = str(folder / "slurm.conf")
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def qexp(env, *args, timeout=TIMEOUT):
    return run_cli(*args, timeout=timeout, env=env)


def _records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/record.json")}


def _job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))


def test_sweep_runs_as_an_array_and_skip_completed_reruns_nothing(tmp_path, slurm_env):
    sweep = tmp_path / "sweep"
    args = ["train", *LAUNCHER, "quant=fp32,uniform", "bits=4", *TINY, f"hydra.sweep.dir={sweep}"]
    first = qexp(slurm_env, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    records = _records(sweep)
    assert len(records) == 2
    assert {r["quant"]["name"] for r in records.values()} == {"fp32", "uniform"}
    assert all(r["status"] == "completed" and len(r["history"]) == 1 for r in records.values())
    assert "#SBATCH --array=0-1" in next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/record.json")}
    again = qexp(slurm_env, *args, "skip_completed=true")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/record.json")} == stamps
    assert _job_logs(sweep).count("already completed") == 2


def test_a_failing_job_ends_the_sweep_with_its_error_and_the_other_job_completes(tmp_path, slurm_env):
    """Before the fix the failed job exited with SystemExit: submitit wrote no result, the sweep hung."""
    sweep = tmp_path / "sweep"
    t0 = time.time()
    done = qexp(slurm_env, "train", *LAUNCHER, "trainer.lr=1e30,0.002", *TINY, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.time() - t0 < TIMEOUT
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert lines[0] == "error: 1 of 2 jobs failed (details in each job's status.json)"
    assert lines[1].startswith("error: job 0 (trainer.lr=1e+30): loss became nan")
    assert len(lines) == 2
    (good,) = _records(sweep).values()
    assert good["status"] == "completed" and good["config"]["trainer"]["lr"] == 0.002
    (bad,) = [p for p in sweep.glob("0_*/status.json")]
    status = json.loads(bad.read_text())
    assert status["status"] == "failed" and status["error"].startswith("loss became nan")


def _job_id(sweep: Path, deadline: float) -> str:
    while time.time() < deadline:
        for path in sweep.glob(".submitit/*/*_submitted.pkl"):
            return path.name.removesuffix("_submitted.pkl")  # e.g. 7 (or 7_0 in an array)
        time.sleep(0.2)
    raise AssertionError("no job was submitted")


def test_usr2_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(tmp_path, slurm_env):
    """scancel --signal=USR2 (what Slurm sends before a time limit): checkpoint, status preempted
    (before the fix: failed, 'SystemExit: -1'), requeue, 'resumed from', all epochs, same result."""
    sweep = tmp_path / "sweep"
    train = ["quant=uniform", "bits=4", "seed=3", "trainer.epochs=12", "trainer.progress=false"]
    proc = subprocess.Popen([sys.executable, "-m", "qexp", "train", *LAUNCHER, *train, f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + TIMEOUT
        job = _job_id(sweep, deadline)
        run = next(iter(sweep.glob("0_*")), None)
        while run is None or not (run / "checkpoints" / "last.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "the job never wrote a checkpoint"
            time.sleep(0.05)
            run = next(iter(sweep.glob("0_*")), None)
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env, check=True, timeout=30)
        seen = set()
        while proc.poll() is None and time.time() < deadline:
            try:
                seen.add(json.loads((run / "status.json").read_text())["status"])
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        _, err = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "preempted" in seen and "failed" not in seen
    logs = _job_logs(sweep)
    assert "resumed from" in logs and "Requeued" not in err
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "completed"
    assert [h["epoch"] for h in record["history"]] == list(range(1, 13))
    plain = run_cli("train", *train, f"hydra.run.dir={tmp_path / 'plain'}", timeout=TIMEOUT,
                    env={"OMP_NUM_THREADS": "1"})
    assert plain.returncode == 0, plain.stderr[-2000:]
    reference = json.loads((tmp_path / "plain" / "record.json").read_text())
    assert record["final"] == reference["final"]
    assert [h["train_loss"] for h in record["history"]] == [h["train_loss"] for h in reference["history"]]


def test_a_partition_that_does_not_exist_is_one_line(tmp_path, slurm_env):
    sweep = tmp_path / "sweep"
    done = qexp(slurm_env, "train", *LAUNCHER, "hydra.launcher.partition=nosuchpartition", *TINY,
                f"hydra.sweep.dir={sweep}", timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert line.startswith("error: sbatch refused the jobs:") and "partition" in line.lower()
    assert "Traceback" not in done.stderr


def test_the_plain_sbatch_example_submits_requeues_itself_and_completes(tmp_path, slurm_env):
    """scripts/sbatch_example.sh, the README's plain-sbatch path (qexp sbatch is gone): sbatch
    accepts it with the resources overridden; SIGTERM to the batch shell (what --signal=B:TERM
    sends before the time limit) checkpoints, the script requeues the job, and it resumes."""
    env = {**slurm_env, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    submitted = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=1G",
                                "--time=10", str(ROOT / "scripts" / "sbatch_example.sh"), "trainer.epochs=15",
                                "trainer.progress=false"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    run = tmp_path / "runs" / "slurm" / f"qexp-{job}"
    log = tmp_path / f"slurm-qexp-{job}.out"
    deadline = time.time() + TIMEOUT
    while not (run / "checkpoints" / "last.pt").exists():
        assert time.time() < deadline, log.read_text()[-2000:] if log.exists() else "no output file"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], env=slurm_env, check=True, timeout=30)
    while not (run / "record.json").exists():
        assert time.time() < deadline, log.read_text()[-2000:] if log.exists() else "no output file"
        time.sleep(0.5)
    text = log.read_text()
    assert f"requeueing job {job}" in text and "resumed from" in text, text[-2000:]
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "completed" and [h["epoch"] for h in record["history"]] == list(range(1, 16))
