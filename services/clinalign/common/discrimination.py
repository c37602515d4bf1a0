"""How well a cost model tells harmful answers from clean ones (issue 21): AUROC per label,
the expected calibration error of the cost, and bootstrap intervals that resample groups
(prompts, as a prompt's answers move together).
The trainer measures a cost model on a snapshot's held-out harm records with these, its
gate's paired test compares two cost models on the same records, and the monitor measures
the served cost model against clinicians' verdicts on production outputs.

Pure functions of arrays: ``y`` holds 0/1 targets, ``p`` probabilities, ``groups`` one
prompt id per record (shape [N] each).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_ROUNDS = 1000
ECE_BINS = 10


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse]


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """The area under the ROC curve (the probability that a random positive scores above a
    random negative, ties counting half); None when ``y`` holds one class only. Computed
    as the Mann-Whitney U statistic over n_pos * n_neg (Hanley and McNeil 1982, "The
    meaning and use of the area under a ROC curve") from average ranks: scikit-learn's
    ``roc_auc_score`` to rounding, without its per-call input checks (which dominate a
    bootstrap's thousand calls) and without scikit-learn in the services' images."""
    y = np.asarray(y).astype(bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    positives = int(y.sum())
    negatives = y.size - positives
    rank_sum = float(average_ranks(np.asarray(p, dtype=float))[y].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width probability bins: the record-weighted mean of
    |share positive - mean probability| per bin (Guo et al. 2017, "On Calibration of
    Modern Neural Networks", eq. 3). A probability of exactly 1 falls in the last bin."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.size == 0:
        return float("nan")
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.sum() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(total / y.size)


def _resamples(groups: Sequence[str], rounds: int, seed: int) -> list[np.ndarray]:
    """Record indices of ``rounds`` bootstrap samples drawn group by group."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(str(g), []).append(i)
    rng = np.random.default_rng(seed)
    if len(by_group) == len(groups):  # one record a group: resample records directly
        order = np.asarray([members[0] for members in by_group.values()])
        return list(order[rng.integers(0, order.size, (rounds, order.size))])
    members = [np.asarray(v) for v in by_group.values()]
    return [
        np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
        for _ in range(rounds)
    ]


def auroc_interval(
    y: np.ndarray,
    p: np.ndarray,
    groups: Sequence[str],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of the AUROC, resampling prompts; None when the
    AUROC is undefined. Resamples holding one class only are skipped."""
    if auroc(y, p) is None:
        return None
    y, p = np.asarray(y), np.asarray(p)
    values = [
        a for idx in _resamples(groups, rounds, seed) if (a := auroc(y[idx], p[idx])) is not None
    ]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired_auroc_difference(
    y: np.ndarray,
    p_candidate: np.ndarray,
    p_served: np.ndarray,
    groups: Sequence[str],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """(candidate AUROC - served AUROC, 95 % interval) on the same records, each bootstrap
    sample scoring both models on the same prompts; None when the AUROC is undefined."""
    a, b = auroc(y, p_candidate), auroc(y, p_served)
    if a is None or b is None:
        return None
    y, pc, ps = np.asarray(y), np.asarray(p_candidate), np.asarray(p_served)
    diffs = []
    for idx in _resamples(groups, rounds, seed):
        da, db = auroc(y[idx], pc[idx]), auroc(y[idx], ps[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    return a - b, float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
