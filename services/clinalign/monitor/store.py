"""The monitor's store of production outputs.

Until the shared de-identification lands (preference-store issue), only an output's
metadata is stored: id, model version, template version, latency, token count, reward
score and time. Prompt and output text are dropped at the door rather than written raw.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, Integer, String, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class OutputRow(Base):
    __tablename__ = "outputs"

    output_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    prompt_template_version: Mapped[str] = mapped_column(String(64), default="")
    latency_s: Mapped[float] = mapped_column(Float)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reward_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class OutputRecord:
    output_id: str
    model_version: str
    prompt_template_version: str
    latency_s: float
    completion_tokens: int
    reward_score: float | None
    created_at: datetime


@dataclass(frozen=True)
class VersionStats:
    model_version: str
    outputs: int
    latency: list[float]
    reward_scores: list[float]


def record_outputs(session: Session, records: list[OutputRecord]) -> tuple[int, int]:
    """Inserts outputs, skipping ids already stored; returns (recorded, duplicates)."""
    if not records:
        return 0, 0
    now = datetime.now(UTC)
    rows = [
        {
            "output_id": r.output_id,
            "model_version": r.model_version,
            "prompt_template_version": r.prompt_template_version,
            "latency_s": r.latency_s,
            "completion_tokens": r.completion_tokens,
            "reward_score": r.reward_score,
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
        .returning(OutputRow.output_id)
    )
    # RETURNING lists the rows actually inserted; rowcount is unreliable for multi-row
    # inserts across drivers.
    recorded = len(session.execute(stmt).all())
    return recorded, len(records) - recorded


def version_stats(
    session: Session, model_version: str | None, start: datetime, end: datetime
) -> list[VersionStats]:
    query = select(OutputRow.model_version, OutputRow.latency_s, OutputRow.reward_score).where(
        OutputRow.created_at >= start, OutputRow.created_at < end
    )
    if model_version:
        query = query.where(OutputRow.model_version == model_version)
    by_version: dict[str, tuple[list[float], list[float]]] = {}
    for version, latency, score in session.execute(query):
        lat, scores = by_version.setdefault(version, ([], []))
        lat.append(latency)
        if score is not None:
            scores.append(score)
    return [
        VersionStats(v, len(lat), lat, scores) for v, (lat, scores) in sorted(by_version.items())
    ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
