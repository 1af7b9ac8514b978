"""A short training step through dataset=spoken_commands for both speech models."""

import json

import pytest

from qexp.config import compose
from qexp.run import train

SMALL = ["dataset.speakers={train: 3, val: 1, test: 1}", "dataset.utterances_per_speaker=4", "trainer.epochs=1",
         "trainer.max_steps_per_epoch=2", "trainer.batch_size=4", "trainer.progress=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("speech-cache"))


@pytest.mark.parametrize("model,quant,metric", [("rnn", "uniform", "cer"), ("resnet_slu", "uniform", "accuracy")])
def test_one_short_train_step(tmp_path, cache, model, quant, metric):
    extra = ["model.hidden=16", "model.layers=1"] if model == "rnn" else ["model.widths=[8,16]", "model.blocks=[1,1]"]
    cfg = compose(["dataset=spoken_commands", f"model={model}", f"quant={quant}", "bits=5", f"dataset.cache_dir={cache}",
                   *SMALL, *extra])
    record = train(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == on_disk["status"] == "completed"
    assert on_disk["metric"] == metric and on_disk["higher_is_better"] == (metric == "accuracy")
    assert on_disk["steps"] == 2 and on_disk["memory"]["reduction"] > 1
    final = on_disk["final"]
    if model == "rnn":
        assert {"cer", "wer", "loss"} <= set(final) and final["cer"] >= 0
        assert any("weight_hh" in k for k in on_disk["quant"]["layers"])  # recurrent matrices quantized too
    else:
        assert {"accuracy", "acc_action", "acc_object", "acc_location"} <= set(final)
    assert on_disk["data"]["name"] == "spoken_commands" and on_disk["data"]["speakers"]["test"] == 1
