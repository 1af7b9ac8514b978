"""``trainer.decay_norm``: Caffe's solvers decay BN scale/shift like any parameter (dong2017's
authors' code); qexp's default leaves norm parameters and biases undecayed."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qexp.engine.trainer import make_optimizer


def groups(decay_norm: bool) -> tuple[set[int], set[int]]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))
    cfg = SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                          decay_norm=decay_norm)
    opt = make_optimizer(cfg, model)
    named = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {named[id(p)] for p in g["params"]} for g in opt.param_groups}
    return by_decay[1e-4], by_decay[0.0]


@pytest.mark.parametrize("decay_norm", [False, True])
def test_norm_parameters_are_decayed_only_with_decay_norm(decay_norm):
    decayed, free = groups(decay_norm)
    norm = {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert {"0.weight", "4.weight"} <= decayed
    assert {"0.bias", "4.bias"} <= free  # biases of conv/linear layers are never decayed
    assert (norm <= decayed) if decay_norm else (norm <= free)


def test_decayed_bn_scale_shrinks_under_sgd():
    bn = nn.BatchNorm1d(3)
    cfg = SimpleNamespace(optimizer="sgd", lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.1, decay_norm=True)
    opt = make_optimizer(cfg, bn)
    bn.weight.grad = torch.zeros(3)
    bn.bias.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(bn.weight, torch.full((3,), 1 - 0.5 * 0.1))  # w <- w - lr * wd * w
