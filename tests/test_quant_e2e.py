"""A short end-to-end run per quantizer (digits + MLP, 2 epochs or one per stage), its measured
memory, and its packed export loading back bit-identically with the record's test metric."""

import re

import pytest
import torch
from hydra.utils import instantiate

from qexp.config import compose
from qexp.engine.checkpoint import latest_valid, load_checkpoint
from qexp.export import export_run, load_exported, main as export_main
from qexp.quant.base import apply_quantization
from qexp.report.memory import measure_memory
from qexp.run import train


pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = {
    "bwn": ["quant=bwn"],
    "twn": ["quant=twn"],
    "sq_bwn": ["quant=sq", "bits=1", "quant.base=bwn"],
    "sq_twn": ["quant=sq", "bits=2", "quant.base=twn"],
    "sq_reference": ["quant=sq", "bits=2", "quant.selection=reference", "quant.center=true"],
    "ternary": ["quant=ternary", "bits=3"],
    "pow2": ["quant=pow2", "bits=3"],
    "fixed": ["quant=fixed", "bits=5"],
    "inq": ["quant=inq", "bits=5"],
    "clip_svd": ["quant=clip_svd", "bits=8"],
}


def _run(tmp_path, overrides):
    cfg = compose([*overrides, "quant.skip=[]", "trainer.epochs=2", "trainer.progress=false"])
    return train(cfg, tmp_path), cfg


@pytest.mark.parametrize("name", sorted(ROWS))
def test_train_export_and_load_back(name, tmp_path, capsys):
    record, cfg = _run(tmp_path, ROWS[name])
    assert record["status"] == "completed"
    assert record["quant"]["name"] == ROWS[name][0].split("=")[1]
    assert record["final"]["accuracy"] > 0.5
    assert record["memory"]["reduction"] > 3.5
    assert len(record["quant"]["stage_epochs"]) == len(record["quant"]["stages"])

    # the packed export decodes to exactly the weights the trained (quantized) model uses
    path, _ = export_run(tmp_path)
    exported = dict(load_exported(path).named_parameters())
    model = instantiate(cfg.model, **record["model_kwargs"], _convert_="all")
    handle = apply_quantization(model, cfg.quant)
    model.load_state_dict(latest_valid(tmp_path / "checkpoints")[1]["model"])
    model.eval()
    for key, (module, pname) in handle.owners.items():
        assert torch.equal(getattr(module, pname), exported[key]), key

    # the record's best_memory is the size of the best-validation model (the one `best` measures)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"])
    assert record["best_memory"]["packed_bytes"] == measure_memory(model, handle)["packed_bytes"]

    # ... and `qexp export` re-evaluates it to the record's test metric
    capsys.readouterr()
    export_main([str(tmp_path)])
    line = [ln for ln in capsys.readouterr().out.splitlines() if "exported model test" in ln][0]
    got, want = re.findall(r"\d+\.\d+", line)
    assert got == want


def test_memory_ratios_from_short_runs(tmp_path):
    """Measured reductions of real runs (quant.skip=[]): bwn >= 20x, 2-bit >= 12x, 8-bit >= 3.7x,
    clip_svd smaller than plain 8-bit by the SVD factors it stores."""
    red = {}
    for name, overrides in {"bwn": ["quant=bwn"], "twn": ["quant=twn"],
                            "u8": ["quant=uniform", "bits=8"], "clip_svd": ["quant=clip_svd", "bits=8"]}.items():
        cfg = compose([*overrides, "quant.skip=[]", "trainer.epochs=1", "trainer.max_steps_per_epoch=3",
                       "trainer.progress=false"])
        red[name] = train(cfg, tmp_path / name)["memory"]
    assert red["bwn"]["reduction"] >= 20
    assert red["twn"]["reduction"] >= 12
    assert red["u8"]["reduction"] >= 3.7
    assert red["clip_svd"]["packed_bytes"] < red["u8"]["packed_bytes"]
