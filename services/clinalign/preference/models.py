"""Tables of the preference store (SQLAlchemy 2). Alembic migrations in
``clinalign/preference/migrations`` create them; ``Base.metadata`` is their source.

Every free-text column holds de-identified text only: the store's write path redacts
before it builds a row. Labels never change once written; snapshots copy the records they
contain, so an export is reproducible byte for byte whatever is written later.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AnnotatorRow(Base):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("subject", name="uq_annotators_subject"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    specialty: Mapped[str] = mapped_column(String(64), default="")
    # The principal (OIDC subject or static-token principal) this annotator is; at most
    # one annotator per subject.
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PromptRow(Base):
    __tablename__ = "prompts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    # SHA-256 of the de-identified text: the train/eval split and deduplication key.
    text_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ResponseRow(Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    generation_params: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelColumns:
    """What every label records: who, under which guidelines, when, and for which task."""

    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id"), index=True)
    guideline_version: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ComparisonRow(LabelColumns, Base):
    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_a_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_b_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    preference: Mapped[str] = mapped_column(String(4))  # a | b | tie
    strength: Mapped[float] = mapped_column(Float, default=1.0)
    # Set for implicit pairs derived from a correction.
    correction_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class RankingRow(LabelColumns, Base):
    __tablename__ = "rankings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_ids: Mapped[list[str]] = mapped_column(JSON)  # best first


class RatingRow(LabelColumns, Base):
    __tablename__ = "ratings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"), index=True)
    axis: Mapped[str] = mapped_column(String(16))
    score: Mapped[int] = mapped_column(Integer)


class CorrectionRow(LabelColumns, Base):
    __tablename__ = "corrections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"), index=True)
    # The corrected text is stored as a response of its own (model_version "human:<id>").
    corrected_response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    comment: Mapped[str] = mapped_column(Text, default="")


class ErrorAnnotationRow(LabelColumns, Base):
    __tablename__ = "error_annotations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"), index=True)
    category: Mapped[str] = mapped_column(String(32), index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    # low | moderate | high | critical, or "" when the annotator did not say (migration 0002)
    severity: Mapped[str] = mapped_column(String(16), default="", server_default="")
    # Character offsets [span_start, span_end) into the response's text that the error
    # concerns; both NULL: the whole response (and every row before migration 0006).
    span_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    span_end: Mapped[int | None] = mapped_column(Integer, nullable=True)


class IdempotencyRow(Base):
    """The result of every acknowledged batch, written in the batch's own transaction."""

    __tablename__ = "idempotency_keys"

    # "c:" + sha256(principal, key): each caller's keys are its own (older rows: the key)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    rpc: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(128))
    # sha256 of the request's content; "" for rows written before it was kept
    request_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    result: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GuidelineRow(Base):
    __tablename__ = "guidelines"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(64), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    response_ids: Mapped[list[str]] = mapped_column(JSON)
    overlap: Mapped[int] = mapped_column(Integer)
    guideline_version: Mapped[str] = mapped_column(ForeignKey("guidelines.version"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AssignmentRow(Base):
    """One annotator's turn at one task; unique per (task, annotator), so a task is never
    shown twice to the same person."""

    __tablename__ = "task_assignments"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # assigned | done | skipped
    label_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The task's response ids in the order the annotator was shown them when they labelled
    # it; NULL when not recorded (skips, older rows, clients that do not send it).
    presented_response_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class SnapshotRow(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    filter: Mapped[dict[str, object]] = mapped_column(JSON)
    manifest: Mapped[dict[str, object]] = mapped_column(JSON)
    train_pairs: Mapped[int] = mapped_column(Integer)
    eval_pairs: Mapped[int] = mapped_column(Integer)
    sft_records: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SnapshotRecordRow(Base):
    """A snapshot's canonical records, copied at creation: exports read only these."""

    __tablename__ = "snapshot_records"
    __table_args__ = (Index("ix_snapshot_records_order", "snapshot_id", "kind", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.id"))
    kind: Mapped[str] = mapped_column(String(16))  # preference | sft
    seq: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))  # train | eval
    record: Mapped[str] = mapped_column(Text)  # canonical JSON


class AuditRow(Base):
    """Append-only, hash-chained: entry_hash = HMAC-SHA256(key, prev_hash + canonical
    entry) (plain SHA-256 for entries written before keying)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    # The audit key the entry's HMAC used; "" for entries written before the chain was keyed.
    key_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    entry_hash: Mapped[str] = mapped_column(String(64))
