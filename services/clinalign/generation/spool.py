"""The generation service's outbox toward the monitor: a bounded, durable FIFO of production
outputs in a SQLite file (WAL, ``synchronous=FULL``), so an output the service answered is
delivered after a monitor outage or a restart of the service.

An output is written before the Generate call that produced it returns; it leaves the spool
only once the monitor acknowledged the batch holding it. Delivery is at least once (a crash
between the monitor's commit and the acknowledgement here resends a batch), and the monitor
records each ``output_id`` once, so each output is recorded exactly once. Past ``capacity``
outputs, the newest is dropped and counted, never waited for.

``path`` None keeps the spool in memory: bounded and ordered, not durable (tests, and a
process that reports nowhere it must not lose)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    trace TEXT NOT NULL DEFAULT ''
)
"""

Item = tuple[int, bytes, str]  # (position, serialized ProductionOutput, traceparent)


class OutputSpool:
    def __init__(self, path: Path | None, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,  # explicit transactions below
            timeout=30,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()  # one connection, used from worker threads in turn
        self._size = self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        return self._size

    def put(self, payload: bytes, trace: str = "") -> bool:
        """Appends an output durably; False (nothing written) when the spool is full."""
        with self._lock:
            if self._size >= self.capacity:
                return False
            self._db.execute("INSERT INTO outbox (payload, trace) VALUES (?, ?)", (payload, trace))
            self._size += 1
            return True

    def peek(self, n: int) -> list[Item]:
        """The oldest ``n`` outputs, oldest first, left in the spool."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload, trace FROM outbox ORDER BY id LIMIT ?", (n,)
            ).fetchall()
        return [(int(i), bytes(p), str(t)) for i, p, t in rows]

    def ack(self, ids: list[int]) -> None:
        """Removes delivered outputs."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")
            self._size = self._count()

    def close(self) -> None:
        with self._lock:
            self._db.close()
