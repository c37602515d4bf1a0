"""ListOutputs and GetOutput through real gRPC on loopback: recent production outputs for
the clinician console, filtered, newest first, paged, each with its flag counts; one output
with every flag on it; the task each output was drafted for; who may call them; and every
bad request refused naming its field. On SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import update
from sqlalchemy.orm import Session

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.monitor import store
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.conftest import RunningServer, client, monitor_app, rpc_fails, serving

Token = Callable[[Role], str]

# Synthetic identifiers: no real person.
NAME = "Jonathan Whitfield"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _out(oid: str, version: str, task: str, minutes: int) -> pb.ProductionOutput:
    return pb.ProductionOutput(
        output_id=oid,
        model_version=version,
        task=task,
        prompt_template_version=f"{task}/2026-11-1" if task != "free_text" else "",
        latency_s=0.5,
        completion_tokens=12,
        reward_score=0.25,
        prompt=f"{NAME} asks question {oid}",
        text=f"answer {oid}",
        create_time=_ts(T0 + timedelta(minutes=minutes)),
    )


OUTPUTS = [
    _out("o1", "v1", "summary", 0),
    _out("o2", "v1", "free_text", 1),
    _out("o3", "v2", "summary", 2),
    _out("o4", "v2", "patient_question", 3),
]


async def _seed(running: RunningServer, common: CommonSettings, token: Token) -> list[str]:
    """OUTPUTS recorded; o2 flagged open, o3 flagged confirmed and dismissed, o4 flagged
    and dismissed. Returns the flag ids in the order raised."""
    async with client(running, common, token(Role.SERVICE)) as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=OUTPUTS))
    raised = []
    async with client(running, common, token(Role.CLINICIAN)) as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        for oid, resolution in [
            ("o2", None),
            ("o3", pb.RESOLUTION_CONFIRM),
            ("o3", pb.RESOLUTION_DISMISS),
            ("o4", pb.RESOLUTION_DISMISS),
        ]:
            flag = (
                await stub.FlagOutput(
                    pb.FlagOutputRequest(
                        output_id=oid,
                        category=common_pb2.ERROR_CATEGORY_OMISSION,
                        severity=pb.SEVERITY_MODERATE,
                    )
                )
            ).flag
            if resolution is not None:
                await stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id=flag.id, resolution=resolution, reason="checked")
                )
            raised.append(flag.id)
    return raised


def _ids(reply: pb.ListOutputsResponse) -> list[str]:
    return [s.output.output_id for s in reply.outputs]


async def test_list_outputs_filters_pages_and_counts_flags(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        await _seed(running, common, token)
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            everything = await stub.ListOutputs(pb.ListOutputsRequest())
            found = {
                name: _ids(await stub.ListOutputs(request))
                for name, request in {
                    "v1": pb.ListOutputsRequest(model_version="v1"),
                    "summary": pb.ListOutputsRequest(task="summary"),
                    "window": pb.ListOutputsRequest(
                        start_time=_ts(T0 + timedelta(minutes=1)),
                        end_time=_ts(T0 + timedelta(minutes=3)),
                    ),
                    "unflagged": pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_UNFLAGGED),
                    "flagged": pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_FLAGGED),
                    "open": pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_OPEN),
                    "confirmed": pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_CONFIRMED),
                    "dismissed": pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_DISMISSED),
                    "combined": pb.ListOutputsRequest(
                        model_version="v2",
                        task="summary",
                        start_time=_ts(T0),
                        flag_state=pb.FLAG_STATE_DISMISSED,
                    ),
                }.items()
            }
            page1 = await stub.ListOutputs(pb.ListOutputsRequest(page_size=3))
            page2 = await stub.ListOutputs(
                pb.ListOutputsRequest(page_size=3, page_token=page1.next_page_token)
            )
        for role in (Role.CLINICAL_LEAD, Role.ML_ENGINEER, Role.ADMIN):
            async with client(running, common, token(role)) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                assert _ids(await stub.ListOutputs(pb.ListOutputsRequest())) == _ids(everything)
        denied = []
        for role in (Role.EHR_CLIENT, Role.SERVICE):
            async with client(running, common, token(role)) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                denied.append(await rpc_fails(stub.ListOutputs(pb.ListOutputsRequest())))
                denied.append(await rpc_fails(stub.GetOutput(pb.GetOutputRequest(output_id="o1"))))
    assert _ids(everything) == ["o4", "o3", "o2", "o1"]  # newest first
    assert found == {
        "v1": ["o2", "o1"],
        "summary": ["o3", "o1"],
        "window": ["o3", "o2"],
        "unflagged": ["o1"],
        "flagged": ["o4", "o3", "o2"],
        "open": ["o2"],
        "confirmed": ["o3"],
        "dismissed": ["o4", "o3"],
        "combined": ["o3"],
    }
    counts = {
        s.output.output_id: (s.open_flags, s.confirmed_flags, s.dismissed_flags)
        for s in everything.outputs
    }
    assert counts == {"o4": (0, 0, 1), "o3": (0, 1, 1), "o2": (1, 0, 0), "o1": (0, 0, 0)}
    o4 = everything.outputs[0].output
    assert (o4.task, o4.model_version, o4.prompt_template_version) == (
        "patient_question",
        "v2",
        "patient_question/2026-11-1",
    )
    assert o4.prompt == "[NAME] asks question o4" and o4.text == "answer o4"
    assert o4.reward_score == 0.25 and o4.completion_tokens == 12
    assert o4.create_time.ToDatetime(UTC) == T0 + timedelta(minutes=3)
    assert everything.next_page_token == ""
    assert _ids(page1) + _ids(page2) == _ids(everything)
    assert page1.next_page_token and not page2.next_page_token
    assert {e.code() for e in denied} == {grpc.StatusCode.PERMISSION_DENIED}


async def test_get_output_returns_the_output_with_every_flag_oldest_first(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        raised = await _seed(running, common, token)
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            o3 = await stub.GetOutput(pb.GetOutputRequest(output_id="o3"))
            o1 = await stub.GetOutput(pb.GetOutputRequest(output_id="o1"))
            missing = await rpc_fails(stub.GetOutput(pb.GetOutputRequest(output_id="nope")))
            empty = await rpc_fails(stub.GetOutput(pb.GetOutputRequest()))
            long = await rpc_fails(stub.GetOutput(pb.GetOutputRequest(output_id="x" * 65)))
    summary = o3.output
    assert summary.output.output_id == "o3" and summary.output.task == "summary"
    assert (summary.open_flags, summary.confirmed_flags, summary.dismissed_flags) == (0, 1, 1)
    assert [f.id for f in o3.flags] == raised[1:3]
    assert [f.status for f in o3.flags] == [pb.FLAG_STATUS_CONFIRMED, pb.FLAG_STATUS_DISMISSED]
    assert o3.flags[0].feedback_state == pb.FEEDBACK_STATE_PENDING
    assert o3.flags[1].feedback_state == pb.FEEDBACK_STATE_UNSPECIFIED
    assert o3.flags[1].resolution_reason == "checked"
    assert o1.output.output.output_id == "o1" and list(o1.flags) == []
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert (missing.details() or "").startswith("output_id: output 'nope' not found")
    assert empty.code() == long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (empty.details() or "").startswith("output_id: is required")
    assert (long.details() or "").startswith("output_id: is at most 64 characters")


async def test_outputs_whose_text_retention_erased_come_back_empty(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        await _seed(running, common, token)

        def erase(s: Session) -> None:  # what retention does to a baseline output
            s.execute(
                update(store.OutputRow)
                .where(store.OutputRow.output_id == "o1")
                .values(prompt=None, text=None)
            )

        await app.db.run_write(erase)
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            listed = await stub.ListOutputs(
                pb.ListOutputsRequest(flag_state=pb.FLAG_STATE_UNFLAGGED)
            )
            got = await stub.GetOutput(pb.GetOutputRequest(output_id="o1"))
    for out in (listed.outputs[0].output, got.output.output):
        assert (out.output_id, out.prompt, out.text) == ("o1", "", "")
        assert out.task == "summary" and out.reward_score == 0.25


BAD_LISTINGS = [
    (pb.ListOutputsRequest(page_size=101), "page_size: must be between 0 and 100"),
    (pb.ListOutputsRequest(page_size=-1), "page_size: must be between 0 and 100"),
    (pb.ListOutputsRequest(page_token="not-a-token"), "page_token: is not a token"),
    (
        pb.ListOutputsRequest(start_time=_ts(T0), end_time=_ts(T0 - timedelta(seconds=1))),
        "start_time: must be before end_time",
    ),
    (pb.ListOutputsRequest(start_time=Timestamp(seconds=10**12)), "start_time: is not a valid"),
    (pb.ListOutputsRequest(end_time=Timestamp(seconds=-(10**12))), "end_time: is not a valid"),
    (pb.ListOutputsRequest(flag_state=99), "flag_state: 99 is not a FlagState value"),  # type: ignore[arg-type]
    (pb.ListOutputsRequest(task="Free Text"), "task: must be at most 64 characters of a-z"),
    (pb.ListOutputsRequest(model_version="v" * 65), "model_version: is at most 64 characters"),
]


async def test_bad_requests_are_invalid_argument_naming_the_field_and_write_nothing(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    bad_task = _out("o9", "v1", "summary", 9)
    bad_task.task = "Summary!"
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            refused = await rpc_fails(
                stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[OUTPUTS[0], bad_task]))
            )
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            errors = [await rpc_fails(stub.ListOutputs(request)) for request, _ in BAD_LISTINGS]
            stored = await stub.ListOutputs(pb.ListOutputsRequest())
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.details() or "").startswith("outputs[1].task: must be at most 64 characters")
    assert list(stored.outputs) == []  # the batch was refused whole
    for error, (_, message) in zip(errors, BAD_LISTINGS, strict=True):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert (error.details() or "").startswith(message), error.details()
