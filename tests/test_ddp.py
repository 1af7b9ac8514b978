"""``torchrun --nproc_per_node=2 -m qexp train`` on CPU (gloo): one run dir, one record, and the
same weights as one process with the same global batch (trainer.batch_size is global)."""

import os
import subprocess
import sys

import pytest
import torch

from qexp.config import compose
from qexp.engine.checkpoint import load_checkpoint
from qexp.run import train

# an MLP (no BatchNorm, no dropout): DDP's averaged gradients equal the global batch's gradient
ARGS = ["dataset=digits", "model=mlp", "quant=uniform", "bits=4", "trainer.epochs=1", "trainer.batch_size=64",
        "trainer.max_steps_per_epoch=8", "trainer.optimizer=sgd", "trainer.lr=0.1", "trainer.progress=false"]


def test_torchrun_two_ranks_match_single_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "qexp", "train",
         *ARGS],
        cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "runs").rglob(".hydra")]
    assert len(run_dirs) == 1, run_dirs  # both ranks agreed on one run dir
    records = list(tmp_path.rglob("record.json"))
    assert records == [run_dirs[0] / "record.json"]
    import json

    record = json.loads(records[0].read_text())
    assert record["world_size"] == 2 and record["steps"] == 8

    single = tmp_path / "single"
    solo = train(compose(ARGS), single)
    assert solo["steps"] == 8
    ddp_weights = load_checkpoint(run_dirs[0] / "checkpoints" / "last.pt")["model"]
    solo_weights = load_checkpoint(single / "checkpoints" / "last.pt")["model"]
    assert ddp_weights.keys() == solo_weights.keys()
    for k in solo_weights:
        torch.testing.assert_close(ddp_weights[k], solo_weights[k], rtol=1e-5, atol=1e-6, msg=k)
    assert record["history"][0]["train_loss"] == pytest.approx(solo["history"][0]["train_loss"], rel=1e-5)


def _rank_pid(marker: str, rank: int) -> int | None:
    """PID of the torchrun worker with RANK=rank whose command line contains ``marker`` (Linux)."""
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and \
                    f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_signal_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    """SIGUSR1 to rank 1 only: all ranks stop at the same step, rank 0 checkpoints, status says
    preempted; the same command then resumes from that checkpoint on both ranks."""
    import json
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "qexp", "train",
           "trainer.epochs=500", "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            status = run_dir / "status.json"
            if status.exists() and json.loads(status.read_text()).get("epoch", 0) >= 2:
                break
            time.sleep(0.5)
        pid = _rank_pid(str(run_dir), 1)
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "preempted", err[-3000:]
    step = int(status["error"].split(" at step ")[1].split(";")[0])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == step
    assert err.count("error: preempted") == 2, err[-3000:]  # both ranks, no gloo "Connection closed"
    assert "Connection closed" not in err, err[-3000:]
