"""The append-only, hash-chained audit log of the preference store.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's canonical
fields, so editing, deleting or reordering any entry breaks the chain from that point on;
``verify`` finds the first entry that fails. Entries are appended in the same transaction
as the write they record: no acknowledged write without its audit entry, and no entry for
a write that rolled back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from clinalign.preference.models import AuditRow

GENESIS = "0" * 64
# Serialises appenders across processes and replicas on PostgreSQL.
_PG_AUDIT_LOCK = 7_342_001


def _canonical_time(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite hands back naive datetimes for UTC values
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(
    prev_hash: str, seq: int, principal: str, action: str, obj: str, at: datetime
) -> str:
    body = json.dumps(
        [seq, principal, action, obj, _canonical_time(at)],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(session: Session, principal: str, action: str, obj: str) -> AuditRow:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    last = session.scalar(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1))
    seq = (last.seq if last else 0) + 1
    prev = last.entry_hash if last else GENESIS
    at = datetime.now(UTC)
    row = AuditRow(
        seq=seq,
        principal=principal,
        action=action,
        object=obj,
        at=at,
        prev_hash=prev,
        entry_hash=entry_hash(prev, seq, principal, action, obj, at),
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_sequence: int
    message: str


def verify(session: Session) -> Verification:
    """Walks the chain in sequence order; reports the first entry that does not hold.

    A chain alone cannot show that its newest entries were cut off, so every snapshot's
    manifest records the entry written with it: each such anchor must still be in the
    chain with the same hash."""
    from clinalign.preference.models import SnapshotRow

    anchors = {}
    for manifest in session.scalars(select(SnapshotRow.manifest)):
        entry = manifest.get("audit_entry") if isinstance(manifest, dict) else None
        if isinstance(entry, dict):
            anchors[int(entry["sequence"])] = str(entry["hash"])
    result = _walk(session, anchors)
    if result.ok and anchors and max(anchors) > result.entries:
        seq = max(anchors)
        return Verification(
            False,
            result.entries,
            seq,
            f"entry {seq}, anchored by a snapshot, is missing: log truncated",
        )
    return result


def _walk(session: Session, anchors: dict[int, str]) -> Verification:
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in session.scalars(select(AuditRow).order_by(AuditRow.seq)):
        count += 1
        if row.seq != expected_seq:
            return Verification(
                False,
                count,
                expected_seq,
                f"entry {expected_seq} is missing (found {row.seq} next)",
            )
        if row.prev_hash != prev:
            return Verification(
                False, count, row.seq, f"entry {row.seq} does not follow its predecessor"
            )
        if row.entry_hash != entry_hash(
            prev, row.seq, row.principal, row.action, row.object, row.at
        ):
            return Verification(False, count, row.seq, f"entry {row.seq} was altered")
        if anchors.get(row.seq, row.entry_hash) != row.entry_hash:
            return Verification(
                False, count, row.seq, f"entry {row.seq} differs from the one a snapshot recorded"
            )
        prev = row.entry_hash
        expected_seq += 1
    return Verification(True, count, 0, "")


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditRow)) or 0)


def page(session: Session, limit: int, offset: int) -> list[AuditRow]:
    return list(
        session.scalars(select(AuditRow).order_by(AuditRow.seq).limit(limit).offset(offset))
    )
