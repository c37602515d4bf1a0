"""Reward-model evaluation on a snapshot's held-out split, and the promotion rule.

Figures, all over the ``eval`` split's preference pairs:

- pairwise accuracy: the share of labelled (non-tie) pairs whose chosen response scores
  higher (an exact draw counts one half), with a percentile bootstrap interval that
  resamples whole prompts (``bt.bootstrap_ci``);
- the same accuracy per error category of the rejected response (``none`` for pairs
  without one) and per prompt tag (``specialty:...`` among them);
- expected calibration error of the Bradley-Terry probability sigmoid(Δ) against the
  label, both orientations of every pair counted, ties as 0.5
  (``bt.expected_calibration_error``);
- the agreement ceiling (``agreement_ceiling``): how well one annotator's label is
  predicted by the other annotators of the same pair, next to the model's accuracy on
  the very same labels. It needs a snapshot cut with ``deduplicate=false``, which keeps
  every annotator's label of a pair.

A baseline model (the one a candidate would replace) is evaluated on the same pairs and
reported beside it, with the paired difference of the two accuracies and its interval
(``paired_difference``). ``promotion_check`` lists what stops a promotion.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.reward_format import Pair, pair_deltas, preference_pairs
from clinalign.trainer.methods.reward_model import bt

CHANCE = 0.5
NO_CATEGORY = "none"


@dataclass(frozen=True)
class Figure:
    accuracy: float
    n: int


@dataclass(frozen=True)
class Paired:
    """The candidate against its baseline on the same labelled pairs, and the
    non-inferiority margin the difference is judged at (see ``paired_difference``)."""

    n: int  # labelled pairs behind the difference
    difference: float  # the candidate's accuracy minus the baseline's
    ci_low: float
    ci_high: float
    margin: float  # non-inferior: ci_low above -margin


@dataclass
class Report:
    model: str  # the model directory's name: a registry version such as reward-v2
    snapshot_hash: str
    n: int  # labelled (non-tie) pairs behind the accuracy
    accuracy: float
    ci_low: float
    ci_high: float
    ci_level: float
    ties: int  # tie pairs: in the calibration, not in the accuracy
    truncated: int  # inputs longer than the model's context, scored on their last tokens
    ece: float
    ece_bins: int
    per_category: dict[str, Figure] = field(default_factory=dict)
    per_tag: dict[str, Figure] = field(default_factory=dict)
    agreement_ceiling: float | None = None  # None: no pair labelled by two annotators
    ceiling_n: int = 0  # labels behind the ceiling
    ceiling_model_accuracy: float | None = None  # the model on those same labels
    baseline: Report | None = None
    paired: Paired | None = None  # with a baseline: the difference to it, pair by pair

    @property
    def baseline_accuracy(self) -> float | None:
        return self.baseline.accuracy if self.baseline else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_markdown(self) -> str:
        """A table with the candidate, the baseline (if any) and the annotators side by
        side, then the promotion verdict."""
        reports = [self, *([self.baseline] if self.baseline else [])]
        head = [
            "figure",
            f"{self.model} (candidate)",
            *(f"{r.model} (baseline)" for r in reports[1:]),
            "annotators",
        ]
        rows = [
            [
                "pairwise accuracy",
                *(
                    f"{r.accuracy:.3f} ({r.ci_level:.0%} CI {r.ci_low:.3f} to {r.ci_high:.3f}), "
                    f"n={r.n}"
                    for r in reports
                ),
                "",
            ],
            [
                "accuracy on doubly-labelled items",
                *(_cell(r.ceiling_model_accuracy, r.ceiling_n) for r in reports),
                _cell(self.agreement_ceiling, self.ceiling_n),
            ],
            [
                f"calibration error (ECE, {self.ece_bins} bins)",
                *(f"{r.ece:.3f}" for r in reports),
                "",
            ],
        ]
        if (paired := self.paired) is not None:
            rows.insert(
                1,
                [
                    "accuracy minus the baseline's, pair by pair",
                    f"{paired.difference:+.3f} ({self.ci_level:.0%} CI {paired.ci_low:+.3f} to "
                    f"{paired.ci_high:+.3f}), margin -{paired.margin:g}",
                    "",
                    "",
                ],
            )
        for title, figures in (("category", "per_category"), ("tag", "per_tag")):
            for key in sorted(getattr(self, figures)):
                cells = [getattr(r, figures).get(key) for r in reports]
                rows.append(
                    [
                        f"{title}: {key}",
                        *(_cell(f.accuracy, f.n) if f else "n/a" for f in cells),
                        "",
                    ]
                )
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        failures = promotion_check(self)
        verdict = (
            "Promotion: refused. " + " ".join(f"{f}." for f in failures)
            if failures
            else "Promotion: allowed."
        )
        notes = [f"Snapshot {self.snapshot_hash or '(unknown)'}, eval split."]
        if self.ties:
            notes.append(f"{self.ties} tie pairs count in the calibration only.")
        if self.truncated:
            notes.append(f"{self.truncated} inputs were truncated to the model's context.")
        return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n\n" + verdict + "\n"


def _cell(value: float | None, n: int) -> str:
    return "n/a" if value is None else f"{value:.3f} (n={n})"


# -- the agreement ceiling -------------------------------------------------------------


def agreement_ceiling(pairs: Sequence[Pair]) -> tuple[float | None, list[int]]:
    """Leave-one-annotator-out agreement on items labelled by two or more annotators.

    An item is a prompt and an unordered pair of its responses. For every label of an item
    that other annotators labelled too, the credit is 1 when the label prefers the response
    the majority of the other annotators' labels prefers, 0 when it prefers the other one,
    and 0.5 when the other labels split evenly (a random guess's expected credit). The
    ceiling is the mean credit over those labels: the accuracy with which annotators
    predict a held-out annotator, the figure a reward model's accuracy on the same labels
    is compared with (InstructGPT, Ouyang et al. 2022, reports labeller agreement beside
    reward-model accuracy in the same way). Ties carry no preferred response and are left
    out, as they are from the accuracy; so are an annotator's repeat labels of the same
    item, from the votes of the others.

    Returns the ceiling (None when no item has two annotators) and the indices into
    ``pairs`` of the labels it was computed over.
    """
    items: dict[tuple[str, frozenset[str]], list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        if not p.tie:
            items[_item_key(p)].append(i)
    credits: list[float] = []
    used: list[int] = []
    for members in items.values():
        if len({pairs[i].annotator_id for i in members}) < 2:
            continue
        for i in members:
            others = Counter(
                _preferred(pairs[j])
                for j in members
                if pairs[j].annotator_id != pairs[i].annotator_id
            )
            mine = _preferred(pairs[i])
            against = sum(n for response, n in others.items() if response != mine)
            credits.append(
                1.0 if others[mine] > against else 0.0 if others[mine] < against else 0.5
            )
            used.append(i)
    return (float(np.mean(credits)) if credits else None), used


def _item_key(p: Pair) -> tuple[str, frozenset[str]]:
    # Response ids name responses in the store; the texts stand in where ids are absent.
    return (
        p.prompt_id or p.prompt,
        frozenset({p.chosen_id or p.chosen, p.rejected_id or p.rejected}),
    )


def _preferred(p: Pair) -> str:
    return p.chosen_id or p.chosen


# -- evaluation --------------------------------------------------------------------------


def evaluate_reward_model(
    model_dir: Path,
    records: Sequence[Mapping[str, Any]],
    baseline_dir: Path | None = None,
    *,
    margin: float | None = None,
    snapshot_hash: str = "",
    split: str = "eval",
    level: float = 0.95,
    n_resamples: int = 2000,
    n_bins: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> Report:
    """Score the split's pairs with the model (and the baseline) and compute the figures.
    With a baseline, ``margin`` is required: the non-inferiority margin the paired
    difference is judged at (the trainer's ``gate_reward_margin``)."""
    if baseline_dir is not None and margin is None:
        raise ValueError("a comparison with a baseline needs its non-inferiority margin")
    pairs = preference_pairs(records, split)
    if not any(not p.tie for p in pairs):
        raise InvalidArgument(
            "snapshot",
            f"holds no labelled (non-tie) preference pairs in its {split} split; cut it with "
            "eval_fraction > 0 or from more labels",
        )
    stats: dict[str, Any] = {"level": level, "n_resamples": n_resamples, "seed": seed}
    report, b_delta = _evaluate(Path(model_dir), pairs, snapshot_hash, batch_size, n_bins, stats)
    if baseline_dir is not None and margin is not None:
        report.baseline, b_delta_base = _evaluate(
            Path(baseline_dir), pairs, snapshot_hash, batch_size, n_bins, stats
        )
        report.paired = paired_difference(pairs, b_delta, b_delta_base, margin=margin, **stats)
    return report


def _evaluate(
    model_dir: Path,
    pairs: Sequence[Pair],
    snapshot_hash: str,
    batch_size: int,
    n_bins: int,
    stats: Mapping[str, Any],
) -> tuple[Report, np.ndarray]:
    """One model's report, and its Δ per pair, shape (B,)."""
    b_delta, truncated = _score(model_dir, pairs, batch_size)
    figures = report_figures(pairs, b_delta, n_bins=n_bins, **stats)
    report = Report(
        model=model_dir.name, snapshot_hash=snapshot_hash, truncated=truncated, **figures
    )
    return report, b_delta


def _score(model_dir: Path, pairs: Sequence[Pair], batch_size: int) -> tuple[np.ndarray, int]:
    if not (model_dir / "config.json").is_file():
        raise InvalidArgument("model", f"{model_dir} is not a Hugging Face model directory")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    # The scorer's context: inputs beyond it lose their oldest tokens, as in the service.
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    return pair_deltas(model, tokenizer, pairs, batch_size=batch_size, max_length=context)


def report_figures(
    pairs: Sequence[Pair],
    b_delta: np.ndarray,
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    n_bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """The report's figures from each pair's Δ = r(chosen) - r(rejected), shape (B,)."""
    b_tie = np.array([p.tie for p in pairs])
    b_correct = bt.pairwise_correct(b_delta)  # (B,)
    labelled = [i for i, p in enumerate(pairs) if not p.tie]
    ci_low, ci_high = bt.bootstrap_ci(
        b_correct[labelled],
        groups=[pairs[i].prompt_id or pairs[i].prompt for i in labelled],
        level=level,
        n_resamples=n_resamples,
        seed=seed,
    )
    by_category: dict[str, list[int]] = defaultdict(list)
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i in labelled:
        for category in pairs[i].rejected_error_categories or (NO_CATEGORY,):
            by_category[category].append(i)
        for tag in pairs[i].tags:
            by_tag[tag].append(i)
    ceiling, ceiling_labels = agreement_ceiling(pairs)
    b_prob = 0.5 * (1.0 + np.tanh(b_delta / 2.0))  # sigmoid(Δ) without overflow
    return {
        "n": len(labelled),
        "accuracy": float(b_correct[labelled].mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "ci_level": level,
        "ties": int(b_tie.sum()),
        "ece": bt.expected_calibration_error(b_prob, np.where(b_tie, bt.TIE_TARGET, 1.0), n_bins),
        "ece_bins": n_bins,
        "per_category": {k: _figure(b_correct, v) for k, v in sorted(by_category.items())},
        "per_tag": {k: _figure(b_correct, v) for k, v in sorted(by_tag.items())},
        "agreement_ceiling": ceiling,
        "ceiling_n": len(ceiling_labels),
        "ceiling_model_accuracy": (
            float(b_correct[ceiling_labels].mean()) if ceiling_labels else None
        ),
    }


def _figure(b_correct: np.ndarray, index: list[int]) -> Figure:
    return Figure(float(b_correct[index].mean()), len(index))


def paired_difference(
    pairs: Sequence[Pair],
    b_delta: np.ndarray,
    b_delta_base: np.ndarray,
    *,
    margin: float,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Paired:
    """The candidate's accuracy minus the baseline's on the same labelled pairs, from each
    model's Δ per pair, shape (B,), with a percentile bootstrap interval of the mean
    difference.

    Per pair the difference is the candidate's correctness minus the baseline's: -1, 0 or
    1, and ±0.5 where a model scores the two responses exactly alike. Paired, the pairs both
    models find easy or hard cancel out, so the interval is far narrower than two separate
    intervals would allow. The bootstrap resamples whole prompts (``bt.bootstrap_ci`` with
    groups), as the accuracy's own interval does: a snapshot holds several pairs about one
    prompt, one per pair of its responses and, cut with ``deduplicate=false``, one per
    annotator's label of the same pair, and they are not independent evidence. McNemar's
    test and the exact or score intervals for paired proportions (Newcombe 1998, Tango 1998)
    treat pairs as independent, and so would give too narrow an interval here, and admit
    no half-correct draw; the cluster bootstrap needs neither.

    A candidate is non-inferior when the interval's lower end is above -margin: with the
    two-sided 95 % interval, a one-sided test at 2.5 %, as in non-inferiority trials
    (CONSORT extension, Piaggio et al. 2012; FDA guidance on non-inferiority trials, 2016).
    """
    labelled = [i for i, p in enumerate(pairs) if not p.tie]
    b_difference = bt.pairwise_correct(b_delta) - bt.pairwise_correct(b_delta_base)  # (B,)
    low, high = bt.bootstrap_ci(
        b_difference[labelled],
        groups=[pairs[i].prompt_id or pairs[i].prompt for i in labelled],
        level=level,
        n_resamples=n_resamples,
        seed=seed,
    )
    return Paired(len(labelled), float(b_difference[labelled].mean()), low, high, margin)


# -- promotion ----------------------------------------------------------------------------


def promotion_check(report: Report) -> list[str]:
    """Why the model must not be promoted; empty when it may be. A reward model must be
    above chance with confidence (its interval's lower end above 0.5) and, beside a
    baseline, non-inferior to it on the same pairs (``non_inferiority``)."""
    failures = []
    if report.ci_low <= CHANCE:
        failures.append(
            f"pairwise accuracy {report.accuracy:.2f} ({report.ci_level:.0%} CI "
            f"{report.ci_low:.2f} to {report.ci_high:.2f}) is not above chance ({CHANCE}) "
            "with confidence"
        )
    verdict = non_inferiority(report)
    if verdict is not None and not verdict[0]:
        failures.append(verdict[1])
    return failures


def non_inferiority(report: Report) -> tuple[bool, str] | None:
    """Whether the candidate is non-inferior to its baseline, and the sentence that says
    so, naming the difference, its interval, the margin and the pairs; None without a
    baseline. Non-inferior: the interval of the paired accuracy difference (candidate
    minus baseline) has its lower end above -margin: a difference of a label or two, within
    the interval's noise, does not decide it."""
    base, paired = report.baseline, report.paired
    if base is None or paired is None:
        return None
    passed = paired.ci_low > -paired.margin
    return passed, (
        f"pairwise accuracy {report.accuracy:.3f} against {base.model}'s {base.accuracy:.3f} "
        f"on the same {paired.n} pairs: difference {paired.difference:+.3f} "
        f"({report.ci_level:.0%} CI {paired.ci_low:+.3f} to {paired.ci_high:+.3f}) "
        + ("is" if passed else "is not shown")
        + f" non-inferior, the interval's lower end {'above' if passed else 'not above'} "
        f"the margin -{paired.margin:g}"
    )


def require_promotable(report: Report) -> None:
    """Raise ``FailedPrecondition`` naming every failed figure, for a promotion gate."""
    failures = promotion_check(report)
    if failures:
        raise FailedPrecondition(
            f"reward model {report.model} is refused for promotion: " + "; ".join(failures)
        )
