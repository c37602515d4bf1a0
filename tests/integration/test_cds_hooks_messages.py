"""A reply to a patient's message through the CDS Hooks gateway over real HTTP, against the
real generation service (the tiny model) and monitor: the EHR stand-in opens a message,
gets a card drafted from the message and the record, and overrides it as a missed
emergency with the clinician's own reply, which becomes a CRITICAL flag carrying that
correction; another card is accepted, an outcome the monitor counts. Every body is
validated against the CDS Hooks 2.0 schemas."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from clinalign.common.v1 import common_pb2
from clinalign.demo.ehr import draft_text, message_hook, verdict
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.cds_hooks_support import USER, CdsStack, cds_stack, schema

REPLY = "/cds-services/clinalign-patient-message-reply"
QUESTION = "Since yesterday my chest feels tight when I climb stairs. Is that my asthma?"


@pytest.fixture
async def stack(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    async with cds_stack(tmp_path, tiny_model_dir) as running:
        yield running


def opened(message_id: str) -> dict[str, Any]:
    """The hook as the EHR sends it: the patient with an empty record (the tiny model's
    context holds no more beside the template) and the message."""
    body = message_hook("p-1", message_id, QUESTION, USER)
    schema("request").validate(body)
    return body


async def recorded(stack: CdsStack, output_id: str) -> mpb.ProductionOutput:
    """The output as the monitor recorded it, once generation has reported it."""
    async with stack.monitor_admin() as ch:
        monitor = monitor_pb2_grpc.MonitorServiceStub(ch)
        for _ in range(100):
            try:
                found = await monitor.GetOutput(mpb.GetOutputRequest(output_id=output_id))
                return found.output.output
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"{output_id} was not recorded")


async def post(stack: CdsStack, path: str, body: dict[str, Any]) -> Any:
    async with stack.http() as http:
        return await http.post(path, json=body, headers=stack.auth(path))


async def test_an_overridden_reply_becomes_a_critical_flag_with_the_correction(
    stack: CdsStack,
) -> None:
    async with stack.http() as http:
        services = {s["id"]: s for s in (await http.get("/cds-services")).json()["services"]}
    assert services["clinalign-patient-message-reply"]["hook"] == (
        "org.clinalign.communication-view"
    )

    cards = []
    for message_id in ("msg-1", "msg-2"):
        answer = await post(stack, REPLY, opened(message_id))
        assert answer.status_code == 200, answer.text
        schema("response").validate(answer.json())
        (card,) = answer.json()["cards"]
        assert "reply to this patient's message" in card["summary"]
        assert "missed-emergency" in {r["code"] for r in card["overrideReasons"]}
        reply, provenance = (a["resource"] for a in card["suggestions"][0]["actions"])
        # an unsent reply to that message, labelled as AI-written, with its provenance
        assert reply["resourceType"] == "Communication" and reply["status"] == "preparation"
        assert reply["inResponseTo"] == [{"reference": f"Communication/{message_id}"}]
        assert reply["recipient"] == [{"reference": "Patient/p-1"}]
        assert reply["meta"]["security"][0]["code"] == "AIAST"
        assert reply["payload"][0]["contentString"] == draft_text(card)
        assert provenance["target"] == [{"reference": f"Communication/{reply['id']}"}]
        cards.append(card)
    # drafted from the record with the message (the patient-question template)
    prompt = (await recorded(stack, cards[0]["uuid"])).prompt
    assert QUESTION in prompt and prompt != QUESTION

    correction = "Please call 999 now: chest tightness needs urgent assessment today."
    overridden = verdict(cards[0]["uuid"], "missed-emergency", "no urgent advice", correction)
    accepted = verdict(cards[1]["uuid"])
    body = {"feedback": [overridden, accepted]}
    schema("feedback").validate(body)
    answer = await post(stack, REPLY + "/feedback", body)
    assert answer.status_code == 200, answer.text

    async with stack.monitor_admin() as ch:
        monitor = monitor_pb2_grpc.MonitorServiceStub(ch)
        (flag,) = (await monitor.ListFlags(mpb.ListFlagsRequest())).flags
        stats = await monitor.GetStats(mpb.GetStatsRequest())
    assert flag.output_id == cards[0]["uuid"]
    assert flag.category == common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE
    assert flag.severity == mpb.SEVERITY_CRITICAL
    assert flag.corrected_text == correction
    assert flag.comment == "no urgent advice"
    (version,) = stats.versions
    assert (version.accepted, version.overridden) == (1, 1)

    # the same feedback again (a retry) files nothing twice
    assert (await post(stack, REPLY + "/feedback", body)).status_code == 200
    async with stack.monitor_admin() as ch:
        again = await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(mpb.ListFlagsRequest())
    assert len(again.flags) == 1


async def test_a_bad_message_is_refused_and_nothing_is_drafted(stack: CdsStack) -> None:
    body = opened("msg-3")
    body["prefetch"]["communication"]["subject"] = {"reference": "Patient/someone-else"}
    answer = await post(stack, REPLY, body)
    assert answer.status_code == 400
    schema("error").validate(answer.json())
    assert "prefetch.communication.subject" in answer.text
    async with stack.monitor_admin() as ch:
        stats = await monitor_pb2_grpc.MonitorServiceStub(ch).GetStats(mpb.GetStatsRequest())
    assert sum(v.outputs for v in stats.versions) == 0
