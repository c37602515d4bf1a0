"""The promotion gate's checks from an evaluation report: one per figure, passing or
failing with promotion_check's own message."""

from __future__ import annotations

from clinalign.trainer.methods.reward_model.evaluation import Report
from clinalign.trainer.registry.gate import Check, records_from_export, reward_checks


def _report(accuracy: float, ci_low: float, baseline: Report | None = None) -> Report:
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
    ci, vs_served = reward_checks(_report(0.55, 0.45, baseline=served))
    assert ci == Check(
        "accuracy_ci_low",
        0.45,
        0.5,
        False,
        "pairwise accuracy 0.55 (95% CI 0.45 to 0.65) is not above chance (0.5) with confidence",
    )
    assert vs_served == Check(
        "accuracy_vs_served",
        0.55,
        0.9,
        False,
        "pairwise accuracy 0.55 is below reward-v1's 0.90 on the same pairs",
    )


def test_a_candidate_as_accurate_as_the_served_model_passes() -> None:
    checks = reward_checks(_report(0.9, 0.8, baseline=_report(0.9, 0.8)))
    assert [(c.name, c.passed) for c in checks] == [
        ("accuracy_ci_low", True),
        ("accuracy_vs_served", True),
    ]
    assert (
        checks[1].message
        == "pairwise accuracy 0.9000 is not below reward-v1's 0.9000 on the same pairs"
    )


def test_records_from_export_skips_blank_lines() -> None:
    assert records_from_export(b'{"a": 1}\n\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
