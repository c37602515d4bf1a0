"""The CDS services this gateway offers (CDS Hooks 2.0 discovery): one per drafting task,
each with the FHIR prefetch templates its draft needs.

Two are on standard hooks (``patient-view``, ``encounter-discharge``). Replying to a
patient's message has no standard hook, so that service is on ClinAlign's own,
``org.clinalign.communication-view`` (reverse-domain named, as the specification requires
of an organisation's hook): the EHR calls it when a clinician opens a patient's message (a
FHIR ``Communication`` from the patient) in their inbox, with ``communicationId`` in the
context.

Prefetch keys name what ``hooks.bundle_from`` reads: ``patient`` is a Patient resource,
``communication`` a Communication, every other key a searchset Bundle of one resource type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clinalign.generation.v1 import generation_pb2 as gpb

RECORD: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&_sort=-date&_count=50",
}
MESSAGE = {"communication": "Communication/{{context.communicationId}}"}
# prefetch key -> the resource type its searchset holds
SEARCHES: dict[str, str] = {
    "conditions": "Condition",
    "medications": "MedicationRequest",
    "allergies": "AllergyIntolerance",
    "observations": "Observation",
}
# Searches a draft needs whole: an allergy or a medicine on a later page left out is a
# safety fault, so every page of these is read (FHIR paging, a searchset's "next" link).
# Observations ask for the newest 50 and stop at the first page.
WHOLE_SEARCHES = frozenset({"conditions", "medications", "allergies"})


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    task: int  # clinalign.generation.v1.ClinicalTask
    required_context: tuple[str, ...]
    summary: str  # the card's summary line (at most 140 characters)
    # the LOINC code of the document a draft is filed as; none for a reply, which is a
    # Communication
    document_type: dict[str, str] = field(default_factory=dict)
    prefetch: dict[str, str] = field(default_factory=lambda: dict(RECORD))
    # the prefetch key holding the patient's message the draft answers; None: no message
    message: str | None = None
    # who may be the context's userId (the hook's definition): the resource types
    user_types: tuple[str, ...] = ("Practitioner", "PractitionerRole")

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": "Drafts are AI-generated for clinician review; register "
            "the EHR's JWT issuer with ClinAlign first.",
        }


SERVICES: dict[str, CdsService] = {
    s.id: s
    for s in (
        CdsService(
            id="clinalign-patient-summary",
            hook="patient-view",
            title="ClinAlign clinician summary",
            description="Drafts a clinician summary of the patient's conditions, "
            "medications, allergies and recent observations, for review.",
            task=gpb.CLINICAL_TASK_SUMMARY,
            required_context=("userId", "patientId"),
            document_type={"code": "60591-5", "display": "Patient summary Document"},
            summary="AI draft: clinician summary of this patient, for your review",
            # patient-view: "the id of the current user": a practitioner, or a patient or
            # a related person in a patient portal
            user_types=("Practitioner", "PractitionerRole", "Patient", "RelatedPerson"),
        ),
        CdsService(
            id="clinalign-discharge-instructions",
            hook="encounter-discharge",
            title="ClinAlign discharge instructions",
            description="Drafts discharge instructions for the patient from their record, "
            "for review before they are given.",
            task=gpb.CLINICAL_TASK_DISCHARGE_INSTRUCTIONS,
            required_context=("userId", "patientId", "encounterId"),
            document_type={"code": "8653-8", "display": "Hospital Discharge instructions"},
            summary="AI draft: discharge instructions for this patient, for your review",
        ),
        CdsService(
            id="clinalign-patient-message-reply",
            hook="org.clinalign.communication-view",
            title="ClinAlign reply to a patient's message",
            description="Drafts a reply to the patient's message (the Communication in "
            "context.communicationId) in the context of their record, for the clinician "
            "to review and send.",
            task=gpb.CLINICAL_TASK_PATIENT_QUESTION,
            required_context=("userId", "patientId", "communicationId"),
            summary="AI draft: a reply to this patient's message, for your review",
            prefetch=RECORD | MESSAGE,
            message="communication",
        ),
    )
}


def discovery() -> dict[str, Any]:
    return {"services": [s.discovery() for s in SERVICES.values()]}
