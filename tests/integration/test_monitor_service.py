"""The monitor service through real gRPC on loopback: de-identified outputs, flags and
their review, statistics with drift against the baseline, retention and the gauges; on
SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.monitor import drift, flags, store
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.conftest import client, monitor_app, rpc_fails, serving

Token = Callable[[Role], str]

# Synthetic identifiers: no real person.
NAME, PHONE, MRN = "Jonathan Whitfield", "(555) 014-2387", "00482913"
PHI_PROMPT = f"Patient {NAME}, MRN {MRN}, phone {PHONE}, has chest pain. What next?"
PHI_COMMENT = f"Call {NAME} back on {PHONE}: the dose is wrong."


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _out(
    oid: str,
    version: str = "v1",
    *,
    score: float | None = None,
    at: datetime | None = None,
    prompt: str = "a question",
    text: str = "an answer",
) -> pb.ProductionOutput:
    out = pb.ProductionOutput(
        output_id=oid,
        model_version=version,
        latency_s=0.5,
        completion_tokens=12,
        prompt=prompt,
        text=text,
        create_time=_ts(at or datetime.now(UTC)),
    )
    if score is not None:
        out.reward_score = score
    return out


def _flag_req(oid: str, **kw: object) -> pb.FlagOutputRequest:
    fields: dict[str, object] = {
        "output_id": oid,
        "category": common_pb2.ERROR_CATEGORY_FACTUAL_ERROR,
        "severity": pb.SEVERITY_HIGH,
    }
    fields.update(kw)
    return pb.FlagOutputRequest(**fields)  # type: ignore[arg-type]


async def test_outputs_and_flags_are_stored_deidentified_never_logged_or_exported(
    common: CommonSettings, token: Token, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(
                pb.RecordOutputsRequest(
                    outputs=[_out("phi-1", prompt=PHI_PROMPT, text=f"Dear {NAME}, rest.")]
                )
            )
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            flag = (
                await stub.FlagOutput(
                    _flag_req("phi-1", comment=PHI_COMMENT, corrected_text=f"{NAME}: go to ED.")
                )
            ).flag
        row = await app.db.run_sync(lambda s: s.get(store.OutputRow, "phi-1"))
    assert row is not None and row.prompt is not None and row.text is not None
    stored = " ".join([row.prompt, row.text, flag.comment, flag.corrected_text])
    for identifier in (NAME, "Whitfield", PHONE, MRN):
        assert identifier not in stored
        assert identifier not in caplog.text
        assert identifier not in generate_latest(REGISTRY).decode()
    assert "[NAME]" in row.prompt and "[MRN]" in row.prompt and "[PHONE]" in row.prompt
    assert "chest pain" in row.prompt  # clinical content stays
    assert "[PHONE]" in flag.comment and "[NAME]" in flag.corrected_text


async def test_record_outputs_is_all_or_nothing_and_idempotent(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url, max_text_chars=50)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            long = await rpc_fails(
                stub.RecordOutputs(
                    pb.RecordOutputsRequest(outputs=[_out("a"), _out("b", text="x" * 51)])
                )
            )
            far = _out("b")
            far.create_time.seconds = 10**12  # past year 9999
            bad_time = await rpc_fails(stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[far])))
            bad_window = await rpc_fails(
                stub.GetStats(pb.GetStatsRequest(end_time=Timestamp(seconds=-(10**12))))
            )
            first = await stub.RecordOutputs(
                pb.RecordOutputsRequest(outputs=[_out("a"), _out("b")])
            )
            again = await stub.RecordOutputs(
                pb.RecordOutputsRequest(outputs=[_out("b"), _out("c")])
            )
        ids = await app.db.run_sync(lambda s: sorted(s.scalars(select(store.OutputRow.output_id))))
    assert long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (long.details() or "").startswith("outputs[1].text: is longer than 50")
    assert bad_time.code() == bad_window.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_time.details() or "").startswith("outputs[0].create_time: is not a valid time")
    assert (bad_window.details() or "").startswith("end_time: is not a valid time")
    assert (first.recorded, first.duplicates) == (2, 0)
    assert (again.recorded, again.duplicates) == (1, 1)
    assert ids == ["a", "b", "c"]


async def test_flag_output_validates_and_names_the_caller(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url, max_comment_chars=10)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1", "v7")]))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            missing = await rpc_fails(stub.FlagOutput(_flag_req("nope")))
            nocat = await rpc_fails(stub.FlagOutput(_flag_req("o1", category=0)))
            nosev = await rpc_fails(stub.FlagOutput(_flag_req("o1", severity=0)))
            long = await rpc_fails(stub.FlagOutput(_flag_req("o1", comment="x" * 11)))
            ok = (await stub.FlagOutput(_flag_req("o1", comment="wrong dose"))).flag
        async with client(running, common, token(Role.EHR_CLIENT)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            denied = await rpc_fails(stub.FlagOutput(_flag_req("o1")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert (missing.details() or "").startswith("output_id: output 'nope' not found")
    assert nocat.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (nocat.details() or "").startswith("category: is required")
    assert (nosev.details() or "").startswith("severity: is required")
    assert (long.details() or "").startswith("comment: is longer than 10")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ok.flagged_by == "local-clinician" and ok.model_version == "v7"
    assert ok.status == pb.FLAG_STATUS_OPEN and ok.comment == "wrong dose"
    assert ok.id.startswith("flag_") and ok.HasField("create_time")
    assert not ok.HasField("resolve_time")


async def test_resolve_flag_confirms_or_dismisses_an_open_flag_once(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1")]))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            a = (await stub.FlagOutput(_flag_req("o1"))).flag
            b = (await stub.FlagOutput(_flag_req("o1"))).flag
            noreason = await rpc_fails(
                stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id=a.id, resolution=pb.RESOLUTION_DISMISS)
                )
            )
            nores = await rpc_fails(stub.ResolveFlag(pb.ResolveFlagRequest(flag_id=a.id)))
            unknown = await rpc_fails(
                stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id="flag_x", resolution=pb.RESOLUTION_CONFIRM)
                )
            )
            confirmed = (
                await stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id=a.id, resolution=pb.RESOLUTION_CONFIRM)
                )
            ).flag
            twice = await rpc_fails(
                stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id=a.id, resolution=pb.RESOLUTION_CONFIRM)
                )
            )
            dismissed = (
                await stub.ResolveFlag(
                    pb.ResolveFlagRequest(
                        flag_id=b.id, resolution=pb.RESOLUTION_DISMISS, reason="dose is right"
                    )
                )
            ).flag
    assert (noreason.details() or "").startswith("reason: is required when dismissing")
    assert (nores.details() or "").startswith("resolution: must be")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert (unknown.details() or "").startswith("flag_id: flag 'flag_x' not found")
    assert confirmed.status == pb.FLAG_STATUS_CONFIRMED
    assert confirmed.resolved_by == "local-clinician" and confirmed.HasField("resolve_time")
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is FLAG_STATUS_CONFIRMED; only an OPEN flag" in (twice.details() or "")
    assert dismissed.status == pb.FLAG_STATUS_DISMISSED
    assert dismissed.resolution_reason == "dose is right"


async def test_list_flags_filters_orders_and_pages(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1", "v1")]))
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o2", "v2")]))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            made = []
            for oid, sev, cat in [
                ("o1", pb.SEVERITY_LOW, common_pb2.ERROR_CATEGORY_OMISSION),
                ("o1", pb.SEVERITY_CRITICAL, common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE),
                ("o2", pb.SEVERITY_HIGH, common_pb2.ERROR_CATEGORY_OMISSION),
                ("o2", pb.SEVERITY_CRITICAL, common_pb2.ERROR_CATEGORY_OMISSION),
            ]:
                made.append(
                    (await stub.FlagOutput(_flag_req(oid, severity=sev, category=cat))).flag.id
                )
            await stub.ResolveFlag(
                pb.ResolveFlagRequest(flag_id=made[3], resolution=pb.RESOLUTION_CONFIRM)
            )
            everything = (await stub.ListFlags(pb.ListFlagsRequest())).flags
            page1 = await stub.ListFlags(pb.ListFlagsRequest(page_size=3))
            page2 = await stub.ListFlags(
                pb.ListFlagsRequest(page_size=3, page_token=page1.next_page_token)
            )
            open_ = (await stub.ListFlags(pb.ListFlagsRequest(status=pb.FLAG_STATUS_OPEN))).flags
            omission_v2 = (
                await stub.ListFlags(
                    pb.ListFlagsRequest(
                        category=common_pb2.ERROR_CATEGORY_OMISSION, model_version="v2"
                    )
                )
            ).flags
            severe = (
                await stub.ListFlags(pb.ListFlagsRequest(min_severity=pb.SEVERITY_HIGH))
            ).flags
            bad = await rpc_fails(stub.ListFlags(pb.ListFlagsRequest(page_size=101)))
    # Highest severity first, then oldest: the two CRITICAL in creation order.
    assert [f.id for f in everything] == [made[1], made[3], made[2], made[0]]
    assert [f.id for f in page1.flags] + [f.id for f in page2.flags] == [f.id for f in everything]
    assert page1.next_page_token and not page2.next_page_token
    assert [f.id for f in open_] == [made[1], made[2], made[0]]
    assert [f.id for f in omission_v2] == [made[3], made[2]]
    assert [f.id for f in severe] == [made[1], made[3], made[2]]
    assert (bad.details() or "").startswith("page_size:")


async def test_get_stats_reports_rates_distributions_and_drift_against_the_baseline(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url, baseline_outputs=4, psi_bins=2)
    now = datetime.now(UTC)
    day_ago = now - timedelta(days=1)
    baseline_scores = [0.0, 1.0, 2.0, 3.0]
    recent_scores = [2.5, 3.5, 4.5, 1.5]
    # Baseline: four outputs a day ago; then four recent ones, one unscored.
    older = [
        _out(f"b{i}", score=s, at=day_ago + timedelta(seconds=i))
        for i, s in enumerate(baseline_scores)
    ]
    recent = [
        _out(f"r{i}", score=s, at=now - timedelta(minutes=10 - i))
        for i, s in enumerate(recent_scores)
    ]
    recent.append(_out("r-unscored", at=now - timedelta(minutes=1)))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=older + recent))
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.FlagOutput(_flag_req("b0"))  # a baseline flag
            recent_flags = [
                (await stub.FlagOutput(_flag_req(oid, category=cat))).flag.id
                for oid, cat in [
                    ("r0", common_pb2.ERROR_CATEGORY_OMISSION),
                    ("r1", common_pb2.ERROR_CATEGORY_OMISSION),
                    ("r2", common_pb2.ERROR_CATEGORY_BIAS),
                ]
            ]
            for fid in recent_flags[:2]:
                await stub.ResolveFlag(
                    pb.ResolveFlagRequest(flag_id=fid, resolution=pb.RESOLUTION_CONFIRM)
                )
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            window = pb.GetStatsRequest(
                model_version="v1", start_time=_ts(now - timedelta(hours=1)), end_time=_ts(now)
            )
            (v1,) = (await stub.GetStats(window)).versions
            inverted = await rpc_fails(
                stub.GetStats(pb.GetStatsRequest(start_time=_ts(now), end_time=_ts(day_ago)))
            )
    assert v1.outputs == 5
    assert v1.flag_rate == pytest.approx(3 / 5)
    assert dict(v1.confirmed_flag_rate_by_category) == {"omission": pytest.approx(2 / 5)}
    assert v1.reward_score.count == 4
    assert v1.reward_score.mean == pytest.approx(3.0)
    assert v1.reward_score.p50 == pytest.approx(3.0)
    assert v1.latency_s.count == 5 and v1.latency_s.p99 == pytest.approx(0.5)
    assert v1.baseline_flag_rate == pytest.approx(1 / 4)
    # Baseline median 1.5 splits it 2/2; recent scores 1/3 → 0.25 ln 3 (see the unit tests).
    assert v1.reward_psi == pytest.approx(drift.psi(baseline_scores, recent_scores, 2))
    assert v1.reward_psi == pytest.approx(0.25 * math.log(3))
    assert v1.reward_ks == pytest.approx(drift.ks_statistic(baseline_scores, recent_scores))
    assert inverted.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (inverted.details() or "").startswith("start_time:")


async def test_stats_without_a_full_baseline_leave_drift_unset(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url, baseline_outputs=10)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(
                pb.RecordOutputsRequest(outputs=[_out(f"o{i}", score=i) for i in range(3)])
            )
            (v1,) = (await stub.GetStats(pb.GetStatsRequest())).versions
    assert v1.outputs == 3 and v1.flag_rate == 0.0
    assert not v1.HasField("reward_psi") and not v1.HasField("reward_ks")
    assert not v1.HasField("baseline_flag_rate")


async def test_retention_deletes_old_outputs_and_flags_but_keeps_baseline_figures(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(
        common, database_url, baseline_outputs=2, retention_days=30, retention_interval_s=0.05
    )
    old = datetime.now(UTC) - timedelta(days=40)
    outputs = [
        _out("base-0", score=0.1, at=old),
        _out("base-1", score=0.2, at=old + timedelta(seconds=1)),
        _out("old", score=0.3, at=old + timedelta(seconds=2)),
        _out("new", score=0.4),
    ]
    async with serving(app, common):
        records = [
            store.OutputRecord(
                o.output_id, "v1", "", 0.5, 1, o.reward_score, o.create_time.ToDatetime(UTC)
            )
            for o in outputs
        ]
        old_flag = flags.NewFlag("old", common_pb2.ERROR_CATEGORY_BIAS, pb.SEVERITY_LOW, "", "")

        def record_and_flag(s: Session) -> None:
            # One transaction, so that no sweep runs between the output and its flag.
            store.record_outputs(s, records, lambda t: t, 2)
            flags.create(s, old_flag, lambda t: t, "tester")

        await app.db.run_write(record_and_flag)
        for _ in range(100):
            rows = await app.db.run_sync(
                lambda s: {
                    r.output_id: (r.in_baseline, r.text) for r in s.scalars(select(store.OutputRow))
                }
            )
            if "old" not in rows and rows.get("base-0", (True, ""))[1] is None:
                break
            await asyncio.sleep(0.05)
        flagged = await app.db.run_sync(lambda s: list(s.scalars(select(store.FlagRow.id))))
    assert rows == {"base-0": (True, None), "base-1": (True, None), "new": (False, "")}
    assert flagged == []


async def test_gauges_refresh_over_the_trailing_window(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    # unique per run: the PostgreSQL database outlives a run, and id() values repeat across runs
    version = f"gauge-{uuid.uuid4().hex[:12]}"
    app = monitor_app(common, database_url, baseline_outputs=4, psi_bins=2, stats_interval_s=0.05)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(
                pb.RecordOutputsRequest(
                    outputs=[
                        _out(f"{version}-{i}", version, score=s) for i, s in enumerate([0, 1, 2, 3])
                    ]
                )
            )
        labels = {"model_version": version}
        for _ in range(100):
            psi = REGISTRY.get_sample_value("clinalign_monitor_reward_psi", labels)
            if psi is not None:
                break
            await asyncio.sleep(0.05)
    assert psi == pytest.approx(0.0)
    assert REGISTRY.get_sample_value("clinalign_monitor_reward_ks", labels) == 0.0
    assert REGISTRY.get_sample_value("clinalign_monitor_flag_rate", labels) == 0.0
    assert REGISTRY.get_sample_value("clinalign_monitor_baseline_flag_rate", labels) == 0.0
    assert REGISTRY.get_sample_value("clinalign_monitor_outputs_total", labels) == 4.0
