"""The reward-model gate's paired non-inferiority test: hand-computed differences, the
bootstrap over prompts, and decisions that one label no longer flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clinalign.common.reward_format import Pair
from clinalign.trainer.methods.reward_model import bt
from clinalign.trainer.methods.reward_model.evaluation import (
    Paired,
    Report,
    evaluate_reward_model,
    non_inferiority,
    paired_difference,
    promotion_check,
)
from clinalign.trainer.registry.gate import reward_checks

MARGIN = 0.02


def _pairs(prompts: list[str], tie: tuple[int, ...] = ()) -> list[Pair]:
    return [Pair(p, "a", "b", tie=i in tie, prompt_id=p) for i, p in enumerate(prompts)]


def _report(model: str, b_delta: np.ndarray, baseline: Report | None = None) -> Report:
    accuracy = float(bt.pairwise_correct(b_delta).mean())
    return Report(
        model=model,
        snapshot_hash="h",
        n=b_delta.size,
        accuracy=accuracy,
        ci_low=0.6,
        ci_high=0.8,
        ci_level=0.95,
        ties=0,
        truncated=0,
        ece=0.1,
        ece_bins=10,
        baseline=baseline,
    )


def _judged(pairs: list[Pair], b_delta: np.ndarray, b_delta_base: np.ndarray) -> Report:
    """The candidate's report beside the served model's, as evaluate_reward_model makes it."""
    report = _report("reward-v2", b_delta, _report("reward-v1", b_delta_base))
    report.paired = paired_difference(pairs, b_delta, b_delta_base, margin=MARGIN)
    return report


def test_identical_models_differ_by_zero_with_a_zero_width_interval() -> None:
    pairs = _pairs(["p1", "p1", "p2", "p3", "p3"])
    b_delta = np.array([1.0, -2.0, 0.5, -0.1, 3.0])
    paired = paired_difference(pairs, b_delta, b_delta.copy(), margin=MARGIN)
    assert paired == Paired(n=5, difference=0.0, ci_low=0.0, ci_high=0.0, margin=MARGIN)
    report = _judged(pairs, b_delta, b_delta.copy())
    assert promotion_check(report) == []
    assert non_inferiority(report) == (
        True,
        "pairwise accuracy 0.600 against reward-v1's 0.600 on the same 5 pairs: difference "
        "+0.000 (95% CI +0.000 to +0.000) is non-inferior, the interval's lower end above "
        "the margin -0.02",
    )


def test_per_pair_differences_hand_computed() -> None:
    # candidate's correctness minus served's, pair by pair: 1-0, 0-1, 0.5-1 (the
    # candidate scores both responses alike), 1-1; the tie label (index 4) is in neither.
    pairs = _pairs(["p1", "p2", "p3", "p4", "p5"], tie=(4,))
    b_delta = np.array([2.0, -1.0, 0.0, 1.0, 5.0])
    b_delta_base = np.array([-1.0, 1.0, 3.0, 2.0, -5.0])
    paired = paired_difference(pairs, b_delta, b_delta_base, margin=MARGIN)
    assert paired.n == 4
    assert paired.difference == pytest.approx((1 - 1 - 0.5 + 0) / 4)
    # the interval is the prompt-cluster bootstrap of those four differences
    assert (paired.ci_low, paired.ci_high) == bt.bootstrap_ci(
        [1.0, -1.0, -0.5, 0.0], groups=["p1", "p2", "p3", "p4"]
    )


def test_the_bootstrap_resamples_prompts_not_pairs() -> None:
    # All of one prompt's pairs move together: resampled as a block, they widen the interval.
    prompts = [f"p{i // 5}" for i in range(40)]  # 8 prompts of 5 pairs
    b_delta_base = np.ones(40)
    b_delta = np.where(np.arange(40) < 5, -1.0, 1.0)  # wrong on every pair of p0
    paired = paired_difference(_pairs(prompts), b_delta, b_delta_base, margin=MARGIN)
    by_pair = bt.bootstrap_ci(np.where(np.arange(40) < 5, -1.0, 0.0))
    assert paired.difference == pytest.approx(-5 / 40)
    assert paired.ci_low < by_pair[0]


def test_a_candidate_wrong_where_the_served_model_is_right_is_refused() -> None:
    # 40 prompts, one pair each: the served model right on all 40, the candidate wrong on 10
    pairs = _pairs([f"p{i}" for i in range(40)])
    b_delta_base = np.ones(40)
    b_delta = np.where(np.arange(40) % 4 == 0, -1.0, 1.0)
    report = _judged(pairs, b_delta, b_delta_base)
    assert report.paired is not None
    assert report.paired.difference == pytest.approx(-0.25)
    assert report.paired.ci_high < 0
    ci, vs_served = reward_checks(report)
    assert ci.passed and not vs_served.passed
    assert (vs_served.name, vs_served.threshold) == ("accuracy_vs_served", -MARGIN)
    assert vs_served.value == report.paired.ci_low
    assert vs_served.message.startswith(
        "pairwise accuracy 0.750 against reward-v1's 1.000 on the same 40 pairs: "
        "difference -0.250 (95% CI "
    )
    assert vs_served.message.endswith(
        "is not shown non-inferior, the interval's lower end not above the margin -0.02"
    )
    assert promotion_check(report) == [vs_served.message]


def test_one_label_either_way_no_longer_flips_the_decision() -> None:
    # 200 prompts, one pair each; the served model is right on the first 140 (0.70).
    pairs = _pairs([f"p{i}" for i in range(200)])
    b_delta_base = np.where(np.arange(200) < 140, 1.0, -1.0)
    one_worse, one_better = b_delta_base.copy(), b_delta_base.copy()
    one_worse[0] = -1.0  # wrong on one pair the served model gets right: 0.695
    one_better[199] = 1.0  # right on one pair the served model gets wrong: 0.705
    worse = _judged(pairs, one_worse, b_delta_base)
    better = _judged(pairs, one_better, b_delta_base)
    # The old rule (accuracy not below the served model's) refused the first and passed
    # the second; the paired test passes both, its interval about 0 alike.
    assert worse.accuracy < worse.baseline_accuracy < better.accuracy  # type: ignore[operator]
    assert [c.passed for c in reward_checks(worse)] == [True, True]
    assert [c.passed for c in reward_checks(better)] == [True, True]
    assert worse.paired is not None and better.paired is not None
    assert worse.paired.difference == pytest.approx(-0.005)
    assert better.paired.difference == pytest.approx(0.005)
    # one discordant pair in 200: a resample draws it k times, k ~ Binomial(200, 1/200);
    # P(k ≥ 4) ≈ 0.019 < 0.025 ≤ P(k ≥ 3) ≈ 0.080, so the 2.5 % quantile is -3/200
    assert worse.paired.ci_low == pytest.approx(-0.015)
    assert better.paired.ci_high == pytest.approx(0.015)


def test_the_margin_decides_a_close_call() -> None:
    paired = Paired(n=400, difference=-0.01, ci_low=-0.03, ci_high=0.01, margin=MARGIN)
    report = _report("reward-v2", np.ones(4), _report("reward-v1", np.ones(4)))
    report.paired = paired
    assert non_inferiority(report) is not None and not non_inferiority(report)[0]  # type: ignore[index]
    report.paired = Paired(400, -0.01, -0.03, 0.01, margin=0.05)
    assert promotion_check(report) == []


def test_a_baseline_needs_a_margin() -> None:
    records = [{"split": "eval", "prompt": "q", "chosen": "a", "rejected": "b"}]
    with pytest.raises(ValueError, match="needs its non-inferiority margin"):
        evaluate_reward_model(Path("candidate"), records, Path("served"))
