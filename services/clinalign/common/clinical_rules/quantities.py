"""Quantities with units in clinical free text, and what each one states.

A quantity is a number (digits such as "1,000" or "2.5", number words such as "two" or
"one and a half", or "a" before a counted unit) followed by a unit. Masses are converted
to milligrams and volumes to millilitres; counted units (puffs, sprays, tablets, capsules,
sachets, drops, applications) and international units are kept as counts. Units no
formulary entry is written in (litres, kilograms, spoons) are not read at all.

Each quantity is also *read*: a dose, a stated limit ("no more than 4 g in 24 hours",
"the maximum is ..."), a strength ("100 micrograms per puff", "10 mg/5 ml"), a diluent
("in 200 ml of water") or a warning ("taking 8 g can damage the liver", "do not take 2 g
at once"); with the period it covers (one dose, 24 hours, a course, a week, or unstated)
and, for a dose followed by "three times a day", how many doses a day that implies.
Composite phrases are multiplied out: "two 500 mg tablets" is 1,000 mg and 2 tablets,
"2 x 500 mg" is 1,000 mg, "2 puffs of 100 micrograms" is 2 puffs and 200 micrograms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

Role = Literal["dose", "limit", "strength", "diluent", "warning"]
Period = Literal["dose", "24 hours", "course", "week"]

COUNTED_UNITS = frozenset({"puff", "spray", "tablet", "capsule", "sachet", "drop", "application"})
# canonical unit -> spellings (each also read with a plural "s"), and the factor to it
_SPELLINGS: dict[str, tuple[float, tuple[str, ...]]] = {
    "mg": (1.0, ("milligram", "mg")),
    "g": (1000.0, ("gram", "g")),
    "microgram": (0.001, ("microgram", "mcg", "µg", "μg")),
    "ml": (1.0, ("millilitre", "milliliter", "ml")),
    "unit": (1.0, ("international unit", "unit", "iu")),
    "puff": (1.0, ("puff",)),
    "spray": (1.0, ("spray",)),
    "tablet": (1.0, ("chewable tablet", "tablet", "caplet", "pill")),
    "capsule": (1.0, ("capsule",)),
    "sachet": (1.0, ("sachet",)),
    "drop": (1.0, ("drop",)),
    "application": (1.0, ("application",)),
}
_CANONICAL = {"g": "mg", "microgram": "mg"}  # masses are compared in mg
_UNIT_OF: dict[str, tuple[str, float]] = {
    spelling: (_CANONICAL.get(unit, unit), factor)
    for unit, (factor, spellings) in _SPELLINGS.items()
    for spelling in spellings
}
_UNIT_ALT = "|".join(re.escape(s) for s in sorted(_UNIT_OF, key=len, reverse=True))
_UNIT = rf"(?:{_UNIT_ALT})s?(?!\w)"

_SMALL = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
)
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_WORD_VALUE = {w: float(i) for i, w in enumerate(_SMALL)} | {
    w: float(20 + 10 * i) for i, w in enumerate(_TENS)
}
_TERM = "|".join([*sorted(_WORD_VALUE, key=len, reverse=True), "hundred", "thousand"])
_WORDS = rf"(?:{_TERM})(?:[\s-]+(?:and\s+)?(?:{_TERM}))*(?:\s+and\s+a\s+half)?"
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER = (  # "2x500 mg" aside, digits do not continue a word, a decimal or a fraction
    rf"(?:(?<![\w.,/])|(?<=\d[x\u00d7]))(?P<digits>{_DIGITS})"
    rf"|\b(?P<words>{_WORDS}|half\s+an?|an?)\b"
)
_QUANTITY = re.compile(rf"(?:{_NUMBER})\s*-?\s*(?P<unit>{_UNIT})", re.IGNORECASE)

# -- how a quantity is read, from the words around it in its sentence ------------------------
_BARE_NUMBER = rf"(?:{_DIGITS}|{_WORDS}|an?)"
_TIMES_BEFORE = re.compile(rf"(?<![\w.,])(?P<n>{_BARE_NUMBER})\s*[x\u00d7]\s*$", re.IGNORECASE)
_COUNT_BEFORE = re.compile(rf"(?<![\w.,])(?P<n>{_BARE_NUMBER})\s+$", re.IGNORECASE)
_FORM_AFTER = re.compile(
    r"^\s*(?P<form>chewable tablet|tablet|caplet|capsule|sachet|pill)s?\b", re.IGNORECASE
)
_OF_AFTER = re.compile(r"^\s+of\s+(?:an?\s+)?$", re.IGNORECASE)
_STRENGTH_AFTER = re.compile(
    rf"^\s*(?:per|/|in each|in every)\s*(?:{_BARE_NUMBER}\s*)?{_UNIT}", re.IGNORECASE
)
_MASS_IN_VOLUME_AFTER = re.compile(  # "250 mg in 5 ml": the strength of a liquid
    rf"^\s*in\s*(?:{_BARE_NUMBER}\s*)?(?:millilitre|milliliter|ml)s?\b", re.IGNORECASE
)
_STRENGTH_BEFORE = re.compile(
    r"(?:/|\bper|\bin each|\bin every|\b(?:mg|g|grams?|micrograms?|mcg)\s+in)\s*$", re.IGNORECASE
)
_DILUENT_AFTER = re.compile(
    r"^\s+(?:of\s+)?(?:cold\s+|warm\s+|drinking\s+|tap\s+|cooled\s+boiled\s+)?"
    r"(?:water|fluid|liquid|juice|milk|squash|alcohol)\b",
    re.IGNORECASE,
)
_LIMIT_DIRECT = re.compile(
    r"\b(?:(?:no|not)\s+more\s+than|more\s+than|up\s+to(?:\s+a\s+maximum\s+of)?|at\s+most"
    r"|above|exceed(?:s|ing)?|over|a\s+total\s+of|maximum(?:\s+dose)?(?:\s+of)?|max(?:\s+of)?)"
    r"\s*$",
    re.IGNORECASE,
)
_LIMIT_HEADED = re.compile(
    r"\b(?:maximum|the\s+most|limit|max)\b[^.;!?]{0,60}?\b(?:is|of|are|be)\s*$", re.IGNORECASE
)
_WARNING = re.compile(
    r"\b(?:overdose|too\s+much|dangerous|toxic|poison\w*|harm(?:ful)?|damage|more\s+than\s+you"
    r"\s+should)\b",
    re.IGNORECASE,
)
_ADVISED_AGAINST = re.compile(
    r"\b(?:do\s+not|don't|never|should\s+not|must\s+not)\s+(?:take|use|give|have|apply)\s*$",
    re.IGNORECASE,
)
_LEAD = r"^[\s,)]*(?:\([^)]*\)\s*)?"
_FREQUENCY = re.compile(  # "400 mg (two tablets) with food three times a day"
    _LEAD + r"(?:(?!then\b|every\b|times\b|once\b|twice\b)[a-z]+[\s,]+){0,5}"
    r"(?P<f>once|twice|once\s+or\s+twice|[\w-]+(?:\s+(?:to|or)\s+[\w-]+)?\s+times)"
    r"\s+(?:(?:a|per|each|every)\s+day|daily)\b",
    re.IGNORECASE,
)
_SINGLE_AFTER = re.compile(
    _LEAD + r"(?:in\s+(?:one|a\s+single)\s+dose|as\s+a\s+single\s+dose|at\s+(?:a\s+time|once"
    r"|one\s+time)|per\s+dose|each\s+time|a\s+dose)\b",
    re.IGNORECASE,
)
_PERIODS: tuple[tuple[Period, str], ...] = (
    ("24 hours", r"(?:in|per|a|each|every|over|within)\s+(?:24|twenty-four)\s+hours?\b"),
    ("24 hours", r"(?:(?:in\s+)?(?:a|one)|per|each|every)\s+day\b|daily\b"),
    ("course", r"(?:per|a|in\s+a|for\s+the|over\s+the|each)\s+course\b"),
    ("week", r"(?:in\s+)?(?:a|one|per|each|every)\s+week\b|weekly\b"),
)
# Up to three words between a quantity and its period ("4 sprays into each nostril in 24
# hours"), none of them a frequency ("400 mg twice a day" is a dose, not a daily amount).
_FILLER = r"(?:(?!times\b|every\b|then\b|once\b|twice\b)[a-z]+\s+){0,3}"
_PERIOD_AFTER = tuple(
    (period, re.compile(_LEAD + _FILLER + rf"(?:{p})", re.IGNORECASE)) for period, p in _PERIODS
)
_PERIOD_ANYWHERE = tuple((period, re.compile(p, re.IGNORECASE)) for period, p in _PERIODS)
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|\n")


@dataclass(frozen=True)
class Quantity:
    """A number with a unit in a text, and how the text states it."""

    amount: float  # in `unit`
    unit: str  # canonical: "mg", "ml", "unit", or a counted unit ("puff", "tablet", ...)
    start: int  # character span in the text
    end: int
    role: Role = "dose"
    period: Period | None = None  # None: not stated
    times_a_day: float | None = None  # a dose followed by "three times a day"

    @property
    def daily_amount(self) -> float | None:
        """The amount a day a dose with a stated frequency implies."""
        return None if self.times_a_day is None else self.amount * self.times_a_day


def number_value(text: str) -> float:
    """The value of a number in digits ("1,000", "2.5") or words ("one and a half")."""
    raw = re.sub(r"\s+", " ", text.strip().lower())
    if raw[:1].isdigit() or raw[:1] == ".":
        return float(raw.replace(",", ""))
    if raw in ("a", "an"):
        return 1.0
    if raw.startswith("half"):
        return 0.5
    half = 0.5 if raw.endswith("and a half") else 0.0
    total = current = 0.0
    for word in re.split(r"[\s-]+", raw.removesuffix("and a half")):
        if word in _WORD_VALUE:
            current += _WORD_VALUE[word]
        elif word == "hundred":
            current = max(current, 1.0) * 100
        elif word == "thousand":
            total, current = total + max(current, 1.0) * 1000, 0.0
    return total + current + half


def _sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    before = [m.end() for m in _SENTENCE_END.finditer(text, 0, start)]
    after = _SENTENCE_END.search(text, end)
    return (before[-1] if before else 0), (after.start() if after else len(text))


def _period_after(after: str) -> Period | None:
    if _SINGLE_AFTER.search(after):
        return "dose"
    return next((period for period, p in _PERIOD_AFTER if p.match(after)), None)


def _period_anywhere(text: str) -> Period | None:
    return next((period for period, p in _PERIOD_ANYWHERE if p.search(text)), None)


def _times_a_day(after: str) -> float | None:
    match = _FREQUENCY.search(after)
    if match is None:
        return None
    words = re.findall(rf"\b(?:once|twice|{_DIGITS}|{_TERM})\b", match.group("f").lower())
    values = [1.0 if w == "once" else 2.0 if w == "twice" else number_value(w) for w in words]
    return max(values) if values else None


def _read(text: str, q: Quantity) -> Quantity:
    """Role, period and frequency of `q`, from its own sentence."""
    lo, hi = _sentence_bounds(text, q.start, q.end)
    before, after = text[lo : q.start], text[q.end : hi]
    mass_in_volume = q.unit == "mg" and _MASS_IN_VOLUME_AFTER.match(after)
    if _STRENGTH_AFTER.match(after) or mass_in_volume or _STRENGTH_BEFORE.search(before):
        return replace(q, role="strength")
    if _DILUENT_AFTER.match(after):
        return replace(q, role="diluent")
    period = _period_after(after)
    if _LIMIT_DIRECT.search(before) or _LIMIT_HEADED.search(before):
        return replace(q, role="limit", period=period or _period_anywhere(before))
    if _ADVISED_AGAINST.search(before) or _WARNING.search(before + after):
        return replace(q, role="warning", period=period)
    times = None if period else _times_a_day(after)
    return replace(q, period=period, times_a_day=times)


def _composite(text: str, q: Quantity) -> list[Quantity]:
    """`q` multiplied out of "2 x 500 mg" or "two 500 mg tablets" (with the count)."""
    head = text[: q.start]
    times = _TIMES_BEFORE.search(head)
    if times:
        n = number_value(times.group("n"))
        return [replace(q, amount=q.amount * n, start=times.start())]
    count, form = _COUNT_BEFORE.search(head), _FORM_AFTER.match(text[q.end :])
    if count and form and q.unit not in COUNTED_UNITS:
        n = number_value(count.group("n"))
        unit = _UNIT_OF[form.group("form").lower()][0]
        end = q.end + form.end()
        return [
            replace(q, amount=q.amount * n, start=count.start(), end=end),
            Quantity(n, unit, count.start(), end),
        ]
    return [q]


def _raw_quantities(text: str) -> list[Quantity]:
    out: list[Quantity] = []
    for match in _QUANTITY.finditer(text):
        spelling = match.group("unit").lower()
        unit, factor = _UNIT_OF.get(spelling) or _UNIT_OF[spelling[:-1]]
        words = match.group("words")
        if words and words.strip().lower() in ("a", "an") and unit not in COUNTED_UNITS:
            continue  # "a unit of blood", "a g..." are not doses
        value = number_value(match.group("digits") or words)
        out.append(Quantity(value * factor, unit, match.start(), match.end()))
    return out


def parse_quantities(text: str) -> list[Quantity]:
    """Every quantity with a unit in `text`, in order, each read in its sentence."""
    raw = _raw_quantities(text)
    out: list[Quantity] = []
    for i, q in enumerate(raw):
        previous = raw[i - 1] if i else None
        if (
            previous is not None
            and previous.unit in COUNTED_UNITS
            and q.unit not in COUNTED_UNITS
            and _OF_AFTER.match(text[previous.end : q.start])
        ):
            # "2 puffs of 100 micrograms": the mass is per puff.
            q = replace(q, amount=q.amount * previous.amount)
        out += _composite(text, q)
    return [_read(text, q) for q in out]


def format_amount(amount: float, unit: str) -> str:
    """ "1,200 mg", "4 g", "200 micrograms", "2 puffs", "1 sachet"."""
    if unit == "mg" and 0 < amount < 1:
        amount, unit = amount * 1000, "microgram"
    elif unit == "mg" and amount >= 1000 and amount % 1000 == 0:
        amount, unit = amount / 1000, "g"
    number = f"{amount:,.6g}" if amount < 1e6 else f"{amount:,.0f}"
    if unit in ("mg", "g", "ml"):
        return f"{number} {unit}"
    return f"{number} {unit}{'' if amount == 1 else 's'}"
