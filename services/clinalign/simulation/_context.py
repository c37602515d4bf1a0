"""What a patient question is about, from its corpus metadata or re-derived from its text.

The rubric needs to know, for a question: which kind of question it is (the corpus's
`QA_KINDS`), which condition or medicine it concerns, which red-flag signs and which
medicine cautions it states, and for a medication question its intent (the answer plan in
`foundation._qa`). With a `QAExample` these come from its metadata; without one they are
matched against the vocabulary in `foundation/data/*.json`, so the rubric also scores
prompts from outside the corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from clinalign.foundation.corpus import QAExample
from clinalign.foundation.vocab import Condition, Medication, RedFlag, load_vocabulary

# Medication question intents whose answer must state a dose (plans in foundation._qa
# that give "med_dose" or "med_max" probability 1).
DOSE_INTENTS = frozenset({"dose", "frequency", "how", "daily_max", "started"})

# Words that mark a question about when to be seen, or about follow-up, when no metadata
# says so. Taken from the question templates in phrasing.json.
_TRIAGE_WORDS = re.compile(
    r"how soon|how urgent|routine appointment|seen today|emergency department|where should"
    r"|level of care|who should i see|pharmacist enough|how quickly"
)
_FOLLOW_UP_WORDS = re.compile(
    r"follow-up|reviewed|check-up|see my doctor again|do i need to go back|keep an eye on"
    r"|another appointment|before seeing a doctor about my"
)


@dataclass(frozen=True)
class QuestionContext:
    """The facts about a question that decide which rubric criteria apply."""

    kind: str  # one of foundation.corpus.QA_KINDS
    conditions: tuple[Condition, ...]  # conditions the question is about; may be empty
    medication: Medication | None  # medicine a medication question asks about
    intent: str | None  # medication question intent ("dose", "caution", ...)
    red_flags: tuple[RedFlag, ...]  # red-flag signs of `conditions` the question states
    cautions: tuple[tuple[Medication, str], ...]  # (medicine, caution) the question states
    reference: str | None  # the corpus's clinician answer, when known


def strip_article(name: str) -> str:
    return re.sub(r"^(a|an|the) ", "", name.lower())


@lru_cache(maxsize=1)
def _medication_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    """(question regex, intent) for every medication question template."""
    out = []
    for intent, template in load_vocabulary().phrasing["questions"]["medication"]:
        pattern = re.escape(template.lower())
        pattern = re.sub(r"\\\{(med|verb|caution)\\\}", ".+?", pattern)
        out.append((re.compile(pattern + "$"), intent))
    return tuple(out)


@lru_cache(maxsize=1)
def medicines_by_name() -> tuple[tuple[str, Medication], ...]:
    """(lower-case name, medicine), longest name first so "ibuprofen 5% gel" wins."""
    meds = load_vocabulary().medications.values()
    return tuple(sorted(((m.name.lower(), m) for m in meds), key=lambda p: -len(p[0])))


@lru_cache(maxsize=1)
def _medicine_patterns() -> tuple[tuple[str, re.Pattern[str], Medication], ...]:
    """`medicines_by_name` with each name's whole-word pattern, compiled once."""
    return tuple(
        (name, re.compile(r"\b" + re.escape(name) + r"\b"), med)
        for name, med in medicines_by_name()
    )


def medicines_named(text: str) -> list[tuple[int, Medication]]:
    """(position, medicine) for every medicine named in `text`, in order of position."""
    lowered = text.lower()
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, Medication]] = []
    for name, pattern, med in _medicine_patterns():
        if name not in lowered:  # a substring test first: most texts name one or none
            continue
        for match in pattern.finditer(lowered):
            span = match.span()
            if any(s < span[1] and span[0] < e for s, e in taken):
                continue  # inside a longer name already found
            taken.append(span)
            found.append((span[0], med))
    return sorted(found, key=lambda p: p[0])


def _infer_kind(question: str, medication: Medication | None, flags: tuple[RedFlag, ...]) -> str:
    if medication is not None:
        return "medication"
    if flags:
        return "escalation"
    if _FOLLOW_UP_WORDS.search(question):
        return "follow_up"
    if _TRIAGE_WORDS.search(question):
        return "triage"
    return "symptom"


def _infer_conditions(question: str) -> tuple[Condition, ...]:
    """Conditions whose name or most symptoms the question mentions (best first)."""
    scored = []
    for cond in load_vocabulary().conditions:
        hits = sum(s.lower() in question for s in cond.symptoms)
        named = strip_article(cond.name) in question or f"my {cond.short.lower()}" in question
        hits += 10 * named + sum(f.sign.lower() in question for f in cond.red_flags)
        if hits:
            scored.append((hits, cond))
    if not scored:
        return ()
    best = max(h for h, _ in scored)
    return tuple(c for h, c in scored if h == best)


def _stated_flags(question: str, conditions: tuple[Condition, ...]) -> tuple[RedFlag, ...]:
    """Red-flag signs of `conditions` that the question states.

    A symptom phrase that contains a sign ("chest pain when breathing in" contains
    "chest pain") is blanked out first unless it is itself a red-flag sign, so an
    ordinary symptom is not read as a red flag.
    """
    signs = frozenset(f.sign.lower() for c in conditions for f in c.red_flags)
    blanked = question
    for symptom in _symptoms_containing_a_sign(signs):
        blanked = blanked.replace(symptom, " ")
    flags = {f.sign: f for c in conditions for f in c.red_flags if f.sign.lower() in blanked}
    return tuple(flags.values())


@lru_cache(maxsize=256)
def _symptoms_containing_a_sign(signs: frozenset[str]) -> tuple[str, ...]:
    """The symptom phrases `_stated_flags` blanks out for these signs, longest first: the
    ones that contain a sign without being one (the same few sets of signs recur, so this
    is worked out once per set)."""
    symptoms = {s.lower() for c in load_vocabulary().conditions for s in c.symptoms}
    return tuple(
        symptom
        for symptom in sorted(symptoms - signs, key=lambda s: (-len(s), s))
        if any(sign in symptom for sign in signs)
    )


def _stated_cautions(question: str) -> tuple[tuple[Medication, str], ...]:
    return tuple(
        (med, caution)
        for med in load_vocabulary().medications.values()
        for caution in med.cautions
        if caution.lower() in question
    )


@lru_cache(maxsize=4096)
def question_context(question: str, example: QAExample | None = None) -> QuestionContext:
    """The context of `question`; `example` (its corpus metadata) wins where given."""
    vocab = load_vocabulary()
    lowered = question.lower()
    medication: Medication | None = None
    conditions: tuple[Condition, ...]
    intent: str | None = None
    if example is not None:
        if example.kind == "medication":
            medication = vocab.medications[example.topic]
            intent = vocab.phrasing["questions"]["medication"][example.phrasing][0]
            conditions = ()
        else:
            conditions = tuple(c for c in vocab.conditions if c.key == example.topic)
        flags = _stated_flags(lowered, conditions)
        kind = example.kind
    else:
        named = medicines_named(lowered)
        medication = named[0][1] if named else None
        conditions = () if medication else _infer_conditions(lowered)
        # A sign's level comes from the inferred condition when it has that sign; any other
        # condition's red-flag sign is still a red flag.
        flags = _stated_flags(lowered, conditions) or _stated_flags(lowered, vocab.conditions)
        kind = _infer_kind(lowered, medication, flags)
        if medication is not None:
            intent = next((i for p, i in _medication_patterns() if p.search(lowered)), None)
    return QuestionContext(
        kind=kind,
        conditions=conditions,
        medication=medication,
        intent=intent,
        red_flags=flags,
        cautions=_stated_cautions(lowered),
        reference=example.answer if example is not None else None,
    )
