"""Hostile and careless input against ``qexp train|export|tables``, one test per case.

Files a run folder holds may have been written by someone else (a shared cluster folder): a
crafted checkpoint, export, cache or record must never run code or instantiate a foreign
target; a folder holds one experiment and one process; file-system faults and odd records are
one line (or a skipped record), never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from qexp.cli import main as qexp_main
from qexp.config import compose
from qexp.engine.checkpoint import MAGIC, latest_valid
from qexp.errors import QexpError
from qexp.lock import RunLock
from qexp.report.store import read_record, write_record, write_status
from qexp.run import train

FAST = ["trainer.progress=false", "trainer.max_steps_per_epoch=4", "trainer.eval_batch_size=1024"]
BASE = ["quant=uniform", "bits=4", "trainer.epochs=2"]


# -- helpers --------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def crafted_checkpoint(path: Path, marker: Path, global_step: int = 10**9) -> None:
    """A checkpoint with a valid qexp header (the checksum recomputed) and a payload that runs code."""
    buf = io.BytesIO()
    torch.save({"global_step": global_step, "x": Payload(marker)}, buf)
    payload = buf.getvalue()
    path.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def cfg(*overrides: str):
    return compose([*FAST, *BASE, *overrides])


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def cli_fails(capsys, *args: str, code: int = 2) -> str:
    with pytest.raises(SystemExit) as info:
        qexp_main(list(args))
    assert info.value.code == code
    return one_error_line(capsys)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file aside: a refused process takes and frees it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed digits/MLP/uniform-4 run, copied by each test that changes it."""
    run = tmp_path_factory.mktemp("hostile") / "done"
    train(cfg(), run)
    return run


@pytest.fixture
def run(finished, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(finished, dest)
    return dest


# -- 1. no code execution from files ----------------------------------------------------------


def test_crafted_payload_runs_under_plain_pickle(tmp_path):
    """The control: this payload does run code when a loader trusts the file (as before the fix)."""
    marker = tmp_path / "pwned"
    crafted_checkpoint(tmp_path / "evil.pt", marker)
    payload = (tmp_path / "evil.pt").read_bytes().partition(b"\n")[2]
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()


def test_crafted_last_pt_is_refused_and_prev_resumed(run, tmp_path, caplog):
    marker = tmp_path / "pwned"
    crafted_checkpoint(run / "checkpoints" / "last.pt", marker)
    (run / "record.json").unlink()  # an interrupted run: it resumes
    record = train(cfg(), run)
    assert not marker.exists()
    assert "refused" in caplog.text and "last.pt" in caplog.text
    assert record["status"] == "completed" and [h["epoch"] for h in record["history"]] == [1, 2]


@pytest.mark.parametrize("slot", ["prev.pt", "next.pt"])
def test_crafted_older_slot_never_runs_when_last_is_fine(run, tmp_path, slot):
    marker = tmp_path / "pwned"
    crafted_checkpoint(run / "checkpoints" / slot, marker)
    path, state = latest_valid(run / "checkpoints")
    assert not marker.exists()
    assert path.name == "last.pt" and state["epoch"] == 2


def test_crafted_best_pt_is_lost_not_run(run, tmp_path):
    marker = tmp_path / "pwned"
    crafted_checkpoint(run / "checkpoints" / "best.pt", marker)
    record = train(cfg(), run)
    assert not marker.exists()
    assert record["best"] == record["final"] and any("best checkpoint lost" in w for w in record["warnings"])


def test_crafted_export_is_refused(tmp_path):
    from qexp.export import load_exported

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": "x", "config": Payload(marker)}, buf)
    (tmp_path / "model.qexp.pt").write_bytes(buf.getvalue())
    with pytest.raises(QexpError, match="not a readable qexp export"):
        load_exported(tmp_path / "model.qexp.pt")
    assert not marker.exists()


def test_export_with_foreign_target_in_the_export(run, tmp_path):
    from qexp.export import export_run, load_exported

    path, export = export_run(run, tmp_path / "m.qexp.pt")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    export["config"]["model"] = {"_target_": "builtins.open"}
    export["model_kwargs"] = {"file": str(victim), "mode": "w"}
    buf = io.BytesIO()
    torch.save(export, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(QexpError, match="builtins.open is not a target"):
        load_exported(path)
    assert victim.read_text() == "precious"


def test_record_with_foreign_target(run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    record = read_record(run / "record.json")
    record["config"]["model"]["_target_"] = "builtins.open"
    record["model_kwargs"] = {"file": str(victim), "mode": "w"}
    write_record(run, record)
    line = cli_fails(capsys, "export", str(run))
    assert "builtins.open" in line and "refusing" in line
    assert victim.read_text() == "precious"
    assert not (run / "model.qexp.pt").exists()


def test_nested_foreign_target_in_record(run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    record = read_record(run / "record.json")
    record["model_kwargs"]["in_shape"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    write_record(run, record)
    assert "builtins.open" in cli_fails(capsys, "export", str(run))
    assert victim.read_text() == "precious"


def test_crafted_speech_cache_is_rebuilt_not_run(tmp_path):
    import sys

    from qexp.data.speech import SpeechSplit, cached_splits

    cache_module = sys.modules[cached_splits.__module__]  # qexp.data.speech or its splits module
    CACHE_VERSION, content_hash = cache_module.CACHE_VERSION, cache_module.content_hash
    marker = tmp_path / "pwned"
    key = {"n": 1}
    path = tmp_path / "cache" / "toy" / f"{content_hash({'version': CACHE_VERSION, 'name': 'toy', **key})}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"key": {"version": CACHE_VERSION, "name": "toy", "n": 1}, "x": Payload(marker)}, path)

    def build():
        return {"train": SpeechSplit([torch.ones(3, 5)], ["hi"], torch.zeros(1, 0, dtype=torch.long), ["s"])}, {"n": 1}

    splits, info = cached_splits(str(tmp_path / "cache"), "toy", key, build)
    assert not marker.exists()
    assert info["cached"] is False and splits["train"].texts == ["hi"]
    splits, info = cached_splits(str(tmp_path / "cache"), "toy", key, build)  # the rebuilt cache is read back
    assert info["cached"] is True and torch.equal(splits["train"].features[0].float(), torch.ones(3, 5))


def test_foreign_target_on_the_command_line(tmp_path, capsys):
    line = cli_fails(capsys, "train", "model._target_=os.system", f"hydra.run.dir={tmp_path / 'r'}")
    assert "os.system is not a target" in line
    assert not (tmp_path / "r").exists()


# -- 2. resume only into the same experiment ------------------------------------------------


@pytest.mark.parametrize("override, key", [("seed=3", "seed"), ("trainer.epochs=3", "trainer.epochs"),
                                           ("model.hidden=[32]", "model.hidden"), ("quant=fp32", "quant.name"),
                                           ("bits=2", "quant.bits")])
def test_completed_run_of_other_experiment_is_kept(run, override, key):
    before = snapshot(run)
    with pytest.raises(QexpError) as info:
        train(cfg(override), run)
    msg = str(info.value)
    assert key in msg and "another experiment" in msg and "trainer.resume=never" in msg
    assert snapshot(run) == before


def test_checkpoint_of_other_experiment_is_not_resumed(run):
    (run / "record.json").unlink()  # interrupted: only checkpoints
    before = snapshot(run)
    with pytest.raises(QexpError, match=r"belongs to another experiment \(seed 0 -> 4"):
        train(cfg("seed=4"), run)
    assert snapshot(run) == before


def test_skip_completed_same_experiment_skips(run):
    before = snapshot(run)
    assert train(cfg("skip_completed=true", "trainer.progress=true", "trainer.num_workers=0"), run) is None
    assert snapshot(run) == before


def test_skip_completed_compares_the_fingerprint(run):
    with pytest.raises(QexpError, match="seed 0 -> 1"):
        train(cfg("skip_completed=true", "seed=1"), run)


def test_resume_never_starts_over_in_a_fresh_subfolder(run):
    old = (run / "record.json").read_bytes()
    record = train(cfg("trainer.resume=never", "seed=5", "trainer.epochs=1"), run)
    assert (run / "record.json").read_bytes() == old
    assert record["seed"] == 5 and read_record(run / "restart-1" / "record.json")["seed"] == 5


def test_export_refuses_checkpoints_of_other_config(run, tmp_path, capsys):
    other = tmp_path / "other"
    train(cfg("seed=1", "trainer.epochs=1"), other)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    line = cli_fails(capsys, "export", str(run))
    assert "was not written by the run" in line and "seed 0 -> 1" in line.replace("seed 1 -> 0", "seed 0 -> 1")


# -- 3. one process per run folder ----------------------------------------------------------


def test_second_process_fails_fast_naming_the_holder(tmp_path, capsys):
    folder = tmp_path / "busy"
    folder.mkdir()
    with RunLock(folder):
        t0 = time.time()
        line = cli_fails(capsys, "train", *FAST, f"hydra.run.dir={folder}")
    assert time.time() - t0 < 20
    assert f"PID {os.getpid()} on {socket.gethostname()}" in line and "in use" in line
    assert not (folder / "status.json").exists()


def test_lock_held_by_a_dead_pid_is_taken_over(tmp_path, caplog):
    """A lock file still locked (e.g. by a leftover child) but naming a PID that is gone."""
    import fcntl

    folder = tmp_path / "stale"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"999999999 {socket.gethostname()}\n".encode())
    try:
        record = train(cfg("trainer.epochs=1"), folder)
    finally:
        os.close(fd)
    assert record["status"] == "completed"
    assert "taking over the lock" in caplog.text and "999999999" in caplog.text


def test_lock_left_by_a_killed_run_is_taken_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / ".lock").write_text(f"999999999 {socket.gethostname()}\n")  # flock already gone with its process
    record = train(cfg("trainer.epochs=1"), folder)
    assert record["status"] == "completed" and "took over the lock" in caplog.text


# -- 4. corrupt best.pt ---------------------------------------------------------------------


def test_corrupt_best_pt_falls_back(run, caplog):
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    record = train(cfg(), run)
    assert record["status"] == "completed" and record["best"] == record["final"]
    assert "best checkpoint lost" in caplog.text
    assert any("checksum mismatch" in w for w in record["warnings"])


# -- 6. file-system faults: one line -----------------------------------------------------------


def test_run_dir_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "existing file" in cli_fails(capsys, "train", *FAST, f"hydra.run.dir={tmp_path / 'file'}")


def test_run_dir_is_dev_null(capsys):
    assert "/dev/null" in cli_fails(capsys, "train", *FAST, "hydra.run.dir=/dev/null")


def test_run_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "cannot be created" in cli_fails(capsys, "train", *FAST, f"hydra.run.dir={tmp_path / 'file' / 'run'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_read_only_parent(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert "cannot be created" in cli_fails(capsys, "train", *FAST, f"hydra.run.dir={parent / 'run'}")
    finally:
        parent.chmod(0o755)


def test_unwritable_checkpoints_folder(tmp_path, capsys):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "checkpoints").write_text("not a folder")  # as unwritable as chmod 0555 is (for root too)
    line = cli_fails(capsys, "train", *FAST, f"hydra.run.dir={folder}")
    assert "cannot write" in line and "checkpoints" in line
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "cannot write" in status["error"]


def test_disk_full_at_start_up_ends_failed(tmp_path, capsys, monkeypatch):
    from qexp.report import store

    real, calls = store.tempfile.mkstemp, []

    def full_after_first(*args, **kwargs):  # the "running" status fits; then the disk is full
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.tempfile, "mkstemp", full_after_first)
    folder = tmp_path / "full"
    line = cli_fails(capsys, "train", *FAST, f"hydra.run.dir={folder}")
    assert "no space left" in line
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "no space left" in status["error"]


def test_export_out_under_dev_null(run, capsys):
    assert "cannot write /dev/null/x" in cli_fails(capsys, "export", str(run), "--out", "/dev/null/x")


# -- 7. qexp tables survives odd records -----------------------------------------------------


ODD = {
    "no final": lambda r: r.pop("final"),
    "final null": lambda r: r.update(final=None),
    "string metric": lambda r: r.update(final={"accuracy": "0.9"}),
    "newer format": lambda r: r.update(format=99),
}


@pytest.mark.parametrize("case", list(ODD))
def test_tables_skip_an_odd_record(tmp_path, case):
    from qexp.report.tables import make_tables
    from tests.test_tables import fake_record

    runs = tmp_path / "runs"
    fake_record(runs / "good", "cnn", "fp32", 0.98, 0)
    fake_record(runs / "odd", "cnn", "fp32", 0.5, 1)
    rec = read_record(runs / "odd" / "record.json")
    ODD[case](rec)
    write_record(runs / "odd", rec)
    written = make_tables("dong2017", runs, tmp_path / "out", ("md", "csv", "latex"), plot=False)
    md = written["md"].read_text()
    assert "## Unreadable records (skipped)" in md and str(runs / "odd" / "record.json") in md
    fp32 = next(ln for ln in md.splitlines() if ln.startswith("| FP32 (30 epochs)"))
    assert "98.00" in fp32 and "| 1 |" in fp32  # the good record alone
    assert written["csv"].exists() and written["latex"].exists()


def test_stale_running_status_reads_stale(tmp_path):
    from qexp.report.tables import collect

    write_status(tmp_path / "dead", "running", epoch=1)
    st = json.loads((tmp_path / "dead" / "status.json").read_text())
    st.update(pid=999999999, heartbeat=time.time() - 3600)
    (tmp_path / "dead" / "status.json").write_text(json.dumps(st))
    write_status(tmp_path / "live", "running", epoch=1)
    got = {d.name: s for d, s, _ in collect(tmp_path).other}
    assert got == {"dead": "stale", "live": "running"}


# -- 8. silently accepted inputs ------------------------------------------------------------


def test_typo_added_with_plus(tmp_path, capsys):
    line = cli_fails(capsys, "train", *FAST, "+trainer.lrr=0.1", f"hydra.run.dir={tmp_path / 'r'}")
    assert "trainer.lrr is not a config key" in line and "lr" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_lr(tmp_path, capsys, value):
    line = cli_fails(capsys, "train", *FAST, f"trainer.lr={value}", f"hydra.run.dir={tmp_path / 'r'}")
    assert f"trainer.lr={value}" in line and "finite" in line


def test_empty_hidden_layer(tmp_path, capsys):
    folder = tmp_path / "r"
    line = cli_fails(capsys, "train", *FAST, "model.hidden=[0]", f"hydra.run.dir={folder}")
    assert "model" in line and "[0, 64]" in line and ">= 1" in line
    assert not (folder / "record.json").exists()
    assert json.loads((folder / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("quant, bits, used", [("bwn", 4, 1), ("twn", 1, 2)])
def test_fixed_width_quantizer_says_bits_do_not_apply(tmp_path, capsys, quant, bits, used):
    folder = tmp_path / "r"
    qexp_main(["train", *FAST, "trainer.epochs=1", f"quant={quant}", f"bits={bits}", f"hydra.run.dir={folder}"])
    record = read_record(folder / "record.json")
    assert record["quant"]["bits"] == used
    assert record["warnings"] == [f"bits={bits} does not apply to quant={quant}: it uses {used}-bit weights"]


def test_fewer_epochs_than_stages_says_what_runs(tmp_path, caplog):
    record = train(cfg("quant=sq", "trainer.epochs=1"), tmp_path / "r")
    assert record["epochs"] == 4 and [h["stage"] for h in record["history"]] == [0, 1, 2, 3]
    said = "trainer.epochs=1 is fewer than the 4 stages of quant=sq: 4 epochs will run"
    assert said in caplog.text and any(w.startswith(said) for w in record["warnings"])


# -- 9. small things ------------------------------------------------------------------------


def test_leftover_temp_files_are_removed(run):
    left = [run / "checkpoints" / ".next.pt.abc123.tmp", run / ".status.json.x1y2.tmp"]
    for p in left:
        p.write_bytes(b"half")
    train(cfg(), run)
    assert not any(p.exists() for p in left)


def test_record_and_status_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        train(cfg("trainer.epochs=1"), tmp_path / "r")
    finally:
        os.umask(old)
    for name in ("record.json", "status.json", "checkpoints/last.pt"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name


def test_ctrl_c_records_interrupted(tmp_path, capsys, monkeypatch):
    from qexp.tasks.classification import Classification

    def interrupt(self, model, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Classification, "loss", interrupt)
    folder = tmp_path / "r"
    assert cli_fails(capsys, "train", *FAST, f"hydra.run.dir={folder}", code=130) == "error: interrupted"
    assert json.loads((folder / "status.json").read_text())["status"] == "interrupted"
