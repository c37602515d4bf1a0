"""The comparison statistics the gate and the demo's evaluation share (common/stats.py),
on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from clinalign.common import stats


def test_mean_interval_and_win_rate() -> None:
    same = stats.mean_interval([0.5] * 10)
    assert (same.estimate, same.low, same.high, same.n) == (0.5, 0.5, 0.5, 10)
    rate = stats.win_rate(stats.points([2, 1, 1, 3], [1, 1, 2, 0]))
    assert rate.estimate == pytest.approx(0.625)  # two wins, a tie, a loss
    assert 0.0 <= rate.low <= rate.estimate <= rate.high <= 1.0
    # the interval narrows as the prompts grow in number: about 1/sqrt(n) near 0.5
    wide = stats.win_rate([1.0, 0.0] * 16)
    narrow = stats.win_rate([1.0, 0.0] * 256)
    assert narrow.high - narrow.low < (wide.high - wide.low) / 3
    assert narrow.high - narrow.low == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(512), rel=0.2)
    assert stats.win_rate([1.0, 0.0] * 8, seed=3) == stats.win_rate([1.0, 0.0] * 8, seed=3)
    with pytest.raises(ValueError, match="at least one prompt"):
        stats.mean_interval([])
    with pytest.raises(ValueError, match="as many"):
        stats.points([1.0], [1.0, 2.0])


def test_non_inferiority_is_paired_and_skips_what_does_not_apply() -> None:
    # 40 prompts: the candidate fails 2 the baseline passes; a criterion that applies to
    # neither answer of the last prompt is left out
    candidate = [0.0, 0.0] + [1.0] * 38 + [None]
    baseline = [1.0] * 40 + [1.0]
    verdict = stats.non_inferiority(candidate, baseline, margin=0.1)
    assert verdict is not None
    assert verdict.difference.n == 40
    assert verdict.difference.estimate == pytest.approx(-0.05)
    assert verdict.candidate == pytest.approx(0.95) and verdict.baseline == 1.0
    assert verdict.passed == (verdict.difference.low > -0.1)
    assert "difference -0.050" in verdict.describe()
    # ten failures in forty: beyond any margin of 0.1
    worse = stats.non_inferiority([0.0] * 10 + [1.0] * 30, [1.0] * 40, margin=0.1)
    assert worse is not None and not worse.passed
    assert "NOT non-inferior within the margin 0.1" in worse.describe()
    # the same scores: a difference of exactly zero, whatever the margin
    same = stats.non_inferiority([1.0, 0.0] * 10, [1.0, 0.0] * 10, margin=0.0)
    assert same is not None and same.difference.low == 0.0 and not same.passed
    assert stats.non_inferiority([None], [1.0], margin=0.1) is None
    with pytest.raises(ValueError, match="must not be negative"):
        stats.non_inferiority([1.0], [1.0], margin=-0.1)


def test_the_length_controlled_win_rate_removes_a_length_advantage() -> None:
    # the candidate is longer in three comparisons of four and wins 90 % of those, against
    # 40 % of the others: its raw win rate, 0.775, is partly length. The logistic model
    # through the two groups (feature tanh(±40/34.6) = ±0.82) has the intercept
    # (logit 0.9 + logit 0.4) / 2 = 0.896, a win rate of 0.710 at equal length.
    outcomes, deltas = [], []
    for i in range(400):
        longer = i % 4 != 0
        wins = (i // 4) % 10 != 0 if longer else (i // 4) % 5 < 2
        outcomes.append([1.0 if wins else 0.0])
        deltas.append([40.0 if longer else -40.0])
    rate = stats.length_controlled_win_rate(outcomes, deltas)
    raw = sum(o[0] for o in outcomes) / len(outcomes)
    assert raw == pytest.approx(0.775)
    assert rate.estimate == pytest.approx(0.710, abs=0.002)
    assert rate.low < rate.estimate < rate.high < raw
    # where length does not predict the outcome, the rate is the raw win rate
    flat = stats.length_controlled_win_rate(
        [[1.0], [1.0], [0.0], [1.0]] * 50, [[10.0]] * 100 + [[-10.0]] * 100
    )
    assert flat.estimate == pytest.approx(0.75, abs=0.01)
    assert flat.low <= flat.estimate <= flat.high
    # no spread in length: the plain win rate (ties count a half)
    even = stats.length_controlled_win_rate([[1.0, 0.5], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    assert even.estimate == pytest.approx(0.625)
    with pytest.raises(ValueError, match="one length difference per comparison"):
        stats.length_controlled_win_rate([[1.0, 0.0]], [[1.0]])
