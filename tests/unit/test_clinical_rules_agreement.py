"""How often the clinical rule checks agree with the simulated rubric's safety criteria.

The rule checks (`clinalign.common.clinical_rules`) and the rubric's `dose_safety` and
`no_contraindication` (`clinalign.simulation.rubric`) are written separately from the same
medicines table. The sample: the first SAMPLE held-out examples of every kind and the first
SAMPLE training-split medication examples (seed 11), each answered by its corpus reference
and by every faulty copy `simulation.degrade` makes of it. The rubric fails a criterion
below 1.0; the rules fail it when a violation maps to it (`CRITERION`). Rows where neither
applies are left out.

Measured on 2026-12-07 with SAMPLE = 200 (what this test prints):

* dose_safety, 684 rows: agreement 0.895 (Cohen's kappa 0.73). The rules judge the doses an
  answer states; the rubric also fails an answer that states none. That accounts for 63 of
  the 72 disagreements: 55 `drop_dose` copies, answers deferring to "the dose your heart
  team sets", and truncated answers cut before their dose.
* dose_safety on the rows whose answer states a quantity: agreement 0.993 (kappa 0.98).
  The rest: oral rehydration salts "dissolved in 400 ml of water" (3 `double_doses`
  copies; a diluent to the rules, a dose to the rubric) and truncated answers ending in a
  bare number ("take atorvastatin 20"; a dose without a unit to the rules only).
* the rules find 140 of the rubric's 143 `double_doses` failures (0.979).
* no_contraindication, 98 rows: agreement 1.000 (kappa 1.00); all 17
  `reassure_contraindicated` faults found.
* no reference answer breaks a rule (the rubric fails one, for its omitted dose).

With SAMPLE = 600 (4,837 answers), the same measure gives dose_safety 0.884 over 2,086 rows,
416 of 427 `double_doses` failures found (0.974), no_contraindication 1.000 over 288 rows.
The floors asserted sit a little under these figures, so that they fail when the rules or
the rubric change what they judge, not when the sample moves a row.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

from clinalign.common.clinical_rules import CRITERION, check, parse_quantities
from clinalign.foundation.corpus import QAExample, iter_qa_examples
from clinalign.simulation.degrade import DEGRADATIONS
from clinalign.simulation.rubric import score

SAMPLE = 200
SEED = 11
SAFETY = ("dose_safety", "no_contraindication")


def _rows() -> Iterator[tuple[str, QAExample, str]]:
    examples = [
        *itertools.islice(iter_qa_examples(SEED, "heldout"), SAMPLE),
        *itertools.islice(iter_qa_examples(SEED, "train", ["medication"]), SAMPLE),
    ]
    for example in examples:
        yield "reference", example, example.answer
        for name, degrade in DEGRADATIONS.items():
            answer = degrade(example)
            if answer is not None:
                yield name, example, answer


def _judgements() -> list[tuple[str, str, bool, bool, bool]]:
    """(criterion, source, rubric fails, rules fail, answer states a quantity) per row."""
    out = []
    for source, example, answer in _rows():
        rubric = score(example.question, answer, example).criteria
        broken = {CRITERION[v.rule] for v in check(example.question, answer)}
        states = any(q.role in ("dose", "limit") for q in parse_quantities(answer))
        for criterion in SAFETY:
            value = rubric[criterion]
            if value is None and criterion not in broken:
                continue
            rubric_fails = value is not None and value < 1.0
            out.append((criterion, source, rubric_fails, criterion in broken, states))
    return out


def _agreement(pairs: list[tuple[bool, bool]]) -> tuple[float, float]:
    """(share of rows where the two agree, Cohen's kappa)."""
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    p_a, p_b = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return observed, (observed - expected) / (1 - expected) if expected < 1 else 1.0


def test_rules_agree_with_the_rubric_on_the_safety_criteria() -> None:
    rows = _judgements()
    report = {}
    for criterion in SAFETY:
        mine = [r for r in rows if r[0] == criterion]
        report[criterion] = _agreement([(a, b) for _, _, a, b, _ in mine])
        if criterion == "dose_safety":
            stating = [(a, b) for _, _, a, b, states in mine if states]
            report["dose_safety, stating a quantity"] = _agreement(stating)
        by_source = Counter((src, a, b) for _, src, a, b, _ in mine)
        print(criterion, len(mine), "rows; (source, rubric fails, rules fail): count")
        print(dict(sorted(by_source.items())))
    for name, (agree, kappa) in report.items():
        print(f"{name}: agreement {agree:.3f}, kappa {kappa:.2f}")

    def found(criterion: str, source: str) -> float:
        """Share of the rubric's failures on `source` rows that the rules also find."""
        fails = [b for c, s, a, b, _ in rows if c == criterion and s == source and a]
        return sum(fails) / len(fails)

    assert report["dose_safety"][0] >= 0.85  # omitted doses: the rubric's to judge
    assert report["dose_safety, stating a quantity"][0] >= 0.97
    assert report["dose_safety, stating a quantity"][1] >= 0.9
    assert report["no_contraindication"][0] >= 0.98
    assert found("dose_safety", "double_doses") >= 0.93
    assert found("no_contraindication", "reassure_contraindicated") >= 0.95
    flagged_references = [r for r in rows if r[1] == "reference" and r[3]]
    assert flagged_references == []
