"""The packed export is as small as the bit-width allows (a size check, not a timing)."""

from qexp.bench import packed_vs_limit
from qexp.models.mlp import mlp


def test_packed_bytes_within_bit_count_limit():
    ratios = packed_vs_limit(lambda: mlp((1, 8, 8), 10))
    assert set(ratios) >= {"uniform4", "bwn", "twn", "sq", "pow2", "ternary", "fixed5", "inq5", "clip_svd8"}
    for name, r in ratios.items():
        assert r <= 1.02, f"{name}: packed bytes are {r:.3f}x the bit-count limit"
