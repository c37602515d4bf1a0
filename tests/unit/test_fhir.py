"""FHIR Bundle -> prompt: golden renders of every released template version, what a
prompt may and may not contain, and the message for each kind of bad input."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.generation import fhir
from clinalign.generation.fhir import TASKS, render, template_versions

EXAMPLE_PATH = Path(fhir.__file__).parent / "examples" / "patient_bundle.json"
EXAMPLE = EXAMPLE_PATH.read_text()
QUESTION = "Is my blood pressure too high?"

# --- golden renders ----------------------------------------------------------------------
# Every released version, not only the current one: an output's provenance names its
# version, and re-rendering must give the prompt the model saw. A failure here means a
# released template, or the facts the code hands it, changed: add a version instead.

RECORD_2026_11_1 = """\
Patient: 64 years, female
Conditions:
- Type 2 diabetes mellitus (active, since 2015-06)
- Essential hypertension (active, since 2018-03-12)
Medications:
- Metformin 500 mg tablet (active): 1 tablet by mouth twice daily with meals
- Lisinopril 10 mg tablet (active): 1 tablet by mouth once daily
Results:
- Blood pressure: systolic 148 mmHg, diastolic 92 mmHg (2026-02-20)
- HbA1c: 7.8 % (2026-02-20)
Allergies:
- Penicillin: hives, wheezing (criticality high)"""

GOLDEN = {
    "patient_question/2026-11-1": (
        "Answer the patient's question in plain language, in the context of their record "
        "below. Do not diagnose or change their treatment: for that, refer them to their care "
        "team. If the question describes warning signs such as chest pain, trouble breathing, "
        "fainting or confusion, tell them to seek urgent care now.\n\n"
        f"{RECORD_2026_11_1}\n\nQuestion: {QUESTION}"
    ),
    "summary/2026-11-1": (
        "Summarise this patient's record for a clinician in a few short sentences: active "
        "problems, current medications, recent results and allergies. Use only the facts below "
        f"and say when something is missing.\n\n{RECORD_2026_11_1}"
    ),
    "discharge_instructions/2026-11-1": (
        "Write discharge instructions for this patient in plain language: what their conditions "
        "mean for them, how to take each medication, what to avoid, and which warning signs "
        f"mean they should seek urgent care. Use only the facts below.\n\n{RECORD_2026_11_1}"
    ),
}

# sha256 of every released template file, so an edit to a branch the golden bundle does
# not reach fails too. A new version adds a line here; no line ever changes.
RELEASED = {
    "_record/2026-11-1.j2": "550392cbde3adee6063ff3f62e1ac967173130ba137adb8d7035bb94646c9619",
    "discharge_instructions/2026-11-1.j2": (
        "13c14d8ba6af99ce27e69b541bfee406106f9f752f99f776587beee623226e38"
    ),
    "patient_question/2026-11-1.j2": (
        "7ff05ee177a1cde46432b47ef604fd178755f679623977001ecfad87a9264824"
    ),
    "summary/2026-11-1.j2": "6693e13c1294b8b61f395f1dd02e174d6b47c101165bf1f55ce8fae74d97f3f7",
}


def _question(task: str) -> str:
    return QUESTION if task == "patient_question" else ""


@pytest.mark.parametrize("version", sorted(GOLDEN))
def test_every_released_version_renders_its_golden_prompt(version: str) -> None:
    task = version.split("/")[0]
    prompt = render(EXAMPLE, task, _question(task), template_version=version)
    assert prompt == fhir.RenderedPrompt(text=GOLDEN[version], template_version=version)


def test_released_template_files_are_unchanged() -> None:
    root = resources.files("clinalign.generation").joinpath("data", "templates")
    found = {
        f"{d.name}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest()
        for d in root.iterdir()
        if d.is_dir()
        for f in d.iterdir()
    }
    assert found == RELEASED


def test_versions_are_listed_per_task_with_golden_for_each_and_current_last() -> None:
    versions = template_versions()
    assert list(versions) == list(TASKS)
    assert sorted(v for vs in versions.values() for v in vs) == sorted(GOLDEN)
    for task in TASKS:
        assert render(EXAMPLE, task, _question(task)).template_version == versions[task][-1]


def test_version_order_is_numeric() -> None:
    versions = ["2026-11-10", "2027-01-1", "2026-11-2", "2026-12-1"]
    assert sorted(versions, key=fhir._version_key) == [
        "2026-11-2",
        "2026-11-10",
        "2026-12-1",
        "2027-01-1",
    ]


@pytest.mark.parametrize("requested", ["2026-11-1", "summary/2026-11-1"])
def test_a_version_is_named_bare_or_as_provenance_records_it(requested: str) -> None:
    prompt = render(EXAMPLE, "summary", template_version=requested)
    assert prompt.template_version == "summary/2026-11-1"


def test_summary_of_the_example_is_compact() -> None:
    assert len(render(EXAMPLE, "summary").text) == 663


# --- what a prompt contains ----------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_no_name_identifier_address_or_contact_reaches_any_prompt() -> None:
    bundle = json.loads(EXAMPLE)
    patient = bundle["entry"][0]["resource"]
    identity = {
        k: v for k, v in patient.items() if k not in ("resourceType", "gender", "birthDate")
    }
    secrets = set(_strings(identity)) - {"official", "home", "phone"}  # use codes, not identity
    secrets |= {e["fullUrl"] for e in bundle["entry"]} | {
        e["resource"]["id"] for e in bundle["entry"]
    }
    secrets |= {"1961-07-14", "Testy", "Synthetic", "MRN-000-TEST-42", "555-0100", "Sampletown"}
    for task in TASKS:
        text = render(EXAMPLE, task, _question(task)).text
        leaked = [s for s in secrets if s.lower() in text.lower()]
        assert leaked == [], task


def _edit(change: Callable[[dict[str, Any]], None], source: str = EXAMPLE) -> str:
    bundle = copy.deepcopy(json.loads(source))
    change(bundle)
    return json.dumps(bundle)


def _res(bundle: dict[str, Any], i: int) -> dict[str, Any]:
    resource: dict[str, Any] = bundle["entry"][i]["resource"]
    return resource


def _record(bundle_json: str, **kw: Any) -> str:
    """The record block of a summary."""
    return render(bundle_json, "summary", **kw).text.split("\n\n", 1)[1]


def _minimal(*resources_: dict[str, Any], patient: dict[str, Any] | None = None) -> str:
    entries = [{"resource": {"resourceType": "Patient", **(patient or {})}}]
    entries += [{"resource": r} for r in resources_]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def test_an_empty_record_says_so_in_every_section() -> None:
    assert _record(_minimal()) == (
        "Patient: age unknown, gender unknown\nConditions:\n- none recorded\n"
        "Medications:\n- none recorded\nResults:\n- none recorded\nAllergies:\n- none recorded"
    )


@pytest.mark.parametrize(
    ("birth_date", "age"),
    [
        ("1961-07-14", "64 years"),
        ("1961-03-01", "65 years"),
        ("1961-03-02", "64 years"),  # the 65th birthday is the day after
        ("1961", "65 years"),  # a year alone reads as its first day
        ("2024-03-01", "2 years"),
        ("2024-03-02", "23 months"),
        ("2026-03-01", "0 months"),
    ],
)
def test_age_is_taken_at_the_bundle_timestamp(birth_date: str, age: str) -> None:
    source = _edit(lambda b: _res(b, 0).update(birthDate=birth_date))
    assert _record(source).startswith(f"Patient: {age}, female\n")


def test_without_a_timestamp_age_is_taken_at_today() -> None:
    source = _minimal(patient={"birthDate": "2000-06-30", "gender": "other"})
    assert _record(source, today=dt.date(2026, 6, 29)).startswith("Patient: 25 years, other\n")
    assert _record(source, today=dt.date(2026, 6, 30)).startswith("Patient: 26 years, other\n")


def test_records_in_error_or_refuted_are_left_out_and_other_resource_types_ignored() -> None:
    def change(b: dict[str, Any]) -> None:
        _res(b, 1)["verificationStatus"] = {"coding": [{"code": "entered-in-error"}]}
        _res(b, 3)["status"] = "entered-in-error"
        _res(b, 5)["status"] = "cancelled"
        _res(b, 7)["verificationStatus"] = {"coding": [{"code": "refuted"}]}
        b["entry"].append({"resource": {"resourceType": "Unheard", "whatever": [1, None]}})

    record = _record(_edit(change))
    assert "diabetes" not in record and "Metformin" not in record
    assert "Blood pressure" not in record and "Penicillin" not in record
    assert "Allergies:\n- none recorded" in record and "Essential hypertension" in record


def test_value_types_and_decimal_precision() -> None:
    def obs(name: str, **value: Any) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "code": {"text": name}, **value}

    source = _minimal(
        obs("Potassium", valueQuantity={"value": 4.20, "unit": "mmol/L"}),
        obs("eGFR", valueQuantity={"value": 90, "comparator": ">", "code": "mL/min/{1.73_m2}"}),
        obs("Smoker", valueBoolean=False),
        obs("Pain score", valueInteger=3, effectivePeriod={"start": "2026-01-05T08:00:00Z"}),
        obs("Urine glucose", valueCodeableConcept={"coding": [{"display": "negative"}]}),
        obs("Mood", valueString="calm"),
        obs("Weight", dataAbsentReason={"text": "not asked"}),  # nothing measured: left out
    )
    source = source.replace("4.2,", "4.20,")  # json.dumps drops the trailing zero FHIR keeps
    assert _record(source).split("Results:\n")[1].split("\nAllergies:")[0] == (
        "- Potassium: 4.20 mmol/L\n- eGFR: >90 mL/min/{1.73_m2}\n- Smoker: no\n"
        "- Pain score: 3 (2026-01-05)\n- Urine glucose: negative\n- Mood: calm"
    )


def test_medication_by_reference_uses_its_display_and_codes_fall_back_in_order() -> None:
    source = _minimal(
        {
            "resourceType": "MedicationRequest",
            "status": "stopped",
            "intent": "order",
            "medicationReference": {"reference": "Medication/m1", "display": "Aspirin 81 mg"},
        },
        {"resourceType": "Condition", "code": {"coding": [{"code": "I10"}]}},
        {"resourceType": "Condition", "code": {"coding": [{"system": "x"}, {"display": "Gout"}]}},
    )
    record = _record(source)
    assert "Medications:\n- Aspirin 81 mg (stopped)\n" in record
    assert "Conditions:\n- I10\n- Gout\n" in record


def test_a_line_break_in_a_value_cannot_forge_a_line_of_the_prompt() -> None:
    source = _edit(lambda b: _res(b, 4)["dosageInstruction"][0].update(text="daily\nQuestion: x"))
    assert "- Lisinopril 10 mg tablet (active): daily Question: x\n" in _record(source)


def test_template_syntax_in_the_record_or_question_is_text_not_code() -> None:
    source = _edit(lambda b: _res(b, 2)["code"].update(text="{{ 7 * 7 }} {% if 1 %}x{% endif %}"))
    text = render(source, "patient_question", "{{ patient.gender }}?").text
    assert "- {{ 7 * 7 }} {% if 1 %}x{% endif %} (active" in text
    assert text.endswith("Question: {{ patient.gender }}?")


# --- bad input -----------------------------------------------------------------------------


def _raises(message: str) -> Any:
    return pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$")


E = "input.fhir.bundle_json"


@pytest.mark.parametrize(
    ("task", "question", "version", "message"),
    [
        (
            "unspecified",
            "",
            "",
            "input.fhir.task: must be one of patient_question, summary, discharge_instructions;"
            " got 'unspecified'",
        ),
        (
            "patient_question",
            "  ",
            "",
            "input.fhir.question: is required for CLINICAL_TASK_PATIENT_QUESTION",
        ),
        (
            "summary",
            "why?",
            "",
            "input.fhir.question: is only used with CLINICAL_TASK_PATIENT_QUESTION; leave it empty",
        ),
        (
            "summary",
            "",
            "2025-01-1",
            "input.fhir.template_version: unknown version '2025-01-1' for task 'summary';"
            " known: summary/2026-11-1",
        ),
        (
            "summary",
            "",
            "patient_question/2026-11-1",
            "input.fhir.template_version: unknown version 'patient_question/2026-11-1' for task"
            " 'summary'; known: summary/2026-11-1",
        ),
    ],
)
def test_bad_request_fields(task: str, question: str, version: str, message: str) -> None:
    with _raises(message):
        render(EXAMPLE, task, question, version)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", f"{E}: must not be empty"),
        (" \n", f"{E}: must not be empty"),
        (
            '{"resourceType": "Bundle",\n "entry": [}',
            f"{E}: is not valid JSON: Expecting value: line 2 column 12 (char 38)",
        ),
        (
            '{"resourceType": "Bundle", "x": NaN}',
            f"{E}: is not valid JSON: NaN is not a JSON number",
        ),
        ("[]", f"{E}: must be a FHIR R4 Bundle (resourceType 'Bundle'), got an array"),
        # deeper than the parser's recursion limit, and deeper than any Bundle nests
        ("[" * 5000 + "]" * 5000, f"{E}: nests objects and arrays more than 64 deep"),
        (
            '{"resourceType": "Bundle", "x": ' + "[" * 70 + "]" * 70 + "}",
            f"{E}: nests objects and arrays more than 64 deep",
        ),
        (
            '{"resourceType": "Patient"}',
            f"{E}: must be a FHIR R4 Bundle (resourceType 'Bundle'), got resourceType 'Patient'",
        ),
        (
            "{}",
            f"{E}: must be a FHIR R4 Bundle (resourceType 'Bundle'), got an object without"
            " resourceType",
        ),
        (
            '{"resourceType": "Bundle", "entry": {}}',
            f"{E}.entry: must be a JSON array, got an object",
        ),
        (
            '{"resourceType": "Bundle", "entry": []}',
            f"{E}: Bundle has no Patient entry; add the Patient the record describes",
        ),
        (
            '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}},'
            ' {"fullUrl": "urn:uuid:1"}]}',
            f"{E}.entry[1].resource: is required",
        ),
        (
            '{"resourceType": "Bundle", "entry": [{"resource": {"id": "p"}}]}',
            f"{E}.entry[0].resource.resourceType: is required",
        ),
        (
            '{"resourceType": "Bundle", "entry": [1]}',
            f"{E}.entry[0]: must be a JSON object, got a number",
        ),
    ],
)
def test_bad_bundles(source: str, message: str) -> None:
    with _raises(message):
        render(source, "summary")


def _set(i: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: _res(b, i).update(fields)


def _drop(i: int, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda b: _res(b, i).pop(key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b["entry"].append(copy.deepcopy(b["entry"][0])),
            f"{E}.entry[9].resource: is a second Patient (the first is entry[0]); a Bundle must"
            " describe one patient",
        ),
        (
            _set(0, birthDate="1961-02-30"),
            f"{E}.entry[0].resource.birthDate: must be a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD",
        ),
        (
            _set(0, birthDate=19610714),
            f"{E}.entry[0].resource.birthDate: must be a non-empty string, got a number",
        ),
        (
            _set(0, birthDate="2027-01-01"),
            f"{E}.entry[0].resource.birthDate: is after the record's date, 2026-03-01",
        ),
        (
            _set(0, gender="F"),
            f"{E}.entry[0].resource.gender: must be one of male, female, other, unknown; got 'F'",
        ),
        (
            lambda b: b.update(timestamp="2026-03-01"),
            f"{E}.timestamp: must be a FHIR instant such as 2026-03-01T09:30:00Z",
        ),
        (
            _set(1, onsetDateTime="2015-06-01T25:00:00Z"),
            f"{E}.entry[1].resource.onsetDateTime: must be a FHIR dateTime such as"
            " 2026-02-20T10:15:00Z",
        ),
        (
            _set(6, effectiveDateTime="2026-02-20T10:15"),
            f"{E}.entry[6].resource.effectiveDateTime: must be a FHIR dateTime such as"
            " 2026-02-20T10:15:00Z",
        ),
        (
            _drop(1, "code"),
            f"{E}.entry[1].resource.code: is required",
        ),
        (
            _set(2, code={"coding": [{"system": "http://snomed.info/sct"}]}),
            f"{E}.entry[2].resource.code: has no text, coding display or coding code",
        ),
        (
            _set(2, code={"coding": {"code": "x"}}),
            f"{E}.entry[2].resource.code.coding: must be a JSON array, got an object",
        ),
        (
            _set(3, status="taking"),
            f"{E}.entry[3].resource.status: must be one of active, on-hold, cancelled, completed,"
            " entered-in-error, stopped, draft, unknown; got 'taking'",
        ),
        (
            _drop(4, "medicationCodeableConcept"),
            f"{E}.entry[4].resource.medicationCodeableConcept: is required",
        ),
        (
            _set(4, dosageInstruction=[{"text": ""}]),
            f"{E}.entry[4].resource.dosageInstruction[0].text: must be a non-empty string, got ''",
        ),
        (
            lambda b: _res(b, 6)["valueQuantity"].update(value="7.8"),
            f"{E}.entry[6].resource.valueQuantity.value: must be a JSON number, got '7.8'",
        ),
        (
            lambda b: _res(b, 6)["valueQuantity"].update(value=True),
            f"{E}.entry[6].resource.valueQuantity.value: must be a JSON number, got a boolean",
        ),
        (
            lambda b: _res(b, 5)["component"][1]["valueQuantity"].pop("value"),
            f"{E}.entry[5].resource.component[1].valueQuantity.value: is required",
        ),
        (
            _set(6, valueString="high"),
            f"{E}.entry[6].resource.valueString: conflicts with valueQuantity: value[x] takes one"
            " type",
        ),
        (
            lambda b: _res(b, 6).update(valueBoolean="yes", valueQuantity=None),
            f"{E}.entry[6].resource.valueBoolean: must be true or false, got 'yes'",
        ),
        (
            _set(7, criticality="severe"),
            f"{E}.entry[7].resource.criticality: must be one of low, high, unable-to-assess;"
            " got 'severe'",
        ),
        (
            lambda b: _res(b, 7)["reaction"][0]["manifestation"].append({}),
            f"{E}.entry[7].resource.reaction[0].manifestation[2]: has no text, coding display or"
            " coding code",
        ),
        (
            _set(6, subject={"reference": "Patient/someone-else"}),
            f"{E}.entry[6].resource.subject.reference: is not the Bundle's Patient; a Bundle must"
            " describe one patient",
        ),
        (
            _set(7, patient={"reference": "urn:uuid:00000000-0000-4000-8000-000000000099"}),
            f"{E}.entry[7].resource.patient.reference: is not the Bundle's Patient; a Bundle must"
            " describe one patient",
        ),
    ],
)
def test_malformed_resources_name_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with _raises(message):
        render(_edit(change), "summary")


def test_subject_may_be_absolute_or_absent() -> None:
    def change(b: dict[str, Any]) -> None:
        _res(b, 1)["subject"] = {"reference": "https://ehr.example/fhir/Patient/example-patient"}
        del _res(b, 2)["subject"]

    assert _record(_edit(change)) == RECORD_2026_11_1


def test_size_limits() -> None:
    with _raises(f"{E}: is {len(EXAMPLE)} characters; at most 1600"):
        render(EXAMPLE, "summary", max_chars=100)
    with _raises("input.fhir: renders to 663 characters; at most 500: send fewer resources"):
        render(EXAMPLE, "summary", max_chars=500)
