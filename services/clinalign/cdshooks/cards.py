"""A draft as a CDS Hooks card with AI transparency.

The card's ``uuid`` is the output id the generation service reported to the monitor, so
the EHR's feedback on the card names the monitor's output. Its ``detail`` shows the draft
(markdown with the model's text escaped, so a draft cannot inject links or images into the
EHR's display), and its one suggestion files the draft as a preliminary DocumentReference
or, for a reply to a patient's message, adds it as an unsent reply (a Communication in
preparation, in response to the patient's), with a Provenance. Both carry the HL7 *AI
Transparency on FHIR* security label (``AIAST``, "AI asserted"); the Provenance's author
agent is a contained Device describing the model version that wrote the draft, as that IG
recommends: the same Device the card's ``source.url`` serves (``modelcard``: lineage,
evaluation figures, intended use and known limitations from the registry), whose ``id``
here is ``model``.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import TYPE_CHECKING, Any

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.hooks import HookCall
from clinalign.generation.v1 import generation_pb2 as gpb

if TYPE_CHECKING:  # modelcard renders with this module's escaping: no import cycle at run time
    from clinalign.cdshooks.modelcard import ModelCard

AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
LOINC = "http://loinc.org"
WEIGHTS_SYSTEM = "https://fhir.clinalign.org/sid/model-weights-sha256"
TOPIC_SYSTEM = "https://fhir.clinalign.org/CodeSystem/cds-service"
PROMPT_TEMPLATE_SYSTEM = "https://fhir.clinalign.org/sid/prompt-template"
SUMMARY_MAX = 140
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def escape_markdown(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def card(
    call: HookCall, completion: gpb.Completion, public_url: str, facts: ModelCard
) -> dict[str, Any]:
    """The card of a draft; ``facts``: the model card of the version that wrote it."""
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
            "url": facts.url(public_url),
            "topic": {
                "system": TOPIC_SYSTEM,
                "code": call.service.id,
                "display": call.service.title,
            },
        },
        "suggestions": [suggestion(call, completion, device(facts, public_url))],
        "selectionBehavior": "at-most-one",
        "overrideReasons": taxonomy.override_reasons(),
    }


def suggestion(call: HookCall, completion: gpb.Completion, model: dict[str, Any]) -> dict[str, Any]:
    """File the draft as a preliminary DocumentReference or, for a reply to a patient's
    message, add it as an unsent reply (a Communication in preparation); with its
    Provenance."""
    p = completion.provenance
    # Stable per output, so a retried hook proposes the same resources.
    doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"clinalign:document:{p.output_id}"))
    if call.message_id is not None:
        label, description = (
            "Use this draft as your reply (after your review)",
            "Add the draft as an unsent reply to the patient's message",
        )
        draft = reply(call, completion, doc_id)
    else:
        label, description = (
            "File this draft in the record (after your review)",
            "Add the draft as a preliminary document",
        )
        draft = document(call, completion, doc_id)
    return {
        "label": label,
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"clinalign:suggestion:{p.output_id}")),
        "isRecommended": False,
        "actions": [
            {"type": "create", "description": description, "resource": draft},
            {
                "type": "create",
                "description": "Record which model wrote the draft",
                "resource": provenance(completion, f"{draft['resourceType']}/{doc_id}", model),
            },
        ],
    }


def reply(call: HookCall, completion: gpb.Completion, doc_id: str) -> dict[str, Any]:
    """The draft as the clinician's reply to the patient's message, not yet sent: the
    EHR's messaging sends it once the clinician has reviewed and approved it."""
    patient = {"reference": f"Patient/{call.patient_id}"}
    return {
        "resourceType": "Communication",
        "id": doc_id,
        "meta": {"security": [AIAST]},
        "status": "preparation",
        "inResponseTo": [{"reference": f"Communication/{call.message_id}"}],
        "subject": patient,
        "recipient": [patient],
        "payload": [{"contentString": completion.text}],
        "note": [{"text": completion.provenance.notice}],
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


def provenance(completion: gpb.Completion, target: str, model: dict[str, Any]) -> dict[str, Any]:
    """Who wrote the draft (``target``, a reference): ``model``, the contained Device
    (``device``)."""
    p = completion.provenance
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"security": [AIAST]},
        "contained": [model],
        "target": [{"reference": target}],
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
    if p.prompt_template_version:  # what rendered the record into the model's prompt
        resource["entity"] = [
            {
                "role": "source",
                "what": {
                    "identifier": {
                        "system": PROMPT_TEMPLATE_SYSTEM,
                        "value": p.prompt_template_version,
                    },
                    "display": "prompt template",
                },
            }
        ]
    return resource


def device(facts: ModelCard, public_url: str) -> dict[str, Any]:
    """The model card's Device, contained in the Provenance under the id ``model``."""
    return facts.as_device(public_url) | {"id": "model"}
