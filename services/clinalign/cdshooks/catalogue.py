"""The CDS services this gateway offers (CDS Hooks 2.0 discovery): one per drafting task
on a standard hook, each with the FHIR prefetch templates its draft needs.

Prefetch keys name what ``hooks.bundle_from`` reads: ``patient`` is a Patient resource,
every other key a searchset Bundle of one resource type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clinalign.generation.v1 import generation_pb2 as gpb

PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&_sort=-date&_count=50",
}
# prefetch key -> the resource type its searchset holds
SEARCHES: dict[str, str] = {
    "conditions": "Condition",
    "medications": "MedicationRequest",
    "allergies": "AllergyIntolerance",
    "observations": "Observation",
}


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    task: int  # clinalign.generation.v1.ClinicalTask
    required_context: tuple[str, ...]
    document_type: dict[str, str]  # the LOINC code of the document a draft is filed as
    summary: str  # the card's summary line (at most 140 characters)

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(PREFETCH),
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
    )
}


def discovery() -> dict[str, Any]:
    return {"services": [s.discovery() for s in SERVICES.values()]}
