"""The uniform quantizer and the packing contract."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qexp.quant.base import apply_quantization
from qexp.quant.pack import pack_codes, packed_nbytes, unpack_codes
from qexp.quant.uniform import UniformQuantizer


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 11, 16])
def test_pack_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1000,), generator=g)
    payload = pack_codes(codes, bits)
    assert len(payload) == packed_nbytes(1000, bits)
    assert torch.equal(unpack_codes(payload, bits, 1000), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_levels_and_bit_exact_roundtrip(bits, per_channel, symmetric):
    w = torch.randn(16, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    q = UniformQuantizer(bits, per_channel=per_channel, symmetric=symmetric)
    wq = q.quantize(w)
    rows = wq.reshape(16, -1) if per_channel else wq.reshape(1, -1)
    for row in rows:
        assert row.unique().numel() <= 2**bits
    packed = q.encode(w)
    assert torch.equal(q.decode(packed), wq)
    assert len(packed.codes) == packed_nbytes(w.numel(), bits)


def test_quantization_error_shrinks_with_bits():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    errs = [(UniformQuantizer(b).quantize(w) - w).abs().mean().item() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_ste_gradient_reaches_float_weight():
    layer = nn.Linear(8, 4)
    apply_quantization(layer, {"name": "uniform", "_target_": "qexp.quant.uniform.UniformQuantizer", "bits": 2,
                               "skip": []})
    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0
    # straight-through: gradient equals that of a linear layer with the quantized weight
    w_q = layer.weight.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x, w_q, layer.bias.detach()).pow(2).sum().backward()
    assert torch.allclose(grad, w_q.grad)


def test_skip_first_last_and_unknown():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    cfg = {"name": "uniform", "_target_": "qexp.quant.uniform.UniformQuantizer", "bits": 4, "skip": ["first", "last"]}
    handle = apply_quantization(model, cfg)
    assert list(handle.quantizers) == ["2.weight"]
    assert not parametrize.is_parametrized(model[0]) and parametrize.is_parametrized(model[2])
    from qexp.errors import QexpError

    with pytest.raises(QexpError, match="nope"):
        apply_quantization(nn.Sequential(nn.Linear(2, 2)), {**cfg, "skip": ["nope"]})
