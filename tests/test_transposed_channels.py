"""Per-channel quantizers follow the *output* channels of transposed convolutions.

A ``ConvTranspose2d(in, out)`` weight is (in, out/groups, kh, kw): dim 0 is the input channels,
so per-channel statistics must be taken over dim 1 (per group with groups > 1)."""

import pytest
import torch
from torch import nn

from qexp.export import quantizer_factory
from qexp.quant.base import ChannelLayout, apply_quantization
from qexp.report.memory import decode_export, export_packed

PER_CHANNEL = {
    "bwn": ({"_target_": "qexp.quant.binary.BinaryQuantizer"}, "scale"),
    "twn": ({"_target_": "qexp.quant.binary.TernaryWeightQuantizer"}, "scale"),
    "uniform": ({"_target_": "qexp.quant.uniform.UniformQuantizer", "bits": 4}, "scale"),
    "fixed": ({"_target_": "qexp.quant.uniform.FixedPointQuantizer", "bits": 5, "per_channel": True}, "frac_bits"),
    "clip_svd": ({"_target_": "qexp.quant.clip_svd.ClipSVDQuantizer", "bits": 4}, "scale"),
    "pow2": ({"_target_": "qexp.quant.pow2.PowerOfTwoQuantizer", "bits": 3, "per_channel": True}, "n_hi"),
    "ternary": ({"_target_": "qexp.quant.ternary.HwangSungQuantizer", "bits": 2, "per_channel": True}, "step"),
    "sq": ({"_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 1, "ratios": [1.0]}, "scale"),
}


def output_channel_rows(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Row o = every weight feeding output channel o, written out by index (no reshapes)."""
    cin, cog = w.shape[:2]
    per_group = cin // groups
    return torch.stack([w[(o // cog) * per_group:(o // cog + 1) * per_group, o % cog].reshape(-1)
                        for o in range(cog * groups)])


def layer(groups: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ConvTranspose2d(16, 8, 3, groups=groups))


@pytest.mark.parametrize("groups", [1, 2])
def test_bwn_on_a_transposed_conv_has_one_scale_per_output_channel_and_decodes_exactly(groups):
    model = layer(groups)
    handle = apply_quantization(model, {"name": "bwn", "_target_": "qexp.quant.binary.BinaryQuantizer", "bits": 1})
    w = handle.float_weights()["0.weight"].detach()
    assert w.shape == (16, 8 // groups, 3, 3)
    packed = handle.encode_all()["0.weight"]
    scale = packed.tensors["scale"]
    assert scale.shape == (8,)
    rows = output_channel_rows(w, groups)
    assert torch.equal(scale, rows.abs().mean(dim=1))  # alpha_o = mean |W_o| of the output filter
    export = export_packed(model, handle)
    decoded = decode_export(export, quantizer_factory({"_target_": "qexp.quant.binary.BinaryQuantizer", "bits": 1}))
    quantized = model[0].weight.detach()  # the parametrized (quantized) weight the layer uses
    assert torch.equal(decoded["0.weight"], quantized)
    # and that weight is +-alpha_o on output channel o's entries
    assert torch.equal(output_channel_rows(quantized, groups).abs(), scale[:, None].expand(8, rows.shape[1]))


@pytest.mark.parametrize("name", sorted(PER_CHANNEL))
@pytest.mark.parametrize("groups", [1, 2])
def test_every_per_channel_quantizer_uses_output_channels_of_transposed_convs(name, groups):
    cfg, key = PER_CHANNEL[name]
    model = layer(groups)
    handle = apply_quantization(model, {"name": name, **cfg})
    handle.set_stage(len(handle.stages) - 1)  # Hwang-Sung's stage 0 is float
    packed = handle.encode_all()["0.weight"]
    assert packed.tensors[key].shape == (8,), name
    assert packed.meta["layout"] == {"transposed": True, "groups": groups}
    export = export_packed(model, handle)
    decoded = decode_export(export, quantizer_factory(cfg))
    assert torch.equal(decoded["0.weight"], model[0].weight.detach())


def test_sq_keeps_whole_output_channels_in_float():
    torch.manual_seed(1)
    model = nn.Sequential(nn.ConvTranspose2d(6, 4, 2, groups=2))
    cfg = {"_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 2, "ratios": [0.5, 1.0]}
    handle = apply_quantization(model, {"name": "sq", **cfg})
    model.train()
    quantized = model[0].weight.detach()
    w = handle.float_weights()["0.weight"].detach()
    q = handle.quantizers["0.weight"]
    rows_q, rows_w = output_channel_rows(quantized, 2), output_channel_rows(w, 2)
    kept = (rows_q == rows_w).all(dim=1)
    assert kept.sum() == 2 and torch.equal(kept, ~q.selected)  # 2 of 4 output channels stay float
    packed = handle.encode_all()["0.weight"]
    assert torch.equal(packed.tensors["float_rows"], rows_w[kept])
    decoded = decode_export(export_packed(model, handle), quantizer_factory(cfg))
    assert torch.equal(decoded["0.weight"], quantized)


def test_layout_round_trip_and_plain_layers_unchanged():
    w = torch.randn(12, 3, 2, 2)
    for groups in (1, 2, 3, 4):
        lay = ChannelLayout(True, groups)
        plain = lay.to_plain(w)
        assert plain.shape == (3 * groups, 12 // groups, 2, 2)
        assert torch.equal(lay.from_plain(plain, tuple(w.shape)), w)
        assert torch.equal(lay.rows(w), output_channel_rows(w, groups))
        stat = torch.arange(3.0 * groups)
        assert torch.equal(output_channel_rows(lay.expand(stat, w).expand_as(w).contiguous(), groups)[:, 0], stat)
    assert ChannelLayout.of(nn.Conv2d(4, 6, 3)) == ChannelLayout()
    assert ChannelLayout.of(nn.ConvTranspose1d(4, 6, 3, groups=2)) == ChannelLayout(True, 2)
