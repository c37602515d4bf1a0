"""RecordOutcome through real gRPC on loopback: what clinicians' workflows did with outputs
(accepted, overridden), stored once per (output, outcome, time), refused with the field
named, counted per version and window in GetStats and in the outcomes counter, and
deleted with their outputs by retention; on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.monitor import store
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.conftest import client, monitor_app, rpc_fails, serving

Token = Callable[[Role], str]
SOURCE = "cds-hooks:clinalign-patient-summary"
ACTED = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _out(oid: str, version: str, at: datetime | None = None) -> pb.ProductionOutput:
    return pb.ProductionOutput(
        output_id=oid,
        model_version=version,
        latency_s=0.5,
        completion_tokens=12,
        prompt="a question",
        text="an answer",
        create_time=_ts(at or datetime.now(UTC)),
    )


def _req(oid: str, outcome: int = pb.OUTCOME_ACCEPTED, **kw: object) -> pb.RecordOutcomeRequest:
    fields: dict[str, object] = {
        "output_id": oid,
        "outcome": outcome,
        "outcome_time": _ts(ACTED),
        "source": SOURCE,
    }
    fields.update(kw)
    return pb.RecordOutcomeRequest(**fields)  # type: ignore[arg-type]


def _counted(version: str, outcome: str) -> float:
    labels = {"model_version": version, "outcome": outcome}
    return REGISTRY.get_sample_value("clinalign_monitor_outcomes_total", labels) or 0.0


async def test_an_outcome_is_stored_once_and_a_repeat_is_a_replay(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    # unique per run: the PostgreSQL database and the metrics registry outlive a test
    version = f"oc-{uuid.uuid4().hex[:12]}"
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1", version)]))
            denied_service = await rpc_fails(stub.RecordOutcome(_req("o1")))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            first = await stub.RecordOutcome(_req("o1"))
            again = await stub.RecordOutcome(_req("o1", source="cds-hooks:elsewhere"))
            overridden = await stub.RecordOutcome(_req("o1", pb.OUTCOME_OVERRIDDEN))
            later = await stub.RecordOutcome(_req("o1", outcome_time=_ts(ACTED + timedelta(1))))
        async with client(running, common, token(Role.CLINICAL_LEAD)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            lead = await stub.RecordOutcome(_req("o1", pb.OUTCOME_OVERRIDDEN))
        async with client(running, common, token(Role.EHR_CLIENT)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            denied_ehr = await rpc_fails(stub.RecordOutcome(_req("o1")))
        rows = await app.db.run_sync(
            lambda s: list(s.scalars(select(store.OutcomeRow).order_by(store.OutcomeRow.id)))
        )
    assert (first.replayed, again.replayed) == (False, True)
    assert (overridden.replayed, later.replayed, lead.replayed) == (False, False, True)
    assert denied_service.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied_ehr.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [(r.outcome, store.utc(r.outcome_time)) for r in rows] == [
        (pb.OUTCOME_ACCEPTED, ACTED),
        (pb.OUTCOME_OVERRIDDEN, ACTED),
        (pb.OUTCOME_ACCEPTED, ACTED + timedelta(1)),
    ]
    assert {(r.model_version, r.source, r.recorded_by) for r in rows} == {
        (version, SOURCE, "local-clinician")
    }
    assert _counted(version, "accepted") == 2.0  # replays are not counted
    assert _counted(version, "overridden") == 1.0


async def test_unknown_outputs_and_bad_inputs_are_refused_naming_the_field(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    future = datetime.now(UTC) + timedelta(hours=1)
    untimed = pb.RecordOutcomeRequest(output_id="o1", outcome=pb.OUTCOME_ACCEPTED, source=SOURCE)
    cases: list[tuple[pb.RecordOutcomeRequest, str]] = [
        (_req(""), "output_id: is required"),
        (_req("x" * 65), "output_id: is at most 64 characters"),
        (_req("o1", pb.OUTCOME_UNSPECIFIED), "outcome: must be OUTCOME_ACCEPTED"),
        (_req("o1", 7), "outcome: must be OUTCOME_ACCEPTED"),
        (untimed, "outcome_time: is required"),
        (_req("o1", outcome_time=_ts(future)), "outcome_time: is in the future"),
        (_req("o1", outcome_time=Timestamp(seconds=10**12)), "outcome_time: is not a valid time"),
        (_req("o1", source=""), "source: is required"),
        (_req("o1", source="cds hooks"), "source: is required"),
        (_req("o1", source="s" * 129), "source: is required"),
    ]  # fmt: skip
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1", "v1")]))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            missing = await rpc_fails(stub.RecordOutcome(_req("nope")))
            refused = [(await rpc_fails(stub.RecordOutcome(r)), match) for r, match in cases]
        stored = await app.db.run_sync(
            lambda s: s.scalar(select(func.count()).select_from(store.OutcomeRow))
        )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert (missing.details() or "").startswith("output_id: output 'nope' not found")
    for err, match in refused:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, match
        assert (err.details() or "").startswith(match), (err.details(), match)
    assert stored == 0


async def test_stats_count_outcomes_per_version_and_window(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    now = datetime.now(UTC)
    old = now - timedelta(days=3)
    outputs = [
        _out("a1", "va"),
        _out("a2", "va"),
        _out("a3", "va"),
        _out("a-old", "va", at=old),
        _out("b1", "vb"),
        _out("c1", "vc"),
    ]
    outcomes = [
        ("a1", pb.OUTCOME_ACCEPTED),
        ("a2", pb.OUTCOME_ACCEPTED),
        ("a3", pb.OUTCOME_OVERRIDDEN),
        ("a-old", pb.OUTCOME_ACCEPTED),
        ("b1", pb.OUTCOME_OVERRIDDEN),
    ]
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=outputs))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            for oid, outcome in outcomes:
                await stub.RecordOutcome(_req(oid, outcome))
            await stub.RecordOutcome(_req("a1"))  # a replay counts once
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            recent = {
                v.model_version: v for v in (await stub.GetStats(pb.GetStatsRequest())).versions
            }
            wide = await stub.GetStats(
                pb.GetStatsRequest(model_version="va", start_time=_ts(now - timedelta(days=4)))
            )
            back_then = await stub.GetStats(
                pb.GetStatsRequest(
                    start_time=_ts(now - timedelta(days=4)), end_time=_ts(now - timedelta(days=2))
                )
            )
    va, vb, vc = recent["va"], recent["vb"], recent["vc"]
    assert (va.outputs, va.accepted, va.overridden) == (3, 2, 1)
    assert va.acceptance_rate == pytest.approx(2 / 3)
    assert (vb.accepted, vb.overridden) == (0, 1)
    assert vb.HasField("acceptance_rate") and vb.acceptance_rate == 0.0
    assert (vc.accepted, vc.overridden) == (0, 0) and not vc.HasField("acceptance_rate")
    (va_wide,) = wide.versions
    assert (va_wide.outputs, va_wide.accepted, va_wide.overridden) == (4, 3, 1)
    assert va_wide.acceptance_rate == pytest.approx(0.75)
    (va_old,) = back_then.versions
    assert (va_old.model_version, va_old.accepted, va_old.overridden) == ("va", 1, 0)
    assert va_old.acceptance_rate == 1.0


async def test_retention_deletes_outcomes_with_their_outputs(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    old = datetime.now(UTC) - timedelta(days=40)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            outputs = [_out("old", "v1", at=old), _out("new", "v1")]
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=outputs))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutcome(_req("old"))
            await stub.RecordOutcome(_req("new"))
        cutoff = datetime.now(UTC) - timedelta(days=30)
        deleted, _ = await app.db.run_write(lambda s: store.purge_expired(s, cutoff))
        left = await app.db.run_sync(lambda s: list(s.scalars(select(store.OutcomeRow.output_id))))
    assert deleted == 1
    assert left == ["new"]
