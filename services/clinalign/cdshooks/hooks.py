"""A hook request (CDS Hooks 2.0, "Calling a CDS Service") checked field by field, and the
FHIR R4 Bundle the generation service renders, built from its prefetch.

Every refusal names the JSON path at fault. What is checked: ``hook`` is the service's,
``hookInstance`` a UUID, ``context`` has the hook's required fields as FHIR ids
(``userId`` a reference to a person), ``fhirServer`` an https URL when given and present
whenever ``fhirAuthorization`` is, ``fhirAuthorization`` an OAuth 2.0 bearer grant, and
every prefetch key this service declared holds what its template asks for, about the
context's patient. A key the EHR left out is read from ``fhirServer`` (``fhir``), and what
that server answers is checked as strictly, its faults reported as the server's (502).
A service that replies to a patient's message reads it from the ``communication`` prefetch:
a Communication about the context's patient whose payload is text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clinalign.cdshooks.catalogue import SEARCHES, CdsService
from clinalign.cdshooks.errors import BadGateway, BadRequest
from clinalign.common.oidc import OidcConfigError, check_url

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # whole strings only (fullmatch)
USER_REF = re.compile(r"([A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")
MAX_ENTRIES = 1_000  # per prefetch searchset
MAX_MESSAGE_CHARS = 4_000  # a patient's message, all of its text payloads together
CONTEXT_IDS = ("patientId", "encounterId", "communicationId")  # FHIR ids a template may use


@dataclass(frozen=True)
class CheckedHook:
    """A hook request whose fields are checked; its prefetch not yet."""

    service: CdsService
    hook_instance: str
    user_id: str
    context: dict[str, str]  # the context's FHIR ids (CONTEXT_IDS) that were given
    prefetch: dict[str, Any]
    fhir_server: str | None
    fhir_token: str | None

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]


@dataclass(frozen=True)
class HookCall:
    service: CdsService
    hook_instance: str
    user_id: str  # "Practitioner/123"
    patient_id: str
    encounter_id: str | None
    bundle_json: str
    question: str | None = None  # the patient's message a reply answers
    message_id: str | None = None  # its Communication's id


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(field, "must be a JSON object")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(field, "must be a non-empty string")
    return value


def check_hook(body: Any, service: CdsService) -> CheckedHook:
    """The hook request with its fields checked; raises BadRequest naming the field."""
    request = _object(body, "body")
    hook = _text(request.get("hook"), "hook")
    if hook != service.hook:
        raise BadRequest("hook", f"is {hook!r}; service {service.id!r} answers {service.hook!r}")
    instance = _text(request.get("hookInstance"), "hookInstance")
    try:
        uuid.UUID(instance)
    except ValueError:
        raise BadRequest("hookInstance", "must be a UUID") from None
    _check_fhir_access(request)
    context = _object(request.get("context"), "context")
    for name in service.required_context:
        _text(context.get(name), f"context.{name}")
    user = context["userId"]
    found = USER_REF.fullmatch(user)
    if found is None or found.group(1) not in service.user_types:
        kinds = ", ".join(service.user_types)
        raise BadRequest(
            "context.userId",
            f"must be a reference to one of {kinds}, such as {service.user_types[0]}/123",
        )
    ids = {}
    for name in CONTEXT_IDS:
        value = context.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
            raise BadRequest(f"context.{name}", "must be a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        ids[name] = value
    prefetch = _object(request.get("prefetch", {}), "prefetch")
    grant = request.get("fhirAuthorization")
    token = grant["access_token"] if isinstance(grant, dict) else None
    server = request.get("fhirServer")
    return CheckedHook(service, instance, user, ids, prefetch, server, token)


def hook_call(checked: CheckedHook, fetched: dict[str, Any]) -> HookCall:
    """The call to draft, its Bundle built from the prefetch and what was ``fetched`` from
    the FHIR server in its place (whose faults are the server's: 502)."""
    prefetch = {**checked.prefetch, **fetched}
    try:
        bundle = bundle_from(prefetch, checked.service, checked.patient_id)
        key = checked.service.message
        question = None if key is None else message_of(prefetch[key], key, checked.context)
    except BadRequest as err:
        key = err.field.split(".")[1] if err.field.startswith("prefetch.") else ""
        if key in fetched:
            raise BadGateway(err.field, f"fhirServer's answer: {err.message}") from None
        raise
    return HookCall(
        checked.service,
        checked.hook_instance,
        checked.user_id,
        checked.patient_id,
        checked.context.get("encounterId"),
        json.dumps(bundle),
        question,
        checked.context.get("communicationId") if question is not None else None,
    )


def parse_hook(body: Any, service: CdsService) -> HookCall:
    """The checked hook request with all of its prefetch given."""
    return hook_call(check_hook(body, service), {})


def _check_fhir_access(request: dict[str, Any]) -> None:
    server = request.get("fhirServer")
    if server is not None:
        try:
            check_url(_text(server, "fhirServer"), "fhirServer")
        except OidcConfigError:
            raise BadRequest("fhirServer", "must be an https:// URL") from None
        parts = urlsplit(server)
        if parts.query or parts.fragment or parts.username is not None:
            raise BadRequest(
                "fhirServer", "must be the FHIR base URL, without credentials, query or fragment"
            )
    grant = request.get("fhirAuthorization")
    if grant is None:
        return
    if server is None:
        raise BadRequest("fhirServer", "is required when fhirAuthorization is given")
    grant = _object(grant, "fhirAuthorization")
    for name in ("access_token", "scope", "subject"):
        _text(grant.get(name), f"fhirAuthorization.{name}")
    if grant.get("token_type") != "Bearer":
        raise BadRequest("fhirAuthorization.token_type", "must be 'Bearer'")
    expires = grant.get("expires_in")
    if not isinstance(expires, int) or isinstance(expires, bool) or expires <= 0:
        raise BadRequest("fhirAuthorization.expires_in", "must be a positive integer")


def bundle_from(prefetch: dict[str, Any], service: CdsService, patient_id: str) -> dict[str, Any]:
    """A collection Bundle of the prefetched Patient and the resources of each searchset."""
    for key, template in service.prefetch.items():
        if prefetch.get(key) is None:
            raise BadRequest(f"prefetch.{key}", f"is missing; send the result of {template!r}")
    patient = _object(prefetch["patient"], "prefetch.patient")
    if patient.get("resourceType") != "Patient":
        raise BadRequest("prefetch.patient.resourceType", "must be 'Patient'")
    if patient.get("id") != patient_id:
        raise BadRequest("prefetch.patient.id", "must be context.patientId")
    entries: list[dict[str, Any]] = [{"resource": patient}]
    for key, kind in SEARCHES.items():
        entries += [{"resource": r} for r in searchset(prefetch[key], kind, f"prefetch.{key}")]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def searchset(value: Any, kind: str, field: str) -> list[dict[str, Any]]:
    """The ``kind`` resources of a searchset Bundle (its OperationOutcomes left out); 400
    naming ``field`` when it is anything else."""
    bundle = _object(value, field)
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest(f"{field}.resourceType", f"must be 'Bundle' (a {kind} search result)")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest(f"{field}.entry", "must be an array")
    if len(entries) > MAX_ENTRIES:
        raise BadRequest(f"{field}.entry", f"has {len(entries)} entries; at most {MAX_ENTRIES}")
    found = []
    for i, entry in enumerate(entries):
        where = f"{field}.entry[{i}]"
        resource = _object(_object(entry, where).get("resource"), f"{where}.resource")
        got = resource.get("resourceType")
        if got == "OperationOutcome":  # a search's warnings (search.mode "outcome")
            continue
        if got != kind:
            raise BadRequest(f"{field}.entry[{i}].resource.resourceType", f"must be {kind!r}")
        found.append(resource)
    return found


def message_of(value: Any, key: str, context: dict[str, str]) -> str:
    """The text of the patient's message: a Communication, the one in context, about the
    context's patient, whose payload holds text (``contentString``; attachments and
    references are not read)."""
    field = f"prefetch.{key}"
    message = _object(value, field)
    if message.get("resourceType") != "Communication":
        raise BadRequest(f"{field}.resourceType", "must be 'Communication'")
    if message.get("id") != context.get("communicationId"):
        raise BadRequest(f"{field}.id", "must be context.communicationId")
    subject = message.get("subject")
    patient = f"Patient/{context['patientId']}"
    if not isinstance(subject, dict) or subject.get("reference") != patient:
        raise BadRequest(f"{field}.subject", "must be a reference to the context's patient")
    payload = message.get("payload")
    if not isinstance(payload, list) or not payload:
        raise BadRequest(f"{field}.payload", "must be a non-empty array")
    texts = [
        p["contentString"]
        for p in payload
        if isinstance(p, dict) and isinstance(p.get("contentString"), str)
    ]
    text = "\n\n".join(t.strip() for t in texts if t.strip())
    if not text:
        raise BadRequest(f"{field}.payload", "holds no text (contentString)")
    if len(text) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"{field}.payload", f"is longer than {MAX_MESSAGE_CHARS} characters")
    return text
