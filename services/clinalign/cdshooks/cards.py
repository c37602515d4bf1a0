"""A draft as a CDS Hooks card with AI transparency.

The card's ``uuid`` is the output id the generation service reported to the monitor, so
the EHR's feedback on the card names the monitor's output. Its ``detail`` shows the draft
(markdown with the model's text escaped, so a draft cannot inject links or images into the
EHR's display), and its one suggestion files the draft as a DocumentReference with a
Provenance. Both carry the HL7 *AI Transparency on FHIR* security label (``AIAST``, "AI
asserted"); the Provenance's author agent is a contained Device describing the model
version that wrote the draft (name, version, weights hash), as that IG recommends.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.hooks import HookCall
from clinalign.generation.v1 import generation_pb2 as gpb

AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
LOINC = "http://loinc.org"
WEIGHTS_SYSTEM = "https://fhir.clinalign.org/sid/model-weights-sha256"
TOPIC_SYSTEM = "https://fhir.clinalign.org/CodeSystem/cds-service"
SUMMARY_MAX = 140
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def escape_markdown(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def model_card_url(public_url: str, provenance: Any) -> str:
    return f"{public_url}/model-cards/{provenance.model_name}/{provenance.model_version}"


def card(call: HookCall, completion: gpb.Completion, public_url: str) -> dict[str, Any]:
    p = completion.provenance
    summary = call.service.summary[:SUMMARY_MAX]
    detail = (
        f"{escape_markdown(completion.text.strip())}\n\n---\n\n"
        f"*{escape_markdown(p.notice)}*\n\n"
        f"Model: {escape_markdown(p.model_name)} {escape_markdown(p.model_version)}"
    )
    return {
        "uuid": p.output_id,
        "summary": summary,
        "detail": detail,
        "indicator": "info",
        "source": {
            "label": "ClinAlign",
            "url": model_card_url(public_url, p),
            "topic": {
                "system": TOPIC_SYSTEM,
                "code": call.service.id,
                "display": call.service.title,
            },
        },
        "suggestions": [suggestion(call, completion)],
        "selectionBehavior": "at-most-one",
        "overrideReasons": taxonomy.override_reasons(),
    }


def suggestion(call: HookCall, completion: gpb.Completion) -> dict[str, Any]:
    p = completion.provenance
    # Stable per output, so a retried hook proposes the same resources.
    doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"clinalign:document:{p.output_id}"))
    return {
        "label": "File this draft in the record (after your review)",
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"clinalign:suggestion:{p.output_id}")),
        "isRecommended": False,
        "actions": [
            {
                "type": "create",
                "description": "Add the draft as a preliminary document",
                "resource": document(call, completion, doc_id),
            },
            {
                "type": "create",
                "description": "Record which model wrote the draft",
                "resource": provenance(completion, doc_id),
            },
        ],
    }


def document(call: HookCall, completion: gpb.Completion, doc_id: str) -> dict[str, Any]:
    p = completion.provenance
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "meta": {"security": [AIAST]},
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [{"system": LOINC, **call.service.document_type}]},
        "subject": {"reference": f"Patient/{call.patient_id}"},
        "date": p.create_time.ToJsonString(),
        "description": p.notice,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(completion.text.encode()).decode("ascii"),
                    "title": call.service.title,
                }
            }
        ],
    }
    if call.encounter_id:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{call.encounter_id}"}]}
    return resource


def provenance(completion: gpb.Completion, doc_id: str) -> dict[str, Any]:
    p = completion.provenance
    return {
        "resourceType": "Provenance",
        "meta": {"security": [AIAST]},
        "contained": [device(completion)],
        "target": [{"reference": f"DocumentReference/{doc_id}"}],
        "recorded": p.create_time.ToJsonString(),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": {"reference": "#model", "display": f"{p.model_name} {p.model_version}"},
            }
        ],
    }


def device(completion: gpb.Completion) -> dict[str, Any]:
    p = completion.provenance
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": p.model_name, "type": "model-name"}],
        "type": {"text": "Clinical language model (AI)"},
        "version": [{"value": p.model_version}],
        "note": [{"text": p.notice}],
    }
    if p.weights_hash:
        resource["identifier"] = [{"system": WEIGHTS_SYSTEM, "value": p.weights_hash}]
    if p.prompt_template_version:
        resource["property"] = [
            {
                "type": {"text": "prompt template version"},
                "valueCode": [{"text": p.prompt_template_version}],
            }
        ]
    return resource
