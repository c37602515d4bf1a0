"""The identifier rules (every type but person names), as data.

Each :class:`Rule` is one Presidio :class:`~presidio_analyzer.Pattern` (name, regex,
score) plus what Presidio's ``PatternRecognizer`` cannot say: which entity type it finds,
which named groups hold the identifier (so a cue word such as ``MRN:`` is matched but not
redacted, and one address match yields street, city and ZIP), which characters a match
can start with, and an optional validator. ``scanner.compile_rules`` joins them into one
regex in which, at any position, the first rule in this order that matches wins: that is
why cue-led rules come before bare-number rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from presidio_analyzer import Pattern

from clinalign.common.deid import lexicon as x
from clinalign.common.deid.entities import EntityType
from clinalign.common.deid.lexicon import SP


@dataclass(frozen=True)
class Rule:
    """One Presidio ``Pattern`` and where its identifiers are inside a match.

    ``groups`` maps a named group to the entity type it holds; ``""`` means the whole
    match. Group names are local to the rule: the scanner prefixes them. ``first`` is a
    regex character class (without brackets) holding every character a match can start
    with; the scanner uses it to skip the rule elsewhere, and a test checks it against
    the plain alternation.
    """

    pattern: Pattern
    groups: Sequence[tuple[str, EntityType]]
    first: str
    validate: Callable[[str], bool] | None = None
    # Matches for which this holds score below the default threshold (AMBIGUOUS_STATES).
    weak_if: Callable[[re.Match[str], str], bool] | None = field(default=None, compare=False)


def rule(
    name: str,
    regex: str,
    entity: EntityType,
    score: float,
    first: str,
    group: str = "",
    validate: Callable[[str], bool] | None = None,
) -> Rule:
    return Rule(Pattern(name, regex, score), ((group, entity),), first, validate)


def _numeric_date(value: str) -> bool:
    """``a/b/y``: one of a, b is a month and the other a valid day."""
    a, b = (int(p) for p in re.split(r"[-/.]", value)[:2])
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def _old_age(value: str) -> bool:
    """Only ages over 89 are identifiers; "in her 90s" counts as one."""
    return 90 <= int(value.rstrip("s")) <= 125


def _ambiguous_state(m: re.Match[str], prefix: str) -> bool:
    return m.group(f"{prefix}zip") is None and m.group(f"{prefix}st") in x.AMBIGUOUS_STATES


_D = "0-9"
_NOT_UNIT = r"(?![ \t]*(?:%|/|\.\d|(?i:mg|kg|lbs?|bpm|mmHg|cm|mm|ml|units?|percent|beats)\b))"

# fmt: off
RULES: tuple[Rule, ...] = (
    # Cue-led identifiers come first: they start at the cue, left of the number.
    rule("ssn_cue", rf"{x.SSN_CUES.regex}(?P<v>\d{{3}}[- ]?\d{{2}}[- ]?\d{{4}})\b", "SSN", 0.95,
         x.SSN_CUES.first, "v"),
    rule("mrn_cue", rf"{x.MRN_CUES.regex}(?P<v>{x.id_value(4)})", "MRN", 0.9, x.MRN_CUES.first,
         "v"),
    rule("account_cue", rf"{x.ACCOUNT_CUES.regex}(?P<v>{x.id_value(4)})", "ACCOUNT", 0.85,
         x.ACCOUNT_CUES.first, "v"),
    rule("license_cue", rf"{x.LICENSE_CUES.regex}(?P<v>{x.id_value(4)})", "LICENSE", 0.85,
         x.LICENSE_CUES.first, "v"),
    rule("device_cue", rf"{x.DEVICE_CUES.regex}(?P<v>{x.id_value(3)})", "DEVICE", 0.85,
         x.DEVICE_CUES.first, "v"),
    rule("zip_cue", rf"{x.ZIP_CUES.regex}(?P<v>{x.ZIP5}|{x.UK_POSTCODE})\b", "ZIP", 0.9,
         x.ZIP_CUES.first, "v"),
    rule("vehicle_cue", rf"{x.VEHICLE_CUES.regex}(?P<v>(?=[A-Z0-9 •·-]{{0,9}}\d)"
         r"[A-Z0-9]{1,8}(?:[ •·-][A-Z0-9]{1,8}){0,2})\b", "VEHICLE", 0.85,
         x.VEHICLE_CUES.first, "v"),
    rule("biometric_cue", rf"{x.BIOMETRIC_CUES.regex}(?P<v>(?=[A-Z-]{{0,6}}\d)"
         r"[A-Z0-9]{1,10}(?:-[A-Z0-9]{1,10}){0,4})\b", "BIOMETRIC", 0.85,
         x.BIOMETRIC_CUES.first, "v"),
    rule("code_cue", rf"{x.CODE_CUES.regex}(?P<v>(?=[A-Z-]{{0,6}}\d)"
         r"[A-Z0-9]{1,10}(?:-[A-Z0-9]{1,10}){0,4})\b", "ID", 0.8, x.CODE_CUES.first, "v"),
    # Dates written without a year need a cue: bare "7/10" is a pain score.
    rule("date_md_cue", rf"\b(?i:{'|'.join(x.DATE_CUES)})[:.]?{SP}+"
         rf"(?P<v>(?:1[0-2]|0?[1-9])/{x.DAY})\b(?![/.]\d)", "DATE", 0.8,
         x.initials(*x.DATE_CUES), "v"),
    rule("date_month_cue", rf"\b(?:{'|'.join(x.MONTH_CUES)}){SP}+(?P<v>{x.FULL_MONTH})"
         r"(?![ \t.,]*\d)", "DATE", 0.6, x.first_letters(x.MONTH_CUES), "v"),
    rule("age_cue", rf"\b(?i:aged?|age:){SP}*(?P<v>\d{{2,3}})\b", "AGE", 0.85, "Aa", "v",
         _old_age),
    rule("age_said", rf"\b(?i:he|she|they|patient|pt){SP}+(?:is|was|turned|turns){SP}+"
         rf"(?P<v>\d{{2,3}})\b{_NOT_UNIT}", "AGE", 0.7, "HhSsTtPp", "v", _old_age),
    rule("age_decade", rf"\bin{SP}+(?:her|his|their){SP}+(?P<v>(?:9|1[0-2])0s)\b", "AGE", 0.8,
         "i", "v", _old_age),
    rule("url", r"\b(?:https?://|www\.)[^\s<>\"'()\[\]]+[^\s<>\"'()\[\].,;:!?]", "URL", 0.9,
         "hw"),
    rule("ipv4", r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
         r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b(?!\.\d)", "IP", 0.85, _D),
    rule("ipv6", r"\b(?:[0-9A-Fa-f]{1,4}:){3,7}[0-9A-Fa-f]{1,4}\b"
         r"|\b(?:[0-9A-Fa-f]{1,4}:)+:(?:[0-9A-Fa-f]{1,4}:)*[0-9A-Fa-f]{1,4}\b", "IP", 0.7,
         "0-9A-Fa-f"),
    # Numeric dates: ISO first, then day/month/year in any order the validator accepts.
    rule("date_iso", rf"\b{x.YEAR}(?P<s>[-/.])(?:1[0-2]|0?[1-9])(?P=s){x.DAY}\b", "DATE", 0.95,
         "12"),
    rule("date_numeric", r"\b\d{1,2}(?P<s>[-/.])\d{1,2}(?P=s)(?:1[89]\d\d|20\d\d|\d\d)\b"
         r"(?![-/.]\d)", "DATE", 0.9, _D, "", _numeric_date),
    rule("ssn", r"\b(?!000|666|9\d\d)\d{3}(?P<s>[- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}\b", "SSN",
         0.85, _D),
    rule("phone_nanp", rf"(?<![\w+])(?:\+?1{SP}?[.-]?{SP}?)?(?:\(\d{{3}}\){SP}?|\d{{3}}[ .-])"
         r"\d{3}[ .-]\d{4}\b", "PHONE", 0.85, "0-9(+"),
    rule("phone_intl", rf"(?<![\w+])\+[2-9]\d{{0,2}}(?:{SP}?[.-]?{SP}?\(?\d{{1,4}}\)?){{2,4}}\b",
         "PHONE", 0.8, "+"),
    rule("phone_uk", rf"\b0[1-9]\d{{2,3}}{SP}?\d{{3}}{SP}?\d{{3,4}}\b", "PHONE", 0.7, "0"),
    rule("age", rf"\b(?P<v>\d{{2,3}})(?=(?:{SP}*-?{SP}*(?:years?|yrs?)[ \t-]*old)"
         rf"|(?:{SP}?(?:yo|y/o|y\.o\.)(?![A-Za-z]))|[FM]\b)", "AGE", 0.85, _D, "v", _old_age),
    Rule(Pattern("address", rf"\b(?P<street>{x.STREET})(?:,?{SP}*\n?{SP}*(?P<city>{x.PLACE}),?"
                 rf"{SP}+(?P<st>{x.STATE})(?:{SP}+(?P<zip>{x.ZIP5}))?)?", 0.85),
         (("street", "ADDRESS"), ("city", "CITY"), ("zip", "ZIP")), "0-9P"),
    rule("date_day_month", rf"(?:\bthe{SP}+)?\b{x.DAY}{x.ORD}?(?:{SP}+of)?(?:{SP}+|-){x.MONTH}"
         rf"(?:,?(?:{SP}+|-){x.YEAR}\b)?", "DATE", 0.9, "0-9t"),
    rule("date_month_day", rf"\b{x.MONTH}{SP}+{x.DAY}{x.ORD}?\b(?:,?{SP}+{x.YEAR}\b)?", "DATE",
         0.85, x.MONTH_FIRST),
    rule("date_month_year", rf"\b{x.MONTH},?{SP}+{x.YEAR}\b", "DATE", 0.8, x.MONTH_FIRST),
    Rule(Pattern("city_state", rf"\b(?P<city>{x.PLACE}),{SP}*(?P<st>{x.STATE})"
                 rf"(?:{SP}+(?P<zip>{x.ZIP5}))?(?![A-Za-z])", 0.85),
         (("city", "CITY"), ("zip", "ZIP")), "A-Z", weak_if=_ambiguous_state),
    Rule(Pattern("city_postcode", rf"\b(?P<city>{x.PLACE}),?{SP}+(?P<zip>{x.UK_POSTCODE})\b",
                 0.8),
         (("city", "CITY"), ("zip", "ZIP")), "A-Z"),
    # After a strong locative cue any capitalised place is taken, listed or not.
    rule("city_locative", rf"\b(?:(?:{'|'.join(x.LOCATIVE_VERBS)}){SP}+(?:back{SP}+)?"
         rf"(?:in|to|from|near)|(?:{'|'.join(x.LOCATIVE_PLACES)}){SP}+in){SP}+"
         rf"(?!{x.NOT_PLACES})(?P<v>{x.PLACE})\b", "CITY", 0.7,
         x.first_letters(x.LOCATIVE_VERBS + x.LOCATIVE_PLACES), "v"),
    rule("uk_postcode", rf"\b{x.UK_POSTCODE}\b", "ZIP", 0.6, "A-Z"),
    # Subdivisions smaller than a state, named as such: "Bexar County", "St. Landry Parish".
    rule("county", rf"\b{x.PLACE}{SP}+(?:County|Parish|Borough|Census{SP}+Area)\b", "CITY",
         0.8, "A-Z"),
    # A vehicle identification number (ISO 3779): 17 letters and digits, never I, O or Q.
    rule("vin", r"\b(?=[A-HJ-NPR-Z0-9]{17}\b)(?=(?:[A-Z]*\d){3})(?=(?:\d*[A-Z]){3})"
         r"[A-HJ-NPR-Z0-9]{17}\b", "VEHICLE", 0.8, "A-HJ-NPR-Z0-9"),
    # Long numbers and letter-prefixed codes nobody labelled are still identifiers.
    rule("long_number", r"\b\d{7,}\b", "ID", 0.6, _D),
    rule("code", r"\b[A-Z]{1,4}-?\d{6,}[A-Z]?\b", "ID", 0.55, "A-Z"),
)

# Costly at every word start and rare in clinical text: run only where there is an "@".
# The local part is bounded (RFC 5321: 64 characters) so that "a.a.a.a…@" stays linear.
EMAIL = rule("email", r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}"
             r"(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b", "EMAIL", 0.95, "A-Za-z0-9")
# fmt: on


@cache
def city_cue_rule() -> Rule:
    """Listed cities after a locative cue ("lives in Lowell"), with ``data/cities.txt``
    as a literal alternation: ``re`` rejects each branch on its first character, so the
    list costs little."""
    lines = resources.files("clinalign.common.deid").joinpath("data/cities.txt").read_text()
    cities = [c.strip() for c in lines.splitlines() if c.strip() and not c.startswith("#")]
    alternation = "|".join(re.escape(c) for c in sorted(cities, key=len, reverse=True))
    # "at Riverside General Hospital" names a hospital, not where the patient lives.
    return rule(
        "city_cue",
        rf"\b(?:{'|'.join(x.CITY_CUES)}){SP}+(?P<v>{alternation})\b(?!{SP}+(?:{x.INSTITUTION}))",
        "CITY",
        0.75,
        x.first_letters(x.CITY_CUES),
        "v",
    )
