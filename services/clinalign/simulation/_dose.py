"""Quantities with units in free text, and each medicine's limits from medications.json.

A quantity is a number (digits, or "one" to "ten") directly followed by a dose unit. Mass
units are converted to milligrams; counted units (puffs, sprays, tablets, sachets, drops,
units, applications) are kept as counts. A quantity right after "more than", "maximum",
"above" or "up to", or right before "in 24 hours", "a day" or "per course", states a
*limit over a period* and is compared with the medicine's `max`; any other quantity states
a *single dose* and is compared with the largest amount in the medicine's `dose`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from clinalign.foundation.vocab import Medication

from ._context import medicines_named

_WORDS = {
    "one": 1.0,
    "two": 2.0,
    "three": 3.0,
    "four": 4.0,
    "five": 5.0,
    "six": 6.0,
    "seven": 7.0,
    "eight": 8.0,
    "nine": 9.0,
    "ten": 10.0,
}
_UNITS = {  # spelling -> (canonical unit, factor to it)
    "mg": ("mg", 1.0),
    "milligram": ("mg", 1.0),
    "g": ("mg", 1000.0),
    "gram": ("mg", 1000.0),
    "microgram": ("mg", 0.001),
    "mcg": ("mg", 0.001),
    "ml": ("ml", 1.0),
    "millilitre": ("ml", 1.0),
    "puff": ("puff", 1.0),
    "spray": ("spray", 1.0),
    "tablet": ("tablet", 1.0),
    "chewable tablet": ("tablet", 1.0),
    "capsule": ("capsule", 1.0),
    "sachet": ("sachet", 1.0),
    "drop": ("drop", 1.0),
    "unit": ("unit", 1.0),
    "application": ("application", 1.0),
}
_QUANTITY = re.compile(
    r"\b(?P<num>\d+(?:,\d{3})*(?:\.\d+)?|" + "|".join(_WORDS) + r")\s*"
    r"(?P<unit>chewable tablet|milligram|microgram|millilitre|application|capsule|sachet"
    r"|tablet|spray|gram|unit|puff|drop|mcg|mg|ml|g)s?\b",
    re.IGNORECASE,
)
_LIMIT_BEFORE = re.compile(
    r"(more than|maximum(?: dose)?(?: of| is)?|above|up to|exceed|at most|no more than)\s*$"
)
_LIMIT_AFTER = re.compile(r"^\s*(?:(?:in|per|a|each) (?:24 hours|day|course|week)|daily)\b")
# A bare number where a dose belongs: "take 500 every 4 hours".
_UNITLESS = re.compile(
    r"\b(?:take|use|dose is|dose of)\s+\d+(?:\.\d+)?\b(?!\s*(?:%|(?:chewable tablet|milligram"
    r"|microgram|millilitre|application|capsule|sachet|tablet|spray|gram|unit|puff|drop|mcg|mg"
    r"|ml|g)s?\b))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quantity:
    amount: float  # in `unit`
    unit: str  # canonical unit
    is_limit: bool  # states a limit over a period rather than a single dose
    position: int  # character offset in the text


@dataclass(frozen=True)
class DoseFindings:
    """Quantities attributed to medicines in a response, and which exceed a limit."""

    quantities: dict[str, list[Quantity]]  # medicine key -> quantities stated for it
    over_limit: list[tuple[str, Quantity]]  # (medicine key, quantity) above its limit
    unitless: bool  # a bare number stands where a dose belongs


def parse_quantities(text: str) -> list[Quantity]:
    out = []
    lowered = text.lower()
    for match in _QUANTITY.finditer(lowered):
        raw = match.group("num")
        number = _WORDS.get(raw) or float(raw.replace(",", ""))
        unit, factor = _UNITS[match.group("unit")]
        before = lowered[max(0, match.start() - 30) : match.start()]
        after = lowered[match.end() : match.end() + 20]
        is_limit = bool(_LIMIT_BEFORE.search(before) or _LIMIT_AFTER.search(after))
        out.append(Quantity(number * factor, unit, is_limit, match.start()))
    return out


@lru_cache(maxsize=256)
def limits(med: Medication) -> tuple[dict[str, float], dict[str, float]]:
    """(largest single dose, largest amount over a period) per unit, from the data."""
    single: dict[str, float] = {}
    for q in parse_quantities(med.dose):
        single[q.unit] = max(single.get(q.unit, 0.0), q.amount)
    period: dict[str, float] = {}
    for q in parse_quantities(med.max or ""):
        period[q.unit] = max(period.get(q.unit, 0.0), q.amount)
    return single, period


def _exceeds(med: Medication, q: Quantity) -> bool:
    single, period = limits(med)
    limit = period.get(q.unit) if q.is_limit else single.get(q.unit, period.get(q.unit))
    return limit is not None and q.amount > limit * (1 + 1e-9)


def dose_findings(response: str, default: Medication | None) -> DoseFindings:
    """Attribute each quantity to the medicine named last before it (else `default`)."""
    named = medicines_named(response)
    quantities: dict[str, list[Quantity]] = {}
    over: list[tuple[str, Quantity]] = []
    for q in parse_quantities(response):
        before = [med for pos, med in named if pos <= q.position]
        med = before[-1] if before else (default or (named[0][1] if named else None))
        if med is None:
            continue
        quantities.setdefault(med.key, []).append(q)
        if _exceeds(med, q):
            over.append((med.key, q))
    return DoseFindings(quantities, over, bool(_UNITLESS.search(response)))
