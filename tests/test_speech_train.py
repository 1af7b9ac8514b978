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


def test_lstm_weights_are_quantized_once_per_training_step(tmp_path, cache, monkeypatch):
    """nn.LSTM reads each weight twice per call; the trainer's parametrize.cached() makes that one
    quantization per weight per step (the benchmark's "no re-quantizing the same weights").
    Two runs that differ only in their step count isolate the per-step calls from set-up ones
    (``model.to(device)`` re-reads the LSTM weights once)."""
    from qexp.quant.uniform import UniformQuantizer

    calls = []
    forward = UniformQuantizer.forward
    monkeypatch.setattr(UniformQuantizer, "forward", lambda self, w: (calls.append(self.training), forward(self, w))[1])
    counts, records = [], []
    for steps in (1, 3):
        calls.clear()
        cfg = compose(["dataset=spoken_commands", "model=rnn", "quant=uniform", "bits=4", f"dataset.cache_dir={cache}",
                       "model.hidden=16", "model.layers=1", *SMALL, f"trainer.max_steps_per_epoch={steps}"])
        records.append(train(cfg, tmp_path / str(steps)))
        counts.append(sum(calls))
    n_weights = len(records[0]["quant"]["layers"])
    assert n_weights == 5  # 2 directions x (weight_ih, weight_hh) + the output layer
    assert (counts[1] - counts[0]) / 2 == n_weights
