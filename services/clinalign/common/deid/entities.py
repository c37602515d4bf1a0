"""Identifier types and the result of de-identifying one text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# The HIPAA Safe Harbor identifiers that occur in clinical free text (45 CFR 164.514(b)(2)).
# ID is what an unlabelled long number is taken to be when no cue says which kind it is.
EntityType = Literal[
    "NAME",  # patients, relatives, clinicians
    "DATE",  # any date element more specific than the year
    "AGE",  # ages over 89
    "PHONE",  # phone and fax numbers
    "EMAIL",
    "SSN",
    "MRN",  # medical record numbers
    "ACCOUNT",  # health-plan, member, policy, account and encounter numbers
    "LICENSE",  # licence and certificate numbers (NPI, DEA, driver's licence)
    "DEVICE",  # device identifiers and serial numbers
    "VEHICLE",  # vehicle identification numbers, licence plates
    "BIOMETRIC",  # identifiers of fingerprints, voiceprints, retina and face scans
    "ADDRESS",  # street address lines
    "CITY",
    "ZIP",  # ZIP codes and postcodes
    "URL",
    "IP",
    "ID",  # an unlabelled number long enough to identify someone
]
ENTITY_TYPES: tuple[EntityType, ...] = get_args(EntityType)


@dataclass(frozen=True, slots=True)
class Span:
    """An identifier found in the original text: ``text[start:end]``, its type and the
    detector's confidence in [0, 1]."""

    start: int
    end: int
    entity_type: EntityType
    score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "type": self.entity_type,
            "score": round(self.score, 3),
        }


@dataclass(frozen=True, slots=True)
class DeidResult:
    """The de-identified text and the spans that were replaced, in ORIGINAL offsets,
    sorted and non-overlapping."""

    text: str
    spans: tuple[Span, ...]
