"""Distribution summaries and drift statistics of reward scores: small pure functions.

A version's *baseline* is its first ``baseline_outputs`` outputs (by generation time, see
``clinalign.monitor.store.freeze_baselines``); a window's scores are compared with the
baseline's by the population stability index and the two-sample Kolmogorov-Smirnov
statistic. Inputs are plain lists of floats; nothing here touches the database.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

# Stand-in for the share of an empty bin, so that ln(a/e) stays finite (the usual choice in
# credit scoring; Yurdakul 2018 discusses its effect).
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Summary:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) of already sorted values by linear interpolation between
    order statistics: Hyndman & Fan (1996) definition 7, numpy's default and
    ``statistics.quantiles(method="inclusive")``."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def summarise(values: Sequence[float]) -> Summary | None:
    """Count, mean and 50th/90th/99th percentiles; None for no values."""
    if not values:
        return None
    s = sorted(values)
    return Summary(
        count=len(s),
        mean=math.fsum(s) / len(s),
        p50=quantile(s, 0.50),
        p90=quantile(s, 0.90),
        p99=quantile(s, 0.99),
    )


def bin_edges(baseline: Sequence[float], bins: int) -> list[float]:
    """Interior edges of ``bins`` equal-frequency bins of the baseline: its quantiles at
    k/bins for k = 1..bins-1, ties merged (a baseline with many equal scores gets fewer
    bins rather than empty ones)."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    s = sorted(baseline)
    edges: list[float] = []
    for k in range(1, bins):
        edge = quantile(s, k / bins)
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return edges


def bin_shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """Share of values in each bin (-inf, e0], (e0, e1], ..., (e_last, +inf)."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect_left(edges, v)] += 1
    return [c / len(values) for c in counts]


def psi(
    baseline: Sequence[float],
    current: Sequence[float],
    bins: int = 10,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``current`` against ``baseline``:

        PSI = Σ_i (a_i - e_i) · ln(a_i / e_i)

    where e_i and a_i are the shares of the baseline and of the current values in bin i,
    the bins being the baseline's equal-frequency bins (``bin_edges``), and a share of 0
    is replaced by ``epsilon`` (not renormalised). It is the symmetrised Kullback-Leibler
    divergence of the binned distributions (Siddiqi 2006, *Credit Risk Scorecards*, ch. 8;
    Yurdakul 2018, "Statistical properties of the population stability index"). Rule of
    thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    if not baseline or not current:
        raise ValueError("psi needs values in both samples")
    edges = bin_edges(baseline, bins)
    expected = bin_shares(baseline, edges)
    actual = bin_shares(current, edges)
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, epsilon), max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic D = sup_x |F_a(x) - F_b(x)| of the two
    empirical distribution functions (Massey 1951, JASA 46(253); the statistic of
    ``scipy.stats.ks_2samp``). Computed by one merge walk over both sorted samples,
    evaluating the difference after every distinct value: O((n + m) log(n + m))."""
    if not a or not b:
        raise ValueError("ks_statistic needs values in both samples")
    sa, sb = sorted(a), sorted(b)
    n, m = len(sa), len(sb)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        x = min(sa[i], sb[j])
        while i < n and sa[i] <= x:
            i += 1
        while j < m and sb[j] <= x:
            j += 1
        d = max(d, abs(i / n - j / m))
    return d
