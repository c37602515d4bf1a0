"""Exact values of the monitor's drift statistics, against hand computation and plain
reference implementations."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from clinalign.monitor import drift


def test_quantile_interpolates_between_order_statistics() -> None:
    assert drift.quantile([1, 2, 3, 4], 0.9) == pytest.approx(3.7)  # h = 2.7
    assert drift.quantile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert drift.quantile([5.0], 0.99) == 5.0
    assert drift.quantile([1, 2, 3, 4], 0.0) == 1 and drift.quantile([1, 2, 3, 4], 1.0) == 4
    with pytest.raises(ValueError, match="no values"):
        drift.quantile([], 0.5)


def test_quantile_agrees_with_statistics_inclusive() -> None:
    rng = random.Random(0)
    values = sorted(rng.gauss(0, 1) for _ in range(257))
    reference = statistics.quantiles(values, n=100, method="inclusive")
    for k in (1, 10, 50, 90, 99):
        assert drift.quantile(values, k / 100) == pytest.approx(reference[k - 1])


def test_summarise() -> None:
    s = drift.summarise([4.0, 1.0, 3.0, 2.0])
    assert s is not None
    assert (s.count, s.mean, s.p50, s.p90) == (4, 2.5, 2.5, pytest.approx(3.7))
    assert s.p99 == pytest.approx(3.97)
    assert drift.summarise([]) is None


def test_bin_edges_are_baseline_quantiles_with_ties_merged() -> None:
    assert drift.bin_edges([1, 2, 3, 4, 5], 4) == [2, 3, 4]
    assert drift.bin_edges([0, 0, 0, 0, 1], 4) == [0]
    with pytest.raises(ValueError, match="at least 2"):
        drift.bin_edges([1, 2], 1)


def test_bin_shares_uses_right_closed_bins() -> None:
    assert drift.bin_shares([1, 2, 2.5, 5], [2, 3, 4]) == [0.5, 0.25, 0.0, 0.25]


def test_psi_hand_computed() -> None:
    baseline = [float(x) for x in range(1, 11)]  # median edge 5.5: shares 0.5 / 0.5
    # current shares 0.75 / 0.25: 0.25 ln 1.5 + (-0.25) ln 0.5 = 0.25 ln 3
    assert drift.psi(baseline, [1, 2, 3, 8], bins=2) == pytest.approx(0.25 * math.log(3))
    assert drift.psi(baseline, [1, 2, 3, 8], bins=2) == pytest.approx(0.274653, abs=1e-6)
    assert drift.psi(baseline, baseline, bins=10) == 0.0


def test_psi_empty_bin_uses_epsilon() -> None:
    baseline = [float(x) for x in range(1, 11)]
    # shares 1 / 0 -> 1 / 1e-4: 0.5 ln 2 + (1e-4 - 0.5) ln(1e-4 / 0.5)
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert drift.psi(baseline, [1, 2], bins=2) == pytest.approx(expected)
    assert expected == pytest.approx(4.604319, abs=1e-6)
    with pytest.raises(ValueError, match="both samples"):
        drift.psi(baseline, [])


def _ks_reference(a: list[float], b: list[float]) -> float:
    """sup |F_a - F_b| evaluated at every sample point, O((n + m)^2)."""
    return max(
        abs(sum(v <= x for v in a) / len(a) - sum(v <= x for v in b) / len(b)) for x in a + b
    )


def test_ks_hand_computed() -> None:
    # x=1: 1/3 - 0; x=2: 2/3 - 1/4; x=3: 1 - 1/2 = 1/2; x=4: 1 - 3/4
    assert drift.ks_statistic([1, 2, 3], [2, 3, 4, 5]) == pytest.approx(0.5)
    # ties across samples: x=1: 2/3 - 1/3; x=2: 1 - 1
    assert drift.ks_statistic([1, 1, 2], [1, 2, 2]) == pytest.approx(1 / 3)
    assert drift.ks_statistic([1, 2], [3, 4]) == 1.0
    assert drift.ks_statistic([0.5, 0.1, 0.9], [0.9, 0.1, 0.5]) == 0.0
    with pytest.raises(ValueError, match="both samples"):
        drift.ks_statistic([], [1.0])


def test_ks_agrees_with_reference_on_random_samples() -> None:
    rng = random.Random(1)
    for _ in range(20):
        a = [round(rng.gauss(0, 1), 1) for _ in range(rng.randint(1, 40))]
        b = [round(rng.gauss(0.3, 1.2), 1) for _ in range(rng.randint(1, 40))]
        assert drift.ks_statistic(a, b) == pytest.approx(_ks_reference(a, b))
