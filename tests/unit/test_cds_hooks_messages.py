"""The gateway's reply to a patient's message, part by part: the hook's context and its
``communication`` prefetch checked field by field, the FHIR fallback's URL for it, what the
draft is generated from, the override reason that files a critical flag, and the
correction an override may carry; and the demo's simulated EHR, whose requests and
feedback are validated against the CDS Hooks 2.0 schemas."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import grpc
import grpc.aio
import httpx2
import pytest

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.backend import Backend
from clinalign.cdshooks.catalogue import SERVICES
from clinalign.cdshooks.errors import BadGateway, BadRequest, GatewayTimeout
from clinalign.cdshooks.feedback import CORRECTION, MAX_CORRECTION, parse_feedback
from clinalign.cdshooks.fhir import FhirFetcher, query
from clinalign.cdshooks.hooks import MAX_MESSAGE_CHARS, check_hook, hook_call, parse_hook
from clinalign.cdshooks.outbound import read_json
from clinalign.cdshooks.smart import BackendServices, SmartClient
from clinalign.common.oidc import OidcConfigError
from clinalign.common.v1 import common_pb2
from clinalign.demo.ehr import (
    EhrCalls,
    SimulatedEhr,
    draft_text,
    message_hook,
    reason_code,
    verdict,
)
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.monitor.v1 import monitor_pb2 as mpb
from tests.cds_hooks_support import schema

REPLY = SERVICES["clinalign-patient-message-reply"]
QUESTION = "I have had a dry cough for a week. Should I keep taking my inhaler?"


def request(**changes: Any) -> dict[str, Any]:
    body = message_hook("p-1", "msg-1", QUESTION, "Practitioner/dr-1")
    body["prefetch"]["communication"].update(changes)
    return body


def refusal(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_hook(body, REPLY)
    return caught.value


def test_the_reply_service_is_discovered_on_clinaligns_own_hook() -> None:
    assert REPLY.hook == "org.clinalign.communication-view"
    assert REPLY.prefetch["communication"] == "Communication/{{context.communicationId}}"
    assert set(REPLY.prefetch) == {
        "patient",
        "conditions",
        "medications",
        "allergies",
        "observations",
        "communication",
    }
    schema("request").validate(request())


def test_the_message_is_the_question_and_stays_out_of_the_record() -> None:
    call = parse_hook(request(), REPLY)
    assert call.question == QUESTION
    kinds = [e["resource"]["resourceType"] for e in json.loads(call.bundle_json)["entry"]]
    assert kinds == ["Patient"]  # the empty record; the Communication is not rendered
    several = request(payload=[{"contentString": "First. "}, {"contentAttachment": {}}, {}])
    several["prefetch"]["communication"]["payload"].append({"contentString": " Second."})
    assert parse_hook(several, REPLY).question == "First.\n\nSecond."


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"resourceType": "Patient"}, "prefetch.communication.resourceType"),
        ({"id": "msg-2"}, "prefetch.communication.id"),
        ({"subject": {"reference": "Patient/p-2"}}, "prefetch.communication.subject"),
        ({"subject": "Patient/p-1"}, "prefetch.communication.subject"),
        ({"payload": []}, "prefetch.communication.payload"),
        ({"payload": [{"contentString": "  "}]}, "prefetch.communication.payload"),
        (
            {"payload": [{"contentString": "x" * (MAX_MESSAGE_CHARS + 1)}]},
            "prefetch.communication.payload",
        ),
    ],
)
def test_a_malformed_message_is_refused_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    assert refusal(request(**changes)).field == field


def test_the_context_must_name_the_message_as_a_fhir_id() -> None:
    body = request()
    del body["context"]["communicationId"]
    assert refusal(body).field == "context.communicationId"
    body["context"]["communicationId"] = "msg/1"
    assert refusal(body).field == "context.communicationId"
    body = request()
    del body["prefetch"]["communication"]
    err = refusal(body)
    assert err.field == "prefetch.communication" and "Communication/" in err.message


async def test_a_message_not_prefetched_is_read_from_the_fhir_server() -> None:
    body = request()
    message = body["prefetch"].pop("communication")
    body["fhirServer"] = "https://ehr.example/fhir"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Communication.read",
        "subject": "clinalign",
    }
    asked: list[str] = []

    def answer(req: httpx2.Request) -> httpx2.Response:
        asked.append(str(req.url))
        assert req.headers["authorization"] == "Bearer t"
        return httpx2.Response(200, json=message)

    checked = check_hook(body, REPLY)
    fetched = await FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(answer)).missing(checked, "ehr")
    assert asked == ["https://ehr.example/fhir/Communication/msg-1"]
    assert hook_call(checked, fetched).question == QUESTION
    # what the server answers is the server's fault when it is wrong: 502
    with pytest.raises(BadGateway) as caught:
        hook_call(checked, {"communication": {**message, "id": "other"}})
    assert caught.value.field == "prefetch.communication.id"


def test_templates_take_any_context_id() -> None:
    context = {"patientId": "p-1", "communicationId": "m-9"}
    assert query(REPLY.prefetch["communication"], context) == "Communication/m-9"
    assert query(REPLY.prefetch["conditions"], context) == "Condition?patient=p-1"


def test_a_reply_is_drafted_from_the_record_or_from_the_message_alone() -> None:
    call = parse_hook(request(), REPLY)
    record = Backend(None, None, 1.0)._input(call)  # type: ignore[arg-type]
    assert record.WhichOneof("source") == "fhir"
    assert record.fhir.task == gpb.CLINICAL_TASK_PATIENT_QUESTION
    assert record.fhir.question == QUESTION
    alone = Backend(None, None, 1.0, message_only=True)._input(call)  # type: ignore[arg-type]
    assert alone.WhichOneof("source") == "prompt" and alone.prompt == QUESTION
    # services without a message are always drafted from the record
    summary = SERVICES["clinalign-patient-summary"]
    body = request()
    body["hook"] = summary.hook
    other = parse_hook(body, summary)
    assert Backend(None, None, 1.0, message_only=True)._input(other).WhichOneof("source") == "fhir"  # type: ignore[arg-type]


def test_a_missed_emergency_is_a_critical_flag() -> None:
    codes = [r["code"] for r in taxonomy.override_reasons()]
    assert codes[0] == "missed-emergency" and len(codes) == len(set(codes)) == 8
    assert taxonomy.flag_of("missed-emergency") == (
        common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE,
        mpb.SEVERITY_CRITICAL,
    )
    assert taxonomy.flag_of("unsafe-advice")[1] == mpb.SEVERITY_HIGH


def test_an_override_may_carry_the_clinicians_correction() -> None:
    item = verdict("out-1", "omission", "left out the dose", "Take 200 mg twice a day.")
    schema("feedback").validate({"feedback": [item]})
    (outcome,) = parse_feedback({"feedback": [item]})
    assert outcome.correction == "Take 200 mg twice a day." and outcome.reason == "omission"
    accepted = verdict("out-2")
    schema("feedback").validate({"feedback": [accepted]})
    assert parse_feedback({"feedback": [accepted]})[0].correction == ""

    def refused(extension: Any, outcome: str = "overridden") -> str:
        bad = copy.deepcopy(item) | {"outcome": outcome, "extension": extension}
        if outcome == "accepted":
            del bad["overrideReason"]
        with pytest.raises(BadRequest) as caught:
            parse_feedback({"feedback": [bad]})
        return caught.value.field

    assert refused({CORRECTION: "x"}, "accepted") == f"feedback[0].extension.{CORRECTION}"
    assert refused({CORRECTION: ""}) == f"feedback[0].extension.{CORRECTION}"
    assert (
        refused({CORRECTION: "x" * (MAX_CORRECTION + 1)}) == f"feedback[0].extension.{CORRECTION}"
    )
    assert refused(["x"]) == "feedback[0].extension"
    # another party's extension is ignored, as the specification asks
    other = copy.deepcopy(item) | {"extension": {"com.example.other": 1}}
    assert parse_feedback({"feedback": [other]})[0].correction == ""


def test_the_simulated_ehr_picks_reasons_the_card_offers() -> None:
    card = {
        "overrideReasons": taxonomy.override_reasons(),
        "suggestions": [
            {
                "actions": [
                    {
                        "resource": {
                            "content": [
                                {"attachment": {"data": base64.b64encode(b"Rest.").decode()}}
                            ]
                        }
                    }
                ]
            }
        ],
    }
    assert draft_text(card) == "Rest."
    assert reason_code(card, "ERROR_CATEGORY_UNSAFE_ADVICE", "SEVERITY_CRITICAL") == (
        "missed-emergency"
    )
    assert reason_code(card, "ERROR_CATEGORY_UNSAFE_ADVICE", "SEVERITY_HIGH") == "unsafe-advice"
    assert reason_code(card, "ERROR_CATEGORY_OMISSION", "SEVERITY_LOW") == "omission"


def test_ids_are_whole_strings_and_users_are_the_hooks_kinds() -> None:
    body = request()
    body["context"]["patientId"] = "p-1\n"
    assert refusal(body).field == "context.patientId"
    body = request()
    body["context"]["userId"] = "Practitioner/dr-1\n"
    assert refusal(body).field == "context.userId"
    body = request()
    body["context"]["userId"] = "Patient/p-1"  # a reply is drafted for a clinician
    err = refusal(body)
    assert err.field == "context.userId" and "Practitioner" in err.message
    summary = SERVICES["clinalign-patient-summary"]  # patient-view: a portal user too
    body["hook"] = summary.hook
    assert parse_hook(body, summary).user_id == "Patient/p-1"


def smart_services(**clients: Any) -> BackendServices:
    from clinalign.common.assertions import load_signing_key

    key = load_signing_key(Path(tempfile.mkdtemp()) / "smart.jwk", "ES384")
    found = {url: SmartClient(**c) for url, c in clients.items()}
    return BackendServices(key, found, timeout_s=1.0, max_bytes=1 << 20)


async def test_the_gateways_own_token_serves_only_the_ehr_registered_for_it() -> None:
    smart = smart_services(
        **{"https://ehr-a.example/fhir/": {"issuer": "https://ehr-a", "client_id": "c"}}
    )
    assert smart.serves("https://ehr-a.example/fhir", "https://ehr-a")
    assert not smart.serves("https://ehr-a.example/fhir", "https://ehr-b")
    body = request()
    del body["prefetch"]["communication"]
    body["fhirServer"] = "https://ehr-a.example/fhir"
    checked = check_hook(body, REPLY)

    def never(req: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"EHR B's hook made the gateway read {req.url}")

    fetcher = FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(never), smart=smart)
    with pytest.raises(BadRequest) as caught:  # EHR B names EHR A's server
        await fetcher.missing(checked, "https://ehr-b")
    assert caught.value.field == "prefetch.communication"
    with pytest.raises(OidcConfigError):  # tokens travel over https only
        smart_services(**{"http://ehr.example/fhir": {"issuer": "i", "client_id": "c"}})


async def test_a_failing_token_endpoint_is_asked_once_a_while() -> None:
    asked: list[str] = []

    def refuse(req: httpx2.Request) -> httpx2.Response:
        asked.append(str(req.url))
        return httpx2.Response(401, json={"error": "invalid_client"})

    smart = smart_services(
        **{
            "https://ehr.example/fhir": {
                "issuer": "i",
                "client_id": "c",
                "token_url": "https://ehr.example/token",
            }
        }
    )
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)) as http:
        for _ in range(3):
            with pytest.raises(BadGateway) as caught:
                await smart.token(http, "https://ehr.example/fhir")
            assert caught.value.field == "fhirServer"
    assert asked == ["https://ehr.example/token"]


async def test_an_ehr_server_that_trickles_or_answers_garbage_is_its_fault() -> None:
    async def trickle() -> Any:
        for _ in range(50):
            yield b" "
            await asyncio.sleep(0.05)

    def slow(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=trickle())

    def nested(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b"[" * 100_000 + b"]" * 100_000)

    async def read(handler: Any) -> Any:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
            return await read_json(
                http,
                "GET",
                "https://ehr.example/fhir/Patient/p-1",
                field="prefetch.patient",
                what="fhirServer",
                max_bytes=1 << 20,
                timeout_s=0.5,
                headers={},
            )

    with pytest.raises(GatewayTimeout):  # 2.5 s of trickle, cut at 0.5 s in all
        await read(slow)
    with pytest.raises(BadGateway, match="not JSON"):
        await read(nested)


def test_a_services_pushback_becomes_retry_after() -> None:
    from clinalign.cdshooks.backend import http_error
    from clinalign.cdshooks.errors import TooMany

    def refused(*trailer: tuple[str, str]) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*trailer),
            "clinician over its rate",
        )

    err = http_error(refused(("grpc-retry-pushback-ms", "2500")), "feedback")
    assert isinstance(err, TooMany) and err.status == 429
    assert err.headers() == {"Retry-After": "3"}
    assert http_error(refused(), "feedback").headers() == {"Retry-After": "1"}


async def test_the_simulated_ehr_retries_what_the_gateway_refused_for_load() -> None:
    answers = [
        httpx2.Response(429, headers={"Retry-After": "0"}, json={"error": {}}),
        httpx2.Response(503, json={"error": {}}),
        httpx2.Response(200, json={}),
    ]
    tokens: list[str] = []

    def gateway(req: httpx2.Request) -> httpx2.Response:
        tokens.append(req.headers["authorization"])
        return answers.pop(0)

    calls = EhrCalls(SimulatedEhr(), "http://gateway.test", transport=httpx2.MockTransport(gateway))
    with patch("clinalign.demo.ehr._retry_after", lambda value: 0.0):
        await calls.feedback([verdict("out-1")])
    await calls.close()
    assert calls.retries == 2 and len(set(tokens)) == 3  # a fresh JWT each attempt
