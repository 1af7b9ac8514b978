"""Property-based tests of every quantizer on odd tensors (hypothesis).

For each ``configs/quant/*.yaml`` (fp32 aside), in its final stage: the output is finite and
keeps the shape, ``decode(encode(w))`` equals the training-time value bit for bit, codes fit
the bits, and a NaN weight is a clear error.  Odd cases: all-zero, constant, tiny, huge,
1-element, non-contiguous, an all-zero channel.
"""

from functools import partial

import numpy as np
import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qexp.config import config_dir, group_options
from qexp.errors import QexpError
from qexp.quant.binary import BinaryQuantizer, TernaryWeightQuantizer
from qexp.quant.pow2 import PowerOfTwoQuantizer
from qexp.quant.uniform import UniformQuantizer

BITS = {"bwn": 1, "twn": 2, "sq": 2, "ternary": 2, "pow2": 3, "fixed": 5, "inq": 5, "clip_svd": 8, "uniform": 4}
KINDS = [k for k in group_options("quant") if k != "fp32"]


def make_quantizer(kind: str):
    from hydra.utils import get_class

    cfg = yaml.safe_load((config_dir() / "quant" / f"{kind}.yaml").read_text())
    for key in ("name", "skip", "stage_epochs", "act_bits", "layer_bits"):
        cfg.pop(key, None)
    cls = get_class(cfg.pop("_target_"))
    if isinstance(cfg.get("bits"), str):
        cfg["bits"] = BITS.get(kind, 4)
    return cls(**cfg)


def final_stage(q, w: torch.Tensor):
    q.attach(w)
    plan = q.stage_plan()
    for i in range(len(plan)):
        q.set_stage(i)
        q.train()
        q(w)  # a forward per stage, as training would do
    return q


shapes = st.tuples(st.integers(1, 6), st.integers(1, 9))
weights = hnp.arrays(np.float32, shapes, elements=st.floats(-1e4, 1e4, width=32, allow_nan=False,
                                                            allow_subnormal=True))

ODD = {
    "zeros": np.zeros((4, 5), np.float32),
    "constant": np.full((3, 4), 0.37, np.float32),
    "tiny": np.full((3, 4), 1e-30, np.float32) * np.sign(np.arange(12).reshape(3, 4) - 5.5).astype(np.float32),
    "huge": (np.arange(12, dtype=np.float32).reshape(3, 4) - 6) * np.float32(1e30),
    "one": np.array([[0.5]], np.float32),
    "zero_row": np.vstack([np.zeros((1, 6), np.float32), np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)]),
}


def check(kind: str, w: torch.Tensor) -> None:
    torch.manual_seed(0)
    q = final_stage(make_quantizer(kind), w)
    q.eval()
    out = q.quantize(w)
    assert out.shape == w.shape
    assert torch.isfinite(out).all(), f"{kind}: non-finite output"
    packed = q.encode(w)
    assert torch.equal(q.decode(packed), out), f"{kind}: decode(encode(w)) != quantize(w)"
    assert len(packed.codes) <= (packed.numel * packed.bits + 7) // 8


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_tensors(kind, case):
    check(kind, torch.from_numpy(ODD[case].copy()))


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous(kind):
    w = torch.linspace(-1, 1, 24).reshape(4, 6).t()
    assert not w.is_contiguous()
    check(kind, w)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(w=weights)
@example(w=np.array([[1.0, -1.0]], np.float32))
def test_random_tensors(kind, w):
    check(kind, torch.from_numpy(w))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_is_a_clear_error(kind):
    w = torch.randn(4, 5)
    w[1, 2] = float("nan")
    q = make_quantizer(kind)
    with pytest.raises(QexpError, match="(?i)nan|non-finite"):
        q.attach(w)
        q.encode(w)


FAST_PATHS = {
    **{f"uniform{b}_{'sym' if s else 'asym'}_{'pc' if pc else 'pt'}": partial(UniformQuantizer, b, pc, s)
       for b in (1, 2, 3, 8) for s in (True, False) for pc in (True, False)},
    "bwn_pt": partial(BinaryQuantizer, 1, per_channel=False),
    "twn_pt": partial(TernaryWeightQuantizer, 2, per_channel=False),
    **{f"pow2_{b}_{r}_{'pc' if pc else 'pt'}": partial(PowerOfTwoQuantizer, b, pc, rounding=r)
       for b in (3, 4, 6) for r in ("log", "linear") for pc in (True, False)},
}


@pytest.mark.parametrize("name", sorted(FAST_PATHS))
@settings(max_examples=10, deadline=None)
@given(w=weights)
@example(w=ODD["zero_row"])
@example(w=ODD["tiny"])
@example(w=ODD["huge"])
@example(w=np.array([[-0.0, 1.1754944e-38]], np.float32))  # a window at the bottom of float32
def test_training_fast_path_equals_the_code_path(name, w):
    """``quantize`` (training's fused float path) gives exactly dequantize(compute_codes(w))."""
    w = torch.from_numpy(w)
    q = FAST_PATHS[name]()
    codes, params = q.compute_codes(w)
    assert torch.equal(q.quantize(w), q.dequantize(codes, params, w)), name
