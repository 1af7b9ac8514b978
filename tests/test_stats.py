"""Verdicts from statistics: paired differences over seeds, 95 % t-intervals worked out by hand,
and their rendering per tier (md/csv/tex) from synthetic records."""

import csv
import io
import json
import math

import pytest

from qexp.report.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, paired_difference, t_interval, verdict
from qexp.report.store import write_record
from qexp.report.tables import make_tables

T_975_2 = 4.302652729749464  # t(0.975, 2 degrees of freedom), from a table
T_975_4 = 2.7764451051977987  # t(0.975, 4)


def test_t_interval_by_hand():
    # d = 1, 2, 3: mean 2, std 1, half-width t(0.975, 2) * 1 / sqrt(3) = 2.4841
    mean, std, low, high = t_interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert low == pytest.approx(2 - T_975_2 / math.sqrt(3)) and low == pytest.approx(-0.48414, abs=1e-5)
    assert high == pytest.approx(4.48414, abs=1e-5)


def test_paired_by_seed_and_verdicts():
    # A - B per seed = 2, 3, 4 (seed 9 only on one side: left out): mean 3, interval [0.516, 5.484]
    a = {0: 92.0, 1: 93.0, 2: 94.0, 9: 50.0}
    b = {0: 90.0, 1: 90.0, 2: 90.0}
    r = paired_difference(a, b, "greater")
    assert r.n == 3 and r.seeds == [0, 1, 2] and r.diffs == [2.0, 3.0, 4.0]
    assert r.mean == 3.0 and r.std == 1.0
    assert r.low == pytest.approx(3 - T_975_2 / math.sqrt(3)) and r.low == pytest.approx(0.51586, abs=1e-5)
    assert r.verdict == REPRODUCED
    assert paired_difference(a, b, "less").verdict == NOT_REPRODUCED  # excludes zero the other way
    # d = 1, 2, 3 contains zero: inconclusive either way
    assert paired_difference({0: 1, 1: 2, 2: 3}, {0: 0, 1: 0, 2: 0}, "greater").verdict == INCONCLUSIVE
    assert paired_difference({0: 1, 1: 2, 2: 3}, {0: 0, 1: 0, 2: 0}, "less").verdict == INCONCLUSIVE


def test_equality_claim_with_margin():
    # d = 0.1, -0.1, 0, 0.2, -0.2: mean 0, std sqrt(0.025), half-width t(0.975, 4) * std / sqrt(5) = 0.19632
    d = [0.1, -0.1, 0.0, 0.2, -0.2]
    r = paired_difference(dict(enumerate(d)), dict.fromkeys(range(5), 0.0), "equal", margin=0.5)
    assert r.mean == pytest.approx(0.0, abs=1e-12)
    assert r.high == pytest.approx(T_975_4 * math.sqrt(0.025) / math.sqrt(5)) and r.high == pytest.approx(0.19632, abs=1e-5)
    assert r.verdict == REPRODUCED
    assert verdict(-0.19632, 0.19632, "equal", margin=0.1) == INCONCLUSIVE  # straddles the margin
    assert verdict(1.2, 2.0, "equal", margin=1.0) == NOT_REPRODUCED  # wholly outside it


def test_too_few_pairs_is_inconclusive():
    r = paired_difference({0: 95.0}, {0: 90.0}, "greater")
    assert (r.n, r.mean, r.low, r.verdict) == (1, 5.0, None, INCONCLUSIVE)
    assert paired_difference({}, {0: 1.0}).n == 0
    with pytest.raises(ValueError):
        verdict(0, 1, "sideways")


def record(run_dir, quant, acc, seed, *, epochs=2, experiment="fmnist_cnn", dataset="fashion_mnist", width=None,
           extra_quant=None):
    choices = {"dataset": dataset, "model": "cnn_fc", "quant": quant, "experiment": experiment}
    write_record(run_dir, {
        "status": "completed", "metric": "accuracy", "higher_is_better": True,
        "final": {"accuracy": acc}, "best": {"accuracy": acc},
        "memory": {"fp32_bytes": 1000, "packed_bytes": 100, "reduction": 10.0},
        "quant": {"name": quant, "bits": 2}, "choices": choices, "seed": seed,
        "config": {"quant": {"name": quant, **(extra_quant or {})}, "trainer": {"epochs": epochs},
                   "model": {"width": width}, "seed": seed},
    })


def test_real_tier_section_with_verdicts_and_kept_mini_rows(tmp_path):
    """dong2017: SQ-TWN (paper selection) vs TWN at equal epochs, paired over 3 seeds; the mini
    folder is absent, so the mini rows come from the previous results json, untouched."""
    real = tmp_path / "runs" / "real" / "dong2017"
    twn = {0: 0.900, 1: 0.905, 2: 0.910}
    sq = {0: 0.920, 1: 0.935, 2: 0.950}  # differences 2, 3, 4 points: reproduced
    for s in range(3):
        record(real / f"twn_long/{s}", "twn", twn[s], s, epochs=12)
        record(real / f"twn/{s}", "twn", twn[s] + 0.03, s, epochs=3)  # diffs -1, 0, +1: inconclusive
        record(real / f"sq/{s}", "sq", sq[s], s, extra_quant={"base": "twn", "selection": "paper"})
    out = tmp_path / "results"
    out.mkdir()
    mini_rows = [{"label": "FP32 (30 epochs)", "metric": "accuracy", "ours": 95.66, "std": 0.57, "n": 3, "paper": None,
                  "diff": None, "reduction": 1.0, "paper_reduction": None, "bits": None, "quant": "fp32",
                  "higher_is_better": True, "runs": []}]
    (out / "dong2017.json").write_text(json.dumps({"mini": mini_rows}))
    make_tables("dong2017", {"mini": tmp_path / "runs/mini/dong2017", "real": real}, out, formats=("md", "csv", "latex"))
    md = (out / "dong2017.md").read_text()
    assert "| FP32 (30 epochs) |  | 95.66 | 0.57 | 3 |" in md  # kept, not turned into "missing"
    assert "carried over from the previous dong2017.json" in md
    real_part = md.split("## Real data: Fashion-MNIST")[1]
    sq_vs_long = next(ln for ln in real_part.splitlines() if ln.startswith("| SQ-TWN vs TWN trained as long"))
    assert "| 3 | +3.00 ± 1.00 | [+0.52, +5.48] | **reproduced** |" in sq_vs_long
    sq_vs_short = next(ln for ln in real_part.splitlines() if ln.startswith("| SQ-TWN vs TWN as long as one stage"))
    assert "| 3 | +0.00 ± 1.00 | [-2.48, +2.48] | **inconclusive** |" in sq_vs_short
    assert "**missing** (no runs)" in real_part  # e.g. BWN rows: no runs in this synthetic folder
    rows = list(csv.DictReader(io.StringIO((out / "dong2017.csv").read_text())))
    v = next(r for r in rows if r["table"] == "verdicts" and r["row"].startswith("SQ-TWN vs TWN trained as long"))
    assert v["tier"] == "real" and v["verdict"] == "reproduced" and float(v["ci_low"]) == pytest.approx(0.51586, abs=1e-4)
    assert "verdicts (Real data: Fashion-MNIST)" in (out / "dong2017.tex").read_text()
    summary = json.loads((out / "dong2017.json").read_text())
    assert summary["mini"] == mini_rows and summary["_sources"]["real_cnn"] == str(real)
    # a second generation keeps the real verdicts when that folder is gone too
    make_tables("dong2017", {"mini": tmp_path / "nope", "real": tmp_path / "gone"}, out, formats=("md",))
    assert (out / "dong2017.md").read_text().count("**reproduced**") == md.count("**reproduced**")


def test_difference_of_gaps_for_width_claims(tmp_path):
    """sung2015: the float–ternary gap at W=32 minus the gap at W=1024, per seed."""
    runs = tmp_path / "real"
    gaps = {32: [5.0, 6.0, 7.0, 5.0, 6.0], 1024: [1.0, 1.5, 1.0, 0.5, 1.0]}
    for w, per_seed in gaps.items():
        for s, g in enumerate(per_seed):
            base = 0.85 + 0.001 * s
            record(runs / f"f{w}_{s}", "fp32", base, s, epochs=8, experiment="fmnist_ffdnn", width=w)
            record(runs / f"d{w}_{s}", "ternary", base - g / 100, s, epochs=0, experiment="fmnist_ffdnn", width=w)
    make_tables("sung2015", {"real": runs}, tmp_path / "out", formats=("md",), plot=False)
    comps = json.loads((tmp_path / "out" / "sung2015.json").read_text())["_comparisons"]
    direct = next(c for c in comps if c["tier"] == "real" and "directly" in c["caption"])
    # per-seed differences of gaps: 4, 4.5, 6, 4.5, 5 -> mean 4.8
    assert direct["n"] == 5 and direct["mean"] == pytest.approx(4.8) and direct["verdict"] == "reproduced"
    assert direct["diffs"] == pytest.approx([4.0, 4.5, 6.0, 4.5, 5.0])


def test_mini_comparison_lower_is_better(tmp_path):
    """chen2021's speech claim on CER (lower is better): direction less, fixed vs FP32 over 3 seeds."""
    mini = tmp_path / "mini"
    for s, (fp, fx) in enumerate([(0.052, 0.050), (0.051, 0.048), (0.053, 0.049)]):  # fixed lower by 0.2, 0.3, 0.4
        for name, cer in (("fp32", fp), ("fixed", fx)):
            write_record(mini / f"{name}{s}", {
                "status": "completed", "metric": "cer", "higher_is_better": False, "final": {"cer": cer},
                "best": {"cer": cer}, "memory": {"fp32_bytes": 1, "packed_bytes": 1, "reduction": 1.0},
                "quant": {"name": name, "bits": 5}, "seed": s, "config": {"seed": s},
                "choices": {"experiment": f"chen2021_asr_{name}", "quant": name}})
    make_tables("chen2021", {"mini": mini}, tmp_path / "out", formats=("md",), plot=False)
    comps = json.loads((tmp_path / "out" / "chen2021.json").read_text())["_comparisons"]
    speech = next(c for c in comps if c["metric"] == "cer")
    assert speech["diffs"] == pytest.approx([-0.2, -0.3, -0.4]) and speech["verdict"] == "reproduced"
    md = (tmp_path / "out" / "chen2021.md").read_text()
    assert "| A < B | 3 | -0.30 ± 0.10 | [-0.55, -0.05] | **reproduced** |" in md


def test_reproduce_dry_run_prints_the_real_plan(cli):
    done = cli("reproduce", "--tier", "real", "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for key in ("dong2017", "sung2015", "zhao2019", "chen2021"):
        assert f"[{key}]" in out and f"runs/real/{key}/" in out
    assert "30 jobs -> runs/real/sung2015/ffdnn_float" in out  # 6 widths x 5 seeds
    assert "[avila2022]" not in out  # no real tier for the speech paper
    mini = cli("reproduce", "--mini", "--dry-run", "--paper", "dong2017", "--runs", "elsewhere")
    assert mini.returncode == 0 and "-> elsewhere/dong2017/baselines" in mini.stdout


def _siblings_merged() -> bool:
    import inspect

    from qexp.config import TrainerConfig
    from qexp.quant.sq import StochasticQuantizer

    return "init_from" in TrainerConfig.__dataclass_fields__ and \
        "selection" in inspect.signature(StochasticQuantizer).parameters


@pytest.mark.skipif(not _siblings_merged(), reason="the real sweeps use trainer.epochs=0 (#15) and "
                    "quant.selection (#14): checked once those branches are merged")
@pytest.mark.parametrize("key", ["dong2017", "sung2015", "zhao2019", "chen2021"])
def test_every_real_sweep_composes(key):
    from qexp.config import check_overrides, expand_sweep
    from qexp.report.tables import load_paper

    for sweep in load_paper(key)["real"]:
        jobs = expand_sweep(list(map(str, sweep["overrides"])))
        for job in (jobs[0], jobs[-1]):
            check_overrides(job)


def test_reproduce_real_resumes_and_regenerates_the_same_tables(tmp_path, cli):
    """A real tier (tiny: fake Fashion-MNIST files, an MLP, 2 seeds) run twice: the second run
    skips every job and writes the same tables."""
    import shutil

    import yaml

    from qexp.config import config_dir
    from test_fashion_mnist import write_fake

    data = tmp_path / "data"
    write_fake(data, n_train=60, n_test=20)
    configs = tmp_path / "configs"
    shutil.copytree(config_dir(), configs)
    paper = yaml.safe_load((configs / "paper" / "chen2021.yaml").read_text())
    paper["real"] = [{"name": "tiny", "overrides": ["dataset=fashion_mnist", f"dataset.root={data}", "model=mlp",
                                                    "quant=fp32,fixed", "bits=5", "trainer.epochs=1", "seed=0,1"]}]
    paper["tables"].append({"name": "real_tiny", "tier": "real", "caption": "tiny", "rows": [
        {"label": "FP32", "quant": "fp32", "match": {"choices.dataset": "fashion_mnist", "choices.quant": "fp32"}},
        {"label": "fixed", "quant": "fixed", "match": {"choices.dataset": "fashion_mnist", "choices.quant": "fixed"}}]})
    paper["comparisons"] = [{"caption": "tiny: fixed vs FP32", "tier": "real", "direction": "greater",
                             "a": {"choices.dataset": "fashion_mnist", "choices.quant": "fixed"},
                             "b": {"choices.dataset": "fashion_mnist", "choices.quant": "fp32"}}]
    (configs / "paper" / "chen2021.yaml").write_text(yaml.safe_dump(paper, sort_keys=False))
    env = {"QEXP_CONFIG_DIR": str(configs)}
    args = ("reproduce", "--tier", "real", "--paper", "chen2021", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "results"))
    first = cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    records = sorted((tmp_path / "runs" / "chen2021" / "tiny").rglob("record.json"))
    assert len(records) == 4
    stamps = [p.stat().st_mtime_ns for p in records]
    tables = {ext: (tmp_path / "results" / f"chen2021.{ext}").read_text() for ext in ("md", "csv", "tex")}
    assert "## Real data: Fashion-MNIST" in tables["md"] and "| tiny: fixed vs FP32 | A > B | 2 |" in tables["md"]
    second = cli(*args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert [p.stat().st_mtime_ns for p in records] == stamps  # nothing re-ran
    assert "already completed" in second.stderr + second.stdout
    assert {ext: (tmp_path / "results" / f"chen2021.{ext}").read_text() for ext in ("md", "csv", "tex")} == tables
