"""ListReplayCases through real gRPC on loopback: the confirmed flags at or above a severity,
with the de-identified prompt and text the monitor stored, for the promotion gate to replay;
flags whose prompt retention erased counted, not returned. On SQLite and, when configured,
PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.monitor import store
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from tests.conftest import RunningServer, client, monitor_app, rpc_fails, serving

Token = Callable[[Role], str]

# Synthetic identifiers: no real person.
NAME, MRN = "Jonathan Whitfield", "00482913"
PHI_PROMPT = f"Patient {NAME}, MRN {MRN}, has chest pain on exertion. What next?"
FLAGGED = "Take paracetamol 10 g at once and rest at home."
CORRECTION = f"{NAME} should go to the emergency department now."


def _out(oid: str, version: str = "v1", *, at: datetime | None = None) -> pb.ProductionOutput:
    ts = Timestamp()
    ts.FromDatetime(at or datetime.now(UTC))
    return pb.ProductionOutput(
        output_id=oid,
        model_version=version,
        latency_s=0.5,
        completion_tokens=12,
        prompt=f"question {oid}",
        text=f"answer {oid}",
        create_time=ts,
    )


async def _flag(
    running: RunningServer,
    common: CommonSettings,
    token: Token,
    flags: list[tuple[str, int, int, int]],
    **kw: str,
) -> list[str]:
    """Flags (output id, severity, category, resolution: 0 leaves it open) as a clinician,
    one after another, so creation order is list order; returns the flag ids."""
    ids = []
    async with client(running, common, token(Role.CLINICIAN)) as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        for oid, severity, category, resolution in flags:
            flag = (
                await stub.FlagOutput(
                    pb.FlagOutputRequest(
                        output_id=oid,
                        severity=severity,  # type: ignore[arg-type]
                        category=category,  # type: ignore[arg-type]
                        **kw,
                    )
                )
            ).flag
            if resolution:
                await stub.ResolveFlag(
                    pb.ResolveFlagRequest(
                        flag_id=flag.id,
                        resolution=resolution,  # type: ignore[arg-type]
                        reason="not a fault",
                    )
                )
            ids.append(flag.id)
    return ids


async def _all(
    stub: monitor_pb2_grpc.MonitorServiceStub, min_severity: int, page_size: int
) -> tuple[list[pb.ListReplayCasesResponse], list[str]]:
    """Every page of a listing, and the flag ids on them in order."""
    pages = [
        await stub.ListReplayCases(
            pb.ListReplayCasesRequest(min_severity=min_severity, page_size=page_size)  # type: ignore[arg-type]
        )
    ]
    while pages[-1].next_page_token:
        pages.append(
            await stub.ListReplayCases(
                pb.ListReplayCasesRequest(
                    min_severity=min_severity,  # type: ignore[arg-type]
                    page_size=page_size,
                    page_token=pages[-1].next_page_token,
                )
            )
        )
    return pages, [c.flag_id for p in pages for c in p.cases]


CONFIRM, DISMISS = pb.RESOLUTION_CONFIRM, pb.RESOLUTION_DISMISS
CRITICAL, HIGH, LOW = pb.SEVERITY_CRITICAL, pb.SEVERITY_HIGH, pb.SEVERITY_LOW
UNSAFE, OMISSION = common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE, common_pb2.ERROR_CATEGORY_OMISSION


async def test_replay_cases_are_the_confirmed_flags_with_their_deidentified_prompts(
    common: CommonSettings, token: Token, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            phi = _out("o-phi", "policy-v3")
            phi.prompt, phi.text = PHI_PROMPT, FLAGGED
            others = [_out(o) for o in ("o-high", "o-open", "o-dismissed", "o-low", "o-crit")]
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[phi, *others]))
        (critical,) = await _flag(
            running,
            common,
            token,
            [("o-phi", CRITICAL, UNSAFE, CONFIRM)],
            corrected_text=CORRECTION,
        )
        high, _open, _dismissed, low, later = await _flag(
            running,
            common,
            token,
            [
                ("o-high", HIGH, OMISSION, CONFIRM),
                ("o-open", CRITICAL, UNSAFE, 0),
                ("o-dismissed", CRITICAL, UNSAFE, DISMISS),
                ("o-low", LOW, OMISSION, CONFIRM),
                ("o-crit", CRITICAL, OMISSION, CONFIRM),
            ],
        )
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            default = await stub.ListReplayCases(pb.ListReplayCasesRequest())
            pages, severe = await _all(stub, HIGH, page_size=1)
            _, everything = await _all(stub, LOW, page_size=0)
        async with client(running, common, token(Role.ADMIN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            as_admin = await stub.ListReplayCases(pb.ListReplayCasesRequest())
    # Unspecified is critical: confirmed critical flags only, oldest first; open and
    # dismissed flags are not faults to replay.
    assert [c.flag_id for c in default.cases] == [critical, later]
    assert not default.next_page_token and default.purged == 0
    case = default.cases[0]
    assert case.severity == CRITICAL and case.category == UNSAFE
    assert case.model_version == "policy-v3" and case.flagged_text == FLAGGED
    # The text as stored: de-identified at write time, clinical content kept.
    assert "chest pain on exertion" in case.prompt and "[NAME]" in case.prompt
    assert NAME not in case.prompt and MRN not in case.prompt
    assert case.corrected_text.startswith("[NAME] should go to the emergency department")
    assert default.cases[1].corrected_text == "" and default.cases[1].prompt == "question o-crit"
    # HIGH includes high and critical, highest severity first; paged one at a time.
    assert severe == [critical, later, high]
    # The common pagination helper: a full page carries a token, so the end is an empty page.
    assert [len(p.cases) for p in pages] == [1, 1, 1, 0] and not pages[-1].next_page_token
    assert everything == [critical, later, high, low]
    assert [c.flag_id for c in as_admin.cases] == [critical, later]
    for text in ("chest pain", "paracetamol 10 g", "emergency department"):
        assert text not in caplog.text


async def test_replay_cases_count_the_flags_whose_prompt_retention_erased(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    # Retention keeps a baseline output's row (and so its flags) but erases its text.
    app = monitor_app(
        common, database_url, baseline_outputs=2, retention_days=30, retention_interval_s=0.05
    )
    old = datetime.now(UTC) - timedelta(days=40)
    outputs = [_out("base-0", at=old), _out("base-1", at=old + timedelta(seconds=1))]
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(
                pb.RecordOutputsRequest(outputs=[*outputs, _out("new-0"), _out("new-1")])
            )
        _purged, new0, new1 = await _flag(
            running,
            common,
            token,
            [(oid, CRITICAL, UNSAFE, CONFIRM) for oid in ("base-0", "new-0", "new-1")],
        )
        for _ in range(100):
            row = await app.db.run_sync(lambda s: s.get(store.OutputRow, "base-0"))
            if row is not None and row.prompt is None:
                break
            await asyncio.sleep(0.05)
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            pages, ids = await _all(stub, CRITICAL, page_size=1)
    assert row is not None and row.prompt is None
    assert ids == [new0, new1]
    # The count covers the whole listing and is the same on every page (the last one empty):
    # read it once.
    assert [p.purged for p in pages] == [1, 1, 1]


async def test_replay_cases_are_for_services_and_refuse_bad_requests_naming_the_field(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    app = monitor_app(common, database_url)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            clinician = await rpc_fails(stub.ListReplayCases(pb.ListReplayCasesRequest()))
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            engineer = await rpc_fails(stub.ListReplayCases(pb.ListReplayCasesRequest()))
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            empty = await stub.ListReplayCases(pb.ListReplayCasesRequest(page_size=500))
            bad = {
                name: await rpc_fails(stub.ListReplayCases(request))
                for name, request in {
                    "big": pb.ListReplayCasesRequest(page_size=501),
                    "negative": pb.ListReplayCasesRequest(page_size=-1),
                    "token": pb.ListReplayCasesRequest(page_token="not-a-token"),
                    "severity": pb.ListReplayCasesRequest(min_severity=99),  # type: ignore[arg-type]
                }.items()
            }
    assert clinician.code() == grpc.StatusCode.PERMISSION_DENIED
    assert engineer.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(empty.cases) == [] and empty.purged == 0 and not empty.next_page_token
    assert {e.code() for e in bad.values()} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert (bad["big"].details() or "").startswith("page_size: must be between 0 and 500")
    assert (bad["negative"].details() or "").startswith("page_size: must be between 0 and 500")
    assert (bad["token"].details() or "").startswith("page_token: is not a token")
    assert (bad["severity"].details() or "").startswith("min_severity: 99 is not a Severity")
