"""Bradley-Terry loss, normalisation, calibration, bootstrap, agreement ceiling and the
promotion rule: hand-computed values and plain reference implementations."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.reward_format import Pair, preference_pairs
from clinalign.preference.snapshots import canonical, render_jsonl
from clinalign.trainer.methods.reward_model import bt
from clinalign.trainer.methods.reward_model.commands import load_snapshot_jsonl, read_snapshot
from clinalign.trainer.methods.reward_model.evaluation import (
    Figure,
    Paired,
    Report,
    agreement_ceiling,
    promotion_check,
    report_figures,
    require_promotable,
)

LOG1P_EXP_MINUS_2 = 0.1269280110429725  # log(1 + e^-2) = -log sigmoid(2)


# -- Bradley-Terry ------------------------------------------------------------------------


def test_bt_loss_hand_values() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    # -log sigmoid(2) and -log sigmoid(0) = log 2, averaged
    expected = (LOG1P_EXP_MINUS_2 + math.log(2)) / 2
    assert bt.bt_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-7)
    # all targets 1 is the same loss (InstructGPT eq. 1)
    assert bt.bt_loss(chosen, rejected, torch.ones(2)).item() == pytest.approx(expected, abs=1e-7)


def test_a_tie_is_a_soft_label_of_one_half_on_both_orders() -> None:
    chosen, rejected, tie = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.5])
    # ½(-log sigmoid(2) - log sigmoid(-2)) = ½(log(1+e^-2) + 2 + log(1+e^-2))
    expected = 1.0 + LOG1P_EXP_MINUS_2
    assert bt.bt_loss(chosen, rejected, tie).item() == pytest.approx(expected, abs=1e-6)
    # symmetric in the two responses, and smallest when they score the same
    assert bt.bt_loss(rejected, chosen, tie).item() == pytest.approx(expected, abs=1e-6)
    assert bt.bt_loss(chosen, chosen, tie).item() == pytest.approx(math.log(2), abs=1e-7)


def test_margin_is_subtracted_from_the_difference() -> None:
    loss = bt.bt_loss(torch.tensor([2.0]), torch.tensor([0.0]), b_margin=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_bt_loss_agrees_with_plain_reference_and_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    target = torch.where(torch.rand(64, generator=g) < 0.2, 0.5, 1.0)
    plain = [
        -(y * math.log(1 / (1 + math.exp(-d))) + (1 - y) * math.log(1 / (1 + math.exp(d))))
        for d, y in zip((chosen - rejected).tolist(), target.tolist(), strict=True)
    ]
    loss = bt.bt_loss(chosen, rejected, target).item()
    assert loss == pytest.approx(sum(plain) / len(plain), rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(chosen - rejected, target).item()
    assert loss == pytest.approx(bce, rel=1e-6)


def test_centring_penalty_hand_values() -> None:
    # (1 + -1)² = 0 and (2 + 0.5)² = 6.25: mean 3.125; it ignores the difference BT fits
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5])
    assert bt.centring_penalty(chosen, rejected).item() == pytest.approx(3.125, abs=1e-7)
    assert bt.centring_penalty(chosen - 5, rejected + 5).item() == pytest.approx(3.125, abs=1e-6)


def test_bt_probability_and_pairwise_correct() -> None:
    p = bt.bt_probability(torch.tensor([math.log(3), 0.0]), torch.tensor([0.0, 0.0]))
    assert p.tolist() == pytest.approx([0.75, 0.5])
    assert bt.pairwise_correct([1.5, -0.1, 0.0]).tolist() == [1.0, 0.0, 0.5]


def test_head_init_std() -> None:
    assert bt.head_init_std(48) == pytest.approx(1 / 7)
    assert bt.head_init_std(4095) == pytest.approx(1 / 64)


# -- normalisation -------------------------------------------------------------------------


def test_normalisation_stats_hand_values() -> None:
    mean, std = bt.normalisation_stats([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(1.25))  # population std: Σ(r-2.5)² / 4 = 1.25
    normalised = (np.array([1.0, 2.0, 3.0, 4.0]) - mean) / std
    assert normalised.mean() == pytest.approx(0.0, abs=1e-12)
    assert normalised.std() == pytest.approx(1.0)


def test_normalisation_of_equal_rewards_is_a_shift() -> None:
    assert bt.normalisation_stats([0.7, 0.7]) == (pytest.approx(0.7), 1.0)
    with pytest.raises(ValueError, match="at least one reward"):
        bt.normalisation_stats([])


# -- calibration ---------------------------------------------------------------------------


def test_ece_counts_both_orientations() -> None:
    p, y = [0.8, 0.6, 0.3], [1.0, 1.0, 1.0]
    # 10 bins: (0.8,1) (0.2,0) (0.6,1) (0.4,0) (0.3,1) (0.7,0) each alone in a bin
    assert bt.expected_calibration_error(p, y, 10) == pytest.approx(2.6 / 6)
    # 2 bins: [0,0.5) holds 0.2,0.4 (y 0) and 0.3 (y 1): |1/3 - 0.3| = 1/30, weight ½;
    # [0.5,1] mirrors it
    assert bt.expected_calibration_error(p, y, 2) == pytest.approx(1 / 30)
    # the figure does not depend on which response is called chosen
    assert bt.expected_calibration_error([0.2, 0.4, 0.7], [0.0, 0.0, 0.0], 10) == pytest.approx(
        2.6 / 6
    )


def test_ece_of_a_tie_at_one_half_is_zero() -> None:
    assert bt.expected_calibration_error([0.5], [0.5]) == 0.0
    assert bt.expected_calibration_error([1.0], [1.0]) == 0.0  # p = 1 joins the last bin


# -- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_ci_is_seeded_and_contains_the_mean() -> None:
    values = [1] * 70 + [0] * 30
    low, high = bt.bootstrap_ci(values, seed=3)
    assert (low, high) == bt.bootstrap_ci(values, seed=3)
    assert low < 0.7 < high
    # close to the normal approximation 0.7 ± 1.96·√(0.7·0.3/100)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 100)
    assert low == pytest.approx(0.7 - half, abs=0.02)
    assert high == pytest.approx(0.7 + half, abs=0.02)


def test_cluster_bootstrap_resamples_whole_groups() -> None:
    values = [1, 1, 0, 1, 0, 1, 1, 1, 0, 1]
    # one group: every resample is the whole set
    assert bt.bootstrap_ci(values, ["p"] * 10) == (pytest.approx(0.7), pytest.approx(0.7))
    # groups that are each all-correct or all-wrong: wider than resampling pairs singly
    groups = ["a", "a", "b", "c", "d", "e", "e", "e", "f", "g"]
    clustered = bt.bootstrap_ci(values, groups, seed=0)
    single = bt.bootstrap_ci(values, seed=0)
    assert clustered[1] - clustered[0] >= single[1] - single[0] - 1e-9


# -- agreement ceiling ---------------------------------------------------------------------


def pair(prompt: str, chosen: str, rejected: str, annotator: str, tie: bool = False) -> Pair:
    return Pair(
        prompt=prompt,
        chosen=f"text {chosen}",
        rejected=f"text {rejected}",
        tie=tie,
        prompt_id=prompt,
        chosen_id=chosen,
        rejected_id=rejected,
        annotator_id=annotator,
    )


def test_agreement_ceiling_hand_example() -> None:
    pairs = [
        # item (p1, {x, y}): a1 and a2 prefer x, a3 prefers y
        pair("p1", "x", "y", "a1"),
        pair("p1", "x", "y", "a2"),
        pair("p1", "y", "x", "a3"),
        # item (p2, {u, v}): both prefer u; the tie carries no preference
        pair("p2", "u", "v", "b1"),
        pair("p2", "u", "v", "b2"),
        pair("p2", "u", "v", "b3", tie=True),
        # one annotator only, even twice: not an item for the ceiling
        pair("p3", "s", "t", "c1"),
        pair("p3", "t", "s", "c1"),
    ]
    ceiling, used = agreement_ceiling(pairs)
    # a1: others split 1-1 → ½; a2: ½; a3: both others disagree → 0; b1, b2: 1 each
    assert ceiling == pytest.approx((0.5 + 0.5 + 0.0 + 1.0 + 1.0) / 5)
    assert used == [0, 1, 2, 3, 4]
    assert agreement_ceiling(pairs[6:]) == (None, [])


def test_report_figures_per_category_and_tag() -> None:
    def labelled(i: int, category: str, tag: str, tie: bool = False) -> Pair:
        return Pair(
            f"q{i}",
            "a",
            "b",
            tie=tie,
            prompt_id=f"q{i}",
            tags=(tag,),
            rejected_error_categories=(category,) if category else (),
        )

    pairs = [
        labelled(0, "omission", "specialty:cardiology"),
        labelled(1, "omission", "specialty:cardiology"),
        labelled(2, "unsafe_advice", "specialty:general"),
        labelled(3, "", "specialty:general"),
        labelled(4, "", "specialty:general", tie=True),
    ]
    figures = report_figures(pairs, np.array([1.0, -1.0, 2.0, 0.0, 5.0]))
    assert figures["n"] == 4 and figures["ties"] == 1
    assert figures["accuracy"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert figures["per_category"] == {
        "none": Figure(0.5, 1),
        "omission": Figure(0.5, 2),
        "unsafe_advice": Figure(1.0, 1),
    }
    assert figures["per_tag"] == {
        "specialty:cardiology": Figure(0.5, 2),
        "specialty:general": Figure(0.75, 2),
    }
    assert figures["agreement_ceiling"] is None and figures["ceiling_n"] == 0


# -- promotion -----------------------------------------------------------------------------


def report(model: str, accuracy: float, low: float, high: float, **kw: object) -> Report:
    return Report(
        model=model,
        snapshot_hash="h",
        n=200,
        accuracy=accuracy,
        ci_low=low,
        ci_high=high,
        ci_level=0.95,
        ties=0,
        truncated=0,
        ece=0.05,
        ece_bins=10,
        **kw,  # type: ignore[arg-type]
    )


def test_promotion_refused_when_not_above_chance_with_confidence() -> None:
    assert promotion_check(report("reward-v2", 0.54, 0.47, 0.61)) == [
        "pairwise accuracy 0.54 (95% CI 0.47 to 0.61) is not above chance (0.5) with confidence"
    ]
    with pytest.raises(FailedPrecondition, match=r"reward-v2 is refused .* not above chance"):
        require_promotable(report("reward-v2", 0.54, 0.47, 0.61))


def test_promotion_refused_unless_non_inferior_to_the_model_it_would_replace() -> None:
    baseline = report("reward-v1", 0.66, 0.6, 0.72)
    worse = Paired(n=200, difference=-0.04, ci_low=-0.07, ci_high=-0.01, margin=0.02)
    candidate = report("reward-v2", 0.62, 0.55, 0.69, baseline=baseline, paired=worse)
    assert promotion_check(candidate) == [
        "pairwise accuracy 0.620 against reward-v1's 0.660 on the same 200 pairs: difference "
        "-0.040 (95% CI -0.070 to -0.010) is not shown non-inferior, the interval's lower end "
        "not above the margin -0.02"
    ]
    # a point estimate above the baseline's is not enough when the interval reaches below
    unsure = Paired(n=200, difference=0.005, ci_low=-0.025, ci_high=0.035, margin=0.02)
    close = report("reward-v2", 0.665, 0.6, 0.73, baseline=baseline, paired=unsure)
    assert promotion_check(close) == [
        "pairwise accuracy 0.665 against reward-v1's 0.660 on the same 200 pairs: difference "
        "+0.005 (95% CI -0.025 to +0.035) is not shown non-inferior, the interval's lower end "
        "not above the margin -0.02"
    ]
    both = report("reward-v2", 0.52, 0.45, 0.59, baseline=baseline, paired=worse)
    assert promotion_check(both)[0] == (
        "pairwise accuracy 0.52 (95% CI 0.45 to 0.59) is not above chance (0.5) with confidence"
    )
    assert len(promotion_check(both)) == 2
    with pytest.raises(FailedPrecondition, match=r"reward-v2 is refused .* not shown non-inf"):
        require_promotable(candidate)


def test_promotion_allowed_and_report_renders() -> None:
    baseline = report("reward-v1", 0.66, 0.6, 0.72)
    candidate = report(
        "reward-v2",
        0.655,
        0.6,
        0.71,
        baseline=baseline,
        paired=Paired(n=200, difference=-0.005, ci_low=-0.015, ci_high=0.005, margin=0.02),
        per_category={"omission": Figure(0.8, 10)},
        agreement_ceiling=0.75,
        ceiling_n=20,
        ceiling_model_accuracy=0.7,
    )
    assert promotion_check(candidate) == []
    require_promotable(candidate)
    text = candidate.to_markdown()
    assert "| figure | reward-v2 (candidate) | reward-v1 (baseline) | annotators |" in text
    assert "| accuracy on doubly-labelled items | 0.700 (n=20) | n/a | 0.750 (n=20) |" in text
    assert "| category: omission | 0.800 (n=10) | n/a |  |" in text
    assert (
        "| accuracy minus the baseline's, pair by pair | -0.005 (95% CI -0.015 to +0.005), "
        "margin -0.02 |  |  |" in text
    )
    assert text.rstrip().endswith("Promotion: allowed.")
    data = json.loads(candidate.to_json())
    assert data["baseline"]["accuracy"] == 0.66
    assert data["per_category"]["omission"] == {"accuracy": 0.8, "n": 10}
    assert data["paired"]["margin"] == 0.02


# -- snapshot exports ----------------------------------------------------------------------


def export(tmp_path: Path) -> Path:
    records: list[tuple[str, dict[str, Any]]] = [
        ("train", {"prompt": "q", "chosen": "a", "rejected": "b", "tie": False}),
        ("eval", {"prompt": "r", "chosen": "c", "rejected": "d", "tie": True}),
        ("train", {"prompt": "s", "completion": "an SFT record"}),
    ]
    path = tmp_path / "snap.jsonl"
    path.write_bytes(render_jsonl([(s, canonical(r)) for s, r in records], with_split=True))
    return path


def test_snapshot_export_hash_from_file_or_sidecar_manifest(tmp_path: Path) -> None:
    path = export(tmp_path)
    records, digest = load_snapshot_jsonl(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_snapshot(path).hash_source == "file_sha256"
    assert [r["split"] for r in records] == ["train", "eval", "train"]
    assert preference_pairs(records, "train") == [Pair("q", "a", "b")]
    assert preference_pairs(records, "eval") == [Pair("r", "c", "d", tie=True)]

    (tmp_path / "snap.jsonl.manifest.json").write_text(json.dumps({"content_hash": "abc123"}))
    assert load_snapshot_jsonl(path)[1] == "abc123"
    assert read_snapshot(path).hash_source == "manifest"


def test_snapshot_export_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q"}\nnot json\n')
    with pytest.raises(InvalidArgument, match=r"snapshot: line 2 of .* is not JSON"):
        load_snapshot_jsonl(path)
    with pytest.raises(InvalidArgument, match="is not a file"):
        load_snapshot_jsonl(tmp_path / "missing.jsonl")
