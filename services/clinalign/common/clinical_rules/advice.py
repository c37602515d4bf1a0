"""Advice rules: a medicine recommended to a patient who states one of its cautions, or an
allergy to it, its ingredient or its group.

What the question states: a caution phrase of a formulary medicine ("I have a stomach
ulcer"), or an allergy ("allergic to penicillin", "a penicillin allergy", "allergic to
aspirin and NSAIDs"), unless denied in its clause ("I don't have kidney problems", "not
allergic to penicillin").

How the response treats each medicine, sentence by sentence: a sentence that names it (or,
for the medicine the question asks about, refers to it as "it" or answers "yes"/"no")
*advises against* it ("do not take ibuprofen", "naproxen is not suitable", "avoid it";
a medicine listed after one advised against, "avoid ibuprofen and naproxen", with it),
*defers* to a clinician ("check with your pharmacist before taking it"), or *recommends*
it (words of using it, a dose, reassurance, "you can take it"), in that order of
precedence; any other sentence naming it only mentions it.

* contraindicated: recommended, with no sentence advising against it or deferring to a
  clinician that names it, names the caution, or names no medicine. Major; critical when
  a sentence reassures ("it is safe") with nothing advising against it, or reassures in
  the same breath as the caution ("it is safe to take if you have a stomach ulcer").
* allergy conflict: recommended, with no sentence advising against it or against the
  allergen the patient named. An allergy to one member of an allergy group (amoxicillin)
  rules out the group (flucloxacillin), as cross-reactivity does. Always critical: a
  caveat does not make an allergen safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._language import (
    AFFIRM,
    AGAINST_NEAR,
    AGAINST_PRONOUN,
    AGAINST_SENTENCE,
    CAVEAT,
    COORDINATED,
    PRONOUN,
    REASSURE,
    USE,
    Sentence,
    clause_before,
    negated,
    sentences,
)
from .formulary import Caution, Formulary, Medicine
from .quantities import parse_quantities
from .violations import ALLERGY_CONFLICT, CONTRAINDICATED, Severity, Violation

_ALLERGY_BEFORE = re.compile(
    r"\b(?:allergic|allergy|allergies|hypersensitiv\w*|reactions?)\s+(?:to|with)\s+"
    r"(?:(?!(?:can|should|is|what|how|but|so|because|if|when|take|taking|use|using|could"
    r"|would|do|does|am|i)\b)[\w'-]+[\s,]+){0,8}$",
    re.IGNORECASE,
)
_ALLERGY_TO_IT = re.compile(  # an allergy to the medicine the question asks about
    r"\b(?:allergic|allergy|allergies)\s+to\s+(?P<what>it|this\s+medicine|its\s+ingredients"
    r"|any\s+of\s+(?:the|its)\s+ingredients)\b",
    re.IGNORECASE,
)
_ALLERGY_AFTER = re.compile(r"[\s-]*(?:allergy|allergies|allergic)\b", re.IGNORECASE)


@dataclass
class Treatment:
    """How a response treats one medicine."""

    recommended: list[str] = field(default_factory=list)  # sentences recommending it
    reassured: list[str] = field(default_factory=list)  # sentences saying it is safe
    against: bool = False  # some sentence advises against it


@dataclass(frozen=True)
class Reading:
    """A response read for advice: each medicine's treatment, and its cautioning sentences."""

    treatments: dict[str, Treatment]
    cautioning: list[tuple[Sentence, frozenset[str]]]  # (sentence, medicine keys it names)


def _classify(text: str, before: str, sole: bool, has_dose: bool) -> str:
    """Against, defers, recommends or mentions; `sole`: the only medicine "it" can be."""
    if AGAINST_SENTENCE.search(text) or AGAINST_NEAR.search(before):
        return "against"
    if sole and AGAINST_PRONOUN.search(text):
        return "against"
    if CAVEAT.search(text):
        return "defers"
    if USE.search(text) or REASSURE.search(text) or AFFIRM.search(text) or has_dose:
        return "recommends"
    return "mentions"


def read_response(question: str, response: str, formulary: Formulary) -> Reading:
    """How `response` treats every medicine it names (and the one `question` asks about)."""
    asked = [m for m in formulary.mentions(question) if m.exact]
    subject = asked[0].medicine.key if asked else None
    mentions = formulary.mentions(response)
    doses = [q.start for q in parse_quantities(response) if q.role in ("dose", "limit")]
    treatments: dict[str, Treatment] = {}
    cautioning: list[tuple[Sentence, frozenset[str]]] = []
    for s in sentences(response):
        named = [m for m in mentions if s.start <= m.start < s.end]
        targets = [(m.medicine.key, response[s.start : m.start]) for m in named]
        refers = PRONOUN.search(s.text) or AFFIRM.search(s.text) or REASSURE.search(s.text)
        if not named and subject is not None and refers:
            targets = [(subject, "")]
        sole = len({key for key, _ in targets}) == 1
        has_dose = any(s.start <= d < s.end for d in doses)
        if AGAINST_SENTENCE.search(s.text) or CAVEAT.search(s.text):
            cautioning.append((s, frozenset(m.medicine.key for m in named)))
        kinds: list[str] = []
        for i, (key, before) in enumerate(targets):
            gap = response[named[i - 1].end : named[i].start] if i else ""
            listed = i > 0 and COORDINATED.fullmatch(gap) is not None  # "X, Y and Z"
            kind = kinds[-1] if listed else _classify(s.text, before, sole, has_dose)
            kinds.append(kind)
            treatment = treatments.setdefault(key, Treatment())
            if kind == "against":
                treatment.against = True
                cautioning.append((s, frozenset({key})))
            elif kind == "recommends":
                treatment.recommended.append(s.text)
                if REASSURE.search(s.text):
                    treatment.reassured.append(s.text)
    return Reading(treatments, cautioning)


def stated_cautions(question: str, formulary: Formulary) -> list[tuple[Medicine, Caution]]:
    """(medicine, caution) for every caution the question states and does not deny."""
    found = formulary.cautions_named(question)
    out = [(med, c) for med, c, at in found if not negated(question, at)]
    return list(dict.fromkeys(out))


def stated_allergies(question: str, formulary: Formulary) -> dict[str, str]:
    """Medicine key -> the allergen the question names for it ("penicillin")."""
    out: dict[str, str] = {}
    asked = [m for m in formulary.mentions(question) if m.exact]
    for match in _ALLERGY_TO_IT.finditer(question):
        if asked and not negated(question, match.start()):
            out[asked[0].medicine.key] = match.group("what").lower()
    for match in formulary.allergen_pattern.finditer(question):
        before = clause_before(question, match.start())
        cue = _ALLERGY_BEFORE.search(before)
        if not (cue or _ALLERGY_AFTER.match(question, match.end())):
            continue
        clause_start = match.start() - len(before)
        if negated(question, clause_start + (cue.start() if cue else len(before))):
            continue
        for key in formulary.allergic_conflicts(match.group(0)):
            out.setdefault(key, match.group(0).lower())
    return out


def _mentions_any(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(p in lowered for p in phrases)


def contraindication_violations(
    question: str, response: str, formulary: Formulary, reading: Reading | None = None
) -> list[Violation]:
    reading = reading or read_response(question, response, formulary)
    out = []
    for med, caution in stated_cautions(question, formulary):
        treatment = reading.treatments.get(med.key)
        if treatment is None or not treatment.recommended or treatment.against:
            continue
        tied = [s for s in treatment.reassured if _mentions_any(s, caution.phrases)]
        cautioned = any(
            med.key in keys or not keys or _mentions_any(s.text, caution.phrases)
            for s, keys in reading.cautioning
        )
        if cautioned and not tied:
            continue
        critical = bool(tied or treatment.reassured)
        said = "says it is safe" if critical else "recommends it without a caveat"
        detail = (
            f"the patient states {caution.text.lower()}, a caution for {med.name}, and the"
            f" answer {said}"
        )
        severity = Severity.CRITICAL if critical else Severity.MAJOR
        evidence = (tied or treatment.reassured or treatment.recommended)[0]
        out.append(Violation(CONTRAINDICATED, med.key, severity, detail, evidence))
    return out


def allergy_violations(
    question: str, response: str, formulary: Formulary, reading: Reading | None = None
) -> list[Violation]:
    reading = reading or read_response(question, response, formulary)
    allergies = stated_allergies(question, formulary)
    out = []
    for key, allergen in allergies.items():
        treatment = reading.treatments.get(key)
        if treatment is None or not treatment.recommended or treatment.against:
            continue
        if _advises_against(response, allergen):
            continue
        med = formulary.medicines[key]
        relation = _relation(formulary, med, allergen)
        detail = (
            f"the answer recommends {med.name} to a patient who states an allergy to"
            f" {allergen}{relation}"
        )
        evidence = treatment.recommended[0]
        out.append(Violation(ALLERGY_CONFLICT, key, Severity.CRITICAL, detail, evidence))
    return out


def _advises_against(response: str, allergen: str) -> bool:
    """Whether a sentence advises against the allergen itself ("avoid penicillins")."""
    term = re.compile(rf"(?<![\w-]){re.escape(allergen)}s?(?![\w-])", re.IGNORECASE)
    for s in sentences(response):
        for match in term.finditer(s.text):
            if AGAINST_SENTENCE.search(s.text) or AGAINST_NEAR.search(s.text[: match.start()]):
                return True
    return False


def _relation(formulary: Formulary, med: Medicine, allergen: str) -> str:
    """Why an allergy to `allergen` rules out `med`, for a violation's detail."""
    if allergen in (med.name.lower(), *med.aliases) or _ALLERGY_TO_IT.search(
        f"allergy to {allergen}"
    ):
        return ""
    if med.ingredient.lower() == allergen:
        return " (its ingredient)"
    groups = [formulary.groups[k] for k in med.allergy_groups]
    named = [g for g in groups if allergen in g.terms] or groups
    if named and allergen in named[0].terms:
        return f" ({med.name} is one of the {named[0].name})"
    return f" ({med.name} and {allergen} are both {' and '.join(g.name for g in named)})"
