"""The quantizer catalogue: levels as the papers define them, bit-exact packing, STE gradients,
schedules (SQ ratios and selection, INQ frozen partitions, Hwang–Sung float -> ternary), and
constructor checks.  Everything here runs on tiny tensors (a few seconds in all)."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qexp.errors import QexpError
from qexp.quant.base import apply_quantization, original_weight
from qexp.quant.binary import BinaryQuantizer, TernaryWeightQuantizer
from qexp.quant.clip_svd import ClipSVDQuantizer, clip_boundary
from qexp.quant.pack import packed_nbytes
from qexp.quant.pow2 import INQQuantizer, PowerOfTwoQuantizer
from qexp.quant.sq import StochasticQuantizer, roulette_without_replacement, selection_probabilities
from qexp.quant.ternary import HwangSungQuantizer
from qexp.quant.uniform import FixedPointQuantizer, UniformQuantizer


pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (yaml-like config for apply_quantization)
CONFIGS = {
    "uniform": {"_target_": "qexp.quant.uniform.UniformQuantizer", "bits": 4},
    "fixed": {"_target_": "qexp.quant.uniform.FixedPointQuantizer", "bits": 5},
    "inq": {"_target_": "qexp.quant.pow2.INQQuantizer", "bits": 5},
    "bwn": {"_target_": "qexp.quant.binary.BinaryQuantizer", "bits": 1},
    "twn": {"_target_": "qexp.quant.binary.TernaryWeightQuantizer", "bits": 2},
    "sq_bwn": {"_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 1, "base": "bwn"},
    "sq_twn": {"_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 2, "base": "twn"},
    "sq_uniform": {"_target_": "qexp.quant.sq.StochasticQuantizer", "bits": 3, "base": "uniform", "prob": "softmax"},
    "ternary": {"_target_": "qexp.quant.ternary.HwangSungQuantizer", "bits": 2},
    "ternary3": {"_target_": "qexp.quant.ternary.HwangSungQuantizer", "bits": 3},
    "pow2": {"_target_": "qexp.quant.pow2.PowerOfTwoQuantizer", "bits": 3},
    "pow2_scale": {"_target_": "qexp.quant.pow2.PowerOfTwoQuantizer", "bits": 4, "learn_scale": True},
    "clip_svd": {"_target_": "qexp.quant.clip_svd.ClipSVDQuantizer", "bits": 8, "svd_rank": 3},
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                         nn.Linear(16, 5))


def quantized_model(name, stage="last", seed=0):
    torch.manual_seed(seed)
    model = small_model()
    handle = apply_quantization(model, {"name": name, "skip": [], **CONFIGS[name]})
    if stage == "last":
        handle.set_stage(len(handle.stages) - 1)
    return model, handle


def modules_of(model, handle):
    return [(key, *handle.owners[key], q) for key, q in handle.quantizers.items()]


# ---------------------------------------------------------------------------------------------
# the contract, for every quantizer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encode_decode_bit_exact_and_sizes(name):
    model, handle = quantized_model(name)
    model.eval()
    for key, module, pname, q in modules_of(model, handle):
        used = getattr(module, pname).detach()
        packed = q.encode(original_weight(module, pname))
        # a fresh quantizer of the same kind (as the export loader builds it) decodes bit-exactly
        fresh = type(q)(**{k: v for k, v in CONFIGS[name].items() if k != "_target_"})
        assert torch.equal(fresh.decode(packed), used), key
        assert len(packed.codes) == packed_nbytes(packed.numel, packed.bits)
        assert packed.bits == q.bits


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_reach_float_weights_through_parametrize(name):
    model, handle = quantized_model(name, stage="first")
    if name.startswith("ternary"):
        handle.set_stage(1)  # stage 0 is plain float training
    model.train()
    x = torch.randn(4, 3, 6, 6, generator=gen(1))
    model(x).pow(2).sum().backward()
    for key, module, pname, q in modules_of(model, handle):
        assert parametrize.is_parametrized(module, pname)
        grad = original_weight(module, pname).grad
        assert grad is not None and grad.abs().sum() > 0, key
    if name == "pow2_scale":
        scales = [q.scale.grad for q in handle.quantizers.values()]
        assert all(g is not None and g.abs() > 0 for g in scales)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpoint_round_trip_restores_quantizer_state(name):
    model, handle = quantized_model(name)
    model.train()
    model(torch.randn(2, 3, 6, 6, generator=gen(2)))  # SQ draws, INQ freezes, ternary fits its step
    model.eval()
    state = model.state_dict()
    torch.manual_seed(123)
    clone = small_model()
    apply_quantization(clone, {"name": name, "skip": [], **CONFIGS[name]})  # back at stage 0
    clone.load_state_dict(state)
    clone.eval()
    for (k, a), (_, b) in zip(model.named_parameters(), clone.named_parameters()):
        assert torch.equal(a, b), k
    for key, module, pname, q in modules_of(model, handle):
        other = dict(clone.named_modules())[key.rsplit(".", 1)[0]]
        assert torch.equal(getattr(module, pname), getattr(other, pname)), key


LEVEL_LIMITED = ["uniform", "fixed", "inq", "bwn", "twn", "sq_bwn", "sq_twn", "ternary", "ternary3", "pow2"]


@pytest.mark.parametrize("name", LEVEL_LIMITED)
def test_distinct_levels_per_scale_group_at_most_2_to_the_k(name):
    model, handle = quantized_model(name)
    model.eval()
    for key, module, pname, q in modules_of(model, handle):
        w = getattr(module, pname).detach()
        for row in w.reshape(w.shape[0], -1):
            assert row.unique().numel() <= 2**q.bits, key
        if not q.per_channel:
            assert w.unique().numel() <= 2**q.bits, key


# ---------------------------------------------------------------------------------------------
# levels exactly as the papers define them
# ---------------------------------------------------------------------------------------------


def test_bwn_is_sign_times_mean_magnitude_per_filter():
    w = torch.randn(6, 4, 3, 3, generator=gen(3))
    q = BinaryQuantizer().quantize(w)
    alpha = w.reshape(6, -1).abs().mean(dim=1)
    assert torch.equal(q, torch.where(w >= 0, 1.0, -1.0) * alpha[:, None, None, None])


def test_twn_levels_are_minus_alpha_zero_alpha_per_filter():
    w = torch.randn(7, 20, generator=gen(4))
    q = TernaryWeightQuantizer().quantize(w)
    delta = 0.7 * w.abs().mean()
    for wi, qi in zip(w, q):
        keep = wi.abs() > delta
        alpha = qi.abs().max()
        assert set(qi.unique().tolist()) <= {-alpha.item(), 0.0, alpha.item()}
        assert torch.allclose(alpha, wi.abs()[keep].mean())
        assert torch.equal(qi == 0, ~keep)
        assert torch.equal(torch.sign(qi[keep]), torch.sign(wi[keep]))


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_fixed_point_values_are_multiples_of_two_to_minus_f_in_range(bits):
    w = torch.randn(10, 30, generator=gen(5)) * 0.3
    q = FixedPointQuantizer(bits)
    codes, params = q.compute_codes(w)
    f = int(params["frac_bits"])
    assert f == (bits - 1) - math.ceil(math.log2(w.abs().max().item()))
    v = q.quantize(w)
    ints = v * 2.0**f
    assert torch.equal(ints, ints.round())
    assert ints.min() >= -(2 ** (bits - 1)) and ints.max() <= 2 ** (bits - 1) - 1
    assert v.unique().numel() <= 2**bits
    # a given f is used as is
    v4 = FixedPointQuantizer(bits, frac_bits=4).quantize(w) * 16
    assert torch.equal(v4, v4.round()) and v4.abs().max() <= 2 ** (bits - 1)


@pytest.mark.parametrize("bits", [3, 5])
def test_pow2_values_are_signed_powers_of_two_or_zero_in_a_window(bits):
    w = torch.randn(12, 40, generator=gen(6)) * 0.05
    v = PowerOfTwoQuantizer(bits).quantize(w)
    nz = v[v != 0]
    mant, exp = torch.frexp(nz)
    assert torch.equal(mant.abs(), torch.full_like(mant, 0.5))  # +-2^n exactly
    top = round(math.log2(w.abs().max().item()))
    assert exp.max().item() - 1 == top
    assert exp.max() - exp.min() <= 2 ** (bits - 1) - 2  # 2^(b-1)-1 exponents
    assert v.unique().numel() <= 2**bits
    assert torch.equal(torch.sign(nz), torch.sign(w[v != 0]))


def test_pow2_learned_scale_multiplies_powers_of_two_and_is_stored():
    q = PowerOfTwoQuantizer(4, learn_scale=True)
    with torch.no_grad():
        q.scale.fill_(0.75)
    w = torch.randn(5, 9, generator=gen(7))
    v = q.quantize(w) / 0.75
    mant, _ = torch.frexp(v[v != 0])
    assert torch.equal(mant.abs(), torch.full_like(mant, 0.5))
    packed = q.encode(w)
    assert "scale" in packed.tensors
    assert torch.equal(PowerOfTwoQuantizer(4, learn_scale=True).decode(packed), q.quantize(w))


@pytest.mark.parametrize("bits", [2, 3])
def test_hwang_sung_levels_and_l2_optimal_step(bits):
    w = torch.randn(400, generator=gen(8)).reshape(20, 20)
    q = HwangSungQuantizer(bits)
    v = q.quantize(w)
    step = float(q.step)
    levels = 2 ** (bits - 1) - 1
    assert v.unique().numel() <= 2 * levels + 1
    assert torch.allclose(v / step, (v / step).round())
    assert (v / step).abs().max() <= levels

    def err(s):
        return (w - torch.clamp(torch.round(w / s), -levels, levels) * s).pow(2).sum().item()

    brute = min(err(s) for s in torch.linspace(1e-3, w.abs().max().item() / levels, 2000).tolist())
    assert err(step) <= brute * (1 + 1e-3)


def test_inq_levels_follow_the_paper():
    w = torch.randn(8, 30, generator=gen(9)) * 0.2
    bits = 5
    q = INQQuantizer(bits, pretrain_stage=False)
    q.attach(w)
    q.set_stage(3)  # ratio 1.0: everything quantized
    v = q.quantize(w)
    n1 = math.floor(math.log2(4 * w.abs().max().item() / 3))
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    allowed = {0.0} | {s * 2.0**n for n in range(n2, n1 + 1) for s in (-1, 1)}
    assert set(v.unique().tolist()) <= allowed
    # INQ's rule: beta*sgn(w) where (alpha+beta)/2 <= |w| < 3*beta/2, else 0
    for x, y in zip(w.reshape(-1).tolist(), v.reshape(-1).tolist()):
        if abs(x) < 2.0 ** (n2 - 1):
            assert y == 0
        else:
            assert 0.75 * abs(y) <= abs(x) < 1.5 * abs(y) or abs(y) in (2.0**n1, 2.0**n2)


def test_clip_svd_factors_rank_clipping_and_storage():
    w = torch.randn(40, 30, generator=gen(10))
    w[0, 0] = 50.0  # an outlier the dynamic boundary clips
    q = ClipSVDQuantizer(8, svd_rank=4)
    codes, params = q.compute_codes(w)
    assert params["scale_a"].numel() == params["scale_b"].numel() == 4
    assert codes.numel() == 4 * (40 + 30)
    v = q.quantize(w)
    assert torch.linalg.matrix_rank(v).item() <= 4
    dense = ClipSVDQuantizer(8, svd_rank=None, svd_energy=None)
    conv = torch.randn(6, 3, 3, 3, generator=gen(11))
    cv = dense.quantize(conv)  # conv weights: clipped + quantized, no SVD
    bound = clip_boundary(conv.reshape(6, -1), 3.0)
    assert (cv.reshape(6, -1).abs() <= bound[:, None] * (1 + 1e-6)).all()
    assert q.encode(w).nbytes < dense.encode(w).nbytes
    # the outlier saturates at its row's boundary |mean| + 3 std, well below 50
    row_bound = clip_boundary(w[:1], 3.0)[0]
    assert row_bound < 30 and torch.allclose(dense.quantize(w)[0, 0], row_bound, rtol=1e-2)
    # energy mode picks the smallest rank keeping that fraction of sum(s^2)
    s = torch.linalg.svdvals(w)
    q80 = ClipSVDQuantizer(8, svd_energy=0.8)
    r = q80.compute_codes(w)[1]["scale_a"].numel()
    frac = (s[:r] ** 2).sum() / (s**2).sum()
    assert frac >= 0.8 and (s[: r - 1] ** 2).sum() / (s**2).sum() < 0.8


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def test_sq_roulette_single_draw_frequencies_follow_p():
    from scipy.stats import chisquare

    errors = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.8])
    p = selection_probabilities(errors, "linear")
    assert torch.allclose(p, (1 / (errors + 1e-7)) / (1 / (errors + 1e-7)).sum())
    torch.manual_seed(0)
    n = 3000
    counts = torch.stack([roulette_without_replacement(p, 1) for _ in range(n)]).sum(0).double()
    expected = p.double() / p.double().sum() * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_sq_selection_through_the_quantizer_matches_without_replacement_probabilities():
    # rows whose BWN error differs: row i has entries of magnitude 1 and a fraction of tiny ones
    rows = 6
    w = torch.ones(rows, 10)
    for i in range(rows):
        w[i, : i + 1] = 0.05
    q = StochasticQuantizer(1, base="bwn", ratios=[2 / rows, 1.0])
    q.attach(w)
    q.set_stage(0)
    q.train()
    codes, params = q.base_q.compute_codes(w)
    p = selection_probabilities(q.row_errors(w, q.base_q.dequantize(codes, params, w)), "linear").double()
    # exact inclusion probability of sequential roulette drawing 2 without replacement
    incl = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(rows) if j != i) for i in range(rows)])
    torch.manual_seed(1)
    n = 1500
    counts = torch.zeros(rows, dtype=torch.float64)
    for _ in range(n):
        q(w)
        assert int(q.selected.sum()) == 2
        counts += q.selected.double()
    assert torch.allclose(counts / n, incl, atol=0.05)
    # eval mode keeps the last training selection; unselected rows stay float
    q.eval()
    sel = q.selected.clone()
    out = q(w)
    assert torch.equal(q.selected, sel)
    assert torch.equal(out[~sel], w[~sel])
    assert torch.equal(out[sel], q.base_q.quantize(w)[sel])


def test_sq_ratio_stages_and_partial_export_honest():
    w = torch.randn(16, 12, generator=gen(12))
    q = StochasticQuantizer(2)
    q.attach(w)
    assert [s["ratio"] for s in q.stage_plan()] == [0.5, 0.75, 0.875, 1.0]
    q.train()
    for stage, expect in enumerate([8, 12, 14, 16]):
        q.set_stage(stage)
        q(w)
        assert int(q.selected.sum()) == expect
    q.set_stage(1)
    q(w)
    packed = q.encode(w)
    assert packed.numel == 12 * 12  # codes only for the quantized rows
    assert packed.tensors["float_rows"].shape == (4, 12)  # the float rows in FP32
    q.eval()
    assert torch.equal(StochasticQuantizer(2).decode(packed), q(w))


def test_inq_frozen_partitions_never_change():
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    handle = apply_quantization(layer, {"name": "inq", "_target_": "qexp.quant.pow2.INQQuantizer", "bits": 4,
                                        "skip": []})
    q = handle.quantizers["weight"]
    assert [s["ratio"] for s in handle.stages] == [0.0, 0.5, 0.75, 0.875, 1.0]
    x, y = torch.randn(32, 12), torch.randn(32, 10)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    seen_mask = torch.zeros(10, 12, dtype=torch.bool)
    seen_vals = torch.zeros(10, 12)
    for stage, stage_cfg in enumerate(handle.stages):
        handle.set_stage(stage)
        for _ in range(6):
            opt.zero_grad()
            (layer(x) - y).pow(2).mean().backward()
            opt.step()
            w = layer.weight.detach()
            # entries frozen at an earlier step keep their value exactly
            assert torch.equal(w[seen_mask], seen_vals[seen_mask])
            assert torch.equal(q.frozen | seen_mask, q.frozen)  # the mask only grows
            seen_vals = torch.where(q.frozen, w, seen_vals)
            seen_mask = q.frozen.clone()
        assert int(q.frozen.sum()) == round(stage_cfg["ratio"] * 120)
        if stage == 0:
            assert torch.equal(layer.weight, original_weight(layer, "weight"))  # float pre-training
    w = layer.weight.detach()
    mant, _ = torch.frexp(w[w != 0])
    assert torch.equal(mant.abs(), torch.full_like(mant, 0.5))  # all powers of two at the end
    assert "float_values" not in q.encode(original_weight(layer, "weight")).tensors


def test_inq_freezes_the_largest_magnitudes_first():
    w = torch.randn(4, 25, generator=gen(13))
    q = INQQuantizer(5, pretrain_stage=False)
    q.attach(w)
    q.set_stage(0)
    q.quantize(w)
    assert int(q.frozen.sum()) == 50
    assert w.abs()[q.frozen].min() >= w.abs()[~q.frozen].max()


def test_ternary_stage_0_float_and_stage_1_ternary():
    torch.manual_seed(0)
    layer = nn.Linear(20, 8)
    handle = apply_quantization(layer, {"name": "ternary", "_target_": "qexp.quant.ternary.HwangSungQuantizer",
                                        "bits": 2, "skip": []})
    assert handle.stages == [{"phase": "float"}, {"phase": "retrain"}]
    assert torch.equal(layer.weight, original_weight(layer, "weight"))
    handle.set_stage(1)
    w = layer.weight.detach()
    assert len(w.unique()) <= 3
    delta = float(handle.quantizers["weight"].step)
    assert set(w.unique().tolist()) <= {-delta, 0.0, delta}
    # the step is kept during retraining (refit_step=false)
    with torch.no_grad():
        original_weight(layer, "weight").mul_(1.5)
    layer.weight
    assert float(handle.quantizers["weight"].step) == delta


def test_trainer_splits_epochs_evenly_over_stages():
    from qexp.engine.trainer import stage_epochs

    _, handle = quantized_model("ternary", stage="first")
    assert stage_epochs(handle, 10) == [5, 5]
    _, handle = quantized_model("inq", stage="first")
    assert stage_epochs(handle, 10) == [2, 2, 2, 2, 2]


def test_stage_epochs_from_the_command_line():
    """quant.stage_epochs is a key of every staged quantizer: an integer gives each stage that many
    epochs (dong2017's recipe: every SQ ratio stage a full schedule), a list sets them one by one."""
    from qexp.config import compose
    from qexp.engine.trainer import stage_epochs

    for override, want in (("quant.stage_epochs=30", [30] * 4), ("quant.stage_epochs=[1,2,3,4]", [1, 2, 3, 4]),
                           ("quant.stage_epochs=null", [2, 2, 2, 3])):
        cfg = compose(["quant=sq", "bits=2", override])
        handle = apply_quantization(small_model(), cfg.quant)
        assert stage_epochs(handle, 9) == want, override


# ---------------------------------------------------------------------------------------------
# memory (measured from the packed export) and argument checks
# ---------------------------------------------------------------------------------------------


def _mlp_reduction(cfg):
    from qexp.models.mlp import mlp
    from qexp.report.memory import measure_memory

    torch.manual_seed(0)
    model = mlp((8, 8), 10)
    handle = apply_quantization(model, {"skip": [], **cfg})
    handle.set_stage(len(handle.stages) - 1)
    model.eval()
    model(torch.zeros(1, 64))
    return measure_memory(model, handle)


def test_memory_reduction_on_the_mlp():
    red = {name: _mlp_reduction(cfg)["reduction"] for name, cfg in {
        "bwn": CONFIGS["bwn"], "twn": CONFIGS["twn"], "sq_bwn": CONFIGS["sq_bwn"], "sq_twn": CONFIGS["sq_twn"],
        "u2": {**CONFIGS["uniform"], "bits": 2}, "u4": CONFIGS["uniform"],
        "u8": {**CONFIGS["uniform"], "bits": 8}, "fixed4": {**CONFIGS["fixed"], "bits": 4},
        "pow2_3": CONFIGS["pow2"], "ternary2": CONFIGS["ternary"],
    }.items()}
    assert red["bwn"] >= 20 and red["sq_bwn"] >= 20
    assert min(red["twn"], red["sq_twn"], red["u2"], red["ternary2"]) >= 12
    assert red["u4"] >= 7 and red["fixed4"] >= 7
    assert red["u8"] >= 3.7
    eight = _mlp_reduction({**CONFIGS["uniform"], "bits": 8})
    svd = _mlp_reduction({"_target_": "qexp.quant.clip_svd.ClipSVDQuantizer", "bits": 8, "svd_rank": 16})
    assert svd["packed_bytes"] < eight["packed_bytes"]
    # the saving is exactly what the factors store: codes r*(out+in) instead of out*in per FC layer
    for key, layer in svd["quantized_layers"].items():
        dense = eight["quantized_layers"][key]
        assert layer["codes_bytes"] <= dense["codes_bytes"]
    first = svd["quantized_layers"]["1.weight"]
    assert first["codes_bytes"] == 16 * (256 + 64) and first["side_bytes"] == 2 * 16 * 4


@pytest.mark.parametrize("overrides, fragment", [
    (["quant=pow2", "bits=9"], "quant.bits=9"),
    (["quant=fixed", "bits=1"], "quant.bits=1"),
    (["quant=inq", "bits=1"], "quant.bits=1"),
    (["quant=inq", "bits=5", "quant.ratios=[0.5,0.75]"], "must end with 1.0"),
    (["quant=sq", "bits=2", "quant.base=bwn"], "quant.base=bwn"),
    (["quant=sq", "bits=2", "quant.prob=cubic"], "quant.prob='cubic'"),
    (["quant=sq", "bits=2", "quant.ratios=[0.5,1.5]"], "quant.ratios"),
    (["quant=ternary", "bits=1"], "quant.bits=1"),
    (["quant=clip_svd", "bits=16"], "quant.bits=16"),
    (["quant=clip_svd", "bits=8", "quant.svd_energy=2.0"], "quant.svd_energy=2.0"),
    (["quant=clip_svd", "bits=8", "quant.clip_sigma=-1"], "quant.clip_sigma=-1"),
    (["quant=twn", "quant.threshold=5"], "quant.threshold=5"),
    (["quant=bwn", "quant.bits=2"], "quant.bits=2"),
    (["quant=pow2", "bits=3", "quant.rounding=ceil"], "quant.rounding='ceil'"),
    (["quant=fixed", "bits=5", "quant.frac_bits=100"], "quant.frac_bits=100"),
    (["quant=sq", "bits=2", "quant.stage_epochs=[5,5]"], "quant.stage_epochs=[5, 5]"),
    (["quant=ternary", "quant.stage_epochs=0"], "quant.stage_epochs=0"),
])
def test_bad_quantizer_arguments_are_one_line_errors(overrides, fragment):
    from qexp.config import check_overrides

    with pytest.raises(QexpError) as info:
        check_overrides(overrides)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg and ("allowed" in msg or "use" in msg or "must" in msg)


def test_sq_auto_base_follows_bits():
    assert StochasticQuantizer(1).base_q.kind == "bwn"
    assert StochasticQuantizer(2).base_q.kind == "twn"
    assert isinstance(StochasticQuantizer(4).base_q, UniformQuantizer)


def test_power_of_two_is_exact_over_the_float32_exponent_range():
    from qexp.quant.pow2 import power_of_two

    e = torch.arange(-149, 128, dtype=torch.float32)
    for reps in (1, 37):  # short tensors take the scalar path, long ones the vectorised one
        ee = e.repeat(reps)
        assert torch.equal(power_of_two(ee), torch.ldexp(torch.ones_like(ee), ee))
