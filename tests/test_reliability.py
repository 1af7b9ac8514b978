"""Faults and bad input: every bad command line fails in one line without a record; runs
survive SIGKILL and corrupt checkpoints; NaN stops a run cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qexp.cli import main as qexp_main
from qexp.config import group_options
from tests.conftest import ROOT

BAD = [
    (["bits=0"], "bits"),
    (["bits=33"], "bits"),
    (["bits=abc"], "bits"),
    (["quant=nonsense"], "quant=nonsense"),
    (["model=nonsense"], "model=nonsense"),
    (["dataset=nonsense"], "dataset=nonsense"),
    (["trainer=nonsense"], "trainer=nonsense"),
    (["trainer.epochs=-1"], "trainer.epochs"),
    (["trainer.init_from=/nonexistent/run"], "trainer.init_from"),
    (["quant=uniform", "quant.layer_bits={nolayer:8}"], "quant.layer_bits"),
    (["quant=twn", "quant.layer_bits={first:8}"], "quant.layer_bits"),
    (["trainer.lr=-0.1"], "trainer.lr"),
    (["trainer.optimizer=rmsprop"], "trainer.optimizer"),
    (["trainer.scheduler=linear"], "trainer.scheduler"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.foo=1"], "trainer.foo"),
    (["seed=-1"], "seed"),
    (["quant=uniform", "quant.bogus=1"], "quant.bogus"),
    (["quant=uniform", "quant.skip=[nolayer]"], "quant.skip"),
    (["quant=uniform", "quant.skip=first"], "quant.skip"),
    (["quant=uniform", "bits=17"], "bits"),
    (["trainer.resume=/nonexistent/ckpt.pt"], "trainer.resume"),
    (["experiment=nonsense"], "experiment=nonsense"),
    (["bits=[1,2"], "overrides"),
]
if not torch.cuda.is_available():
    BAD.append((["trainer.device=cuda"], "trainer.device"))
if "sq" in group_options("quant"):
    BAD.append((["quant=sq", "quant.ratios=[0.5,1.5]"], "quant.ratios"))
for _ds in ("cifar10", "imagenet", "glas", "fluent_speech_commands"):
    if _ds in group_options("dataset"):
        BAD.append(([f"dataset={_ds}", "dataset.root=/nonexistent/qexp-data"], "/nonexistent/qexp-data"))


@pytest.mark.parametrize("overrides, key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_command_line(overrides, key, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        qexp_main(["train", *overrides, "trainer.progress=false", f"hydra.run.dir={run_dir}"])
    assert info.value.code not in (0, None)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and key in err[0], err[0]
    assert not (run_dir / "record.json").exists()


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        qexp_main(["trian"])
    assert info.value.code == 2
    assert "allowed: train" in capsys.readouterr().err


def _qexp(*args):
    return [sys.executable, "-m", "qexp", "train", "trainer.progress=false", *args]


RESUME_ARGS = ["quant=uniform", "bits=3", "trainer.epochs=4", "trainer.checkpoint_every_steps=3",
               "model.dropout=0.2"]


def _final(run_dir: Path) -> dict:
    rec = json.loads((run_dir / "record.json").read_text())
    return {"final": rec["final"], "best": rec["best"], "val": [h["val_accuracy"] for h in rec["history"]],
            "loss": [h["train_loss"] for h in rec["history"]]}


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_qexp(*RESUME_ARGS, f"hydra.run.dir={ref}"), cwd=ROOT, check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_qexp(*RESUME_ARGS, f"hydra.run.dir={run}"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "prev.pt").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "record.json").exists(), "killed too late: the run already finished"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running"
    resumed = subprocess.run(_qexp(*RESUME_ARGS, f"hydra.run.dir={run}"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert _final(run) == _final(ref)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, compose_cfg):
    from qexp.engine.checkpoint import latest_valid
    from qexp.run import train

    run = tmp_path / "run"
    cfg = compose_cfg("quant=uniform", "bits=4", "trainer.epochs=2")
    train(cfg, run)
    last = run / "checkpoints" / "last.pt"
    prev_step = torch.load  # keep linters quiet about unused imports
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as a crash mid-copy would leave it
    path, state = latest_valid(run / "checkpoints")
    assert path.name == "prev.pt" and state["epoch"] == 1
    (run / "record.json").unlink()
    cfg4 = compose_cfg("quant=uniform", "bits=4", "trainer.epochs=2")
    record = train(cfg4, run)  # resumes from prev.pt (epoch 1) and finishes epoch 2
    assert record["status"] == "completed" and record["epochs"] == 2
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    del prev_step


def test_nan_loss_stops_cleanly(tmp_path, capsys):
    run = tmp_path / "nan"
    with pytest.raises(SystemExit) as info:
        qexp_main(["train", "trainer.optimizer=sgd", "trainer.lr=1e30", "trainer.momentum=0",
                   "trainer.progress=false", "trainer.log_every=1", f"hydra.run.dir={run}"])
    assert info.value.code not in (0, None)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "step" in err[0] and ("nan" in err[0] or "inf" in err[0]), err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "step" in status["error"]
    assert not (run / "record.json").exists()
