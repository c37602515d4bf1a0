"""Clinician flags on production outputs: create, list for review, resolve, and list the
confirmed ones for the promotion gate to replay.

Statuses, categories and severities are stored as their protobuf enum numbers
(``FlagStatus``, ``clinalign.common.v1.ErrorCategory``, ``Severity``); the servicer
validates them before they get here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, func, select, update
from sqlalchemy.orm import Session

from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.monitor.store import FlagRow, OutputRow, Redactor
from clinalign.monitor.v1 import monitor_pb2 as pb

OPEN = pb.FLAG_STATUS_OPEN
CONFIRMED = pb.FLAG_STATUS_CONFIRMED
DISMISSED = pb.FLAG_STATUS_DISMISSED


@dataclass(frozen=True)
class NewFlag:
    output_id: str
    category: int
    severity: int
    comment: str
    corrected_text: str


@dataclass(frozen=True)
class Filter:
    status: int = 0
    category: int = 0
    model_version: str = ""
    min_severity: int = 0


def create(session: Session, flag: NewFlag, redact: Redactor, flagged_by: str) -> FlagRow:
    """Stores a flag, comment and correction de-identified; NOT_FOUND for an unknown
    output."""
    output = session.get(OutputRow, flag.output_id)
    if output is None:
        raise NotFound("output", flag.output_id, field="output_id")
    row = FlagRow(
        id=f"flag_{uuid.uuid4().hex}",
        output_id=flag.output_id,
        model_version=output.model_version,
        category=flag.category,
        severity=flag.severity,
        comment=redact(flag.comment) if flag.comment else "",
        corrected_text=redact(flag.corrected_text) if flag.corrected_text else "",
        status=OPEN,
        flagged_by=flagged_by,
        resolved_by="",
        resolution_reason="",
        created_at=datetime.now(UTC),
        resolved_at=None,
    )
    session.add(row)
    session.flush()
    return row


def list_flags(session: Session, f: Filter, limit: int, offset: int) -> list[FlagRow]:
    """Flags matching the filter, highest severity first, then oldest, then by id."""
    query = select(FlagRow)
    if f.status:
        query = query.where(FlagRow.status == f.status)
    if f.category:
        query = query.where(FlagRow.category == f.category)
    if f.model_version:
        query = query.where(FlagRow.model_version == f.model_version)
    if f.min_severity:
        query = query.where(FlagRow.severity >= f.min_severity)
    query = query.order_by(FlagRow.severity.desc(), FlagRow.created_at, FlagRow.id)
    return list(session.scalars(query.limit(limit).offset(offset)))


@dataclass(frozen=True)
class ReplayCase:
    """A confirmed flag with its output's de-identified prompt and text, as stored."""

    flag_id: str
    category: int
    severity: int
    prompt: str
    flagged_text: str
    corrected_text: str
    model_version: str


def _confirmed_at_least(min_severity: int) -> tuple[ColumnElement[bool], ...]:
    return (FlagRow.status == CONFIRMED, FlagRow.severity >= min_severity)


def replay_cases(session: Session, min_severity: int, limit: int, offset: int) -> list[ReplayCase]:
    """Confirmed flags at or above ``min_severity`` whose output still has its prompt text,
    highest severity first, then oldest, then by id."""
    query = (
        select(FlagRow, OutputRow.prompt, OutputRow.text)
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(*_confirmed_at_least(min_severity), OutputRow.prompt.is_not(None))
        .order_by(FlagRow.severity.desc(), FlagRow.created_at, FlagRow.id)
        .limit(limit)
        .offset(offset)
    )
    return [
        ReplayCase(
            flag_id=flag.id,
            category=flag.category,
            severity=flag.severity,
            prompt=prompt or "",  # never NULL here: the query keeps only stored prompts
            flagged_text=text or "",
            corrected_text=flag.corrected_text,
            model_version=flag.model_version,
        )
        for flag, prompt, text in session.execute(query)
    ]


def count_purged(session: Session, min_severity: int) -> int:
    """Confirmed flags at or above ``min_severity`` whose output's prompt text retention has
    erased (``store.purge_expired``), so that they cannot be replayed."""
    query = (
        select(func.count())
        .select_from(FlagRow)
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(*_confirmed_at_least(min_severity), OutputRow.prompt.is_(None))
    )
    return int(session.scalar(query) or 0)


def resolve(
    session: Session, flag_id: str, status: int, reason: str, redact: Redactor, resolved_by: str
) -> FlagRow:
    """Confirms or dismisses an OPEN flag. The status check and the change are one UPDATE,
    so two reviewers racing on a flag cannot both resolve it."""
    if status not in (CONFIRMED, DISMISSED):
        raise InvalidArgument("resolution", "must be RESOLUTION_CONFIRM or RESOLUTION_DISMISS")
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(FlagRow)
        .where(FlagRow.id == flag_id, FlagRow.status == OPEN)
        .values(
            status=status,
            resolved_by=resolved_by,
            resolution_reason=redact(reason) if reason else "",
            resolved_at=datetime.now(UTC),
        )
        .execution_options(synchronize_session=False)
    )
    changed = result.rowcount
    row = session.get(FlagRow, flag_id, populate_existing=True)
    if row is None:
        raise NotFound("flag", flag_id, field="flag_id")
    if not changed:
        state = pb.FlagStatus.Name(pb.FlagStatus.ValueType(row.status))
        raise FailedPrecondition(
            f"flag_id: flag {flag_id!r} is {state}; only an OPEN flag can be resolved"
        )
    return row
