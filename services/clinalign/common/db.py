"""SQLAlchemy engines for the services' stores: SQLite (WAL) as the embedded default,
PostgreSQL in production. Database work runs in worker threads via ``run_sync`` so the
asyncio loop that serves RPCs never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

T = TypeVar("T")


def default_sqlite_url(data_dir: Path, name: str) -> str:
    return f"sqlite:///{(data_dir / f'{name}.db').resolve()}"


def sqlalchemy_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use the psycopg 3 driver."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(url: str) -> Engine:
    """An engine with durable, concurrent-friendly settings for its backend."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; synchronous=FULL makes a commit
            # durable before it returns, which is when a write is acknowledged.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """An engine, a session factory and a helper to run blocking work off the loop."""

    def __init__(
        self,
        url: str,
        base: type[DeclarativeBase],
        migrations: Path | None = None,
        *,
        baseline_table: str = "",
    ) -> None:
        self.url = url
        self._migrations = migrations
        self._baseline_table = baseline_table
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._base = base
        # SQLite allows one writer; taking turns in-process avoids its busy errors (a
        # deferred transaction that read first cannot upgrade once another wrote).
        self._write_lock = threading.Lock() if url.startswith("sqlite") else None

    def create_schema(self) -> None:
        """Alembic migrations where the service has them (``clinalign.common.migrations``),
        else the models' tables (stores of tests and tools)."""
        if self._migrations is not None:
            from clinalign.common.migrations import migrate, version_table

            migrate(
                self.engine,
                self._migrations,
                version_table(self._migrations.parent.name),
                baseline_table=self._baseline_table,
            )
        else:
            self._base.metadata.create_all(self.engine)

    async def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Runs ``fn(session)`` in a worker thread inside one transaction."""

        def work() -> T:
            with self.sessions.begin() as session:
                return fn(session)

        return await asyncio.to_thread(work)

    async def run_write(self, fn: Callable[[Session], T], *, retries: int = 1) -> T:
        """Runs a write transaction; on a uniqueness race (two callers, one idempotency
        key) it runs once more, when ``fn`` finds the winner's result and replays it."""

        def work() -> T:
            for attempt in range(retries + 1):
                try:
                    if self._write_lock is None:
                        with self.sessions.begin() as session:
                            return fn(session)
                    with self._write_lock, self.sessions.begin() as session:
                        return fn(session)
                except IntegrityError:
                    if attempt == retries:
                        raise
            raise AssertionError("unreachable")

        return await asyncio.to_thread(work)

    def dispose(self) -> None:
        self.engine.dispose()
