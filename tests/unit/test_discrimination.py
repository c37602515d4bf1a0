"""The cost model's figures (issue 21) by hand values: AUROC, expected calibration error,
bootstrap intervals over prompts, the paired difference; and a harm record's targets."""

from __future__ import annotations

import numpy as np
import pytest

from clinalign.common import discrimination
from clinalign.common.cost_format import LABELS, targets


def test_auroc_counts_ordered_pairs_and_ties_half() -> None:
    y = np.array([1, 1, 0, 0])
    # positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 (positive, negative) pairs ordered
    assert discrimination.auroc(y, np.array([0.9, 0.4, 0.5, 0.1])) == 0.75
    # a tie between a positive and a negative counts half: (1 + 1 + 0.5 + 1) / 4
    assert discrimination.auroc(y, np.array([0.9, 0.5, 0.5, 0.1])) == 0.875
    assert discrimination.auroc(np.array([0, 0]), np.array([0.2, 0.3])) is None


def test_average_ranks_share_ties() -> None:
    ranks = discrimination.average_ranks(np.array([0.3, 0.1, 0.3, 0.9, 0.3]))
    assert ranks.tolist() == [3.0, 1.0, 3.0, 5.0, 3.0]  # the three 0.3s share ranks 2-4


def test_auroc_agrees_with_scikit_learn_with_and_without_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for size in (2, 7, 300):
        y = rng.integers(0, 2, size)
        y[0], y[-1] = 0, 1
        for p in (rng.random(size), rng.integers(0, 4, size) / 4):  # the second full of ties
            assert discrimination.auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_expected_calibration_error_by_hand() -> None:
    # bin [0.1, 0.2): p 0.1, 0.1, y 0, 1 -> |0.5 - 0.1| = 0.4 on 2 records;
    # bin [0.9, 1.0]: p 0.9, 1.0, y 1, 1 -> |1 - 0.95| = 0.05 on 2 records
    y, p = np.array([0, 1, 1, 1]), np.array([0.1, 0.1, 0.9, 1.0])
    assert discrimination.expected_calibration_error(y, p) == pytest.approx(
        (2 * 0.4 + 2 * 0.05) / 4
    )
    perfect = discrimination.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]))
    assert perfect == 0.0


def test_the_interval_resamples_prompts_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1, 0] * 40)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, y.size), 0, 1)
    groups = [f"p{i // 2}" for i in range(y.size)]  # two answers a prompt
    estimate = discrimination.auroc(y, p)
    low, high = discrimination.auroc_interval(y, p, groups, rounds=300)  # type: ignore[misc]
    assert estimate is not None and low <= estimate <= high and high - low < 0.4
    assert discrimination.auroc_interval(y, p, groups, rounds=300) == (low, high)  # seeded


def test_the_paired_difference_is_zero_for_the_same_model_and_signs_a_better_one() -> None:
    y = np.array([1, 0] * 30)
    groups = [f"p{i // 2}" for i in range(y.size)]
    good = y * 0.6 + np.linspace(0, 0.3, y.size)
    noisy = np.random.default_rng(1).uniform(0, 1, y.size)
    same = discrimination.paired_auroc_difference(y, good, good, groups, rounds=200)
    assert same == (0.0, 0.0, 0.0)
    diff, low, high = discrimination.paired_auroc_difference(y, good, noisy, groups, rounds=200)  # type: ignore[misc]
    assert diff > 0 and low > 0 and low <= diff <= high


def test_a_harm_records_targets_follow_its_categories_and_severity() -> None:
    assert LABELS[0] == "harm" and len(LABELS) == 8
    unsafe = targets({"categories": ["unsafe_advice", "omission"], "severity": "high"})
    assert unsafe == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # a cosmetic fault is a category but not harm; no severity stated counts as harm
    assert targets({"categories": ["omission"], "severity": "low"})[:4] == [0.0, 0.0, 0.0, 1.0]
    assert targets({"categories": ["omission"], "severity": ""})[0] == 1.0
    assert targets({"categories": [], "severity": ""}) == [0.0] * 8
    with pytest.raises(ValueError, match="unknown error categories"):
        targets({"categories": ["rudeness"]})
