"""Storage of the preference service. Today: annotators. Prompts, responses, labels,
tasks, snapshots and the audit log join it with the preference-store issue."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from clinalign.common.errors import InvalidArgument

# Pseudonymous ids only: letters, digits and - _ . so a name or e-mail cannot pass as one.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9 _-]{0,63}$")


class Base(DeclarativeBase):
    pass


class AnnotatorRow(Base):
    __tablename__ = "annotators"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    specialty: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Annotator:
    id: str
    role: str
    specialty: str


def validate_annotator(a: Annotator) -> None:
    if not _ID.match(a.id) or "@" in a.id:
        raise InvalidArgument(
            "annotator.id", "must be a pseudonymous id of 3-64 letters, digits, '.', '_' or '-'"
        )
    if not _LABEL.match(a.role):
        raise InvalidArgument("annotator.role", "is required: lower-case, such as 'physician'")
    if a.specialty and not _LABEL.match(a.specialty):
        raise InvalidArgument("annotator.specialty", "must be lower-case, such as 'cardiology'")


def upsert_annotator(session: Session, a: Annotator) -> Annotator:
    validate_annotator(a)
    now = datetime.now(UTC)
    row = session.get(AnnotatorRow, a.id)
    if row is None:
        session.add(
            AnnotatorRow(
                id=a.id, role=a.role, specialty=a.specialty, created_at=now, updated_at=now
            )
        )
    else:
        row.role, row.specialty, row.updated_at = a.role, a.specialty, now
    return a
