"""Verdicts from statistics: a paired difference over seeds with a 95 % t-interval.

A paper's claim "A beats B" is checked on runs that share their seeds: d_s = A_s − B_s for
every seed s present on both sides, then n, the mean and standard deviation of d, and the
interval mean ± t(0.975, n−1)·std/√n.  The verdict follows the interval, never the point
estimate:

- ``greater`` (the paper says A − B > 0) / ``less`` (A − B < 0): "reproduced" when the interval
  excludes zero on the paper's side, "not reproduced" when it excludes zero on the other side,
  "inconclusive" when it contains zero;
- ``equal`` (the paper says A ≈ B within ``margin``): "reproduced" when the whole interval lies
  inside ±margin, "not reproduced" when it lies wholly outside, "inconclusive" otherwise.

Fewer than two pairs give no interval and the verdict "inconclusive".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Mapping

from scipy import stats as _scipy_stats

DIRECTIONS = ("greater", "less", "equal")
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Paired:
    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    verdict: str
    seeds: list = field(default_factory=list)
    diffs: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the two-sided t-interval of the mean (n ≥ 2)."""
    n = len(values)
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def verdict(low: float | None, high: float | None, direction: str, margin: float = 0.0) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; allowed: {', '.join(DIRECTIONS)}")
    if low is None or high is None:
        return INCONCLUSIVE
    if direction == "equal":
        if -margin <= low and high <= margin:
            return REPRODUCED
        return NOT_REPRODUCED if high < -margin or low > margin else INCONCLUSIVE
    sign = 1.0 if direction == "greater" else -1.0
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0:
        return REPRODUCED
    return NOT_REPRODUCED if hi < 0 else INCONCLUSIVE


def paired_difference(a: Mapping, b: Mapping, direction: str = "greater", margin: float = 0.0,
                      confidence: float = 0.95) -> Paired:
    """``a`` and ``b`` map seed -> value; seeds on one side only are left out (no pairing)."""
    seeds = sorted(set(a) & set(b), key=str)
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    diffs_ok = [d for d in diffs if math.isfinite(d)]
    if len(diffs_ok) != len(diffs):
        seeds = [s for s, d in zip(seeds, diffs) if math.isfinite(d)]
        diffs = diffs_ok
    if len(diffs) < 2:
        mean = diffs[0] if diffs else None
        return Paired(len(diffs), mean, None, None, None, verdict(None, None, direction, margin), seeds, diffs)
    mean, std, low, high = t_interval(diffs, confidence)
    return Paired(len(diffs), mean, std, low, high, verdict(low, high, direction, margin), seeds, diffs)
