"""Production outputs for review: recent ones listed newest first with filters, or one with
every flag on it; each with its counts of open, confirmed and dismissed flags.

Text is returned as stored: de-identified, and None once retention erased it
(``store.purge_expired``). Flag states are ``FlagState`` numbers; the use cases validate
them before they get here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from clinalign.common.errors import NotFound
from clinalign.monitor.flags import CONFIRMED, DISMISSED, OPEN
from clinalign.monitor.store import FlagRow, OutputRow
from clinalign.monitor.v1 import monitor_pb2 as pb


@dataclass(frozen=True)
class Filter:
    model_version: str = ""  # "" for all
    task: str = ""  # "" for all
    start: datetime | None = None  # generated at or after; None for no lower bound
    end: datetime | None = None  # generated before; None for no upper bound
    flag_state: int = pb.FLAG_STATE_UNSPECIFIED


@dataclass(frozen=True)
class Summary:
    output: OutputRow
    open_flags: int = 0
    confirmed_flags: int = 0
    dismissed_flags: int = 0


def _has_flag(*status: int) -> ColumnElement[bool]:
    """The output has a flag, in one of ``status`` when any is given."""
    query = exists().where(FlagRow.output_id == OutputRow.output_id)
    if status:
        query = query.where(FlagRow.status.in_(status))
    return query


# What each FlagState keeps; FLAG_STATE_UNSPECIFIED keeps every output.
_FLAG_STATES: dict[int, ColumnElement[bool]] = {
    pb.FLAG_STATE_UNFLAGGED: ~_has_flag(),
    pb.FLAG_STATE_FLAGGED: _has_flag(),
    pb.FLAG_STATE_OPEN: _has_flag(OPEN),
    pb.FLAG_STATE_CONFIRMED: _has_flag(CONFIRMED),
    pb.FLAG_STATE_DISMISSED: _has_flag(DISMISSED),
}


def list_outputs(session: Session, f: Filter, limit: int, offset: int) -> list[Summary]:
    """Outputs matching the filter, newest first by generation time, then by id."""
    query = select(OutputRow)
    if f.model_version:
        query = query.where(OutputRow.model_version == f.model_version)
    if f.task:
        query = query.where(OutputRow.task == f.task)
    if f.start is not None:
        query = query.where(OutputRow.created_at >= f.start)
    if f.end is not None:
        query = query.where(OutputRow.created_at < f.end)
    if f.flag_state in _FLAG_STATES:
        query = query.where(_FLAG_STATES[f.flag_state])
    query = query.order_by(OutputRow.created_at.desc(), OutputRow.output_id.desc())
    rows = list(session.scalars(query.limit(limit).offset(offset)))
    return _with_counts(session, rows)


def get_output(session: Session, output_id: str) -> tuple[Summary, list[FlagRow]]:
    """The output with its counts, and every flag on it, oldest first; NOT_FOUND for an
    unknown id."""
    row = session.get(OutputRow, output_id)
    if row is None:
        raise NotFound("output", output_id, field="output_id")
    flags = session.scalars(
        select(FlagRow)
        .where(FlagRow.output_id == output_id)
        .order_by(FlagRow.created_at, FlagRow.id)
    )
    return _with_counts(session, [row])[0], list(flags)


def _with_counts(session: Session, rows: Sequence[OutputRow]) -> list[Summary]:
    """Each output with its flags counted by status: one grouped query for the page."""
    if not rows:
        return []
    counts: dict[str, dict[int, int]] = {}
    query = (
        select(FlagRow.output_id, FlagRow.status, func.count())
        .where(FlagRow.output_id.in_([r.output_id for r in rows]))
        .group_by(FlagRow.output_id, FlagRow.status)
    )
    for output_id, status, n in session.execute(query):
        counts.setdefault(output_id, {})[status] = n
    return [
        Summary(
            output=r,
            open_flags=counts.get(r.output_id, {}).get(OPEN, 0),
            confirmed_flags=counts.get(r.output_id, {}).get(CONFIRMED, 0),
            dismissed_flags=counts.get(r.output_id, {}).get(DISMISSED, 0),
        )
        for r in rows
    ]
