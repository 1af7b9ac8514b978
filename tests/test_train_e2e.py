"""Short end-to-end runs through the real CLI and the run() function."""

import json
import re

import pytest
import torch

from qexp.run import train


def test_train_function_writes_record(tmp_path, compose_cfg):
    cfg = compose_cfg("quant=uniform", "bits=4", "trainer.epochs=3")
    record = train(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["status"] == "completed" == record["status"]
    assert on_disk["metric"] == "accuracy"
    for key in ("final", "best"):
        assert 0.0 <= on_disk[key]["accuracy"] <= 1.0
    assert on_disk["final"]["accuracy"] > 0.8  # 3 epochs already learn digits
    mem = on_disk["memory"]
    assert mem["fp32_bytes"] > mem["packed_bytes"] > 0
    assert abs(mem["reduction"] - mem["fp32_bytes"] / mem["packed_bytes"]) < 1e-9
    assert on_disk["seed"] == 0 and on_disk["epochs"] == 3 and on_disk["wall_s"] > 0
    assert "git" in on_disk and on_disk["config"]["quant"]["bits"] == 4
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "checkpoints" / "best.pt").exists()
    assert any((tmp_path / "tb").iterdir())
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"


def test_same_seed_same_result(tmp_path, compose_cfg):
    cfg = compose_cfg("quant=uniform", "bits=2", "trainer.epochs=2")
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    assert a["final"] == b["final"]


def test_cli_default_and_4bit(tmp_path, cli):
    fp = cli("train", "trainer.progress=false", f"hydra.run.dir={tmp_path/'fp32'}")
    assert fp.returncode == 0, fp.stderr
    q = cli("train", "quant=uniform", "bits=4", "quant.skip=[]", "trainer.progress=false",
            f"hydra.run.dir={tmp_path/'q4'}")
    assert q.returncode == 0, q.stderr
    r_fp = json.loads((tmp_path / "fp32/record.json").read_text())
    r_q = json.loads((tmp_path / "q4/record.json").read_text())
    assert r_fp["final"]["accuracy"] >= 0.95
    assert r_q["memory"]["reduction"] >= 5
    assert r_fp["final"]["accuracy"] - r_q["final"]["accuracy"] <= 0.02
    # the packed export loads back to the same quantized weights and the same test metric
    ex = cli("export", str(tmp_path / "q4"))
    assert ex.returncode == 0, ex.stderr
    line = [ln for ln in ex.stdout.splitlines() if "exported model test" in ln][0]
    got, want = re.findall(r"[-+]?\d*\.\d+", line)
    assert float(got) == float(want)
    # bit-identical weights: decoded export == quantized weights the run trained with
    from omegaconf import OmegaConf

    from qexp.engine.checkpoint import load_checkpoint
    from qexp.export import load_exported
    from qexp.quant.base import apply_quantization
    from hydra.utils import instantiate

    plain = load_exported(tmp_path / "q4" / "model.qexp.pt")
    cfg = OmegaConf.create(r_q["config"])
    model = instantiate(cfg.model, **r_q["model_kwargs"], _convert_="all")
    apply_quantization(model, cfg.quant)
    model.load_state_dict(load_checkpoint(tmp_path / "q4/checkpoints/last.pt")["model"])
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            assert torch.equal(mod.weight, plain.get_submodule(name).weight)


@pytest.mark.slow
def test_compiled_sq_run_trains_through_its_stages(tmp_path, compose_cfg):
    """trainer.compile=true (on in the conv-net experiments) with SQ's four ratio stages: the run
    completes, learns, and its exported size is that of the 2-bit weights."""
    cfg = compose_cfg("model=cnn", "quant=sq", "bits=2", "trainer.epochs=4", "trainer.compile=true")
    record = train(cfg, tmp_path)
    assert record["status"] == "completed" and record["epochs"] == 4
    assert record["final"]["accuracy"] > 0.85
    assert record["memory"]["reduction"] > 8
