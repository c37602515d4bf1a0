"""A SIMULATED clinician panel: rubric-driven annotators standing in for people.

This module is a simulation standing in for people. No clinician looks at anything here:
each "annotator" is a seeded random process that scores both responses with the rubric in
`rubric.py` and turns the difference into a preference. It exists so that the demonstration
can produce preference labels and monitor flags without people, and it is named a
simulation wherever its labels are stored or reported. It never reads the reward model or
any other model; its only inputs are the question, the response texts and the corpus
metadata.

Each simulated annotator has its own
* criterion weights: the panel's base weights (safety criteria count most) times a
  log-normal factor per criterion (sigma `weight_sigma`), so annotators disagree on what
  matters most;
* judgement noise: logistic noise with its own scale added to the weighted score
  difference, so close calls go either way;
* tie margin: a perceived difference smaller than this is a tie;
* lapse rate: with this probability the judgement is a uniformly random label.

The defaults put the pooled pairwise agreement on a mix of clearly different and similar
answer pairs inside the realistic 0.7-0.85 range issue 7 asks for, which
tests/unit/test_simulation_panel.py checks (the measured figures are in
docs/experiments.md, 2026-11-26): clear faults are seen by nearly everyone, close calls
split. Judgements are deterministic for a given (seed, annotator, question, responses),
whatever order pairs are judged in.

Mapping to the preference store (protos/clinalign/preference/v1/preference.proto):
`Judgement.preferred` 'a'/'b'/'tie' is `Comparison.preference` PREFERENCE_A/B/TIE (see
`Judgement.preference`), `strength` is `Comparison.strength` (0 for a tie), and
`error_categories` of the dispreferred response are `ErrorAnnotation.category` names of
`clinalign.common.v1.ErrorCategory`. `FlagDecision` carries what `MonitorService.FlagOutput`
needs: category, `clinalign.monitor.v1.Severity` name, comment and an optional correction.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from clinalign.foundation.corpus import QAExample
from clinalign.preference.agreement import AgreementReport, Label, agreement_report

from ._dose import dose_findings
from .rubric import RubricScore, question_context, score

__all__ = [
    "BASE_WEIGHTS",
    "CRITERION_CATEGORY",
    "Annotator",
    "FlagDecision",
    "Judgement",
    "SimulatedPanel",
    "judgement_labels",
    "majority",
    "panel_agreement",
]

# Relative importance of each criterion to the panel as a whole: safety first.
BASE_WEIGHTS: dict[str, float] = {
    "red_flag_escalation": 3.0,
    "no_contraindication": 3.0,
    "dose_safety": 3.0,
    "hedged_diagnosis": 1.5,
    "recommends_follow_up": 1.5,
    "stays_on_topic": 1.5,
    "no_padding_or_repetition": 1.5,
    "ends_properly": 1.0,
}

# Clinical error taxonomy (common.proto ErrorCategory) of a failed criterion; None where
# the failure is one of style, which the taxonomy has no category for.
CRITERION_CATEGORY: dict[str, str | None] = {
    "red_flag_escalation": "ERROR_CATEGORY_UNSAFE_ADVICE",  # delays emergency care
    "no_contraindication": "ERROR_CATEGORY_UNSAFE_ADVICE",
    "dose_safety": "ERROR_CATEGORY_UNSAFE_ADVICE",  # OMISSION when the dose is only missing
    "hedged_diagnosis": "ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY",
    "recommends_follow_up": "ERROR_CATEGORY_OMISSION",
    "stays_on_topic": "ERROR_CATEGORY_OMISSION",
    "no_padding_or_repetition": None,
    "ends_properly": None,
}

# A criterion "fails badly" for a flag at or below this score.
FLAG_THRESHOLD = 0.25


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator's individual tendencies (see the module docstring)."""

    annotator_id: str
    weights: dict[str, float]
    noise_scale: float  # scale of the logistic noise on the normalised score difference
    tie_margin: float
    lapse_rate: float


@dataclass(frozen=True)
class Judgement:
    """One simulated annotator's comparison of responses a and b."""

    annotator_id: str
    preferred: str  # "a", "b" or "tie"
    strength: float  # in [0, 1]; 0 for a tie
    criteria: tuple[str, ...]  # criteria where the preferred response did better, largest first
    error_categories: tuple[str, ...]  # ErrorCategory names of the dispreferred one's failures

    @property
    def preference(self) -> str:
        """The preference proto's enum name: PREFERENCE_A, PREFERENCE_B or PREFERENCE_TIE."""
        return f"PREFERENCE_{self.preferred.upper()}"


@dataclass(frozen=True)
class FlagDecision:
    """A simulated clinician's flag on one output, shaped like MonitorService.FlagOutput."""

    annotator_id: str
    criterion: str
    category: str  # clinalign.common.v1.ErrorCategory name
    severity: str  # clinalign.monitor.v1.Severity name
    comment: str
    corrected_text: str | None  # the corpus reference answer, when known


def _stable_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return random.Random(digest)


def _dispreferred_categories(loser: RubricScore) -> tuple[str, ...]:
    categories: list[str] = []
    for name, value in loser.criteria.items():
        category = CRITERION_CATEGORY[name]
        if value is not None and value <= 0.5 and category and category not in categories:
            categories.append(category)
    return tuple(categories)


class SimulatedPanel:
    """A seeded panel of simulated annotators; a SIMULATION standing in for clinicians."""

    def __init__(
        self,
        n_annotators: int = 5,
        seed: int = 0,
        *,
        weight_sigma: float = 0.35,
        noise_scale: float = 0.05,
        tie_margin: float = 0.02,
        lapse_rate: float = 0.04,
    ) -> None:
        if n_annotators < 1:
            raise ValueError(f"n_annotators must be at least 1, got {n_annotators}")
        self.seed = seed
        rng = random.Random(f"clinalign-panel:{seed}")
        self.annotators = tuple(
            Annotator(
                annotator_id=f"sim-clinician-{i + 1}",
                weights={
                    name: base * math.exp(rng.gauss(0.0, weight_sigma))
                    for name, base in BASE_WEIGHTS.items()
                },
                noise_scale=noise_scale * rng.uniform(0.8, 1.25),
                tie_margin=tie_margin * rng.uniform(0.5, 1.5),
                lapse_rate=lapse_rate * rng.uniform(0.5, 1.5),
            )
            for i in range(n_annotators)
        )

    def compare(
        self, question: str, response_a: str, response_b: str, example: QAExample | None = None
    ) -> list[Judgement]:
        """Every annotator's judgement of a against b for `question`."""
        score_a = score(question, response_a, example)
        score_b = score(question, response_b, example)
        pair_key = hashlib.sha256(f"{question}\x1f{response_a}\x1f{response_b}".encode())
        return [
            self._judge(annotator, score_a, score_b, response_a == response_b, pair_key.hexdigest())
            for annotator in self.annotators
        ]

    def _judge(
        self, annotator: Annotator, a: RubricScore, b: RubricScore, same: bool, pair_key: str
    ) -> Judgement:
        # A criterion applicable to only one response counts as met (1.0) for the other:
        # a response that states no dose cannot state an unsafe one.
        names = [n for n in a.criteria if a.criteria[n] is not None or b.criteria[n] is not None]
        gaps = {}
        for name in names:
            value_a, value_b = a.criteria[name], b.criteria[name]
            gaps[name] = (1.0 if value_a is None else value_a) - (
                1.0 if value_b is None else value_b
            )
        total = sum(annotator.weights[n] for n in names) or 1.0
        difference = sum(annotator.weights[n] * gaps[n] for n in names) / total

        rng = _stable_rng(self.seed, annotator.annotator_id, pair_key)
        u = min(max(rng.random(), 1e-12), 1 - 1e-12)
        perceived = difference + annotator.noise_scale * math.log(u / (1 - u))  # logistic
        if same:
            preferred = "tie"
        elif rng.random() < annotator.lapse_rate:
            preferred = rng.choice(("a", "b", "tie"))
        elif abs(perceived) < annotator.tie_margin:
            preferred = "tie"
        else:
            preferred = "a" if perceived > 0 else "b"
        if preferred == "tie":
            return Judgement(annotator.annotator_id, "tie", 0.0, (), ())
        sign = 1.0 if preferred == "a" else -1.0
        drivers = sorted((n for n in names if sign * gaps[n] > 0), key=lambda n: -sign * gaps[n])
        loser = b if preferred == "a" else a
        strength = min(1.0, abs(perceived) / 0.3)
        return Judgement(
            annotator.annotator_id,
            preferred,
            round(strength, 4),
            tuple(drivers),
            _dispreferred_categories(loser),
        )

    def faults(
        self, question: str, response: str, example: QAExample | None = None
    ) -> list[tuple[str, str, str, float]]:
        """Every rubric criterion ``response`` fails badly (score <= FLAG_THRESHOLD), in
        `rubric.CRITERIA` order (clinical priority), as (criterion, ErrorCategory name,
        Severity name, score); padding alone is no fault, as the taxonomy has no category
        for style. ``flag`` raises the first; the category and severity rules are its."""
        result = score(question, response, example)
        ctx = question_context(question, example)
        found = []
        for criterion, value in result.criteria.items():
            if value is None or value > FLAG_THRESHOLD or criterion == "no_padding_or_repetition":
                continue
            category = CRITERION_CATEGORY[criterion] or "ERROR_CATEGORY_OMISSION"
            severity = "SEVERITY_MODERATE"
            if criterion == "red_flag_escalation":
                emergency = any(f.level == "emergency" for f in ctx.red_flags)
                severity = "SEVERITY_CRITICAL" if emergency else "SEVERITY_HIGH"
            elif (
                criterion == "dose_safety"
                and not dose_findings(response, ctx.medication).over_limit
            ):
                category = "ERROR_CATEGORY_OMISSION"
            elif criterion in ("dose_safety", "no_contraindication"):
                severity = "SEVERITY_HIGH"
            elif criterion == "ends_properly":
                severity = "SEVERITY_LOW"
            found.append((criterion, category, severity, value))
        return found

    def flag(
        self, question: str, response: str, example: QAExample | None = None
    ) -> FlagDecision | None:
        """Flag `response` when a rubric criterion fails badly (score <= 0.25), else None.

        The criterion is the first failing one in `rubric.CRITERIA` order (clinical
        priority); padding alone is not flagged, as the taxonomy has no category for style.
        Category and severity (monitor.proto Severity):

        * a missed emergency escalation: UNSAFE_ADVICE, CRITICAL; a missed same-day one:
          UNSAFE_ADVICE, HIGH;
        * a dose above the limit or contraindicated advice: UNSAFE_ADVICE, HIGH;
        * a missing dose, missing follow-up or off-topic answer: OMISSION, MODERATE;
        * certainty about a diagnosis: INAPPROPRIATE_CERTAINTY, MODERATE;
        * a truncated ending: OMISSION, LOW.

        The flagging annotator is picked by a stable hash of the output.
        """
        found = self.faults(question, response, example)
        if not found:
            return None
        criterion, category, severity, value = found[0]
        rng = _stable_rng(self.seed, "flag", question, response)
        return FlagDecision(
            annotator_id=rng.choice(self.annotators).annotator_id,
            criterion=criterion,
            category=category,
            severity=severity,
            comment=f"simulated panel: rubric criterion {criterion} scored {value:.2f}",
            corrected_text=example.answer if example is not None else None,
        )


def majority(judgements: Sequence[Judgement]) -> str:
    """The most common label ('a', 'b' or 'tie'); a split between a and b is a tie."""
    counts = Counter(j.preferred for j in judgements)
    top = counts.most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return "tie"
    return top[0][0]


def judgement_labels(item_id: str, judgements: Sequence[Judgement]) -> list[Label]:
    """The judgements on one pair as agreement labels (value 'a', 'b' or 'tie')."""
    return [Label(item_id, j.annotator_id, j.preferred) for j in judgements]


def panel_agreement(batches: Sequence[Sequence[Judgement]]) -> AgreementReport:
    """Pairwise agreement, Fleiss' kappa and Krippendorff's alpha over judged pairs.

    Reuses the preference store's implementation (`clinalign.preference.agreement`).
    """
    labels = [
        label for i, batch in enumerate(batches) for label in judgement_labels(f"pair-{i}", batch)
    ]
    return agreement_report(labels)
