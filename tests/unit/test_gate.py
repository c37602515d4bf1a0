"""The promotion gate's checks from an evaluation report: one per figure, passing or
failing with promotion_check's own message."""

from __future__ import annotations

from clinalign.trainer.methods.reward_model.evaluation import Paired, Report
from clinalign.trainer.registry.gate import Check, records_from_export, reward_checks


def _report(
    accuracy: float, ci_low: float, baseline: Report | None = None, paired: Paired | None = None
) -> Report:
    return Report(
        model="reward-v2" if baseline else "reward-v1",
        snapshot_hash="h",
        n=40,
        accuracy=accuracy,
        ci_low=ci_low,
        ci_high=min(1.0, accuracy + 0.1),
        ci_level=0.95,
        ties=0,
        truncated=0,
        ece=0.1,
        ece_bins=10,
        baseline=baseline,
        paired=paired,
    )


def test_without_a_served_model_only_the_confidence_figure_is_checked() -> None:
    assert reward_checks(_report(0.8, 0.7)) == [
        Check(
            "accuracy_ci_low",
            0.7,
            0.5,
            True,
            "pairwise accuracy 0.80 (95% CI 0.70 to 0.90) is above chance (0.5) with "
            "confidence, n=40",
        )
    ]


def test_each_failed_figure_carries_promotion_checks_message() -> None:
    served = _report(0.9, 0.8)
    worse = Paired(n=40, difference=-0.35, ci_low=-0.5, ci_high=-0.2, margin=0.02)
    ci, vs_served = reward_checks(_report(0.55, 0.45, baseline=served, paired=worse))
    assert ci == Check(
        "accuracy_ci_low",
        0.45,
        0.5,
        False,
        "pairwise accuracy 0.55 (95% CI 0.45 to 0.65) is not above chance (0.5) with confidence",
    )
    assert vs_served == Check(
        "accuracy_vs_served",
        -0.5,
        -0.02,
        False,
        "pairwise accuracy 0.550 against reward-v1's 0.900 on the same 40 pairs: difference "
        "-0.350 (95% CI -0.500 to -0.200) is not shown non-inferior, the interval's lower "
        "end not above the margin -0.02",
    )


def test_a_candidate_non_inferior_to_the_served_model_passes() -> None:
    # a point below the served model, within the margin with confidence
    close = Paired(n=40, difference=-0.01, ci_low=-0.015, ci_high=0.005, margin=0.02)
    checks = reward_checks(_report(0.89, 0.8, baseline=_report(0.9, 0.8), paired=close))
    assert [(c.name, c.value, c.threshold, c.passed) for c in checks] == [
        ("accuracy_ci_low", 0.8, 0.5, True),
        ("accuracy_vs_served", -0.015, -0.02, True),
    ]
    assert checks[1].message == (
        "pairwise accuracy 0.890 against reward-v1's 0.900 on the same 40 pairs: difference "
        "-0.010 (95% CI -0.015 to +0.005) is non-inferior, the interval's lower end above "
        "the margin -0.02"
    )


def test_records_from_export_skips_blank_lines() -> None:
    assert records_from_export(b'{"a": 1}\n\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
