"""Shared fixtures: a tiny model built in seconds, tokens, databases (SQLite always,
PostgreSQL when CLINALIGN_TEST_DATABASE_URL is set), and in-process servers on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase

from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings, ServiceSettings
from clinalign.common.oidc import authenticator_from
from clinalign.common.server import RunningServer, ServiceApp, create_server
from clinalign.monitor import store as monitor_store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp

PG_URL = os.environ.get("CLINALIGN_TEST_DATABASE_URL")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open together, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http_ok(url: str, timeout_s: float, procs: Sequence[Any] = ()) -> None:
    """Waits until ``url`` answers 200 (a front door's /healthz); raises RuntimeError when
    ``timeout_s`` passes or one of ``procs`` (subprocesses serving it) has exited."""
    import httpx2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test gets an empty default data directory, not the checkout's ``.clinalign``:
    a demo run there leaves audit keys, anchors and tokens that the commands under test
    would otherwise pick up."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLINALIGN_DATA_DIR", str(tmp_path_factory.mktemp("default-data")))
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama causal LM with the project's tokenizer and chat template (seconds)."""
    from clinalign.foundation import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_model(out)
    return out


@pytest.fixture(scope="session")
def tiny_cost_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained cost head (every label of ``cost_format.LABELS``) on the tiny model,
    with its labels file: what a cost_model job writes, without the training."""
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from clinalign.common.cost_format import COST_FILE, HARM, LABELS

    out = tmp_path_factory.mktemp("models") / "tiny-cost"
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=len(LABELS), problem_type="multi_label_classification"
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / COST_FILE).write_text(json.dumps({"labels": list(LABELS), "cost_label": HARM}))
    return out


@pytest.fixture(scope="session")
def tiny_reward_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequence-classification head on the tiny model: an untrained reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("models") / "tiny-reward"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def common(tmp_path: Path) -> CommonSettings:
    """Settings for one test: its own data dir and tokens file."""
    settings = CommonSettings(data_dir=tmp_path / "data")
    generate_tokens(settings.resolved_tokens_file)
    return settings


@pytest.fixture
def token(common: CommonSettings) -> Callable[[Role], str]:
    return lambda role: token_for_role(common.resolved_tokens_file, role)


def _database_params() -> list[Any]:
    params: list[Any] = ["sqlite"]
    params.append(
        pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no PostgreSQL"))
    )
    return params


@pytest.fixture(params=_database_params())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each DB-backed test runs on SQLite and, in CI, on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    assert PG_URL is not None
    yield PG_URL


def reset_tables(url: str, base: type[DeclarativeBase]) -> None:
    """Empties a PostgreSQL test database's tables for one service's schema, with the
    service's Alembic version table, so the next start migrates from nothing."""
    if url.startswith("sqlite"):
        return
    tables = base.metadata.tables
    service = (
        "trainer"
        if "model_versions" in tables
        else "monitor"
        if "outputs" in tables
        else "preference"
    )
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS alembic_version_{service}"))
    engine.dispose()


def monitor_app(common: CommonSettings, url: str, **settings: Any) -> MonitorApp:
    """A monitor on a fresh ``url`` database (a PostgreSQL one emptied first)."""
    reset_tables(url, monitor_store.Base)
    return MonitorApp(common, MonitorSettings(port=0, database_url=url, **settings))


async def rpc_fails(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a gRPC call ends with; the test fails if the call succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


@asynccontextmanager
async def serving(
    app: ServiceApp,
    common: CommonSettings,
    settings: ServiceSettings | None = None,
    *,
    port: int = 0,
) -> AsyncIterator[RunningServer]:
    """Starts an app on a loopback port (a free one unless given), runs its start-up, stops
    it afterwards."""
    settings = settings or ServiceSettings(port=0, metrics_port=0)
    settings = settings.model_copy(update={"port": port})
    running = await create_server(app, common, settings, authenticator_from(common))
    try:
        await running.start_app()
        yield running
    finally:
        await running.stop(0)


def client(running: RunningServer, common: CommonSettings, token: str | None) -> grpc.aio.Channel:
    return open_channel(f"127.0.0.1:{running.port}", common, token)


@pytest.fixture
def trainer_db(tmp_path: Path) -> Iterator[Any]:
    """The trainer's store (jobs, registry) in a fresh SQLite file, migrated as the service
    migrates it."""
    from clinalign.common.db import Database
    from clinalign.trainer.registry import versions as registry
    from clinalign.trainer.server import MIGRATIONS

    database = Database(f"sqlite:///{tmp_path / 'trainer.db'}", registry.Base, MIGRATIONS)
    database.create_schema()
    yield database
    database.dispose()


def serve_in_registry(common: CommonSettings, version: str, canary_share: float = 0.0) -> None:
    """Records a passing gate decision for ``version`` in the trainer's registry (its
    SQLite store under the data directory), so it serves (or is the canary): the stand-in
    for a gate run in tests of serving, whose gate is tested on its own
    (test_promotion, test_policy_promotion)."""
    from clinalign.common.db import Database, default_sqlite_url
    from clinalign.trainer.registry import versions as registry

    db = Database(default_sqlite_url(common.data_dir, "trainer"), registry.Base)
    try:
        with db.sessions.begin() as session:
            registry.Registry(common.data_dir / "registry").decide(
                session,
                version,
                True,
                [{"name": "test-stand-in", "passed": True, "message": "tests of serving"}],
                "test",
                canary_share=canary_share,
                reason="test",
            )
    finally:
        db.dispose()


@asynccontextmanager
async def serving_http(
    app: Any, port: int, tls: dict[str, Path] | None = None, what: str = "the server"
) -> AsyncIterator[None]:
    """Serves an ASGI app (a front door) with uvicorn on a loopback port, in a thread and
    an event loop of its own (HTTPS with ``tls``'s tls.crt and tls.key), until the block
    ends."""
    import threading

    import uvicorn

    class Quiet(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # a thread cannot take signals
            pass

    tls_files = (
        {"ssl_certfile": str(tls["tls.crt"]), "ssl_keyfile": str(tls["tls.key"])} if tls else {}
    )
    server = Quiet(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            **tls_files,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
