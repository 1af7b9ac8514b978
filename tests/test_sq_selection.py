"""SQ's two roulettes (the paper's and the authors' code's) against their exact inclusion
probabilities, TWN's centred threshold, and the one-line errors of the new keys."""

import itertools
import math

import pytest
import torch

from qexp.errors import QexpError
from qexp.quant.binary import TernaryWeightQuantizer
from qexp.quant.sq import (
    StochasticQuantizer,
    draw_selection,
    quantized_count,
    reference_probabilities,
    selection_probabilities,
)

ERRORS = [0.05, 0.1, 0.2, 0.4, 0.8]
# the issue's numbers for r = 0.4 (m = 5: both rules quantize 2 filters)
PAPER = [0.825, 0.598, 0.325, 0.168, 0.085]
REFERENCE = [0.816, 0.645, 0.357, 0.143, 0.040]


def inclusion(p: list[float], n: int) -> list[float]:
    """Exact P(i is among n draws) of a sequential roulette without replacement, by summing
    over every ordered draw: P(i1, .., in) = prod_k p_ik / (1 - p_i1 - .. - p_i(k-1))."""
    out = [0.0] * len(p)
    for seq in itertools.permutations(range(len(p)), n):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= p[i] / left
            left -= p[i]
        for i in seq:
            out[i] += prob
    return out


def exact_quantized(errors: torch.Tensor, ratio: float, selection: str) -> list[float]:
    m = errors.numel()
    n = quantized_count(m, ratio, selection)
    if selection == "paper":
        return inclusion(selection_probabilities(errors).double().tolist(), n)
    return [1 - v for v in inclusion(reference_probabilities(errors).double().tolist(), m - n)]


def within_sampling_error(freq: torch.Tensor, exact: list[float], draws: int, z: float = 4.5) -> bool:
    se = [math.sqrt(max(p * (1 - p), 1e-12) / draws) for p in exact]
    return all(abs(f - p) <= z * s for f, p, s in zip(freq.tolist(), exact, se))


def test_exact_probabilities_are_the_issues_numbers():
    e = torch.tensor(ERRORS)
    assert exact_quantized(e, 0.4, "paper") == pytest.approx(PAPER, abs=6e-4)
    assert exact_quantized(e, 0.4, "reference") == pytest.approx(REFERENCE, abs=6e-4)
    assert sum(PAPER) == pytest.approx(2, abs=2e-3)  # two filters are quantized either way


def test_counts_by_hand():
    assert quantized_count(5, 0.4, "paper") == 2 and quantized_count(5, 0.4, "reference") == 2
    # round(2.25) = 2 filters quantized (paper); 5 - floor(2.75) = 3 (the authors' code)
    assert quantized_count(5, 0.45, "paper") == 2 and quantized_count(5, 0.45, "reference") == 3
    assert quantized_count(10, 0.7, "reference") == 7  # (1 - 0.7) * 10 = 2.9999999999999996
    assert quantized_count(8, 1.0, "reference") == 8 and quantized_count(8, 1.0, "paper") == 8


@pytest.mark.parametrize("selection, other", [("paper", "reference"), ("reference", "paper")])
def test_measured_inclusion_frequencies_match_the_exact_probabilities(selection, other):
    torch.manual_seed(0)
    e = torch.tensor(ERRORS)
    draws = 8000
    counts = torch.zeros(5)
    for _ in range(draws):
        mask = draw_selection(e, 0.4, selection)
        assert int(mask.sum()) == 2
        counts += mask
    freq = counts / draws
    assert within_sampling_error(freq, exact_quantized(e, 0.4, selection), draws)
    # the test can tell the two rules apart: the other rule's probabilities are far outside
    assert not within_sampling_error(freq, exact_quantized(e, 0.4, other), draws)


@pytest.mark.parametrize("selection", ["paper", "reference"])
def test_the_quantizer_draws_with_its_selection_rule(selection):
    torch.manual_seed(1)
    q = StochasticQuantizer(1, ratios=[0.45, 1.0], selection=selection)
    w = torch.randn(5, 12) * torch.tensor([1.0, 0.2, 3.0, 0.5, 1.5])[:, None]
    w[1, :6] = 0.0  # spread the rows' BWN errors apart
    w[3, ::2] *= 8.0
    q.attach(w)
    q.set_stage(0)
    rows = q.layout.rows(w)
    qrows = q.base_q.quantize(rows)
    exact = exact_quantized(q.row_errors(rows, qrows), 0.45, selection)
    draws = 3000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts += q.draw(rows, qrows)
    assert int(counts.sum()) == draws * quantized_count(5, 0.45, selection)
    assert within_sampling_error(counts / draws, exact, draws)


def test_twn_centred_threshold_by_hand():
    w = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # TWN paper: Delta = 0.7 * mean|W| = 2.1 -> keep 3, 6 (alpha 4.5)
    assert torch.equal(TernaryWeightQuantizer(per_channel=False).quantize(w), torch.tensor([[0.0, 0.0, 4.5, 4.5]]))
    # authors' code: Delta = 0.7 * mean|W - 3| = 0.7 * 1.5 = 1.05 -> keep 2, 3, 6 (alpha 11/3)
    got = TernaryWeightQuantizer(per_channel=False, center=True).quantize(w)
    assert torch.allclose(got, torch.tensor([[0.0, 11 / 3, 11 / 3, 11 / 3]]))
    sq = StochasticQuantizer(2, ratios=[1.0], center=True)
    assert sq.base_q.center and torch.equal(sq.base_q.quantize(w), got)
    with pytest.raises(QexpError, match="quant.center=true"):
        StochasticQuantizer(1, center=True)


@pytest.mark.parametrize("overrides, fragment", [
    (["quant=sq", "bits=2", "quant.selection=foo"], "quant.selection='foo'"),
    (["quant=twn", "quant.center=maybe"], "quant.center='maybe'"),
    (["quant=sq", "bits=2", "quant.center=maybe"], "quant.center='maybe'"),
    (["quant=sq", "bits=2", "quant.selection=reference", "quant.prob=softmax"], "quant.prob=softmax"),
    (["quant=pow2", "bits=2"], "smallest useful width is bits=3"),
])
def test_bad_values_are_one_line_errors(overrides, fragment):
    from qexp.config import check_overrides

    with pytest.raises(QexpError) as info:
        check_overrides(overrides)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_cli_refuses_a_bad_selection_before_any_run_folder_exists(tmp_path):
    from tests.conftest import run_cli

    run_dir = tmp_path / "run"
    proc = run_cli("train", "quant=sq", "bits=2", "quant.selection=foo", f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: quant.selection='foo' is not valid for quant=sq; "
                                                "allowed: paper, reference"]
    assert not run_dir.exists()
