"""The simulated clinician panel: preferences, realistic agreement, flags, proto mapping."""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

import clinalign.simulation
from clinalign.common.v1 import common_pb2
from clinalign.foundation.corpus import QAExample, iter_qa_examples
from clinalign.monitor.v1 import monitor_pb2
from clinalign.preference.v1 import preference_pb2
from clinalign.simulation import panel as panel_module
from clinalign.simulation.degrade import DEGRADATIONS
from clinalign.simulation.panel import (
    CRITERION_CATEGORY,
    Judgement,
    SimulatedPanel,
    majority,
    panel_agreement,
)

SPECIFIC = [n for n in DEGRADATIONS if n not in ("repeat_sentences", "truncate")]


def _corpus_pairs(
    seed: int, n: int = 300, n_similar: int = 100
) -> list[tuple[QAExample, str, str, str]]:
    """(example, better, worse, how) pairs: reference against a degraded reference, and
    `n_similar` pairs of two reference answers for the same kind and topic (how="similar")."""
    examples = list(itertools.islice(iter_qa_examples(seed=seed, split="train"), n))
    pairs = []
    for i, example in enumerate(examples):
        names = [name for name in SPECIFIC if DEGRADATIONS[name](example) is not None]
        if not names or i % 3 == 0:
            names = [n for n in ("repeat_sentences", "truncate") if DEGRADATIONS[n](example)]
        name = names[i % len(names)]
        degraded = DEGRADATIONS[name](example)
        assert degraded is not None
        pairs.append((example, example.answer, degraded, name))
    by_topic: dict[tuple[str, str], list[QAExample]] = defaultdict(list)
    for example in examples:
        by_topic[(example.kind, example.topic)].append(example)
    similar = 0
    for example in examples:
        others = [o for o in by_topic[(example.kind, example.topic)] if o.answer != example.answer]
        if others and similar < n_similar:
            pairs.append((example, example.answer, others[0].answer, "similar"))
            similar += 1
    return pairs


def _judge_all(
    panel: SimulatedPanel, pairs: list[tuple[QAExample, str, str, str]]
) -> list[tuple[list[Judgement], str, str]]:
    """Judge every pair, the better answer as 'a' on even pairs and 'b' on odd ones."""
    out = []
    for i, (example, better, worse, how) in enumerate(pairs):
        a, b, want = (better, worse, "a") if i % 2 == 0 else (worse, better, "b")
        out.append((panel.compare(example.question, a, b, example), want, how))
    return out


def test_the_panel_says_it_is_a_simulation_and_reads_no_model() -> None:
    assert "SIMULATED" in (panel_module.__doc__ or "")
    assert "a simulation standing in for people" in " ".join((panel_module.__doc__ or "").split())
    assert "never reads the reward model" in " ".join((clinalign.simulation.__doc__ or "").split())
    package = Path(clinalign.simulation.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                assert not any("reward" in n or "torch" in n or "generation" in n for n in names), (
                    path
                )


@pytest.mark.parametrize("seed", [0, 1])
def test_panel_prefers_the_better_answer_with_realistic_agreement(seed: int) -> None:
    panel = SimulatedPanel(n_annotators=5, seed=seed)
    judged = _judge_all(panel, _corpus_pairs(seed))
    clear = [(js, want) for js, want, how in judged if how != "similar"]
    individual = sum(j.preferred == want for js, want in clear for j in js) / (5 * len(clear))
    by_majority = sum(majority(js) == want for js, want in clear) / len(clear)
    report = panel_agreement([js for js, _, _ in judged])
    print(
        f"seed {seed}: {len(judged)} pairs ({len(clear)} reference vs degraded); "
        f"annotator accuracy {individual:.3f}, majority accuracy {by_majority:.3f}; "
        f"pairwise agreement {report.raw_agreement:.3f}, Fleiss kappa {report.fleiss_kappa:.3f}, "
        f"Krippendorff alpha {report.krippendorff_alpha:.3f}"
    )
    assert individual > 0.85
    assert by_majority > 0.95
    assert report.raw_agreement is not None and 0.70 <= report.raw_agreement <= 0.85
    assert report.krippendorff_alpha is not None and report.krippendorff_alpha > 0.4
    for how in DEGRADATIONS:
        subset = [(js, want) for js, want, h in judged if h == how]
        if subset:
            share = sum(majority(js) == want for js, want in subset) / len(subset)
            assert share >= 0.8, how


def test_judgements_name_the_criteria_and_error_categories() -> None:
    example = next(iter_qa_examples(seed=0, split="train", kinds=["escalation"]))
    degraded = DEGRADATIONS["drop_escalation"](example)
    assert degraded is not None
    judgements = SimulatedPanel(seed=0).compare(example.question, example.answer, degraded, example)
    winners = [j for j in judgements if j.preferred == "a"]
    assert winners
    for j in winners:
        assert j.criteria[0] == "red_flag_escalation"
        assert "ERROR_CATEGORY_UNSAFE_ADVICE" in j.error_categories
        assert 0.0 < j.strength <= 1.0
        assert j.preference == "PREFERENCE_A"


def test_judgements_are_deterministic_and_independent_of_order() -> None:
    pairs = _corpus_pairs(seed=4, n=20, n_similar=5)
    forward = _judge_all(SimulatedPanel(seed=7), pairs)
    panel = SimulatedPanel(seed=7)
    backward = [
        panel.compare(e.question, *((b, w) if i % 2 == 0 else (w, b)), e)
        for i, (e, b, w, _) in reversed(list(enumerate(pairs)))
    ]
    assert [js for js, _, _ in forward] == list(reversed(backward))
    other = _judge_all(SimulatedPanel(seed=8), pairs)
    assert [js for js, _, _ in other] != [js for js, _, _ in forward]


def test_identical_responses_are_a_tie_for_everyone() -> None:
    example = next(iter_qa_examples(seed=0))
    judgements = SimulatedPanel(seed=0).compare(example.question, example.answer, example.answer)
    assert {j.preferred for j in judgements} == {"tie"}
    assert {j.strength for j in judgements} == {0.0}
    assert majority(judgements) == "tie"


def test_annotators_differ_and_the_panel_size_is_checked() -> None:
    panel = SimulatedPanel(n_annotators=3, seed=0)
    assert [a.annotator_id for a in panel.annotators] == [
        "sim-clinician-1",
        "sim-clinician-2",
        "sim-clinician-3",
    ]
    assert len({a.weights["dose_safety"] for a in panel.annotators}) == 3
    with pytest.raises(ValueError, match="n_annotators must be at least 1, got 0"):
        SimulatedPanel(n_annotators=0)


def test_names_map_onto_the_protos() -> None:
    assert {f"PREFERENCE_{p.upper()}" for p in ("a", "b", "tie")} <= set(
        preference_pb2.Preference.keys()
    )
    categories = {c for c in CRITERION_CATEGORY.values() if c}
    assert categories <= set(common_pb2.ErrorCategory.keys())


def _flag(kind: str, degradation: str | None) -> tuple[QAExample, panel_module.FlagDecision | None]:
    for example in iter_qa_examples(seed=5, split="train", kinds=[kind]):
        response = example.answer if degradation is None else DEGRADATIONS[degradation](example)
        if response is not None:
            return example, SimulatedPanel(seed=0).flag(example.question, response, example)
    raise AssertionError("unreachable: the stream is endless")


@pytest.mark.parametrize(
    ("kind", "degradation", "criterion", "category", "severities"),
    [
        (
            "escalation",
            "drop_escalation",
            "red_flag_escalation",
            "ERROR_CATEGORY_UNSAFE_ADVICE",
            {"SEVERITY_CRITICAL", "SEVERITY_HIGH"},
        ),
        (
            "medication",
            "double_doses",
            "dose_safety",
            "ERROR_CATEGORY_UNSAFE_ADVICE",
            {"SEVERITY_HIGH"},
        ),
        (
            "medication",
            "drop_dose",
            "dose_safety",
            "ERROR_CATEGORY_OMISSION",
            {"SEVERITY_MODERATE"},
        ),
        (
            "medication",
            "reassure_contraindicated",
            "no_contraindication",
            "ERROR_CATEGORY_UNSAFE_ADVICE",
            {"SEVERITY_HIGH"},
        ),
        (
            "symptom",
            "overclaim",
            "hedged_diagnosis",
            "ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY",
            {"SEVERITY_MODERATE"},
        ),
        (
            "follow_up",
            "drop_follow_up",
            "recommends_follow_up",
            "ERROR_CATEGORY_OMISSION",
            {"SEVERITY_MODERATE"},
        ),
        ("triage", "truncate", "ends_properly", "ERROR_CATEGORY_OMISSION", {"SEVERITY_LOW"}),
    ],
)
def test_flag_bad_outputs(
    kind: str, degradation: str, criterion: str, category: str, severities: set[str]
) -> None:
    example, decision = _flag(kind, degradation)
    assert decision is not None
    assert decision.criterion == criterion
    assert decision.category == category
    assert decision.severity in severities
    assert decision.severity in monitor_pb2.Severity.keys()  # noqa: SIM118
    assert decision.category in common_pb2.ErrorCategory.keys()  # noqa: SIM118
    assert decision.corrected_text == example.answer
    assert decision.annotator_id.startswith("sim-clinician-")


def test_reference_answers_are_rarely_flagged() -> None:
    panel = SimulatedPanel(seed=0)
    examples = list(itertools.islice(iter_qa_examples(seed=6, split="heldout"), 200))
    flagged = [e for e in examples if panel.flag(e.question, e.answer, e) is not None]
    print(f"{len(flagged)} of {len(examples)} reference answers flagged")
    assert len(flagged) / len(examples) < 0.15
