"""The statistics every comparison of two policies uses: the promotion gate's decisions and
the demo's reported evaluation compute their figures here, so both mean the same thing.

The unit of evidence is the *prompt*: several answers to one prompt are never counted as
independent evidence. Callers pass one value per prompt (a win rate's points, a
criterion's score, a difference), already averaged over that prompt's answers, and every
interval is a percentile bootstrap over prompts (``n_resamples`` resamples, seeded, so a
decision can be re-run).

- ``mean_interval``: a mean and its 95 % interval.
- ``win_rate``: the share of prompts a candidate wins (a tie counts a half), with interval.
- ``non_inferiority``: is the candidate's mean at most ``margin`` below the baseline's?
  A paired test: the interval of the mean per-prompt difference, candidate minus baseline,
  must lie above ``-margin``.
- ``length_controlled_win_rate``: the win rate with the answers' length difference
  regressed out, in the manner of AlpacaEval's length-controlled win rate (Dubois et al.,
  2024): a logistic regression of each comparison's outcome on ``tanh(Δ / s)`` (Δ the
  candidate's length minus the baseline's, ``s`` their standard deviation), whose
  intercept is the win rate's log-odds at equal length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval (``level``, two-sided) over ``n`` prompts."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def describe(self, digits: int = 3) -> str:
        return (
            f"{self.estimate:.{digits}f} ({self.level:.0%} CI {self.low:.{digits}f} to "
            f"{self.high:.{digits}f}, n={self.n})"
        )


def _percentile_interval(
    estimate: float, resampled: list[float], n: int, level: float = LEVEL
) -> Interval:
    resampled.sort()
    tail = (1 - level) / 2
    k = len(resampled)
    low = resampled[int(tail * k)]
    high = resampled[min(k - 1, math.ceil((1 - tail) * k) - 1)]
    return Interval(estimate, low, high, n, level)


def _bootstrap(
    statistic: Callable[[list[int]], float],
    n: int,
    seed: int,
    n_resamples: int = N_RESAMPLES,
) -> list[float]:
    """``statistic`` over ``n_resamples`` resamples of the indices 0..n-1, with
    replacement."""
    rng = random.Random(seed)
    population = range(n)
    return [statistic(rng.choices(population, k=n)) for _ in range(n_resamples)]


def mean_interval(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean of one value per prompt and its percentile-bootstrap interval."""
    if not values:
        raise ValueError("no values: an interval needs at least one prompt")
    data = list(values)
    resampled = _bootstrap(lambda ix: fmean(data[i] for i in ix), len(data), seed)
    return _percentile_interval(fmean(data), resampled, len(data))


def points(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """1 where the candidate's score is higher, 0.5 on a tie, 0 where it is lower."""
    if len(candidate) != len(baseline):
        raise ValueError("candidate and baseline scores must be as many")
    return [
        1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline, strict=True)
    ]


def win_rate(points_by_prompt: Sequence[float], seed: int = 0) -> Interval:
    """The win rate from each prompt's points (1 win, 0.5 tie, 0 loss, or their mean over
    a prompt's comparisons)."""
    return mean_interval(points_by_prompt, seed)


@dataclass(frozen=True)
class NonInferiority:
    """A paired non-inferiority verdict: ``difference`` is candidate minus baseline."""

    candidate: float
    baseline: float
    difference: Interval
    margin: float

    @property
    def passed(self) -> bool:
        return self.difference.low > -self.margin

    def describe(self, digits: int = 3) -> str:
        verdict = "non-inferior" if self.passed else "NOT non-inferior"
        return (
            f"{self.candidate:.{digits}f} vs {self.baseline:.{digits}f}: difference "
            f"{self.difference.estimate:+.{digits}f} ({self.difference.level:.0%} CI "
            f"{self.difference.low:+.{digits}f} to {self.difference.high:+.{digits}f}, "
            f"n={self.difference.n}) — {verdict} within the margin {self.margin}"
        )


def non_inferiority(
    candidate: Sequence[float | None],
    baseline: Sequence[float | None],
    margin: float,
    seed: int = 0,
) -> NonInferiority | None:
    """Paired non-inferiority of per-prompt scores; prompts where either side is ``None``
    (the criterion does not apply to an answer) are left out. ``None`` when no prompt has
    both."""
    if len(candidate) != len(baseline):
        raise ValueError("candidate and baseline scores must be as many")
    if margin < 0:
        raise ValueError("the margin is a tolerated shortfall: it must not be negative")
    pairs = [
        (c, b) for c, b in zip(candidate, baseline, strict=True) if c is not None and b is not None
    ]
    if not pairs:
        return None
    differences = [c - b for c, b in pairs]
    return NonInferiority(
        candidate=fmean(c for c, _ in pairs),
        baseline=fmean(b for _, b in pairs),
        difference=mean_interval(differences, seed),
        margin=margin,
    )


def _logistic_intercept(outcome: np.ndarray, feature: np.ndarray, iterations: int = 50) -> float:
    """The intercept of a logistic regression of ``outcome`` (in [0, 1]; a tie is 0.5, a
    fractional target the Bernoulli likelihood takes as it is) on one feature, fitted by
    Newton's method. A small ridge (1e-6) keeps it finite when the outcome is separable, as
    with a candidate that wins every comparison."""
    x = np.column_stack([np.ones_like(feature), feature])
    beta = np.zeros(2)
    ridge = 1e-6 * np.eye(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (outcome - p) - ridge @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return float(beta[0])


def _lc_rate(outcome: np.ndarray, delta: np.ndarray) -> float:
    spread = float(delta.std())
    feature = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    intercept = min(max(_logistic_intercept(outcome, feature), -30.0), 30.0)
    return 1.0 / (1.0 + math.exp(-intercept))


def length_controlled_win_rate(
    outcomes: Sequence[Sequence[float]],
    length_differences: Sequence[Sequence[float]],
    seed: int = 0,
) -> Interval:
    """The length-controlled win rate: ``outcomes[i]`` are prompt i's comparisons' points
    (1, 0.5, 0), ``length_differences[i]`` the candidate's length minus the baseline's in
    each (words or tokens). The interval resamples prompts, each with all its comparisons."""
    if len(outcomes) != len(length_differences) or not outcomes:
        raise ValueError("outcomes and length differences: one non-empty list per prompt")
    per_prompt = [
        (np.asarray(o, dtype=float), np.asarray(d, dtype=float))
        for o, d in zip(outcomes, length_differences, strict=True)
    ]
    if any(o.shape != d.shape for o, d in per_prompt):
        raise ValueError("each prompt needs one length difference per comparison")

    def rate(ix: Sequence[int]) -> float:
        return _lc_rate(
            np.concatenate([per_prompt[i][0] for i in ix]),
            np.concatenate([per_prompt[i][1] for i in ix]),
        )

    n = len(per_prompt)
    # 500 resamples, not 2000: each one fits a regression
    resampled = _bootstrap(rate, n, seed, n_resamples=500)
    return _percentile_interval(rate(range(n)), resampled, n)
