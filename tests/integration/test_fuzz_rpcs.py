"""Every RPC of every service, found by reflection, called with generated and mutated
messages (``tests.fuzz_messages``) and with bytes that are no message at all, as an admin
(admitted everywhere, so every handler is reached). A caller's mistake is never INTERNAL
or UNKNOWN; every service is healthy afterwards; a refused call leaves the preference
store's tables (the clinical record) as they were.

Bounded: a fixed seed, a few random messages per RPC, a short deadline per call; costly
RPCs are kept cheap by the servers' own limits (the tiny model, one running job)."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clinalign.common.auth import Role, token_for_role
from clinalign.common.config import CommonSettings
from clinalign.common.server import RunningServer
from tests.conftest import serving
from tests.fuzz_messages import raw_variants, variants

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CLINALIGN_FUZZ_SEED", "20261207"))
RANDOM_PER_RPC = int(os.environ.get("CLINALIGN_FUZZ_RANDOM", "8"))
DEADLINE_S = 5.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _identity(b: bytes) -> bytes:
    return b


@pytest.fixture
async def stack(
    common: CommonSettings, tiny_model_dir: Path, tiny_reward_dir: Path
) -> AsyncIterator[dict[str, RunningServer]]:
    from clinalign.generation.config import GenerationSettings
    from clinalign.generation.server import GenerationApp
    from clinalign.monitor.config import MonitorSettings
    from clinalign.monitor.server import MonitorApp
    from clinalign.preference.config import PreferenceSettings
    from clinalign.preference.server import PreferenceApp
    from clinalign.reward.config import RewardSettings
    from clinalign.reward.server import RewardApp
    from clinalign.trainer.config import TrainerSettings
    from clinalign.trainer.server import TrainerApp

    running: dict[str, RunningServer] = {}
    async with AsyncExitStack() as stack:
        wired = common
        for name, make in (
            ("preference", lambda c: PreferenceApp(c, PreferenceSettings(port=0))),
            ("trainer", lambda c: TrainerApp(c, TrainerSettings(port=0, watch_poll_s=0.1))),
            (
                "reward",
                lambda c: RewardApp(
                    c, RewardSettings(port=0, model_path=tiny_reward_dir, device="cpu")
                ),
            ),
            (
                "generation",
                lambda c: GenerationApp(
                    c,
                    GenerationSettings(
                        port=0, model_path=tiny_model_dir, device="cpu", report_to_monitor=False
                    ),
                ),
            ),
            ("monitor", lambda c: MonitorApp(c, MonitorSettings(port=0, score_outputs=False))),
        ):
            server = await stack.enter_async_context(serving(make(wired), wired))
            running[name] = server
            wired = wired.model_copy(update={f"{name}_target": f"127.0.0.1:{server.port}"})
        yield running


async def _service_names(ch: grpc.aio.Channel) -> list[str]:
    """The ClinAlign services a server lists through reflection."""
    call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    return [s.name for s in reply.list_services_response.service if s.name.startswith("clinalign.")]


async def _call(
    ch: grpc.aio.Channel, path: str, method: MethodDescriptor, payload: bytes, token: str
) -> tuple[grpc.StatusCode, str]:
    kw: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    md = (("authorization", f"Bearer {token}"),)
    try:
        if method.client_streaming:
            call = ch.stream_stream(path, **kw)(iter([payload]), metadata=md, timeout=DEADLINE_S)
            async for _ in call:
                break
            call.cancel()
        elif method.server_streaming:
            stream = ch.unary_stream(path, **kw)(payload, metadata=md, timeout=DEADLINE_S)
            async for _ in stream:
                break
            stream.cancel()
        else:
            await ch.unary_unary(path, **kw)(payload, metadata=md, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _store_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if r[0] != "alembic_version_preference"
        ]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


async def test_no_rpc_answers_a_callers_mistake_with_internal_or_unknown(
    stack: dict[str, RunningServer], common: CommonSettings
) -> None:
    token = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    pool = descriptor_pool.Default()
    rng = random.Random(SEED)
    preference_db = common.data_dir / "preference.db"
    failures: list[str] = []
    calls = 0
    for name, server in stack.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            services = await _service_names(ch)
            assert services, f"{name} lists no ClinAlign service through reflection"
            for service_name in services:
                service = pool.FindServiceByName(service_name)
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    payloads = [
                        *(
                            m.SerializeToString()
                            for m in variants(method.input_type, rng, RANDOM_PER_RPC)
                        ),
                        *raw_variants(method.input_type, rng),
                    ]
                    for payload in payloads:
                        before = _store_counts(preference_db) if name == "preference" else None
                        code, details = await _call(ch, path, method, payload, token)
                        calls += 1
                        if code in FORBIDDEN:
                            failures.append(f"{path}: {code.name} {details[:200]!r}")
                        if before is not None and code != grpc.StatusCode.OK:
                            after = _store_counts(preference_db)
                            if after != before:
                                changed = {t for t in after if after[t] != before.get(t)}
                                failures.append(
                                    f"{path}: refused ({code.name}) yet wrote {changed}"
                                )
    assert calls > 1000
    assert not failures, f"{len(failures)} of {calls} calls:\n" + "\n".join(failures[:40])
    # Every service is still healthy.
    for name, server in stack.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
