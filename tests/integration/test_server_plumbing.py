"""The shared server plumbing through real gRPC on loopback: health, reflection, auth,
error mapping, overload, request ids, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clinalign.common.auth import Role, token_for_role
from clinalign.common.config import CommonSettings
from clinalign.common.metrics import start_metrics_server
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.conftest import client, serving

Token = Callable[[Role], str]


def _app(common: CommonSettings) -> MonitorApp:
    return MonitorApp(common, MonitorSettings(port=0, metrics_port=0))


def _output(oid: str = "out-1") -> monitor_pb2.ProductionOutput:
    return monitor_pb2.ProductionOutput(output_id=oid, model_version="v1", latency_s=0.1)


async def test_health_is_not_serving_until_started_then_serving(common: CommonSettings) -> None:
    from clinalign.common.auth import TokenAuthenticator
    from clinalign.common.server import create_server

    app = _app(common)
    auth = TokenAuthenticator.from_file(common.resolved_tokens_file)
    running = await create_server(app, common, MonitorSettings(port=0), auth)
    try:
        async with client(running, common, None) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for name in ("", app.full_name):
                before = await stub.Check(health_pb2.HealthCheckRequest(service=name))
                assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await running.start_app()
            for name in ("", app.full_name):
                after = await stub.Check(health_pb2.HealthCheckRequest(service=name))
                assert after.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(0)


async def test_reflection_lists_the_service(common: CommonSettings) -> None:
    app = _app(common)
    async with serving(app, common) as running, client(running, common, None) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await call.read()
        await call.done_writing()
        names = {s.name for s in resp.list_services_response.service}
        assert app.full_name in names
        assert "grpc.health.v1.Health" in names


async def _code(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details() or ""


async def test_missing_or_unknown_token_is_unauthenticated(common: CommonSettings) -> None:
    async with serving(_app(common), common) as running:
        for tok in (None, "not-a-token"):
            async with client(running, common, tok) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                code, _ = await _code(stub.GetStats(monitor_pb2.GetStatsRequest()))
                assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_role_is_permission_denied(common: CommonSettings, token: Token) -> None:
    async with serving(_app(common), common) as running:
        async with client(running, common, token(Role.EHR_CLIENT)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            code, details = await _code(
                stub.RecordOutputs(monitor_pb2.RecordOutputsRequest(outputs=[_output()]))
            )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "role 'ehr-client' may not call" in details


async def test_bad_input_is_invalid_argument_naming_the_field(
    common: CommonSettings, token: Token
) -> None:
    async with serving(_app(common), common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            bad = monitor_pb2.ProductionOutput(output_id="x", model_version="v", latency_s=-1)
            code, details = await _code(
                stub.RecordOutputs(monitor_pb2.RecordOutputsRequest(outputs=[_output(), bad]))
            )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("outputs[1].latency_s:")


async def test_rpc_of_a_later_release_is_unimplemented(
    common: CommonSettings, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every RPC is implemented now: take one away to get the generated base's default.
    from clinalign.monitor.servicer import MonitorServicer

    monkeypatch.delattr(MonitorServicer, "GetLineage")
    async with serving(_app(common), common) as running:
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            code, details = await _code(stub.GetLineage(monitor_pb2.GetLineageRequest()))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "GetLineage is not implemented" in details


async def test_unexpected_exception_is_internal_without_its_text(
    common: CommonSettings, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(common)

    async def broken(*_: Any) -> None:
        raise RuntimeError("patient Jane Roe, MRN 1234567")

    monkeypatch.setattr(app.servicer, "GetStats", broken)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            code, details = await _code(stub.GetStats(monitor_pb2.GetStatsRequest()))
    assert code == grpc.StatusCode.INTERNAL
    assert "request id" in details
    assert "Jane" not in details and "1234567" not in details


async def test_beyond_concurrency_limit_is_resource_exhausted(
    common: CommonSettings, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(common)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: Any, context: Any) -> monitor_pb2.GetStatsResponse:
        entered.set()
        await release.wait()
        return monitor_pb2.GetStatsResponse()

    monkeypatch.setattr(app.servicer, "GetStats", slow)
    settings = MonitorSettings(port=0, max_concurrent_rpcs=1)
    async with serving(app, common, settings) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            first = asyncio.ensure_future(stub.GetStats(monitor_pb2.GetStatsRequest()))
            await asyncio.wait_for(entered.wait(), 10)  # the one slot is taken
            code, _ = await _code(stub.GetStats(monitor_pb2.GetStatsRequest(), timeout=5))
            release.set()
            await first
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_request_id_is_echoed_and_generated(common: CommonSettings, token: Token) -> None:
    async with serving(_app(common), common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            call = stub.GetStats(
                monitor_pb2.GetStatsRequest(), metadata=(("x-request-id", "req-abc"),)
            )
            await call
            trailing = dict(await call.trailing_metadata() or ())
            assert trailing["x-request-id"] == "req-abc"


async def test_rpc_metrics_are_exported(common: CommonSettings, token: Token) -> None:
    metrics = start_metrics_server("127.0.0.1", 0)
    try:
        async with serving(_app(common), common) as running:
            async with client(running, common, token(Role.SERVICE)) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                await stub.RecordOutputs(monitor_pb2.RecordOutputsRequest(outputs=[_output()]))
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    finally:
        metrics.stop()
    assert (
        'rpc_server_requests_total{rpc_grpc_status_code="OK",rpc_method="RecordOutputs",'
        'service="monitor"}' in body
    )
    assert "rpc_server_duration_seconds_bucket" in body


async def test_graceful_stop_lets_in_flight_rpc_finish(
    common: CommonSettings, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinalign.common.auth import TokenAuthenticator
    from clinalign.common.server import create_server

    app = _app(common)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: Any, context: Any) -> monitor_pb2.GetStatsResponse:
        entered.set()
        await release.wait()
        return monitor_pb2.GetStatsResponse()

    monkeypatch.setattr(app.servicer, "GetStats", slow)
    auth = TokenAuthenticator.from_file(common.resolved_tokens_file)
    running = await create_server(app, common, MonitorSettings(port=0), auth)
    await running.start_app()
    async with client(running, common, token(Role.ML_ENGINEER)) as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        call = asyncio.ensure_future(stub.GetStats(monitor_pb2.GetStatsRequest()))
        await asyncio.wait_for(entered.wait(), 10)  # in flight
        stopping = asyncio.ensure_future(running.stop(5.0))
        await asyncio.sleep(0)  # let the stop begin while the call is still in flight
        assert not call.done()
        release.set()
        assert isinstance(await call, monitor_pb2.GetStatsResponse)
        await stopping
        with pytest.raises(grpc.aio.AioRpcError):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)


async def test_a_second_server_cannot_take_a_port_in_use(common: CommonSettings) -> None:
    async with serving(_app(common), common) as running:
        settings = MonitorSettings(port=running.port)
        from clinalign.common.auth import TokenAuthenticator
        from clinalign.common.errors import FailedPrecondition
        from clinalign.common.server import create_server

        auth = TokenAuthenticator.from_file(common.resolved_tokens_file)
        with pytest.raises(FailedPrecondition, match=r"cannot listen on 127\.0\.0\.1:"):
            await create_server(_app(common), common, settings, auth)


async def test_a_principal_over_its_rate_is_resource_exhausted_with_a_retry_hint(
    common: CommonSettings,
) -> None:
    """Per-principal limits through real gRPC: a clinician over their rate is refused with
    the gRPC pushback trailer; another clinician and the services are not affected."""
    from clinalign.common.auth import ensure_principals
    from clinalign.common.quotas import PUSHBACK_TRAILER, RoleLimit

    tokens = ensure_principals(
        common.resolved_tokens_file, {"dr-a": Role.CLINICIAN, "dr-b": Role.CLINICIAN}
    )
    limited = common.model_copy(
        update={"rate_limits": {"clinician": RoleLimit(rate_per_s=0.5, burst=2, concurrent=4)}}
    )
    request = monitor_pb2.ListFlagsRequest()
    async with serving(_app(limited), limited) as running:
        async with client(running, limited, tokens["dr-a"]) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.ListFlags(request)
            await stub.ListFlags(request)
            call = stub.ListFlags(request)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "'dr-a' is over its rate of 0.5 calls/s" in (info.value.details() or "")
            trailers = dict(info.value.trailing_metadata() or ())
            assert 1000 <= int(trailers[PUSHBACK_TRAILER]) <= 2000
        async with client(running, limited, tokens["dr-b"]) as ch:
            await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(request)
        # ClinAlign's own clients retry a refused call after the server's pushback.
        from clinalign.common.channels import open_channel

        async with open_channel(
            f"127.0.0.1:{running.port}", limited, tokens["dr-a"], retry_refused=True
        ) as ch:
            started = asyncio.get_running_loop().time()
            await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(request, timeout=10)
            assert asyncio.get_running_loop().time() - started >= 0.5


async def test_a_services_own_credential_reaches_only_what_that_service_calls(
    common: CommonSettings,
) -> None:
    """RecordOutputs is for the generation service: its credential is admitted, another
    service's is PERMISSION_DENIED naming both, and an integration's service account (not
    a ClinAlign service) keeps what role service may do."""
    from clinalign.common.auth import token_for_service

    request = monitor_pb2.RecordOutputsRequest(outputs=[_output("out-svc")])
    async with serving(_app(common), common) as running:
        async with client(
            running, common, token_for_service(common.resolved_tokens_file, "generation")
        ) as ch:
            await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(request)
        async with client(
            running, common, token_for_service(common.resolved_tokens_file, "reward")
        ) as ch:
            code, details = await _code(
                monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(request)
            )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "service 'reward' may not call" in details and "allowed: generation" in details
        async with client(
            running, common, token_for_role(common.resolved_tokens_file, Role.SERVICE)
        ) as ch:
            await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(request)
