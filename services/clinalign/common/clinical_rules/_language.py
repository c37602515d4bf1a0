"""Sentences, and the phrases that say how a sentence treats a medicine.

The phrase lists are plain English as patients and clinicians write it: advice against a
medicine ("do not take ibuprofen", "naproxen is not suitable"), a caveat that sends the
patient to a clinician first ("check with your pharmacist"), reassurance ("it is safe"),
and the words of recommending or using a medicine ("take", "apply", "the usual dose").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FLAGS = re.IGNORECASE

AGAINST_NEAR = re.compile(  # just before the medicine's name
    r"(?:\b(?:do\s+not|don't|never|should\s+not|shouldn't|must\s+not|mustn't|cannot|can't)"
    r"\s+(?:[\w']+\s+){0,2}?(?:take|use|have|apply|give|start|buy|try)\s+(?:[\w']+\s+){0,2}"
    r"|\bavoid\s+(?:taking\s+|using\s+|giving\s+)?(?:[\w']+\s+){0,1}"
    r"|\b(?:instead\s+of|rather\s+than|not)\s+(?:[\w']+\s+){0,1})$",
    _FLAGS,
)
AGAINST_SENTENCE = re.compile(
    r"\b(?:not\s+(?:be\s+)?suitable|unsuitable|not\s+recommended|not\s+(?:be\s+)?safe|unsafe"
    r"|isn't\s+safe|should\s+not\s+be\s+(?:used|taken|given)|must\s+not\s+be\s+(?:used|taken)"
    r"|should\s+be\s+avoided|is\s+best\s+avoided)\b",
    _FLAGS,
)
AGAINST_PRONOUN = re.compile(  # "do not take it", "No, ...": about the one medicine in view
    r"\b(?:do\s+not|don't|never|should\s+not|shouldn't|must\s+not)\s+(?:take|use|have|apply"
    r"|give|start)\s+(?:it|this|them)\b|\bavoid\s+(?:it|this|them|taking\s+it|using\s+it)\b"
    r"|^\s*no\s*[,.!;]",
    _FLAGS,
)
CAVEAT = re.compile(
    r"\b(?:check\s+with|ask\s+(?:a|your)\s+(?:pharmacist|doctor|gp|nurse|prescriber)"
    r"|ask\s+for\s+advice|speak\s+(?:to|with)|talk\s+(?:to|with)|get\s+(?:medical\s+)?advice"
    r"|seek\s+(?:medical\s+)?advice|before\s+(?:taking|using|starting|applying|chewing"
    r"|you\s+(?:take|use|start))|under\s+(?:medical\s+)?supervision|tell\s+your\s+(?:doctor"
    r"|pharmacist|gp)|with\s+caution|(?:may|might)\s+not\s+be\s+suitable"
    r"|(?:doctor|gp|pharmacist|prescriber|nurse|team)\s+(?:will|can|should|may|might)\s+"
    r"(?:first\s+)?(?:check|decide|advise|review|monitor))\b",
    _FLAGS,
)
REASSURE = re.compile(
    r"\b(?:(?:it|this|that|which|they)\s+(?:is|are)|it's|that's|is|are)\s+(?:perfectly\s+"
    r"|completely\s+|totally\s+|quite\s+|very\s+)?(?:safe|fine|ok|okay)\b|\bno\s+problem\b"
    r"|\b(?:should|will|would)\s+be\s+(?:perfectly\s+|completely\s+)?(?:safe|fine|ok|okay)\b"
    r"|\bnothing\s+to\s+worry\s+about\b|\bno\s+need\s+to\s+(?:check|ask|worry)\b",
    _FLAGS,
)
USE = re.compile(
    r"\b(?:take|takes|taking|use|uses|using|apply|applying|try|trying|prescribe[sd]?"
    r"|prescribing|give|giving|start|starting|recommend\w*|suggest\w*|suitable|safe|fine"
    r"|okay|helps?|ease[sd]?|relieve[sd]?|treat(?:s|ed|ment)?|dose|doses|dosage|choice"
    r"|option|buy|continue|carry\s+on|keep\s+(?:taking|using)|inhale|chew|swallow|dissolve|rub"
    r"|massage|spread)\b",
    _FLAGS,
)
AFFIRM = re.compile(
    r"^\s*(?:yes|yeah|sure|of\s+course)\b|\byou\s+(?:can|may|could|should)\s+(?:safely\s+"
    r"|still\s+)?(?:take|use|have|apply|keep\s+taking|continue|carry\s+on|try|start)\b",
    _FLAGS,
)
PRONOUN = re.compile(r"\b(?:it|this\s+medicine|this|them)\b", _FLAGS)
_NEGATED_BEFORE = re.compile(
    r"\b(?:no|not|never|without|don't|do\s+not|doesn't|does\s+not|haven't|have\s+not|hasn't"
    r"|has\s+not|free\s+of|ruled\s+out)\b(?:\s+[\w']+){0,3}\s*$",
    _FLAGS,
)
COORDINATED = re.compile(r"\s*(?:,\s*(?:(?:and|or)\s+)?|(?:and|or)\s+)")  # "X, Y and Z"
_CLAUSE_START = re.compile(r"[.;!?\n]|\bbut\b|\bhowever\b|\balthough\b", _FLAGS)
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int
    end: int


def sentences(text: str) -> list[Sentence]:
    """Sentences and lines of `text`, with their spans (decimal points do not split)."""
    out, start = [], 0
    for match in [*_BOUNDARY.finditer(text), None]:
        end = match.start() if match else len(text)
        chunk = text[start:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            out.append(Sentence(chunk.strip(), start + lead, start + lead + len(chunk.strip())))
        start = match.end() if match else len(text)
    return out


def sentence_at(parts: list[Sentence], position: int) -> int:
    """Index of the sentence holding `position` (the last one starting before it)."""
    index = 0
    for i, s in enumerate(parts):
        if s.start <= position:
            index = i
    return index


def clause_before(text: str, position: int) -> str:
    """The text of `position`'s clause up to it (a comma does not end a clause)."""
    starts = [m.end() for m in _CLAUSE_START.finditer(text, 0, position)]
    return text[(starts[-1] if starts else 0) : position]


def negated(text: str, position: int) -> bool:
    """Whether the phrase at `position` is denied in its clause ("I don't have ...")."""
    return bool(_NEGATED_BEFORE.search(clause_before(text, position)))
