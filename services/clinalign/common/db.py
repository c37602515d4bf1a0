"""SQLAlchemy engines for the services' stores: SQLite (WAL) as the embedded default,
PostgreSQL in production. Database work runs in worker threads via ``run_sync`` so the
asyncio loop that serves RPCs never blocks on I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

T = TypeVar("T")


def default_sqlite_url(data_dir: Path, name: str) -> str:
    return f"sqlite:///{(data_dir / f'{name}.db').resolve()}"


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
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """An engine, a session factory and a helper to run blocking work off the loop."""

    def __init__(self, url: str, base: type[DeclarativeBase]) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._base = base

    def create_schema(self) -> None:
        self._base.metadata.create_all(self.engine)

    async def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Runs ``fn(session)`` in a worker thread inside one transaction."""

        def work() -> T:
            with self.sessions.begin() as session:
                return fn(session)

        return await asyncio.to_thread(work)

    def dispose(self) -> None:
        self.engine.dispose()
