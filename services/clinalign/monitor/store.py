"""The monitor's store: production outputs (text de-identified), clinician flags, the
outcomes clinicians' workflows report (accepted, overridden), each version's drift
baseline, the feedback state of confirmed flags, and retraining runs with their steps and
trigger keys.

Alembic migrations in ``clinalign/monitor/migrations`` create and upgrade the tables
(``Base.metadata`` is their source); the baseline revision is the schema that releases
before them created with ``create_all``.

Baseline: a version's first ``baseline_outputs`` outputs by generation time are marked
``in_baseline`` once the version has that many (``freeze_baselines``, run with every
RecordOutputs batch), and stay marked: outputs arriving later with an earlier time do not
join it. Retention (``purge_expired``) deletes outputs older than the cut-off with their
flags and outcomes, except baseline outputs, whose text it erases but whose scores and
latency it keeps, so a version's drift reference outlives the retention period. Statistics
over a window are ``clinalign.monitor.stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Result
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

Redactor = Callable[[str], str]


class Base(DeclarativeBase):
    pass


class OutputRow(Base):
    __tablename__ = "outputs"
    # each cost model's first scoring time (stats.cost_verdicts), migration 0005
    __table_args__ = (
        Index("ix_outputs_cost_model_version_scored_at", "cost_model_version", "scored_at"),
    )

    output_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    prompt_template_version: Mapped[str] = mapped_column(String(64), default="")
    # The drafting task ("summary", "free_text", ...); "" from older reporters (0003).
    task: Mapped[str] = mapped_column(String(64), default="", index=True)
    # De-identified text; NULL once retention has erased a baseline output's text.
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_s: Mapped[float] = mapped_column(Float)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reward_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The served cost model's probability of harm, and which versions scored it; filled
    # by the monitor's scoring task (``scoring``), or at once when the caller sent a score.
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)  # migration 0002
    reward_model_version: Mapped[str] = mapped_column(String(64), default="")
    cost_model_version: Mapped[str] = mapped_column(String(64), default="")
    scored_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    score_attempts: Mapped[int] = mapped_column(Integer, default=0)
    in_baseline: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FlagRow(Base):
    __tablename__ = "flags"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    output_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("outputs.output_id", ondelete="CASCADE"), index=True
    )
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[int] = mapped_column(Integer)  # clinalign.common.v1.ErrorCategory
    severity: Mapped[int] = mapped_column(Integer)  # clinalign.monitor.v1.Severity
    comment: Mapped[str] = mapped_column(Text, default="")
    corrected_text: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer, index=True)  # FlagStatus
    flagged_by: Mapped[str] = mapped_column(String(128))
    resolved_by: Mapped[str] = mapped_column(String(128), default="")
    resolution_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OutcomeRow(Base):
    """What a clinician did with an output in their workflow (RecordOutcome): ``outcome``
    is an ``Outcome`` number. (output, outcome, outcome time) is unique, so a reported
    outcome retried is stored once."""

    __tablename__ = "outcomes"
    __table_args__ = (UniqueConstraint("output_id", "outcome", "outcome_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    output_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("outputs.output_id", ondelete="CASCADE"), index=True
    )
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[int] = mapped_column(Integer)
    outcome_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(128))
    recorded_by: Mapped[str] = mapped_column(String(128))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BaselineRow(Base):
    """A version whose baseline is complete (its outputs carry ``in_baseline``)."""

    __tablename__ = "baselines"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    outputs: Mapped[int] = mapped_column(Integer)
    frozen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FeedbackRow(Base):
    """What a confirmed flag sent to the preference store (``clinalign.monitor.feedback``).

    Written with the confirmation, in its transaction, as ``pending``; a delivery round
    fills in the ids it gets back step by step and ends it ``delivered``, or ``failed``
    with the reason (retried in later rounds). ``run_id`` names the retraining run whose
    snapshot first included it: the flags behind a snapshot, for lineage."""

    __tablename__ = "flag_feedback"

    flag_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("flags.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|delivered|failed
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    annotator_id: Mapped[str] = mapped_column(String(64), default="")
    prompt_id: Mapped[str] = mapped_column(String(64), default="")
    response_id: Mapped[str] = mapped_column(String(64), default="")  # the flagged output
    candidate_ids: Mapped[str] = mapped_column(Text, default="")  # comma-separated
    correction_id: Mapped[str] = mapped_column(String(64), default="")
    task_ids: Mapped[str] = mapped_column(Text, default="")  # comma-separated
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    run_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class RunRow(Base):
    """A retraining run. ``running`` is "1" while the run is RUNNING and NULL otherwise;
    its unique constraint lets the database, not a lock in one process, hold the rule that
    only one run is RUNNING (NULLs never collide in SQLite or PostgreSQL)."""

    __tablename__ = "retraining_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    trigger: Mapped[str] = mapped_column(Text)
    state: Mapped[int] = mapped_column(Integer, index=True)  # RunState
    running: Mapped[str | None] = mapped_column(String(1), nullable=True, unique=True)
    snapshot_id: Mapped[str] = mapped_column(String(64), default="")
    snapshot_hash: Mapped[str] = mapped_column(String(64), default="", index=True)
    pairs: Mapped[int] = mapped_column(Integer, default=0)
    served_policy: Mapped[str] = mapped_column(String(64), default="")
    reward_version: Mapped[str] = mapped_column(String(64), default="")
    policy_version: Mapped[str] = mapped_column(String(64), default="")
    promoted_version: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RunStepRow(Base):
    """One finished step of a run; (run, name) is unique, so a step is recorded once."""

    __tablename__ = "retraining_run_steps"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("retraining_runs.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    ref: Mapped[str] = mapped_column(String(128), default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunTriggerRow(Base):
    """A trigger key that started a run. The primary key makes a second run for the same
    trigger impossible, even for two monitors evaluating at once."""

    __tablename__ = "retraining_triggers"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("retraining_runs.id", ondelete="CASCADE"), index=True
    )


@dataclass(frozen=True)
class OutputRecord:
    output_id: str
    model_version: str
    prompt_template_version: str
    latency_s: float
    completion_tokens: int
    reward_score: float | None
    created_at: datetime
    prompt: str = ""
    text: str = ""
    task: str = ""


def utc(when: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time the monitor stores is UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def record_outputs(
    session: Session, records: Sequence[OutputRecord], redact: Redactor, baseline_outputs: int
) -> tuple[dict[str, int], int]:
    """Inserts outputs with their text de-identified, skipping ids already stored, and
    freezes the baselines the batch completes; returns (outputs recorded per version,
    duplicates). One transaction: a failure leaves nothing written."""
    if not records:
        return {}, 0
    now = datetime.now(UTC)
    rows = [
        {
            "output_id": r.output_id,
            "model_version": r.model_version,
            "prompt_template_version": r.prompt_template_version,
            "task": r.task,
            "prompt": redact(r.prompt),
            "text": redact(r.text),
            "latency_s": r.latency_s,
            "completion_tokens": r.completion_tokens,
            "reward_score": r.reward_score,
            "scored_at": now if r.reward_score is not None else None,
            "in_baseline": False,
            "created_at": r.created_at,
            "recorded_at": now,
        }
        for r in records
    ]
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(OutputRow)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["output_id"])
        .returning(OutputRow.model_version)
    )
    # RETURNING lists the rows actually inserted; rowcount is unreliable for multi-row
    # inserts across drivers.
    recorded: dict[str, int] = {}
    for (version,) in session.execute(stmt):
        recorded[version] = recorded.get(version, 0) + 1
    freeze_baselines(session, {r.model_version for r in records}, baseline_outputs)
    return recorded, len(records) - sum(recorded.values())


@dataclass(frozen=True)
class OutputScore:
    """What the reward service said of one output: its reward and, when a cost model
    serves, its probability of harm."""

    output_id: str
    reward: float
    reward_model_version: str
    cost: float | None = None
    cost_model_version: str = ""


def unscored(session: Session, limit: int, max_attempts: int) -> list[tuple[str, str, str]]:
    """(output id, prompt, text) of the oldest outputs not scored yet, whose text is kept,
    that fewer than ``max_attempts`` scoring attempts have failed on."""
    rows = session.execute(
        select(OutputRow.output_id, OutputRow.prompt, OutputRow.text)
        .where(
            OutputRow.scored_at.is_(None),
            OutputRow.text.is_not(None),
            OutputRow.score_attempts < max_attempts,
        )
        .order_by(OutputRow.created_at)
        .limit(limit)
    )
    return [(i, p or "", t or "") for i, p, t in rows]


def record_scores(session: Session, scores: Sequence[OutputScore]) -> None:
    now = datetime.now(UTC)
    for score in scores:
        session.execute(
            update(OutputRow)
            .where(OutputRow.output_id == score.output_id)
            .values(
                reward_score=score.reward,
                reward_model_version=score.reward_model_version,
                cost=score.cost,
                cost_model_version=score.cost_model_version,
                scored_at=now,
            )
        )


def count_score_failures(session: Session, output_ids: Sequence[str]) -> None:
    """One more failed scoring attempt on each output (the reward service refused it)."""
    session.execute(
        update(OutputRow)
        .where(OutputRow.output_id.in_(output_ids))
        .values(score_attempts=OutputRow.score_attempts + 1)
    )


def freeze_baselines(session: Session, versions: set[str], baseline_outputs: int) -> list[str]:
    """Marks the first ``baseline_outputs`` outputs (by time, then id) of each version that
    has reached that many and has no baseline yet; returns the versions frozen."""
    frozen = set(
        session.scalars(
            select(BaselineRow.model_version).where(BaselineRow.model_version.in_(versions))
        )
    )
    done = []
    for version in sorted(versions - frozen):
        count = session.scalar(
            select(func.count()).select_from(OutputRow).where(OutputRow.model_version == version)
        )
        if (count or 0) < baseline_outputs:
            continue
        first = (
            select(OutputRow.output_id)
            .where(OutputRow.model_version == version)
            .order_by(OutputRow.created_at, OutputRow.output_id)
            .limit(baseline_outputs)
        )
        ids = list(session.scalars(first))
        session.execute(
            update(OutputRow).where(OutputRow.output_id.in_(ids)).values(in_baseline=True)
        )
        session.add(
            BaselineRow(model_version=version, outputs=len(ids), frozen_at=datetime.now(UTC))
        )
        done.append(version)
    return done


def get_output(session: Session, output_id: str) -> OutputRow | None:
    return session.get(OutputRow, output_id)


def purge_expired(session: Session, cutoff: datetime) -> tuple[int, int]:
    """Retention: deletes outputs generated before ``cutoff``, their flags and outcomes;
    erases the text of baseline outputs that old but keeps their figures. Returns (deleted,
    erased)."""
    old = select(OutputRow.output_id).where(
        OutputRow.created_at < cutoff, OutputRow.in_baseline.is_(False)
    )
    # Flags and outcomes first and explicitly: SQLite enforces ON DELETE CASCADE only with
    # its pragma.
    old_flags = select(FlagRow.id).where(FlagRow.output_id.in_(old))
    session.execute(delete(FeedbackRow).where(FeedbackRow.flag_id.in_(old_flags)))
    session.execute(delete(FlagRow).where(FlagRow.output_id.in_(old)))
    session.execute(delete(OutcomeRow).where(OutcomeRow.output_id.in_(old)))
    deleted = _rowcount(
        session.execute(
            delete(OutputRow).where(OutputRow.created_at < cutoff, OutputRow.in_baseline.is_(False))
        )
    )
    erased = _rowcount(
        session.execute(
            update(OutputRow)
            .where(
                OutputRow.created_at < cutoff,
                OutputRow.in_baseline.is_(True),
                OutputRow.text.is_not(None),
            )
            .values(prompt=None, text=None)
        )
    )
    return deleted, erased


def _rowcount(result: Result[Any]) -> int:
    """Rows a DELETE or UPDATE touched (its result is a ``CursorResult``)."""
    return int(getattr(result, "rowcount", 0) or 0)
