"""Training jobs: their rows, their state machine and the queries the servicer, the
executor and the worker share.

A job is ``queued → running → succeeded | failed | cancelled`` (or ``queued → cancelled |
failed``); every other move is refused, so a worker that finishes after its job was
cancelled cannot overwrite the cancellation. Progress (step, total steps, metrics) is
appended to ``job_events`` as the worker logs it; the job row carries the latest values.
Both live in the trainer's database, so the worker process and the servicer's WatchJob
see the same history. The tables join the registry's schema (``registry.Base``), which
the trainer's Alembic migrations (``clinalign/trainer/migrations``) create and upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.trainer.registry.versions import Base

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
_MOVES: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
}
RESTARTED_REASON = "trainer restarted and the job's process had exited"


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    executor: Mapped[str] = mapped_column(String(16))
    # NULL for jobs without one; a unique index admits many NULLs on SQLite and PostgreSQL.
    idempotency_key: Mapped[str | None] = mapped_column(String(256), unique=True)
    spec_json: Mapped[str] = mapped_column(Text)
    # What the spec resolved to at submission (base model directory, parent version,
    # hyperparameters), so the run does not depend on what is served when it starts.
    inputs_json: Mapped[str] = mapped_column(Text, default="{}")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    report_uri: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobEventRow(Base):
    """Append-only log of a job's progress: one row per logged step or state change."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer, default=0)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Job:
    """A job as the servicer shows it; ``spec`` is the JobSpec in protobuf JSON form."""

    id: str
    kind: str
    state: str
    executor: str
    spec: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    failure_reason: str = ""
    model_version: str = ""
    report_uri: str = ""
    pid: int | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            state=row.state,
            executor=row.executor,
            spec=json.loads(row.spec_json),
            inputs=json.loads(row.inputs_json),
            step=row.step,
            total_steps=row.total_steps,
            metrics=json.loads(row.metrics_json),
            failure_reason=row.failure_reason,
            model_version=row.model_version,
            report_uri=row.report_uri,
            pid=row.pid,
            created_at=row.created_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
        )


@dataclass(frozen=True)
class JobEvent:
    id: int
    state: str
    step: int
    metrics: dict[str, float]


def scoped_key(caller: str, key: str) -> str:
    """The stored idempotency key: the caller's key in the caller's own namespace."""
    return "c:" + hashlib.sha256(f"{caller}\x00{key}".encode()).hexdigest()


def find_by_key(session: Session, idempotency_key: str, spec: dict[str, Any]) -> Job | None:
    """The job an earlier submission with this key created; the key used with another
    spec is refused."""
    row = session.scalar(select(JobRow).where(JobRow.idempotency_key == idempotency_key))
    if row is None:
        return None
    _same_spec(row, spec)
    return Job.from_row(row)


def _same_spec(row: JobRow, spec: dict[str, Any]) -> None:
    if row.spec_json != json.dumps(spec, sort_keys=True):
        raise InvalidArgument(
            "idempotency_key",
            f"was already used for job {row.id} with another spec; use a fresh key",
        )


def submit(
    session: Session,
    kind: str,
    executor: str,
    spec: dict[str, Any],
    inputs: dict[str, Any],
    idempotency_key: str,
) -> tuple[Job, bool]:
    """Persists a new QUEUED job, or returns the job of a repeated idempotency key;
    ``(job, replayed)``."""
    if idempotency_key:
        existing = session.scalar(select(JobRow).where(JobRow.idempotency_key == idempotency_key))
        if existing is not None:
            _same_spec(existing, spec)
            return Job.from_row(existing), True
    now = datetime.now(UTC)
    row = JobRow(
        id=f"job-{uuid.uuid4().hex[:16]}",
        kind=kind,
        state=QUEUED,
        executor=executor,
        idempotency_key=idempotency_key or None,
        spec_json=json.dumps(spec, sort_keys=True),
        inputs_json=json.dumps(inputs, sort_keys=True),
        step=0,
        total_steps=0,
        metrics_json="{}",
        failure_reason="",
        model_version="",
        report_uri="",
        created_at=now,
    )
    session.add(row)
    session.add(JobEventRow(job_id=row.id, state=QUEUED, step=0, metrics_json="{}", at=now))
    session.flush()
    return Job.from_row(row), False


def _row(session: Session, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFound("job", job_id, field="id")
    return row


def get(session: Session, job_id: str) -> Job:
    return Job.from_row(_row(session, job_id))


def list_jobs(
    session: Session, states: list[str], kinds: list[str], limit: int, offset: int
) -> list[Job]:
    query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc())
    if states:
        query = query.where(JobRow.state.in_(states))
    if kinds:
        query = query.where(JobRow.kind.in_(kinds))
    return [Job.from_row(r) for r in session.scalars(query.limit(limit).offset(offset))]


def transition(session: Session, job_id: str, to: str, **values: Any) -> Job:
    """Moves a job to state ``to`` and sets ``values`` (columns) with it; refuses a move
    the state machine does not allow with FAILED_PRECONDITION."""
    row = _row(session, job_id)
    if to not in _MOVES.get(row.state, frozenset()):
        raise FailedPrecondition(f"job {job_id} is {row.state}; it cannot become {to}")
    now = datetime.now(UTC)
    row.state = to
    if to == RUNNING:
        row.started_at = now
    if to in TERMINAL:
        row.ended_at = now
    if "metrics" in values:
        row.metrics_json = json.dumps(values.pop("metrics"))
    for name, value in values.items():
        setattr(row, name, value)
    session.add(JobEventRow(job_id=job_id, state=to, step=row.step, metrics_json="{}", at=now))
    session.flush()
    return Job.from_row(row)


def record_progress(
    session: Session, job_id: str, step: int, total_steps: int, metrics: dict[str, float]
) -> bool:
    """Logs a step of a running job; False when the job is no longer running (cancelled),
    which tells the worker to stop."""
    row = _row(session, job_id)
    if row.state != RUNNING:
        return False
    row.step, row.total_steps = step, total_steps
    row.metrics_json = json.dumps({**json.loads(row.metrics_json), **metrics})
    session.add(
        JobEventRow(
            job_id=job_id,
            state=RUNNING,
            step=step,
            metrics_json=json.dumps(metrics),
            at=datetime.now(UTC),
        )
    )
    return True


def events_after(session: Session, job_id: str, after: int) -> list[JobEvent]:
    rows = session.scalars(
        select(JobEventRow)
        .where(JobEventRow.job_id == job_id, JobEventRow.id > after)
        .order_by(JobEventRow.id)
    )
    return [JobEvent(r.id, r.state, r.step, json.loads(r.metrics_json)) for r in rows]


def in_state(session: Session, state: str, executor: str) -> list[Job]:
    """Jobs of one executor in one state, oldest first (the queue order)."""
    rows = session.scalars(
        select(JobRow)
        .where(JobRow.state == state, JobRow.executor == executor)
        .order_by(JobRow.created_at, JobRow.id)
    )
    return [Job.from_row(r) for r in rows]


def count_running(session: Session, executor: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.state == RUNNING, JobRow.executor == executor)
        )
        or 0
    )


def last_event_id(session: Session, job_id: str) -> int:
    return int(
        session.scalar(select(func.max(JobEventRow.id)).where(JobEventRow.job_id == job_id)) or 0
    )


async def watch(
    db: Database, job_id: str, poll_s: float
) -> AsyncIterator[tuple[Job, dict[str, float]]]:
    """(job, metrics logged at this update): the job as it is now, then one update per
    logged step or state change, until the job ends. It polls the store, so it follows a
    worker in another process."""

    def first(session: Session) -> tuple[Job, int]:
        return get(session, job_id), last_event_id(session, job_id)

    def since(after: int) -> Callable[[Session], tuple[Job, list[JobEvent]]]:
        # Events first: a read does not hold one snapshot of the store, so the job read after
        # them is at least as new as the last of them (read before them, a job that ended in
        # between would be reported as still running, and the end never).
        def read(session: Session) -> tuple[Job, list[JobEvent]]:
            events = events_after(session, job_id, after)
            return get(session, job_id), events

        return read

    job, last = await db.run_sync(first)
    yield job, {}
    shown = job.state
    while job.state not in TERMINAL:
        await asyncio.sleep(poll_s)
        job, events = await db.run_sync(since(last))
        for i, event in enumerate(events):
            last = event.id
            as_of = (
                job if i == len(events) - 1 else replace(job, state=event.state, step=event.step)
            )
            shown = as_of.state
            yield as_of, event.metrics
    if shown != job.state:  # the watch never ends on a state other than the job's last
        yield job, {}
