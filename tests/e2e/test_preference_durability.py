"""Nothing acknowledged is lost: the preference service is SIGKILLed while clients submit
comparison batches, restarted, and every acknowledged comparison is found exactly once.
Clients retry unacknowledged batches with the same idempotency key, as real ones must."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import create_engine, func, select

from clinalign.cli.stack import wait_serving
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.preference import models
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import PG_URL, free_ports, reset_tables

CLIENTS, BATCHES, BATCH = 4, 12, 10
FULL_NAME = "clinalign.preference.v1.PreferenceService"


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "clinalign.preference"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def _scenario(
    env: dict[str, str], common: CommonSettings, target: str, log: Path
) -> tuple[dict[str, list[str]], int]:
    token = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    proc = _start(env, log)
    await wait_serving(target, common, FULL_NAME)
    async with open_channel(target, common, token) as ch:
        stub = preference_pb2_grpc.PreferenceServiceStub(ch)
        await stub.RegisterAnnotator(
            pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-1", role="nurse"))
        )
        pids = (
            await stub.SubmitPrompts(
                pb.SubmitPromptsRequest(
                    idempotency_key="setup-prompts",
                    prompts=[
                        pb.PromptInput(
                            text=f"Question {i} about a rash.", source=pb.PROMPT_SOURCE_CURATED
                        )
                        for i in range(10)
                    ],
                )
            )
        ).ids
        rids = (
            await stub.SubmitResponses(
                pb.SubmitResponsesRequest(
                    idempotency_key="setup-responses",
                    responses=[
                        pb.ResponseInput(prompt_id=p, text=f"Answer {j}.", model_version="v1")
                        for p in pids
                        for j in range(2)
                    ],
                )
            )
        ).ids
    pairs = [(rids[2 * i], rids[2 * i + 1]) for i in range(len(pids))]
    acked: dict[str, list[str]] = {}
    restarts = 0

    async def client(c: int) -> None:
        async with open_channel(target, common, token) as ch:
            stub = preference_pb2_grpc.PreferenceServiceStub(ch)
            for b in range(BATCHES):
                key = f"client{c}-batch{b:03d}"
                request = pb.SubmitComparisonsRequest(
                    idempotency_key=key,
                    comparisons=[
                        pb.Comparison(
                            context=pb.LabelContext(annotator_id="ann-1", guideline_version="g1"),
                            response_a_id=pairs[(b + k) % len(pairs)][0],
                            response_b_id=pairs[(b + k) % len(pairs)][1],
                            preference=pb.PREFERENCE_A,
                        )
                        for k in range(BATCH)
                    ],
                )
                deadline = time.monotonic() + 90
                while True:  # retry the same key until acknowledged
                    try:
                        resp = await stub.SubmitComparisons(request, timeout=5)
                        acked[key] = list(resp.ids)
                        break
                    except grpc.aio.AioRpcError as err:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{key} never acknowledged: {err.code()}") from err
                        await asyncio.sleep(0.1)

    async def killer() -> None:
        nonlocal proc, restarts
        for _ in range(2):
            while len(acked) < 8 * (restarts + 1):  # noqa: ASYNC110 - kill after some acks
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            restarts += 1
            proc = _start(env, log)

    try:
        await asyncio.gather(killer(), *(client(c) for c in range(CLIENTS)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return acked, restarts


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no PostgreSQL")),
    ],
)
def test_acknowledged_comparisons_survive_sigkill_exactly_once(
    tmp_path: Path, backend: str
) -> None:
    data = tmp_path / "data"
    common = CommonSettings(data_dir=data)
    generate_tokens(common.resolved_tokens_file)
    port, metrics = free_ports(2)
    url = f"sqlite:///{data / 'preference.db'}" if backend == "sqlite" else str(PG_URL)
    reset_tables(url, models.Base)
    env: dict[str, Any] = dict(os.environ)
    env.update(
        CLINALIGN_DATA_DIR=str(data),
        CLINALIGN_PREFERENCE_PORT=str(port),
        CLINALIGN_PREFERENCE_METRICS_PORT=str(metrics),
        CLINALIGN_PREFERENCE_DATABASE_URL=url,
        CLINALIGN_GRACE_PERIOD_S="1",
    )
    acked, restarts = asyncio.run(
        _scenario(env, common, f"127.0.0.1:{port}", tmp_path / "preference.log")
    )
    assert restarts == 2
    assert len(acked) == CLIENTS * BATCHES
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        stored = list(conn.scalars(select(models.ComparisonRow.id)))
        keys = conn.scalar(
            select(func.count())
            .select_from(models.IdempotencyRow)
            .where(models.IdempotencyRow.rpc == "submit_comparisons")
        )
    engine.dispose()
    acked_ids = [i for ids in acked.values() for i in ids]
    assert len(acked_ids) == len(set(acked_ids)) == CLIENTS * BATCHES * BATCH
    assert sorted(stored) == sorted(acked_ids)  # every acknowledged row, once, and no others
    assert keys == CLIENTS * BATCHES
