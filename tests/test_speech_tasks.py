"""Speech tasks and models: CTC decoding, CER/WER, slot accuracy, quantized LSTM/GRU."""

import pytest
import torch
from torch import nn

from qexp.models.resnet_slu import resnet_slu
from qexp.models.rnn import rnn
from qexp.quant.base import apply_quantization
from qexp.tasks.speech import (CTCRecognition, SpokenLanguageUnderstanding, edit_distance, error_rates,
                               greedy_decode)


def test_ctc_greedy_decoding_hand_made():
    # frames: a a _ b b _ _ b c c   (blank = 0) -> a b b c ; the second sequence stops at length 4
    path = [1, 1, 0, 2, 2, 0, 0, 2, 3, 3]
    logits = torch.full((2, len(path), 4), -5.0)
    for t, c in enumerate(path):
        logits[0, t, c] = 5.0
        logits[1, t, c] = 5.0
    assert greedy_decode(logits, torch.tensor([10, 4])) == [[1, 2, 2, 3], [1, 2]]
    task = CTCRecognition(" abc")
    assert task.decode_text([2, 3, 1, 4]) == "ab c"


def test_edit_distance_cer_wer_known_strings():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert edit_distance("turn on the lights".split(), "turn of the light".split()) == 2
    r = error_rates(["turn on the lights"], ["turn of the light"])
    assert r["cer"] == pytest.approx(2 / 18) and r["wer"] == pytest.approx(2 / 4)
    r = error_rates(["lamp on", "music off"], ["lamp on", ""])
    assert r["cer"] == pytest.approx(9 / 16) and r["wer"] == pytest.approx(2 / 4)


def test_ctc_task_loss_and_perfect_evaluation():
    task = CTCRecognition(" ab")

    class Oracle(nn.Module):  # emits exactly "ab a" with blanks between repeats
        def forward(self, x, lengths):
            path = [2, 0, 3, 1, 2]
            out = torch.full((x.shape[0], len(path), 4), -9.0)
            for t, c in enumerate(path):
                out[:, t, c] = 9.0
            return out, torch.full((x.shape[0],), len(path))

    y = torch.tensor([2, 3, 1, 2] * 2)
    batch = (torch.zeros(2, 3, 5), torch.tensor([5, 5]), y, torch.tensor([4, 4]))
    loss, n = task.loss(Oracle(), batch)
    assert n == 2 and loss.item() < 1e-3
    out = task.evaluate(Oracle(), [batch], torch.device("cpu"))
    assert out["cer"] == 0.0 and out["wer"] == 0.0 and out["sentence_accuracy"] == 1.0


def test_slu_accuracy_needs_every_slot():
    task = SpokenLanguageUnderstanding(["action", "object"], [2, 3])
    logits = torch.tensor([[5.0, 0, 0, 5, 0],   # (0, 1)
                           [5.0, 0, 5, 0, 0],   # (0, 0)
                           [0.0, 5, 0, 0, 5]])  # (1, 2)
    y = torch.tensor([[0, 1], [0, 1], [0, 2]])
    out = task.evaluate(lambda x: x, [(logits, y)], torch.device("cpu"))
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["acc_action"] == pytest.approx(2 / 3) and out["acc_object"] == pytest.approx(2 / 3)
    loss, n = task.loss(lambda x: x, (logits, y))
    assert n == 3 and loss.item() > 0


def _packed_reference(model, cell, quantized=True):
    """A standard packed ``nn.LSTM``/``nn.GRU`` holding the (quantized) weights of ``model.rnn``."""
    ref = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](16, 6, num_layers=2, batch_first=True, bidirectional=True)
    for i, layer in enumerate(model.rnn.layers):
        for direction, sfx in (("fwd", ""), ("bwd", "_reverse")):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                mod = layer[direction]
                value = getattr(mod, f"{name}_l0") if quantized or name.startswith("bias") else \
                    mod.parametrizations[f"{name}_l0"].original
                setattr(ref, f"{name}_l{i}{sfx}", nn.Parameter(value.detach().clone()))
    return ref


def _run_packed(ref, x, lengths):
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_quantized_weights_are_used_in_rnn_forward(cell):
    torch.manual_seed(0)
    model = rnn((8, 12), 5, cell=cell, hidden=6, layers=2, bidirectional=True, subsample=2)
    handle = apply_quantization(model, {"name": "uniform", "_target_": "qexp.quant.uniform.UniformQuantizer",
                                        "bits": 2, "skip": []})
    assert {k for k in handle.quantizers if k.startswith("rnn.")} == {
        f"rnn.layers.{i}.{d}.weight_{kind}_l0" for i in (0, 1) for d in ("fwd", "bwd") for kind in ("ih", "hh")}
    assert len(torch.unique(model.rnn.layers[1]["bwd"].weight_hh_l0[0])) <= 4  # 2-bit grid per row
    x = torch.randn(3, 8, 12)
    lengths = torch.tensor([12, 9, 5])
    logits, out_len = model(x, lengths)
    assert out_len.tolist() == [6, 5, 3] and logits.shape == (3, 6, 5)
    # the same numbers as a packed bidirectional LSTM/GRU that *holds* the quantized weights
    seq = x.transpose(1, 2).reshape(3, 6, 16)
    mask = (torch.arange(6)[None, :] < out_len[:, None])[..., None]
    want = model.fc(_run_packed(_packed_reference(model, cell), seq, out_len))
    assert torch.allclose(logits * mask, want * mask, atol=1e-5)
    floats = model.fc(_run_packed(_packed_reference(model, cell, quantized=False), seq, out_len))
    assert not torch.allclose(logits * mask, floats * mask, atol=1e-3)  # not the float weights
    # gradients reach the float shadow weights through the straight-through estimator
    logits.sum().backward()
    shadow = model.rnn.layers[1]["fwd"].parametrizations.weight_ih_l0.original
    assert shadow.grad is not None and shadow.grad.abs().sum() > 0


def test_rnn_slu_and_resnet_shapes():
    m = rnn((1, 40, 64), 24, cell="gru", hidden=16, layers=1, bidirectional=False, task="slu")
    assert m(torch.randn(2, 1, 40, 64)).shape == (2, 24)
    r = resnet_slu((1, 40, 64), 24, widths=(8, 16), blocks=(1, 1))
    assert r(torch.randn(2, 1, 40, 64)).shape == (2, 24)
    with pytest.raises(Exception, match="slu"):
        resnet_slu((40, 64), 29, task="ctc")
