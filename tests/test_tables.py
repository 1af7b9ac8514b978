"""`qexp tables` on a folder of records: ours beside the paper's numbers, missing rows marked."""

import json

import pytest

from qexp.report.store import write_record, write_status
from qexp.report.tables import collect, make_tables


def fake_record(run_dir, model, quant, acc, seed, reduction=1.0, experiment=None, extra=None, bits=None):
    choices = {"dataset": "digits", "model": model, "quant": quant}
    if experiment:
        choices["experiment"] = experiment
    config = {"model": {"width": (extra or {}).get("width")}, "quant": {"name": quant, **(extra or {}).get("quant", {})},
              "seed": seed, "trainer": {"epochs": (extra or {}).get("epochs", 30)}}
    write_record(run_dir, {
        "status": "completed", "metric": "accuracy", "higher_is_better": True,
        "final": {"accuracy": acc}, "best": {"accuracy": acc},
        "memory": {"fp32_bytes": 1000, "packed_bytes": int(1000 / reduction), "reduction": reduction},
        "quant": {"name": quant, "bits": bits}, "choices": choices, "config": config, "seed": seed,
    })


def test_dong2017_table_side_by_side(tmp_path, cli):
    runs = tmp_path / "runs"
    fake_record(runs / "a", "cnn", "fp32", 0.98, 0)
    fake_record(runs / "b", "cnn", "fp32", 0.96, 1)
    fake_record(runs / "c", "cnn", "bwn", 0.95, 0, reduction=25.0, bits=1)
    fake_record(runs / "d", "vgg9", "twn", 0.9050, 0, reduction=15.0, experiment="dong2017_vgg9_twn", bits=2)
    write_status(runs / "e", "failed", error="loss became nan by step 12")
    out = tmp_path / "results"
    done = cli("tables", "--paper", "dong2017", "--runs", str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    md = (out / "dong2017.md").read_text()
    rows = {ln.split("|")[1].strip() + "@" + str(i): ln for i, ln in enumerate(md.splitlines()) if ln.startswith("| ")}
    fp32 = next(v for k, v in rows.items() if k.startswith("FP32 (30 epochs)@"))
    assert "97.00" in fp32 and "| 2 |" in fp32  # mean of two seeds, n = 2
    assert "1.41" in fp32  # std of (98, 96)
    bwn = next(v for k, v in rows.items() if k.startswith("BWN (30 epochs)@"))
    assert "95.00" in bwn and "25.00x" in bwn
    # the 120-epoch control row matches on config.trainer.epochs, so the 30-epoch run is not in it
    assert "**missing**" in next(v for k, v in rows.items() if k.startswith("BWN (120 epochs)@"))
    assert md.count("**missing** (no runs)") >= 6  # SQ rows of the mini table + 4 paper-scale rows
    twn_paper = [v for k, v in rows.items() if k.startswith("TWN@") and "90.13" in v][0]
    assert "90.50" in twn_paper and "+0.37" in twn_paper  # ours, paper, difference
    assert "Runs not completed" in md and "failed" in md and "nan" in md
    assert (out / "dong2017.csv").exists() and (out / "dong2017.tex").exists() and (out / "dong2017.png").exists()


def test_width_study_effective_compression(tmp_path):
    runs = tmp_path / "runs"
    # float error falls with width; ternary at width 64 matches float at width 32
    float_acc = {16: 0.80, 32: 0.90, 64: 0.95}
    for w, acc in float_acc.items():
        fake_record(runs / f"f{w}", "ffdnn", "fp32", acc, 0, extra={"width": w})
        (runs / f"f{w}" / "record.json").write_text(json.dumps({**json.loads((runs / f"f{w}" / "record.json").read_text()),
                                                               "memory": {"fp32_bytes": w * 100, "packed_bytes": w * 100,
                                                                          "reduction": 1.0}}))
    fake_record(runs / "t64", "ffdnn", "ternary", 0.90, 0, extra={"width": 64, "epochs": 15})
    rec = json.loads((runs / "t64" / "record.json").read_text())
    rec["memory"] = {"fp32_bytes": 6400, "packed_bytes": 400, "reduction": 16.0}
    (runs / "t64" / "record.json").write_text(json.dumps(rec))
    # the same ternary net quantized directly from the float one (trainer.epochs=0): its own column
    fake_record(runs / "d64", "ffdnn", "ternary", 0.75, 0, extra={"width": 64, "epochs": 0})
    make_tables("sung2015", runs, tmp_path / "out", formats=("md", "csv"), plot=False)
    summary = json.loads((tmp_path / "out" / "sung2015.json").read_text())
    row64 = [r for r in summary["ffdnn_width"] if r["width"] == 64][0]
    assert row64["gap"] == pytest.approx(5.0) and row64["direct_gap"] == pytest.approx(20.0)
    assert row64["quant"][2] == row64["direct"][2] == 1
    assert "ffdnn_width,width=64 direct,accuracy,,0.75,0.0,1,,19.99" in (tmp_path / "out" / "sung2015.csv").read_text()
    # the float net with the ternary net's error (10 %) is the width-32 one: 3200 bytes / 400 bytes
    assert row64["ecr"] == pytest.approx(8.0)
    md = (tmp_path / "out" / "sung2015.md").read_text()
    assert "8.0x" in md and "**missing**" in md


def test_collect_separates_unfinished(tmp_path):
    fake_record(tmp_path / "ok", "mlp", "fp32", 0.9, 0)
    write_status(tmp_path / "run2", "running", epoch=3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "record.json").write_text("{ truncated")
    rs = collect(tmp_path)
    assert len(rs.completed) == 1
    assert {s for _, s, _ in rs.other} == {"running"}
    assert [p.parent.name for p, _ in rs.unreadable] == ["bad"]


def test_a_table_pairs_each_metric_set_with_its_own_models_memory():
    from qexp.report.tables import build_rows

    record = {"final": {"accuracy": 0.90}, "best": {"accuracy": 0.95}, "quant": {"name": "clip_svd", "bits": 8}, "choices": {"quant": "clip_svd"},
              "memory": {"reduction": 6.0, "packed_bytes": 100}, "best_memory": {"reduction": 4.0, "packed_bytes": 150},
              "_dir": "r"}
    rows = [{"label": "clip", "match": {"choices.quant": "clip_svd"}}]
    final = build_rows({"rows": rows}, "accuracy", [record], 100.0)[0]
    best = build_rows({"rows": rows, "checkpoint": "best"}, "accuracy", [record], 100.0)[0]
    assert (final["ours"], final["reduction"]) == (90.0, 6.0)
    assert (best["ours"], best["reduction"]) == (95.0, 4.0)
    old = {k: v for k, v in record.items() if k != "best_memory"}  # a record from before best_memory
    assert build_rows({"rows": rows, "checkpoint": "best"}, "accuracy", [old], 100.0)[0]["reduction"] is None
