"""Starting from a trained float model: trainer.init_from, post-training quantization
(trainer.epochs=0), staged quantizers without their float stage, and quant.layer_bits."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from qexp.config import check_overrides, compose
from qexp.errors import QexpError
from qexp.run import train

FAST = ["trainer.progress=false"]


def _train(run_dir: Path, *overrides: str) -> dict:
    return train(compose([*FAST, *overrides]), run_dir)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    """Run A: the FP32 digits MLP (5 epochs, ~97 % test accuracy)."""
    run_dir = tmp_path_factory.mktemp("init") / "A"
    record = _train(run_dir, "trainer.epochs=5")
    assert record["final"]["accuracy"] > 0.93
    return run_dir, record


def test_ptq_8bit_matches_float_and_records_provenance(tmp_path, float_run):
    a_dir, a = float_run
    q8 = _train(tmp_path / "q8", "quant=uniform", "bits=8", "quant.skip=[]", f"trainer.init_from={a_dir}",
                "trainer.epochs=0")
    assert abs(q8["final"]["accuracy"] - a["final"]["accuracy"]) <= 0.005
    assert q8["memory"]["reduction"] >= 3.7
    # no training step ran; the quantized model is the run's checkpoint
    assert q8["steps"] == 0 and q8["history"] == [] and q8["quant"]["post_training"] is True
    assert (tmp_path / "q8/checkpoints/best.pt").exists() and (tmp_path / "q8/checkpoints/last.pt").exists()
    init = q8["init"]
    ckpt = a_dir / "checkpoints" / "best.pt"
    assert init["path"] == str(ckpt)
    assert init["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert init["run"]["final"] == a["final"]["accuracy"] and init["run"]["choices"]["quant"] == "fp32"
    assert init["loaded"] == 6 and init["missing"] == init["unexpected"] == init["shape_mismatch"] == []
    assert json.loads((tmp_path / "q8/record.json").read_text())["init"]["sha256"] == init["sha256"]


def test_2bit_direct_quantization_is_below_retraining(tmp_path, float_run):
    """sung2015's point: quantizing a float network directly loses accuracy that a few epochs of
    retraining from it recover."""
    a_dir, a = float_run
    common = ["quant=uniform", "bits=2", "quant.skip=[]", f"trainer.init_from={a_dir}"]
    direct = _train(tmp_path / "direct", *common, "trainer.epochs=0")
    retrained = _train(tmp_path / "retrained", *common, "trainer.epochs=5")
    assert retrained["final"]["accuracy"] - direct["final"]["accuracy"] >= 0.03
    assert a["final"]["accuracy"] - direct["final"]["accuracy"] >= 0.03
    assert retrained["memory"]["reduction"] == direct["memory"]["reduction"] > 12


def test_retraining_starts_from_the_loaded_weights(tmp_path, float_run):
    """Loaded before the quantizers attach: the float shadow weights are A's, bit for bit."""
    from qexp.engine.checkpoint import load_checkpoint
    from qexp.run import build

    a_dir, _ = float_run
    _, _, handle = build(compose([*FAST, "quant=uniform", "bits=4", f"trainer.init_from={a_dir}"]))
    want = load_checkpoint(a_dir / "checkpoints/best.pt")["model"]
    for key, w in handle.float_weights().items():
        assert torch.equal(w, want[key])
    assert handle.init["strict"] is True


def test_plain_state_dict_and_non_strict_loading(tmp_path, float_run):
    from qexp.engine.checkpoint import load_checkpoint
    from qexp.run import build

    a_dir, _ = float_run
    plain = {k: v for k, v in load_checkpoint(a_dir / "checkpoints/best.pt")["model"].items()}
    torch.save({"state_dict": plain}, tmp_path / "weights.pth")  # a torchvision/lightning-style wrapper
    _, model, _ = build(compose([*FAST, f"trainer.init_from={tmp_path / 'weights.pth'}"]))
    assert torch.equal(model.state_dict()["1.weight"], plain["1.weight"])
    # a different head and second layer: strict refuses, non-strict loads what fits and says what not
    other = [*FAST, "model.hidden=[256,64]", f"trainer.init_from={tmp_path / 'weights.pth'}"]
    with pytest.raises(QexpError, match=r"shape mismatch at '3.weight': file \(128, 256\), model \(64, 256\)"):
        check_overrides(other)
    _, model, handle = build(compose([*other, "trainer.init_strict=false"]))
    assert torch.equal(model.state_dict()["1.weight"], plain["1.weight"])
    assert handle.init["shape_mismatch"] == ["3.weight", "3.bias", "5.weight"]
    assert handle.init["loaded"] == 3 and handle.init["strict"] is False


@pytest.mark.parametrize("case", ["missing", "other_model", "corrupt", "not_weights_only"])
def test_bad_init_is_a_one_line_error_before_the_run(tmp_path, float_run, case):
    a_dir, _ = float_run
    init = {"missing": "/does/not/exist", "other_model": str(a_dir)}.get(case)
    extra = ["model=ffdnn"] if case == "other_model" else []
    if case == "corrupt":
        data = (a_dir / "checkpoints/best.pt").read_bytes()
        (tmp_path / "corrupt.pt").write_bytes(data[: len(data) // 2])
        init = str(tmp_path / "corrupt.pt")
    if case == "not_weights_only":  # a pickle that would run code if loaded without weights_only
        torch.save({"fn": print}, tmp_path / "evil.pt")
        init = str(tmp_path / "evil.pt")
    want = {"missing": "no such file", "other_model": "shape mismatch at '1.weight': file (256, 64), model (128, 64)",
            "corrupt": "checksum mismatch", "not_weights_only": "not a readable state_dict"}[case]
    with pytest.raises(QexpError, match=r"^trainer\.init_from") as err:
        check_overrides([*FAST, *extra, f"trainer.init_from={init}"])
    assert want in str(err.value) and "\n" not in str(err.value)


def test_bad_init_on_the_command_line_leaves_no_run_folder(tmp_path, float_run, cli):
    a_dir, _ = float_run
    out = tmp_path / "run"
    done = cli("train", "model=ffdnn", f"trainer.init_from={a_dir}", f"hydra.run.dir={out}", *FAST)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.init_from") and "shape mismatch" in lines[0]
    assert not out.exists()


def test_sweep_folder_and_init_match(tmp_path, float_run):
    """A sweep folder as init_from: init_match picks the run whose config agrees with the job."""
    from qexp.engine.init import resolve_path

    a_dir, _ = float_run
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run = sweep / f"{seed}_seed={seed}"
        shutil.copytree(a_dir, run)
        rec = json.loads((run / "record.json").read_text())
        rec["config"]["seed"] = seed
        (run / "record.json").write_text(json.dumps(rec))
    config = {"seed": 1, "model": {"hidden": [256, 128]}}
    assert resolve_path(str(sweep), ["seed"], config) == sweep / "1_seed=1" / "checkpoints" / "best.pt"
    with pytest.raises(QexpError, match="no completed run with seed=2"):
        resolve_path(str(sweep), ["seed"], {"seed": 2})
    with pytest.raises(QexpError, match="2 completed runs have model.hidden"):
        resolve_path(str(sweep), ["model.hidden"], config)
    with pytest.raises(QexpError, match="init_match"):
        resolve_path(str(sweep), [], config)
    # a failed run is no source (its checkpoint file still is, named explicitly)
    failed = sweep / "1_seed=1"
    (failed / "record.json").unlink()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "loss became nan"}))
    with pytest.raises(QexpError, match="did not complete"):
        resolve_path(str(failed), [], config)
    assert resolve_path(str(failed / "checkpoints/last.pt"), [], config) == failed / "checkpoints/last.pt"
    with pytest.raises(QexpError, match="no completed run with seed=1"):
        resolve_path(str(sweep), ["seed"], config)
    # the whole path through a multirun's check: every job finds its own source
    jobs = check_overrides([*FAST, "quant=uniform,twn", "seed=0", "trainer.epochs=0",
                            f"trainer.init_from={sweep}", "trainer.init_match=[seed]"], multirun=True)
    assert len(jobs) == 2


def test_staged_quantizers_skip_their_float_stage_when_initialised():
    from qexp.quant.base import apply_quantization

    def plan(quant, initialised, **extra):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        cfg = OmegaConf.to_container(compose([*FAST, f"quant={quant}", "bits=3"]).quant, resolve=True)
        cfg.update(extra)
        handle = apply_quantization(model, cfg, initialised=initialised)
        return handle.stages, handle.stage_epochs

    assert plan("ternary", False)[0] == [{"phase": "float"}, {"phase": "retrain"}]
    assert plan("ternary", True)[0] == [{"phase": "retrain"}]
    # an experiment's full [float, retrain] schedule loses its float entry
    assert plan("ternary", True, stage_epochs=[50, 25])[1] == [25]
    assert plan("ternary", False, stage_epochs=[50, 25])[1] == [50, 25]
    # told otherwise: the float stage stays
    assert plan("ternary", True, pretrain_stage=True)[0][0] == {"phase": "float"}
    assert len(plan("inq", False)[0]) == 5 and len(plan("inq", True)[0]) == 4
    assert plan("inq", True, stage_epochs=[90, 10, 10, 10, 10])[1] == [10, 10, 10, 10]


def test_post_training_staged_quantizer_applies_its_final_stage(tmp_path, float_run):
    """INQ with epochs=0: every weight frozen to a power of two (the final stage), no training."""
    from qexp.engine.checkpoint import load_checkpoint

    a_dir, _ = float_run
    rec = _train(tmp_path / "inq", "quant=inq", "bits=5", f"trainer.init_from={a_dir}", "trainer.epochs=0")
    assert rec["steps"] == 0 and rec["quant"]["stages"] == [{"ratio": r} for r in (0.5, 0.75, 0.875, 1.0)]
    state = load_checkpoint(tmp_path / "inq/checkpoints/best.pt")["model"]
    frozen = [v for k, v in state.items() if k.endswith(".frozen")]
    assert len(frozen) == 3 and all(bool(f.all()) for f in frozen)
    assert rec["final"]["accuracy"] > 0.8


def test_layer_bits_between_all_2_and_all_8_and_export_round_trip(tmp_path, float_run):
    from hydra.utils import instantiate

    from qexp.engine.checkpoint import load_checkpoint
    from qexp.export import export_run, load_exported
    from qexp.quant.base import apply_quantization

    a_dir, _ = float_run
    common = ["quant=uniform", "quant.skip=[]", f"trainer.init_from={a_dir}", "trainer.epochs=0"]
    r2 = _train(tmp_path / "b2", *common, "bits=2")
    r8 = _train(tmp_path / "b8", *common, "bits=8")
    mixed = _train(tmp_path / "mixed", *common, "bits=2", "quant.layer_bits={first:8,last:8}")
    assert r8["memory"]["reduction"] < mixed["memory"]["reduction"] < r2["memory"]["reduction"]
    assert mixed["quant"]["layer_bits"] == {"1.weight": 8, "3.weight": 2, "5.weight": 8}
    assert mixed["quant"]["bits"] == 2
    assert {k: v["bits"] for k, v in mixed["memory"]["quantized_layers"].items()} == mixed["quant"]["layer_bits"]
    # the packed export stores each layer at its own width and decodes to the trained values bit for bit
    path, export = export_run(tmp_path / "mixed")
    assert {k: s["bits"] for k, s in export["quantized"].items()} == mixed["quant"]["layer_bits"]
    plain = load_exported(path)
    cfg = OmegaConf.create(mixed["config"])
    model = instantiate(cfg.model, **mixed["model_kwargs"], _convert_="all")
    apply_quantization(model, cfg.quant, initialised=True)
    model.load_state_dict(load_checkpoint(tmp_path / "mixed/checkpoints/last.pt")["model"])
    for name in ("1", "3", "5"):
        assert torch.equal(model.get_submodule(name).weight, plain.get_submodule(name).weight)
    # 8-bit codes for the 64x256 first layer: 16384 bytes; 2-bit codes for the 256x128 one: 8192
    layers = mixed["memory"]["quantized_layers"]
    assert layers["1.weight"]["codes_bytes"] == 64 * 256 and layers["3.weight"]["codes_bytes"] == 128 * 256 // 4


def test_layer_bits_names_globs_and_errors():
    from qexp.quant.base import apply_quantization

    def bits(layer_bits, quant="uniform", skip=()):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        cfg = OmegaConf.to_container(compose([*FAST, f"quant={quant}", "bits=4"]).quant, resolve=True)
        cfg.update(layer_bits=layer_bits, skip=list(skip))
        return apply_quantization(model, cfg).layer_bits()

    assert bits({"first": 8}) == {"0.weight": 8, "2.weight": 4, "4.weight": 4}
    assert bits({"[24]": 2, "last": 6}) == {"0.weight": 4, "2.weight": 2, "4.weight": 6}  # later entries win
    assert bits({"*": 3}) == {"0.weight": 3, "2.weight": 3, "4.weight": 3}
    assert bits({"2.weight": 8}) == {"0.weight": 4, "2.weight": 8, "4.weight": 4}
    with pytest.raises(QexpError, match="'fc9', which matches no quantizable layer"):
        bits({"fc9": 8})
    with pytest.raises(QexpError, match="'features.*', which matches no quantizable layer"):
        bits({"features.*": 8})
    with pytest.raises(QexpError, match="which quant.skip keeps in float"):
        bits({"first": 8}, skip=["first"])
    with pytest.raises(QexpError, match=r"quant.layer_bits: 4 bits for 0.weight: .*allowed: 2"):
        bits({"first": 4}, quant="twn")


def test_layer_bits_errors_come_before_any_run_folder():
    with pytest.raises(QexpError, match="quant.layer_bits: 4 bits for first"):
        check_overrides([*FAST, "quant=twn", "quant.layer_bits={first:4}"])
    with pytest.raises(QexpError, match="'head', which matches no quantizable layer"):
        check_overrides([*FAST, "quant=uniform", "quant.layer_bits={head:8}"])
    with pytest.raises(QexpError, match="must be an integer number of bits"):
        check_overrides([*FAST, "quant=uniform", "quant.layer_bits={first:high}"])
    with pytest.raises(QexpError, match="trainer.epochs=-1 is out of range"):
        check_overrides([*FAST, "trainer.epochs=-1"])


def test_reproduce_init_from_step_validation(tmp_path):
    from qexp.report.reproduce import init_overrides

    sweep = {"name": "direct", "init_from": {"sweep": "float", "match": ["model.width", "seed"]}}
    got = init_overrides("sung2015", sweep, ["float"], tmp_path)
    assert got == [f"trainer.init_from={(tmp_path / 'sung2015' / 'float').resolve()}",
                   "trainer.init_match=[model.width,seed]"]
    with pytest.raises(QexpError, match="not an earlier sweep"):
        init_overrides("sung2015", sweep, [], tmp_path)
    with pytest.raises(QexpError, match=r"init_from must be \{sweep: NAME"):
        init_overrides("sung2015", {"name": "x", "init_from": "float"}, ["float"], tmp_path)
    assert init_overrides("sung2015", {"name": "plain"}, [], tmp_path) == []


@pytest.mark.slow
def test_reproduce_runs_dependent_sweeps_and_tables_show_direct(tmp_path, monkeypatch):
    """A paper whose second sweep starts from its first: each job gets the float run with its seed;
    the width table shows the direct row beside the retrained one."""
    import yaml

    from qexp.config import config_dir
    from qexp.report.reproduce import run_mini

    conf = tmp_path / "configs"
    conf.mkdir()
    for item in config_dir().iterdir():
        if item.name != "paper":
            (conf / item.name).symlink_to(item)
    (conf / "paper").mkdir()
    fast = ["trainer.max_steps_per_epoch=4", "trainer.eval_batch_size=1024"]
    paper = {
        "key": "sung2015", "title": "t", "claim": "c", "metric": "accuracy",
        "mini": [
            {"name": "float", "overrides": ["quant=fp32", "seed=0,1", "trainer.epochs=2", *fast]},
            {"name": "direct", "overrides": ["quant=ternary", "bits=2", "seed=0,1", "trainer.epochs=0", *fast],
             "init_from": {"sweep": "float", "match": ["seed"]}},
            {"name": "retrained", "overrides": ["quant=ternary", "bits=2", "seed=0,1", "trainer.epochs=1", *fast],
             "init_from": {"sweep": "float", "match": ["seed"]}},
        ],
        "tables": [{"name": "by_seed", "kind": "width_gap", "caption": "by seed", "widths": [0, 1],
                    "width_key": "config.seed", "float": {"choices.quant": "fp32"},
                    "quant": {"choices.quant": "ternary", "config.trainer.epochs": 1},
                    "direct": {"choices.quant": "ternary", "config.trainer.epochs": 0}}],
    }
    (conf / "paper" / "sung2015.yaml").write_text(yaml.safe_dump(paper))
    monkeypatch.setenv("QEXP_CONFIG_DIR", str(conf))
    runs, out = tmp_path / "runs", tmp_path / "results"
    run_mini(["sung2015"], runs, out)
    for sweep in ("direct", "retrained"):
        recs = [json.loads(p.read_text()) for p in sorted((runs / "sung2015" / sweep).rglob("record.json"))]
        assert len(recs) == 2
        for rec in recs:
            source = json.loads((Path(rec["init"]["run"]["dir"]) / "record.json").read_text())
            assert source["seed"] == rec["seed"] and source["choices"]["quant"] == "fp32"
            assert rec["quant"]["stages"] == [{"phase": "retrain"}]
    md = (out / "sung2015.md").read_text()
    assert "direct, no retraining" in md and "**missing**" not in md
    summary = json.loads((out / "sung2015.json").read_text())["by_seed"]
    assert all(row["direct"][2] == 1 and row["quant"][2] == 1 for row in summary)
    # rerun: everything completed is skipped, nothing fails
    run_mini(["sung2015"], runs, out)
