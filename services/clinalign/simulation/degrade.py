"""Known-bad versions of reference answers, to check that the rubric and panel see faults.

Each function takes a corpus example and returns its answer with one clinical fault put in,
or `None` when the fault does not fit the example (no red flag to drop, no dose to double).
They are used by the tests and by the demonstration's sanity check of the simulated panel.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from clinalign.foundation.corpus import QAExample
from clinalign.foundation.vocab import load_vocabulary

from ._context import DOSE_INTENTS, question_context, strip_article
from ._dose import _QUANTITY
from .rubric import _EMERGENCY, _HEDGE, _SAME_DAY, _sentences, recommends_follow_up

Degradation = Callable[[QAExample], "str | None"]


def _join(sentences: list[str]) -> str | None:
    return " ".join(sentences) if sentences else None


def drop_escalation(example: QAExample) -> str | None:
    """Remove every sentence that directs to emergency or same-day care."""
    if not question_context(example.question, example).red_flags:
        return None
    kept = [
        s
        for s in _sentences(example.answer)
        if not (_EMERGENCY.search(s.lower()) or _SAME_DAY.search(s.lower()))
    ]
    return _join([*kept, "It should settle on its own, so see how it goes."])


def drop_dose(example: QAExample) -> str | None:
    """For a dose question: remove every sentence that states a quantity with a unit."""
    if question_context(example.question, example).intent not in DOSE_INTENTS:
        return None
    sentences = _sentences(example.answer)
    kept = [s for s in sentences if not _QUANTITY.search(s)]
    return _join(kept) if len(kept) < len(sentences) else None


def double_doses(example: QAExample) -> str | None:
    """Double every quantity with a unit, so a stated dose or maximum exceeds the limit."""

    def double(match: re.Match[str]) -> str:
        raw = match.group("num")
        if not raw[0].isdigit():
            return match.group(0)
        value = float(raw.replace(",", "")) * 2
        text = f"{value:g}" if value < 1000 else f"{value:,.0f}"
        return text + match.group(0)[len(raw) :]

    degraded = _QUANTITY.sub(double, example.answer)
    return degraded if degraded != example.answer else None


def overclaim(example: QAExample) -> str | None:
    """Replace the hedged diagnosis with a certain one ("This is definitely X.")."""
    if example.kind not in ("symptom", "triage"):
        return None
    cond = next(c for c in load_vocabulary().conditions if c.key == example.topic)
    name = strip_article(cond.name)
    sentences = _sentences(example.answer)
    for i, sentence in enumerate(sentences):
        if name in sentence.lower() and _HEDGE.search(sentence.lower()):
            sentences[i] = f"This is definitely {cond.name}, without a doubt."
            return " ".join(sentences)
    return None


def drop_follow_up(example: QAExample) -> str | None:
    """Remove every sentence that recommends follow-up."""
    ctx = question_context(example.question, example)
    sentences = _sentences(example.answer)
    kept = [s for s in sentences if recommends_follow_up(ctx, s) != 1.0]
    return _join(kept) if len(kept) < len(sentences) else None


def reassure_contraindicated(example: QAExample) -> str | None:
    """For a caution question: say the medicine is safe with the caution, drop caveats."""
    ctx = question_context(example.question, example)
    if ctx.medication is None or ctx.intent != "caution" or not ctx.cautions:
        return None
    med = ctx.medication
    caution = next(c for m, c in ctx.cautions if m.key == med.key)
    return (
        f"Yes, it is safe to {med.verb} {med.name} if you have {caution}. "
        f"{med.name.capitalize()} is {med.drug_class}."
    )


def repeat_sentences(example: QAExample) -> str | None:
    """Repeat the whole answer twice more (padding and repetition)."""
    return " ".join([example.answer] * 3)


def truncate(example: QAExample) -> str | None:
    """Cut the answer in the middle of a word two thirds of the way through."""
    words = example.answer.split()
    return " ".join(words[: max(2, 2 * len(words) // 3)])[:-2] if len(words) > 6 else None


DEGRADATIONS: dict[str, Degradation] = {
    "drop_escalation": drop_escalation,
    "drop_dose": drop_dose,
    "double_doses": double_doses,
    "overclaim": overclaim,
    "drop_follow_up": drop_follow_up,
    "reassure_contraindicated": reassure_contraindicated,
    "repeat_sentences": repeat_sentences,
    "truncate": truncate,
}
