"""Outcomes: what a clinician did with an output in their workflow (accepted it, or
overrode it), as an EHR reports it through the CDS Hooks gateway (RecordOutcome). An
accepted draft is the loop's positive signal; an override's reason arrives separately, as
a flag. Outcomes are ``Outcome`` numbers; ``check`` validates a new one, ``record``
stores it once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.monitor.store import OutcomeRow, OutputRow
from clinalign.monitor.v1 import monitor_pb2 as pb

# Metric label of each outcome.
NAMES: dict[int, str] = {pb.OUTCOME_ACCEPTED: "accepted", pb.OUTCOME_OVERRIDDEN: "overridden"}
SOURCE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# An EHR's clock may run a little ahead of ours; an outcome further ahead is refused.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class NewOutcome:
    output_id: str
    outcome: int  # Outcome
    outcome_time: datetime | None  # None when the request left it unset
    source: str


def check(new: NewOutcome, now: datetime) -> datetime:
    """INVALID_ARGUMENT naming the field of the first bad one; the outcome time."""
    if not new.output_id:
        raise InvalidArgument("output_id", "is required: the output id from a provenance")
    if len(new.output_id) > 64:
        raise InvalidArgument("output_id", "is at most 64 characters")
    if new.outcome not in NAMES:
        raise InvalidArgument("outcome", "must be OUTCOME_ACCEPTED or OUTCOME_OVERRIDDEN")
    if new.outcome_time is None:
        raise InvalidArgument("outcome_time", "is required: when the clinician acted")
    if new.outcome_time > now + CLOCK_SKEW:
        raise InvalidArgument("outcome_time", "is in the future")
    if not SOURCE.fullmatch(new.source):
        raise InvalidArgument(
            "source",
            "is required: at most 128 characters of A-Z, a-z, 0-9, '.', '_', ':', '/' and "
            "'-', such as 'cds-hooks:clinalign-patient-summary'",
        )
    return new.outcome_time


def record(session: Session, new: NewOutcome, when: datetime, recorded_by: str) -> tuple[str, bool]:
    """Stores the outcome unless (output, outcome, time) is stored already; returns (the
    output's model version, replayed). NOT_FOUND for an output the monitor has not
    recorded."""
    version = session.scalar(
        select(OutputRow.model_version).where(OutputRow.output_id == new.output_id)
    )
    if version is None:
        raise NotFound("output", new.output_id, field="output_id")
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(OutcomeRow)
        .values(
            output_id=new.output_id,
            model_version=version,
            outcome=new.outcome,
            outcome_time=when.astimezone(UTC),
            source=new.source,
            recorded_by=recorded_by[:128],
            recorded_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["output_id", "outcome", "outcome_time"])
        .returning(OutcomeRow.id)
    )
    inserted = session.execute(stmt).first()
    return version, inserted is None
