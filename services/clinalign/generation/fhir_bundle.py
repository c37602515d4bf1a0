"""The facts a prompt needs, read from a FHIR R4 Bundle (the JSON of ``input.fhir.bundle_json``).

``read_bundle`` reads the resources it understands (Patient, Condition, MedicationRequest,
Observation, AllergyIntolerance; other resource types are ignored) into the values a
template sees (``Patient``, ``Condition``, ...).

The model sees clinical facts, never identity: the Patient contributes an age and an
administrative gender. Names, identifiers, addresses and telecom are never read; ids and
references are read only to check that every resource is about the Bundle's one Patient.

Validation is by hand, of exactly the elements read (``fhir_json.Node``): every problem
names its full protobuf path. Resources that FHIR marks as recorded in error, or refuted,
are left out.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clinalign.common.errors import InvalidArgument
from clinalign.generation.fhir_json import Node, kind

FIELD = "input.fhir"
BUNDLE = f"{FIELD}.bundle_json"
MAX_DEPTH = 64  # a FHIR R4 Bundle nests about a dozen deep

_GENDERS = ("male", "female", "other", "unknown")
_CRITICALITIES = ("low", "high", "unable-to-assess")
_CLINICAL = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
_MED_STATUSES = (
    *("active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped"),
    *("draft", "unknown"),
)
_OBS_STATUSES = (
    *("registered", "preliminary", "final", "amended", "corrected", "cancelled"),
    *("entered-in-error", "unknown"),
)
# Resources in these states say nothing true about the patient.
_NOT_FACTS = {"entered-in-error", "refuted", "cancelled"}
_CHOICE_VALUE = re.compile(r"value[A-Z][A-Za-z]*")


# What a template sees. Atomic values arrive formatted; the template arranges them.
@dataclass(frozen=True)
class Patient:
    age: str | None  # "64 years", or "8 months" under two years
    gender: str | None


@dataclass(frozen=True)
class Condition:
    name: str
    status: str | None  # clinical status code, e.g. "active"
    onset: str | None  # a FHIR date at the precision given, e.g. "2015-06"


@dataclass(frozen=True)
class Medication:
    name: str
    status: str | None
    dosage: tuple[str, ...]


@dataclass(frozen=True)
class Observation:
    name: str
    value: str | None  # "7.8 %", "positive"
    components: tuple[str, ...]  # "systolic 148 mmHg"
    date: str | None


@dataclass(frozen=True)
class Allergy:
    substance: str
    reactions: tuple[str, ...]
    criticality: str | None


def read_bundle(bundle_json: str, max_len: int, today: dt.date | None) -> dict[str, Any]:
    """The template's variables: ``patient`` and a list per section (``conditions``,
    ``medications``, ``observations``, ``allergies``). Age is computed at the Bundle's
    ``timestamp``, else at ``today``, else at the current UTC date. Raises InvalidArgument
    naming the offending element; ``bundle_json`` may be at most ``max_len`` characters."""
    bundle = _load(bundle_json, max_len)
    entries = [(e, e.need("resource")) for e in bundle.objs("entry")]
    types = [r.need_text("resourceType") for _, r in entries]

    patients = [i for i, t in enumerate(types) if t == "Patient"]
    if not patients:
        raise InvalidArgument(
            BUNDLE, "Bundle has no Patient entry; add the Patient the record describes"
        )
    if len(patients) > 1:
        raise InvalidArgument(
            entries[patients[1]][1].path,
            f"is a second Patient (the first is entry[{patients[0]}]); "
            "a Bundle must describe one patient",
        )
    entry, patient = entries[patients[0]]
    on = bundle.instant("timestamp") or today or dt.datetime.now(dt.UTC).date()
    patient_id = patient.text("id")
    own = {ref for ref in (entry.text("fullUrl"), patient_id and f"Patient/{patient_id}") if ref}

    record: dict[str, Any] = {"patient": _patient(patient, on)}
    record |= {section: [] for section, _, _ in _READERS.values()}
    for (_, r), resource_type in zip(entries, types, strict=True):
        if resource_type in _READERS:
            section, subject, read = _READERS[resource_type]
            _check_subject(r, subject, own)
            if (fact := read(r)) is not None:
                record[section].append(fact)
    return record


def _load(bundle_json: str, max_len: int) -> Node:
    """The parsed JSON, checked to be a Bundle."""
    if not bundle_json.strip():
        raise InvalidArgument(BUNDLE, "must not be empty")
    if len(bundle_json) > max_len:
        raise InvalidArgument(BUNDLE, f"is {len(bundle_json)} characters; at most {max_len}")
    try:
        # Decimal keeps a FHIR decimal's precision ("7.20" stays 7.20); NaN is not JSON.
        data = json.loads(bundle_json, parse_float=Decimal, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise InvalidArgument(BUNDLE, f"is not valid JSON: {e}") from None
    except RecursionError:  # nested past the parser's own limit
        raise InvalidArgument(
            BUNDLE, f"nests objects and arrays more than {MAX_DEPTH} deep"
        ) from None
    if _depth(data) > MAX_DEPTH:
        raise InvalidArgument(BUNDLE, f"nests objects and arrays more than {MAX_DEPTH} deep")
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        if not isinstance(data, dict):
            got = kind(data)
        elif "resourceType" in data:
            got = f"resourceType {kind(data['resourceType'])}"
        else:
            got = "an object without resourceType"
        raise InvalidArgument(
            BUNDLE, f"must be a FHIR R4 Bundle (resourceType 'Bundle'), got {got}"
        )
    return Node(data, BUNDLE)


def _depth(data: object) -> int:
    """How deeply objects and arrays nest (a scalar: 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[object] = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_subject(r: Node, key: str, own: set[str]) -> None:
    """A resource about someone else must not slip into this patient's prompt."""
    ref = r.obj(key)
    target = ref.text("reference") if ref else None
    if ref and target and not any(target == o or target.endswith("/" + o) for o in own):
        raise ref.fail(
            "reference", "is not the Bundle's Patient; a Bundle must describe one patient"
        )


def _patient(r: Node, on: dt.date) -> Patient:
    born = r.date("birthDate")
    age = None
    if born is not None:
        if born > on:
            raise r.fail("birthDate", f"is after the record's date, {on}")
        months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
        age = f"{months // 12} years" if months >= 24 else f"{months} months"
    return Patient(age=age, gender=r.code("gender", _GENDERS))


def _condition(r: Node) -> Condition | None:
    if _status_code(r, "verificationStatus") in _NOT_FACTS:
        return None
    status = _status_code(r, "clinicalStatus")
    onset = r.datetime("onsetDateTime") or _period_start(r, "onsetPeriod") or r.text("onsetString")
    return Condition(
        name=_concept_text(r.need("code")),
        status=status if status in _CLINICAL else None,
        onset=onset,
    )


def _medication(r: Node) -> Medication | None:
    status = r.code("status", _MED_STATUSES)
    if status in _NOT_FACTS:
        return None
    ref = r.obj("medicationReference")
    if ref is not None and "medicationCodeableConcept" not in r.data:
        name = ref.need_text("display")  # a Medication resource is not resolved
    else:
        name = _concept_text(r.need("medicationCodeableConcept"))
    dosage = tuple(t for d in r.objs("dosageInstruction") if (t := d.text("text")))
    return Medication(name=name, status=status, dosage=dosage)


def _observation(r: Node) -> Observation | None:
    if r.code("status", _OBS_STATUSES) in _NOT_FACTS:
        return None
    components = tuple(
        f"{_concept_text(c.need('code'))} {value}"
        for c in r.objs("component")
        if (value := _value(c)) is not None
    )
    date = r.datetime("effectiveDateTime") or _period_start(r, "effectivePeriod")
    name, value = _concept_text(r.need("code")), _value(r)
    if value is None and not components:
        return None  # nothing measured (say, a dataAbsentReason): nothing to tell the model
    return Observation(name=name, value=value, components=components, date=date)


def _allergy(r: Node) -> Allergy | None:
    if _status_code(r, "verificationStatus") in _NOT_FACTS:
        return None
    reactions = tuple(
        _concept_text(m) for reaction in r.objs("reaction") for m in reaction.objs("manifestation")
    )
    return Allergy(
        substance=_concept_text(r.need("code")),
        reactions=reactions,
        criticality=r.code("criticality", _CRITICALITIES),
    )


# resourceType -> (template section, the element naming the patient, reader)
_READERS: dict[str, tuple[str, str, Callable[[Node], Any]]] = {
    "Condition": ("conditions", "subject", _condition),
    "MedicationRequest": ("medications", "subject", _medication),
    "Observation": ("observations", "subject", _observation),
    "AllergyIntolerance": ("allergies", "patient", _allergy),
}


# --- FHIR data types ---------------------------------------------------------------------


def _concept_text(concept: Node) -> str:
    """CodeableConcept in words: its text, else a coding's display, else a coding's code."""
    codings = concept.objs("coding")
    text = concept.text("text") or next(
        (t for c in codings if (t := c.text("display") or c.text("code"))), None
    )
    if text is None:
        raise InvalidArgument(concept.path, "has no text, coding display or coding code")
    return text


def _status_code(r: Node, key: str) -> str | None:
    concept = r.obj(key)
    codes = [c.text("code") for c in concept.objs("coding")] if concept else []
    return next((c for c in codes if c), None)


def _period_start(r: Node, key: str) -> str | None:
    period = r.obj(key)
    return period.datetime("start") if period else None


def _quantity(q: Node) -> str:
    value = q.number("value")
    if value is None:
        raise q.fail("value", "is required")
    unit = q.text("unit") or q.text("code")
    comparator = q.code("comparator", ("<", "<=", ">=", ">")) or ""
    return f"{comparator}{value} {unit}" if unit else f"{comparator}{value}"


def _value(r: Node) -> str | None:
    """Observation value[x], in the types a prompt can say in words; others are left out."""
    present = [k for k, v in r.data.items() if _CHOICE_VALUE.fullmatch(k) and v is not None]
    if len(present) > 1:
        raise r.fail(present[1], f"conflicts with {present[0]}: value[x] takes one type")
    if (q := r.obj("valueQuantity")) is not None:
        return _quantity(q)
    if (c := r.obj("valueCodeableConcept")) is not None:
        return _concept_text(c)
    if (i := r.number("valueInteger")) is not None:
        return i
    if (b := r.boolean("valueBoolean")) is not None:
        return "yes" if b else "no"
    return r.text("valueString")
