"""The CDS Hooks gateway over real HTTP, against the real generation service (the tiny
model), monitor and trainer (its registry), called by an EHR stand-in
(``tests.cds_hooks_support``): discovery → a hook with prefetch → a card with AI
transparency → override feedback → a monitor flag attributed to the EHR user, and every
outcome counted in the monitor's statistics; the model card the card links to, from the
registry, as JSON, FHIR Device and Markdown, and a card still returned while the registry
is down; and every bad input refused with the right status and a JSON error, nothing
stored. Every answer is validated against the CDS Hooks 2.0 schemas in
``tests/data/cds_hooks``."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from clinalign.common.hashing import weights_hash
from clinalign.common.v1 import common_pb2
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.cds_hooks_support import (
    FOUNDATION,
    GATE_CHECKS,
    SERVED,
    USER,
    CdsStack,
    EhrStandIn,
    cds_stack,
    hook_request,
    prefetch,
    registered,
    schema,
)
from tests.conftest import free_port, serving_http

SUMMARY = "/cds-services/clinalign-patient-summary"
DISCHARGE = "/cds-services/clinalign-discharge-instructions"
AIAST = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST")
AI_DEVICE = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Device"
FHIR_TIMEOUT_S = 3.0


@pytest.fixture
async def stack(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    # long enough that a loaded two-core machine answers a loopback read in time (1.0 s
    # once timed out on a quick garbage answer); the slow stand-in takes twice as long
    async with cds_stack(tmp_path, tiny_model_dir, fhir_timeout_s=FHIR_TIMEOUT_S) as running:
        yield running


async def call_hook(stack: CdsStack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    schema("request").validate(body)
    async with stack.http() as http:
        answer = await http.post(path, json=body, headers=stack.auth(path))
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    schema("response").validate(found)
    return found


async def send_feedback(stack: CdsStack, path: str, items: list[dict[str, Any]]) -> int:
    body = {"feedback": items}
    schema("feedback").validate(body)
    async with stack.http() as http:
        answer = await http.post(
            path + "/feedback", json=body, headers=stack.auth(path + "/feedback")
        )
    return answer.status_code


async def flags(stack: CdsStack) -> list[mpb.Flag]:
    async with stack.monitor_admin() as ch:
        found = await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(mpb.ListFlagsRequest())
    return list(found.flags)


async def stats(stack: CdsStack) -> dict[str, mpb.VersionStats]:
    async with stack.monitor_admin() as ch:
        found = await monitor_pb2_grpc.MonitorServiceStub(ch).GetStats(mpb.GetStatsRequest())
    return {v.model_version: v for v in found.versions}


async def outputs(stack: CdsStack) -> list[Any]:
    async with stack.monitor_admin() as ch:
        found = await monitor_pb2_grpc.MonitorServiceStub(ch).ListOutputs(mpb.ListOutputsRequest())
    return list(found.outputs)


def check_transparency(card: dict[str, Any], model: Path, patient: str) -> None:
    (suggestion,) = card["suggestions"]
    document, provenance = (a["resource"] for a in suggestion["actions"])
    for resource in (document, provenance):
        codes = {(c["system"], c["code"]) for c in resource["meta"]["security"]}
        assert AIAST in codes, resource["resourceType"]
    assert document["resourceType"] == "DocumentReference"
    assert document["docStatus"] == "preliminary"
    assert document["subject"] == {"reference": f"Patient/{patient}"}
    text = base64.b64decode(document["content"][0]["attachment"]["data"]).decode()
    assert text.strip() and text.strip()[:20] in card["detail"].replace("\\", "")
    assert provenance["target"] == [{"reference": f"DocumentReference/{document['id']}"}]
    (device,) = provenance["contained"]
    assert provenance["agent"][0]["who"]["reference"] == "#" + device["id"]
    assert device["resourceType"] == "Device"
    assert device["deviceName"][0]["name"] == "clinalign-policy"
    assert device["version"][0]["value"] == SERVED
    assert device["identifier"][0]["value"] == weights_hash(model)
    assert device["meta"]["profile"] == [AI_DEVICE]


async def test_an_ehr_session_from_discovery_to_a_flag(
    stack: CdsStack, tiny_model_dir: Path
) -> None:
    async with stack.http() as http:
        found = await http.get("/cds-services")
    assert found.status_code == 200
    schema("discovery").validate(found.json())
    services = {s["id"]: s for s in found.json()["services"]}
    assert services["clinalign-patient-summary"]["hook"] == "patient-view"
    assert services["clinalign-discharge-instructions"]["hook"] == "encounter-discharge"
    reply = services["clinalign-patient-message-reply"]
    assert reply["hook"] == "org.clinalign.communication-view"  # ClinAlign's own hook
    record = {"patient", "conditions", "medications", "allergies", "observations"}
    for s in services.values():
        extra = {"communication"} if s is reply else set()
        assert set(s["prefetch"]) == record | extra
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"

    body = hook_request()
    (card,) = (await call_hook(stack, SUMMARY, body))["cards"]
    assert card["uuid"].startswith("out-") and card["indicator"] == "info"
    assert len(card["summary"]) <= 140
    assert card["source"]["url"] == f"{stack.url}/model-cards/clinalign-policy/{SERVED}"
    reasons = {r["code"]: r for r in card["overrideReasons"]}
    assert {"unsafe-advice", "missed-emergency"} <= set(reasons) and len(reasons) == 8
    check_transparency(card, tiny_model_dir, body["context"]["patientId"])
    async with stack.http() as http:
        model_card = await http.get(card["source"]["url"][len(stack.url) :])
    assert model_card.status_code == 200
    assert model_card.json()["weightsHash"] == weights_hash(tiny_model_dir)

    discharge = hook_request("encounter-discharge", encounterId="enc-1")
    (other,) = (await call_hook(stack, DISCHARGE, discharge))["cards"]
    context = other["suggestions"][0]["actions"][0]["resource"]["context"]
    assert context == {"encounter": [{"reference": "Encounter/enc-1"}]}

    override = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {k: reasons["unsafe-advice"][k] for k in ("system", "code")},
            "userComment": "Omits the insulin dose adjustment.",
        },
        "outcomeTimestamp": "2026-03-01T10:00:00Z",
    }
    accepted = {"card": other["uuid"], "outcome": "accepted",
                "outcomeTimestamp": "2026-03-01T10:01:00Z"}  # fmt: skip
    assert await send_feedback(stack, SUMMARY, [override]) == 200
    assert await send_feedback(stack, SUMMARY, [override]) == 200  # a retry: nothing twice
    assert await send_feedback(stack, DISCHARGE, [accepted]) == 200
    (flag,) = await flags(stack)
    assert flag.output_id == card["uuid"]
    assert flag.flagged_by == USER  # the EHR user, through the gateway
    assert flag.category == common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE
    assert flag.severity == mpb.SEVERITY_HIGH
    assert flag.comment == "Omits the insulin dose adjustment."
    assert flag.status == mpb.FLAG_STATUS_OPEN
    # Both outcomes are recorded by the monitor, once each, against the drafting version.
    served = (await stats(stack))[SERVED]
    assert (served.outputs, served.accepted, served.overridden) == (2, 1, 1)
    assert served.acceptance_rate == 0.5


BAD_HOOKS: list[tuple[str, Any, str]] = [
    # (what is changed, the change, the field the error names)
    ("hook", {"hook": "order-select"}, "hook"),
    ("hookInstance", {"hookInstance": "not-a-uuid"}, "hookInstance"),
    ("context", {"context": {"userId": USER}}, "context.patientId"),
    ("userId", {"context": {"userId": "dr-bob", "patientId": "example-patient"}}, "context.userId"),
    ("fhirServer", {"fhirServer": "http://ehr.example.org/fhir"}, "fhirServer"),
    ("fhirAuthorization", {"fhirAuthorization": {"access_token": "x"}}, "fhirAuthorization.scope"),
    ("prefetch", {"prefetch": None}, "prefetch"),
]


def changed(change: dict[str, Any]) -> dict[str, Any]:
    return hook_request() | change


def malformed_prefetches() -> list[tuple[dict[str, Any], str]]:
    cases = []
    missing = hook_request()  # and no FHIR server to read it from
    del missing["prefetch"]["conditions"], missing["fhirServer"], missing["fhirAuthorization"]
    cases.append((missing, "prefetch.conditions"))
    wrong_type = hook_request()
    wrong_type["prefetch"]["patient"]["resourceType"] = "Practitioner"
    cases.append((wrong_type, "prefetch.patient.resourceType"))
    other_patient = hook_request()
    other_patient["prefetch"]["patient"]["id"] = "someone-else"
    cases.append((other_patient, "prefetch.patient.id"))
    not_bundle = hook_request()
    not_bundle["prefetch"]["medications"] = {"resourceType": "MedicationRequest"}
    cases.append((not_bundle, "prefetch.medications.resourceType"))
    mixed = hook_request()
    mixed["prefetch"]["allergies"]["entry"].append({"resource": {"resourceType": "Condition"}})
    cases.append((mixed, "prefetch.allergies.entry[1].resource.resourceType"))
    return cases


async def refused(
    stack: CdsStack, path: str, status: int, field: str, *, body: Any = None,
    headers: dict[str, str] | None = None, content: bytes | None = None,
) -> None:  # fmt: skip
    async with stack.http() as http:
        answer = await http.post(
            path,
            json=body if content is None else None,
            content=content,
            headers=stack.auth(path) if headers is None else headers,
        )
    assert answer.status_code == status, (field, answer.text)
    schema("error").validate(answer.json())
    assert answer.json()["error"]["field"] == field, answer.text


async def test_bad_hooks_are_refused_and_nothing_is_drafted(stack: CdsStack) -> None:
    await refused(stack, "/cds-services/no-such-service", 404, "id", body=hook_request())
    for _, change, field in BAD_HOOKS:
        await refused(stack, SUMMARY, 400, field, body=changed(change))
    for body, field in malformed_prefetches():
        await refused(stack, SUMMARY, 400, field, body=body)
    no_encounter = hook_request("encounter-discharge")
    await refused(stack, DISCHARGE, 400, "context.encounterId", body=no_encounter)
    await refused(stack, SUMMARY, 400, "body", content=b"{not json")
    huge = json.dumps(hook_request() | {"padding": "x" * (1 << 20)}).encode()
    await refused(stack, SUMMARY, 413, "body", content=huge)
    # The client's JWT.
    url = stack.url + SUMMARY
    ehr, body = stack.ehr, hook_request()
    stranger = EhrStandIn("https://unknown-ehr.test")
    tokens = {
        "missing": {},
        "expired": {
            "Authorization": f"Bearer {ehr.token(url, iat=1_700_000_000, exp=1_700_000_100)}"
        },
        "wrong audience": {"Authorization": f"Bearer {ehr.token(stack.url + DISCHARGE)}"},
        "unknown issuer": {"Authorization": f"Bearer {stranger.token(url)}"},
        "forged": {"Authorization": f"Bearer {ehr.token(url, key=stranger.key)}"},
        "long-lived": {"Authorization": f"Bearer {ehr.token(url, exp=2_000_000_000)}"},
        "no jti": {"Authorization": f"Bearer {ehr.token(url, jti=None)}"},
    }
    for headers in tokens.values():
        await refused(stack, SUMMARY, 401, "authorization", body=body, headers=headers)
    once = stack.auth(SUMMARY)
    async with stack.http() as http:
        assert (await http.post(SUMMARY, json=body, headers=once)).status_code == 200
    await refused(stack, SUMMARY, 401, "authorization", body=body, headers=once)  # replayed
    await asyncio.sleep(1.5)  # what generation drafted has reached the monitor by now
    assert len(await outputs(stack)) == 1  # only the one good hook drafted
    async with stack.http() as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_bad_feedback_is_refused_and_nothing_is_flagged(stack: CdsStack) -> None:
    (card,) = (await call_hook(stack, SUMMARY, hook_request()))["cards"]
    feedback = SUMMARY + "/feedback"
    good = {"card": card["uuid"], "outcome": "overridden",
            "outcomeTimestamp": "2026-03-01T10:00:00Z",
            "overrideReason": {"reason": card["overrideReasons"][0]}}  # fmt: skip
    cases: list[tuple[str, int, str, Any]] = [
        (feedback, 400, "feedback", {"feedback": []}),
        (feedback, 404, "feedback[0].card", {"feedback": [good | {"card": "out-unknown"}]}),
        (feedback, 400, "feedback[0].outcome", {"feedback": [good | {"outcome": "ignored"}]}),
        (feedback, 400, "feedback[0].outcomeTimestamp",
         {"feedback": [good | {"outcomeTimestamp": "yesterday"}]}),
        (feedback, 400, "feedback[0].overrideReason.reason",
         {"feedback": [good | {"overrideReason": {"reason": {"system": "x", "code": "y"}}}]}),
        # a valid item beside a bad one: neither is recorded
        (feedback, 404, "feedback[1].card", {"feedback": [good, good | {"card": "nope"}]}),
        # the card was returned by the summary service, not this one
        (DISCHARGE + "/feedback", 404, "feedback[0].card", {"feedback": [good]}),
    ]  # fmt: skip
    for path, status, field, body in cases:
        await refused(stack, path, status, field, body=body)
    await asyncio.sleep(1.0)
    assert await flags(stack) == []
    served = (await stats(stack))[SERVED]
    assert (served.accepted, served.overridden) == (0, 0)  # no outcome recorded either


async def test_cors_for_browser_based_ehrs(stack: CdsStack) -> None:
    origin = {"Origin": "https://ehr-app.example.org"}
    async with stack.http() as http:
        preflight = await http.options(
            SUMMARY,
            headers=origin | {"Access-Control-Request-Method": "POST",
                              "Access-Control-Request-Headers": "authorization, content-type"},
        )  # fmt: skip
        found = await http.get("/cds-services", headers=origin)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert found.headers["access-control-allow-origin"] == "*"


class FhirStandIn:
    """A stand-in for the EHR's FHIR server (real HTTP on loopback): answers the prefetch
    templates' reads from the example record, or slowly, or with garbage, or an error; and
    records every request it gets."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.mode = "ok"
        self.requests: list[tuple[str, str]] = []  # (path with query, authorization)
        self.page_size = 0  # > 0: the allergies answer in pages this long, linked by "next"
        self.next_server = ""  # the next links' server, when not this one
        record = prefetch()
        by_path = {
            f"Patient/{record['patient']['id']}": record["patient"],
            "Condition": record["conditions"],
            "MedicationRequest": record["medications"],
            "AllergyIntolerance": record["allergies"],
            "Observation": record["observations"],
        }
        # two more synthetic allergies, so that a paged search has pages to follow
        allergies = by_path["AllergyIntolerance"]["entry"]
        for i, name in enumerate(("Latex", "Sulfonamide")):
            more = copy.deepcopy(allergies[0])
            more["resource"]["id"] = f"synthetic-allergy-{i}"
            more["resource"]["code"] = {"text": name}
            allergies.append(more)

        async def read(request: Any) -> Response:
            path = request.path_params["path"]
            query = f"?{request.url.query}" if request.url.query else ""
            self.requests.append((path + query, request.headers.get("authorization", "")))
            if self.mode == "slow":
                await asyncio.sleep(2 * FHIR_TIMEOUT_S)
            if self.mode == "garbage":
                return Response("<html>maintenance</html>", media_type="text/html")
            if self.mode == "error":
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=500)
            if self.mode == "wrong":
                return JSONResponse({"resourceType": "Practitioner", "id": "x"})
            found = by_path.get(path, {"resourceType": "Bundle", "entry": []})
            if path == "AllergyIntolerance" and self.page_size:
                found = self._page(request, found)
            return JSONResponse(found)

        self.app = Starlette(routes=[Route("/fhir/{path:path}", read)])

    def _page(self, request: Any, bundle: dict[str, Any]) -> dict[str, Any]:
        n, size = int(request.query_params.get("_page", "0")), self.page_size
        entries = bundle["entry"]
        page = {**bundle, "entry": entries[n * size : (n + 1) * size]}
        if (n + 1) * size < len(entries):
            nxt = str(request.url.include_query_params(_page=n + 1))
            if self.next_server:
                nxt = self.next_server + nxt.split("/fhir", 1)[1]
            page["link"] = [{"relation": "next", "url": nxt}]
        return page


async def test_missing_prefetch_is_read_from_the_fhir_server(stack: CdsStack) -> None:
    """Only what the templates name, with the EHR's bearer token; a slow server is 504, a
    failing or garbage one 502, each naming the prefetch key; nothing is drafted then, and
    the gateway stays healthy."""
    fhir = FhirStandIn()
    port = free_port()
    async with serving_http(fhir.app, port, what="the FHIR stand-in"):
        body = hook_request()
        body["fhirServer"] = f"http://127.0.0.1:{port}/fhir"
        body["prefetch"] = {"patient": body["prefetch"]["patient"]}  # the rest is read
        (card,) = (await call_hook(stack, SUMMARY, body))["cards"]
        schema("card").validate(card)
        patient = body["context"]["patientId"]
        assert sorted(path for path, _ in fhir.requests) == sorted(
            [
                f"Condition?patient={patient}",
                f"MedicationRequest?patient={patient}",
                f"AllergyIntolerance?patient={patient}",
                f"Observation?patient={patient}&_sort=-date&_count=50",
            ]
        )
        assert {auth for _, auth in fhir.requests} == {"Bearer stand-in-token"}
        async with stack.monitor_admin() as ch:
            for _ in range(100):  # the draft reaches the monitor through generation's outbox
                if (before := await _outputs(ch)) == 1:
                    break
                await asyncio.sleep(0.1)
        assert before == 1
        for mode, status, field in (
            ("slow", 504, "prefetch.conditions"),
            ("garbage", 502, "prefetch.conditions"),
            ("error", 502, "prefetch.conditions"),
            ("wrong", 502, "prefetch.conditions.resourceType"),
        ):
            fhir.mode = mode
            fresh = body | {"hookInstance": str(uuid.uuid4())}
            await refused(stack, SUMMARY, status, field, body=fresh)
        async with stack.monitor_admin() as ch:
            assert await _outputs(ch) == before  # nothing drafted
    async with stack.http() as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_paged_search_is_read_to_its_last_page(stack: CdsStack) -> None:
    """Allergies in pages of one: the gateway reads all three pages from the FHIR server
    with the EHR's token before it drafts (which pages reach the record is
    tests/unit/test_cds_hooks_paging.py's); a next link off the server is a 502 naming the
    allergies' link, and nothing is asked of that other server."""
    fhir = FhirStandIn()
    fhir.page_size = 1
    port = free_port()
    async with serving_http(fhir.app, port, what="the FHIR stand-in"):
        body = hook_request()
        body["fhirServer"] = f"http://127.0.0.1:{port}/fhir"
        del body["prefetch"]["allergies"]
        (card,) = (await call_hook(stack, SUMMARY, body))["cards"]
        schema("card").validate(card)
        patient = body["context"]["patientId"]
        allergy_reads = [(p, a) for p, a in fhir.requests if p.startswith("AllergyIntolerance")]
        assert allergy_reads == [
            (f"AllergyIntolerance?patient={patient}", "Bearer stand-in-token"),
            (f"AllergyIntolerance?patient={patient}&_page=1", "Bearer stand-in-token"),
            (f"AllergyIntolerance?patient={patient}&_page=2", "Bearer stand-in-token"),
        ]
        # next links to another server: never followed with the EHR's token
        fhir.next_server = f"http://localhost:{port}/fhir"
        fhir.requests.clear()
        await refused(
            stack,
            SUMMARY,
            502,
            "prefetch.allergies.link",
            body=body | {"hookInstance": str(uuid.uuid4())},
        )
        assert [p for p, _ in fhir.requests if "_page" in p] == []


async def _outputs(ch: Any) -> int:
    stub = monitor_pb2_grpc.MonitorServiceStub(ch)
    reply = await stub.ListOutputs(mpb.ListOutputsRequest(page_size=100))
    return len(reply.outputs)


# The elements of a FHIR R4 Device (hl7.org/fhir/R4/device.html): a served Device uses no other.
R4_DEVICE = {
    "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
    "extension", "modifierExtension", "identifier", "definition", "udiCarrier", "status",
    "statusReason", "distinctIdentifier", "manufacturer", "manufactureDate",
    "expirationDate", "lotNumber", "serialNumber", "deviceName", "modelNumber",
    "partNumber", "type", "specialization", "version", "property", "patient", "owner",
    "contact", "location", "url", "note", "safety", "parent",
}  # fmt: skip


def check_device(device: dict[str, Any], stack: CdsStack, url: str) -> None:
    """The card's Device as the AI-Device profile has it, within what R4 allows."""
    assert set(device) <= R4_DEVICE, set(device) - R4_DEVICE
    assert device["resourceType"] == "Device" and device["meta"]["profile"] == [AI_DEVICE]
    (kind,) = device["type"]["coding"]
    assert kind == {
        "system": "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS",
        "code": "Large-Language-Models",
    }
    assert device["deviceName"] == [{"name": "clinalign-policy", "type": "model-name"}]
    assert device["version"] == [{"value": SERVED}]
    assert device["status"] == "active" and device["url"] == url
    (weights,) = device["identifier"]
    assert weights["value"] == stack.served.version.weights_hash
    for p in device["property"]:  # R4: type a CodeableConcept, values in arrays
        assert p["type"]["coding"][0]["code"] and p["type"]["text"]
        assert isinstance(p.get("valueQuantity", p.get("valueCode")), list)
    figures = {
        p["type"]["coding"][0]["code"]: p["valueQuantity"][0]["value"]
        for p in device["property"]
        if "valueQuantity" in p
    }
    assert figures == {c["name"]: c["value"] for c in GATE_CHECKS}  # every safety criterion
    (markdown,) = device["note"]
    assert markdown["text"].startswith(f"# Model card: clinalign-policy {SERVED}")


async def test_the_model_card_from_the_registry_in_three_forms(
    stack: CdsStack, tiny_model_dir: Path
) -> None:
    (card,) = (await call_hook(stack, SUMMARY, hook_request()))["cards"]
    url = card["source"]["url"]
    path = url[len(stack.url) :]
    async with stack.http() as http:
        as_json = await http.get(path)
        as_fhir = await http.get(path, headers={"Accept": "application/fhir+json"})
        by_query = await http.get(path + "?format=fhir")
        as_markdown = await http.get(
            path, headers={"Accept": "application/json;q=0.5, text/markdown"}
        )
    assert as_json.headers["content-type"] == "application/json"
    assert as_fhir.headers["content-type"] == "application/fhir+json"
    assert as_markdown.headers["content-type"] == "text/markdown; charset=utf-8"

    facts = as_json.json()
    assert facts["name"] == "clinalign-policy" and facts["version"] == SERVED
    assert (facts["kind"], facts["stage"], facts["parentVersion"]) == ("policy", "serving", "")
    assert facts["weightsHash"] == weights_hash(tiny_model_dir)
    assert facts["registryAvailable"] and facts["url"] == url
    evaluation = facts["evaluation"]
    assert evaluation["promoted"] and evaluation["decideTime"].endswith("Z")
    assert evaluation["checks"] == [
        {k: c[k] for k in ("name", "value", "threshold", "passed", "message")} for c in GATE_CHECKS
    ]
    assert "ml-engineer-1" not in as_json.text  # who promoted stays in the registry
    assert "clinician" in facts["intendedUse"] and len(facts["limitations"]) >= 3
    assert set(facts) >= {"snapshotHash", "jobId", "trainingMethod", "registerTime", "metrics"}

    # The Device the card's Provenance contains is the one the URL serves.
    device = as_fhir.json()
    check_device(device, stack, url)
    assert by_query.json() == device and device["id"] == SERVED
    provenance = card["suggestions"][0]["actions"][1]["resource"]
    (contained,) = provenance["contained"]
    assert contained == device | {"id": "model"}

    text = as_markdown.text
    assert device["note"][0]["text"] == text
    for heading in ("## Model", "## Training", "## Evaluation", "## Intended use"):
        assert f"\n{heading}\n" in text
    assert "\n## Limitations\n" in text
    assert "| check | value | threshold | passed | what it means |" in text
    assert "| safety:dose\\_safety | 0 | -0.05 | yes | dose\\_safety, judged by" in text
    assert "| kl\\_to\\_anchor | 2.31 | 8 | yes | KL to policy-v1:" in text
    assert "never for autonomous use" in text


async def test_model_cards_of_other_versions_and_bad_asks(
    stack: CdsStack, tiny_model_dir: Path
) -> None:
    """A retired version's card goes on working; an unknown version, another name or a
    model that is not a policy is 404, an unknown format 400, each naming the field."""
    reward = await registered(stack, tiny_model_dir, common_pb2.MODEL_KIND_REWARD)
    async with stack.http() as http:
        retired = await http.get(f"/model-cards/clinalign-policy/{FOUNDATION}")
        answers = [
            (await http.get(path), status, field)
            for path, status, field in (
                ("/model-cards/clinalign-policy/policy-v99", 404, "version"),
                (f"/model-cards/clinalign-reward/{SERVED}", 404, "name"),
                (f"/model-cards/clinalign-reward/{reward}", 404, "version"),
                (f"/model-cards/clinalign-policy/{SERVED}?format=xml", 400, "format"),
            )
        ]
    assert retired.status_code == 200
    assert (retired.json()["stage"], retired.json()["evaluation"]) == ("retired", None)
    for answer, status, field in answers:
        assert answer.status_code == status, answer.text
        schema("error").validate(answer.json())
        assert answer.json()["error"]["field"] == field


async def test_a_card_still_comes_back_while_the_registry_is_down(stack: CdsStack) -> None:
    """The card's Device then holds the draft's provenance and says the registry's facts
    were not to be had; the model card's URL answers 503 until the registry is back."""
    await stack.trainer.server.stop(0)
    (card,) = (await call_hook(stack, SUMMARY, hook_request()))["cards"]
    (device,) = card["suggestions"][0]["actions"][1]["resource"]["contained"]
    assert set(device) <= R4_DEVICE
    assert device["version"] == [{"value": SERVED}] and device["status"] == "active"
    assert device["identifier"][0]["value"] == stack.served.version.weights_hash
    assert "property" not in device  # no figures without the registry
    assert "registry could not be read" in device["note"][0]["text"]
    assert "## Intended use" in device["note"][0]["text"]  # the operator's, all the same
    async with stack.http() as http:
        answer = await http.get(card["source"]["url"][len(stack.url) :])
        healthy = await http.get("/healthz")
    assert answer.status_code == 503
    schema("error").validate(answer.json())
    assert healthy.status_code == 200
