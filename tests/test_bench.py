"""The packed export is as small as the bit-width allows (a size check, not a timing)."""

from qexp.bench import packed_vs_limit
from qexp.models.mlp import mlp


def test_packed_bytes_within_bit_count_limit():
    ratios = packed_vs_limit(lambda: mlp((1, 8, 8), 10))
    assert set(ratios) >= {"uniform4", "bwn", "twn", "sq", "pow2", "ternary", "fixed5", "inq5", "clip_svd8"}
    for name, r in ratios.items():
        assert r <= 1.02, f"{name}: packed bytes are {r:.3f}x the bit-count limit"


def test_paired_ratio_is_the_median_of_per_round_ratios():
    """Rounds are paired: a slow round hits both candidates, so it does not move the ratio."""
    from qexp.bench import paired_ratio

    base = [1.0, 1.0, 5.0, 1.0, 1.0]  # round 3: the machine was busy
    cand = [1.1, 1.2, 5.5, 1.1, 1.0]
    r = paired_ratio({"fp32": base, "q": cand}, "q", "fp32")
    assert abs(r["ratio"] - 1.1) < 1e-9
    assert r["q1"] <= r["ratio"] <= r["q3"]


def test_targets_are_checked_against_the_issue_bounds():
    from qexp.bench import check_targets

    result = {"resnet20": {"uniform4": {"step_ratio_vs_fp32": 1.02, "step_ratio_vs_brevitas": 0.99},
                           "sq": {"step_ratio_vs_fp32": 1.05}},
              "packed_vs_limit": {"bwn": 1.0, "twn": 1.03}}
    met = {c["what"]: c["met"] for c in check_targets(result)}
    assert met == {"resnet20 uniform4 step_ratio_vs_fp32": True, "resnet20 sq step_ratio_vs_fp32": True,
                   "resnet20 uniform4 step_ratio_vs_brevitas": False, "packed/limit bwn": True,
                   "packed/limit twn": False}
