"""Typed view of the curated corpus vocabulary in `data/*.json`.

The JSON files hold everything a reviewer might want to correct (conditions, medicines
and their usual adult doses, hospital stays, sentence templates); this module only
loads them. All content is synthetic: it names no people, places or real records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

DATA_FILES = ("conditions.json", "medications.json", "admissions.json", "phrasing.json")


@dataclass(frozen=True)
class RedFlag:
    sign: str  # noun phrase: "difficulty breathing"
    concern: str  # what it may signal: "pneumonia"
    level: str  # "urgent" (same day) or "emergency"


@dataclass(frozen=True)
class MedicineUse:
    med: str  # key into Vocabulary.medications
    purpose: str  # "the fever and aches"


@dataclass(frozen=True)
class Condition:
    key: str
    name: str
    short: str
    onset: str  # "acute" or "chronic": picks plausible durations
    about: str
    course: str | None
    symptoms: tuple[str, ...]
    self_care: tuple[str, ...]
    medications: tuple[MedicineUse, ...]
    red_flags: tuple[RedFlag, ...]
    see_if: str
    triage: str
    review: str | None


@dataclass(frozen=True)
class Medication:
    key: str
    name: str
    kind: str
    drug_class: str
    uses: str
    dose: str
    frequency: str
    max: str | None
    food: str
    otc: bool
    course: str | None
    side_effects: tuple[str, ...]
    serious: tuple[str, ...]
    cautions: tuple[str, ...]
    notes: tuple[str, ...]
    verb: str
    regimen: str


@dataclass(frozen=True)
class Admission:
    key: str
    reason: str
    stay: str
    activity: tuple[str, ...]
    wound: tuple[str, ...]
    diet: tuple[str, ...]
    medications: tuple[MedicineUse, ...]
    warning_signs: tuple[str, ...]
    follow_up: str


@dataclass(frozen=True)
class Vocabulary:
    conditions: tuple[Condition, ...]
    medications: dict[str, Medication]
    admissions: tuple[Admission, ...]
    phrasing: dict[str, Any]  # templates: nested lists and dicts of strings


def _read(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text("utf-8"))


def _uses(items: list[dict[str, str]]) -> tuple[MedicineUse, ...]:
    return tuple(MedicineUse(med=i["med"], purpose=i["for"]) for i in items)


def _condition(raw: dict[str, Any]) -> Condition:
    return Condition(
        key=raw["key"],
        name=raw["name"],
        short=raw["short"],
        onset=raw["onset"],
        about=raw["about"],
        course=raw["course"],
        symptoms=tuple(raw["symptoms"]),
        self_care=tuple(raw["self_care"]),
        medications=_uses(raw["medications"]),
        red_flags=tuple(RedFlag(**flag) for flag in raw["red_flags"]),
        see_if=raw["see_if"],
        triage=raw["triage"],
        review=raw["review"],
    )


def _medication(raw: dict[str, Any]) -> Medication:
    fields = {k: v for k, v in raw.items() if k != "class"}
    for key in ("side_effects", "serious", "cautions", "notes"):
        fields[key] = tuple(fields[key])
    return Medication(drug_class=raw["class"], **fields)


def _admission(raw: dict[str, Any]) -> Admission:
    fields = {k: v for k, v in raw.items() if k != "medications"}
    for key in ("activity", "wound", "diet", "warning_signs"):
        fields[key] = tuple(fields[key])
    return Admission(medications=_uses(raw["medications"]), **fields)


@lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """Load and cross-check the data files (every medicine a condition names must exist)."""
    medications = {m["key"]: _medication(m) for m in _read("medications.json")["medications"]}
    conditions = tuple(_condition(c) for c in _read("conditions.json")["conditions"])
    admissions = tuple(_admission(a) for a in _read("admissions.json")["admissions"])
    for owner, uses in [(c.key, c.medications) for c in conditions] + [
        (a.key, a.medications) for a in admissions
    ]:
        for use in uses:
            if use.med not in medications:
                raise ValueError(f"{owner} names unknown medication {use.med!r}")
    return Vocabulary(conditions, medications, admissions, _read("phrasing.json"))


def data_sha256() -> str:
    """SHA-256 over the data files, so a changed template invalidates built models."""
    digest = hashlib.sha256()
    for name in DATA_FILES:
        digest.update(name.encode())
        digest.update(resources.files(__package__).joinpath("data", name).read_bytes())
    return digest.hexdigest()
