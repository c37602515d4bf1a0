"""Structured clinical context: a FHIR R4 Bundle rendered into the prompt the model sees.

``render`` parses the Bundle, reads the facts a prompt needs from the resources it
understands (Patient, Condition, MedicationRequest, Observation, AllergyIntolerance;
other resource types are ignored), and renders them with a versioned template.

The model sees clinical facts, never identity: the Patient contributes an age and an
administrative gender. Names, identifiers, addresses and telecom are never read; ids and
references are read only to check that every resource is about the Bundle's one Patient.

Validation is by hand, of exactly the elements read, against the FHIR R4 JSON rules for
them (https://hl7.org/fhir/R4/json.html): every problem names its full protobuf path, e.g.
``input.fhir.bundle_json.entry[3].resource.valueQuantity.value: must be a JSON number``.
Resources that FHIR marks as recorded in error, or refuted, are left out.

Templates live in ``data/templates/<task>/<version>.j2``. A released version is never
edited: an output's provenance names the version, and re-rendering it must give the same
prompt. Change a prompt by adding a version; the last one (in version order) is current.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from clinalign.common.errors import InvalidArgument

TASKS = ("patient_question", "summary", "discharge_instructions")
_ENUM = {t: f"CLINICAL_TASK_{t.upper()}" for t in TASKS}

FIELD = "input.fhir"
BUNDLE = f"{FIELD}.bundle_json"
# FHIR JSON runs to roughly ten times the length of the lines rendered from it (the
# example bundle: 5.8k characters for 0.6k of record), so the input cap is a multiple of
# the prompt cap; it only bounds parsing work, the prompt cap is the real limit.
BUNDLE_CHARS_PER_PROMPT_CHAR = 16

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

# FHIR date / dateTime / instant (https://hl7.org/fhir/R4/datatypes.html#primitive), simplified
# to structure; calendar validity is checked by constructing the date.
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_TIME = r"T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
_DATETIME = re.compile(rf"(\d{{4}})(?:-(\d{{2}})(?:-(\d{{2}})(?:{_TIME})?)?)?")
_INSTANT = re.compile(rf"(\d{{4}})-(\d{{2}})-(\d{{2}}){_TIME}")
_CHOICE_VALUE = re.compile(r"value[A-Z][A-Za-z]*")
_VERSION = re.compile(r"(\d{4})-(\d{2})-(\d+)")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # the user message to send to the model
    template_version: str  # "<task>/<version>", e.g. "summary/2026-11-1"; for provenance


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


def render(
    bundle_json: str,
    task: str,
    question: str = "",
    template_version: str = "",
    *,
    max_chars: int = 16_000,
    today: dt.date | None = None,
) -> RenderedPrompt:
    """Render ``bundle_json`` for ``task`` (one of TASKS).

    Age is computed at the Bundle's ``timestamp``, or at ``today`` (default: the current
    UTC date) when it has none. Raises InvalidArgument naming the offending field.
    """
    if task not in TASKS:
        raise InvalidArgument(f"{FIELD}.task", f"must be one of {', '.join(TASKS)}; got {task!r}")
    question = question.strip()
    if task == "patient_question" and not question:
        raise InvalidArgument(f"{FIELD}.question", f"is required for {_ENUM[task]}")
    if task != "patient_question" and question:
        raise InvalidArgument(
            f"{FIELD}.question", f"is only used with {_ENUM['patient_question']}; leave it empty"
        )
    version = _resolve_version(task, template_version)
    record = _read_bundle(bundle_json, max_chars * BUNDLE_CHARS_PER_PROMPT_CHAR, today)
    # Templates end in a newline, the message does not.
    text = _environment().get_template(f"{version}.j2").render(question=question, **record).strip()
    if len(text) > max_chars:
        raise InvalidArgument(
            FIELD, f"renders to {len(text)} characters; at most {max_chars}: send fewer resources"
        )
    return RenderedPrompt(text=text, template_version=version)


def template_versions() -> dict[str, list[str]]:
    """Each task's released template versions as "<task>/<version>", current last."""
    return {task: list(versions) for task, versions in _versions().items()}


# --- templates ---------------------------------------------------------------------------


def _template_dir() -> Traversable:
    return resources.files(__package__).joinpath("data", "templates")


@functools.cache
def _environment() -> SandboxedEnvironment:
    # Sandboxed so a template can only read the facts it is given; plain text, no
    # escaping; a misspelt variable fails instead of rendering as nothing.
    sources = {
        f"{d.name}/{f.name}": f.read_text("utf-8")
        for d in _template_dir().iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.name.endswith(".j2")
    }
    return SandboxedEnvironment(
        loader=jinja2.DictLoader(sources),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@functools.cache
def _versions() -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {task: [] for task in TASKS}
    for d in _template_dir().iterdir():
        if d.name in found:
            found[d.name] += [f.name[:-3] for f in d.iterdir() if f.name.endswith(".j2")]
    return {
        task: tuple(f"{task}/{v}" for v in sorted(vs, key=_version_key))
        for task, vs in found.items()
    }


def _version_key(version: str) -> tuple[int, ...]:
    """Order versions by number: 2026-11-2 < 2026-11-10 < 2026-12-1."""
    match = _VERSION.fullmatch(version)
    if match is None:  # a packaging mistake, not a caller's: fail loudly
        raise RuntimeError(f"template version {version!r} is not YYYY-MM-N")
    return tuple(int(part) for part in match.groups())


def _resolve_version(task: str, requested: str) -> str:
    known = _versions()[task]
    if not requested:
        return known[-1]
    # Accept the bare version or the "<task>/<version>" form that provenance records.
    wanted = requested if "/" in requested else f"{task}/{requested}"
    if wanted not in known:
        raise InvalidArgument(
            f"{FIELD}.template_version",
            f"unknown version {requested!r} for task {task!r}; known: {', '.join(known)}",
        )
    return wanted


# --- reading the Bundle ------------------------------------------------------------------


def _read_bundle(bundle_json: str, max_len: int, today: dt.date | None) -> dict[str, Any]:
    if not bundle_json.strip():
        raise InvalidArgument(BUNDLE, "must not be empty")
    if len(bundle_json) > max_len:
        raise InvalidArgument(BUNDLE, f"is {len(bundle_json)} characters; at most {max_len}")
    try:
        # Decimal keeps a FHIR decimal's precision ("7.20" stays 7.20); NaN is not JSON.
        data = json.loads(bundle_json, parse_float=Decimal, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise InvalidArgument(BUNDLE, f"is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        if not isinstance(data, dict):
            got = _kind(data)
        elif "resourceType" in data:
            got = f"resourceType {_kind(data['resourceType'])}"
        else:
            got = "an object without resourceType"
        raise InvalidArgument(
            BUNDLE, f"must be a FHIR R4 Bundle (resourceType 'Bundle'), got {got}"
        )
    bundle = _Node(data, BUNDLE)
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


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_subject(r: _Node, key: str, own: set[str]) -> None:
    """A resource about someone else must not slip into this patient's prompt."""
    ref = r.obj(key)
    target = ref.text("reference") if ref else None
    if ref and target and not any(target == o or target.endswith("/" + o) for o in own):
        raise ref.fail(
            "reference", "is not the Bundle's Patient; a Bundle must describe one patient"
        )


def _patient(r: _Node, on: dt.date) -> Patient:
    born = r.date("birthDate")
    age = None
    if born is not None:
        if born > on:
            raise r.fail("birthDate", f"is after the record's date, {on}")
        months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
        age = f"{months // 12} years" if months >= 24 else f"{months} months"
    return Patient(age=age, gender=r.code("gender", _GENDERS))


def _condition(r: _Node) -> Condition | None:
    if _status_code(r, "verificationStatus") in _NOT_FACTS:
        return None
    status = _status_code(r, "clinicalStatus")
    onset = r.datetime("onsetDateTime") or _period_start(r, "onsetPeriod") or r.text("onsetString")
    return Condition(
        name=_concept_text(r.need("code")),
        status=status if status in _CLINICAL else None,
        onset=onset,
    )


def _medication(r: _Node) -> Medication | None:
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


def _observation(r: _Node) -> Observation | None:
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


def _allergy(r: _Node) -> Allergy | None:
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
_READERS: dict[str, tuple[str, str, Callable[[_Node], Any]]] = {
    "Condition": ("conditions", "subject", _condition),
    "MedicationRequest": ("medications", "subject", _medication),
    "Observation": ("observations", "subject", _observation),
    "AllergyIntolerance": ("allergies", "patient", _allergy),
}


# --- FHIR data types ---------------------------------------------------------------------


def _concept_text(concept: _Node) -> str:
    """CodeableConcept in words: its text, else a coding's display, else a coding's code."""
    codings = concept.objs("coding")
    text = concept.text("text") or next(
        (t for c in codings if (t := c.text("display") or c.text("code"))), None
    )
    if text is None:
        raise InvalidArgument(concept.path, "has no text, coding display or coding code")
    return text


def _status_code(r: _Node, key: str) -> str | None:
    concept = r.obj(key)
    codes = [c.text("code") for c in concept.objs("coding")] if concept else []
    return next((c for c in codes if c), None)


def _period_start(r: _Node, key: str) -> str | None:
    period = r.obj(key)
    return period.datetime("start") if period else None


def _quantity(q: _Node) -> str:
    value = q.number("value")
    if value is None:
        raise q.fail("value", "is required")
    unit = q.text("unit") or q.text("code")
    comparator = q.code("comparator", ("<", "<=", ">=", ">")) or ""
    return f"{comparator}{value} {unit}" if unit else f"{comparator}{value}"


def _value(r: _Node) -> str | None:
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


class _Node:
    """A JSON object at a known protobuf path; its getters name the path in any error."""

    def __init__(self, data: dict[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def fail(self, key: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path}.{key}", problem)

    def obj(self, key: str) -> _Node | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a JSON object, got {_kind(value)}")
        return _Node(value, f"{self.path}.{key}")

    def need(self, key: str) -> _Node:
        node = self.obj(key)
        if node is None:
            raise self.fail(key, "is required")
        return node

    def objs(self, key: str) -> list[_Node]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"must be a JSON array, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"must be a JSON object, got {_kind(item)}")
        return [_Node(item, f"{self.path}.{key}[{i}]") for i, item in enumerate(value)]

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {_kind(value)}")
        # One line: a line break in a value must not start a line of the prompt's own.
        return " ".join(value.split())

    def need_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(key, "is required")
        return value

    def code(self, key: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is not None and value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def number(self, key: str) -> str | None:
        """A JSON number, as written (a decimal keeps its precision: "7.20")."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.fail(key, f"must be a JSON number, got {_kind(value)}")
        return f"{value:f}" if isinstance(value, Decimal) else str(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_kind(value)}")
        return value

    def date(self, key: str) -> dt.date | None:
        """A FHIR date; a partial one ("1961", "1961-07") reads as its first day."""
        value = self.text(key)
        if value is None:
            return None
        return self._parse(key, value, _DATE, "a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD")

    def datetime(self, key: str) -> str | None:
        """A FHIR dateTime, as its date part at the precision given ("2015-06")."""
        value = self.text(key)
        if value is None:
            return None
        self._parse(key, value, _DATETIME, "a FHIR dateTime such as 2026-02-20T10:15:00Z")
        return value.split("T")[0]

    def instant(self, key: str) -> dt.date | None:
        """A FHIR instant, as its calendar date in its own time zone."""
        value = self.text(key)
        if value is None:
            return None
        return self._parse(key, value, _INSTANT, "a FHIR instant such as 2026-03-01T09:30:00Z")

    def _parse(self, key: str, value: str, pattern: re.Pattern[str], form: str) -> dt.date:
        match = pattern.fullmatch(value)
        try:
            if match is None:
                raise ValueError(value)
            year, month, day = (int(g) if g else 1 for g in match.groups())
            parsed = dt.date(year, month, day)
            if "T" in value:
                dt.datetime.fromisoformat(value)  # hour, minute, second and offset in range
        except ValueError:
            # The value is not echoed: dates identify a patient, and messages travel.
            raise self.fail(key, f"must be {form}") from None
        return parsed


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "a string"
    names = {bool: "a boolean", int: "a number", Decimal: "a number", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else "null")
