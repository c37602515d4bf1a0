"""The append-only, keyed hash chain of the preference store's audit log.

Each entry's hash is HMAC-SHA256, under a key the database does not hold
(:mod:`clinalign.preference.audit_keys`, from a Secret; rotation adds a key and each entry
names the one it used), over the previous entry's hash and the entry's canonical fields.
Editing, deleting or reordering any entry breaks the chain from that point on, and without
the key nobody who can write the database can compute a chain that verifies. Entries
written before the chain was keyed (``key_id`` empty) are plain SHA-256 and verify as
such, but once a keyed entry has appeared an unkeyed one after it is a forgery.

Checkpoints of the chain's head, signed with the same key, go to a sink outside the
database (``audit_keys.CheckpointSink``); ``verify`` holds the chain to them, so a
chain rewritten or cut off even by someone holding the key disagrees with a checkpoint
they cannot reach. Entries are appended in the same transaction as the write they record:
no acknowledged write without its audit entry, and no entry for a write that rolled back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from clinalign.preference.audit_keys import Checkpoint, Keyring, keyring_of
from clinalign.preference.models import AuditRow

GENESIS = "0" * 64
# Serialises appenders across processes and replicas on PostgreSQL.
_PG_AUDIT_LOCK = 7_342_001


def _canonical_time(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite hands back naive datetimes for UTC values
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(
    prev_hash: str,
    seq: int,
    principal: str,
    action: str,
    obj: str,
    at: datetime,
    key: bytes | None = None,
) -> str:
    """HMAC-SHA256 under ``key``, or plain SHA-256 for entries written before keying."""
    body = json.dumps(
        [seq, principal, action, obj, _canonical_time(at)],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    message = (prev_hash + body).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def append(session: Session, principal: str, action: str, obj: str) -> AuditRow:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    last = session.scalar(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1))
    seq = (last.seq if last else 0) + 1
    prev = last.entry_hash if last else GENESIS
    at = datetime.now(UTC)
    keyring = keyring_of(session)
    key_id, key = (keyring.current_id, keyring.current) if keyring else ("", None)
    row = AuditRow(
        seq=seq,
        principal=principal,
        action=action,
        object=obj,
        at=at,
        prev_hash=prev,
        key_id=key_id,
        entry_hash=entry_hash(prev, seq, principal, action, obj, at, key),
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


def verify(
    session: Session,
    keyring: Keyring | None = None,
    checkpoints: Iterable[Checkpoint] = (),
) -> Verification:
    """Walks the chain in sequence order; reports the first entry that does not hold.

    Keyed entries need ``keyring`` (default: the session's). A chain alone cannot show
    that its newest entries were cut off or that it was rewritten whole, so it is held to
    anchors: the entry each snapshot's manifest records, and the signed ``checkpoints``
    from the sink outside the database. Each must still be in the chain with its hash."""
    from clinalign.preference.models import SnapshotRow

    keyring = keyring or keyring_of(session)
    anchors: dict[int, tuple[str, str]] = {}
    for manifest in session.scalars(select(SnapshotRow.manifest)):
        entry = manifest.get("audit_entry") if isinstance(manifest, dict) else None
        if isinstance(entry, dict):
            anchors[int(entry["sequence"])] = (str(entry["hash"]), "a snapshot")
    for cp in checkpoints:
        if keyring is None or not cp.signed_by(keyring):
            return Verification(
                False,
                0,
                cp.sequence,
                f"checkpoint at entry {cp.sequence} is not signed by "
                "a known audit key: the checkpoint sink was tampered with",
            )
        anchors[cp.sequence] = (cp.entry_hash, "a signed checkpoint")
    result = _walk(session, anchors, keyring)
    if result.ok and anchors and max(anchors) > result.entries:
        seq = max(anchors)
        return Verification(
            False,
            result.entries,
            seq,
            f"entry {seq}, anchored by {anchors[seq][1]}, is missing: log truncated",
        )
    return result


def _walk(
    session: Session, anchors: dict[int, tuple[str, str]], keyring: Keyring | None
) -> Verification:
    prev = GENESIS
    expected_seq = 1
    count = 0
    keyed = False
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
        key: bytes | None = None
        if row.key_id:
            keyed = True
            key = keyring.keys.get(row.key_id) if keyring else None
            if key is None:
                held = (
                    "which the audit keys file does not hold"
                    if keyring
                    else "and no audit keys file was given (--keys)"
                )
                return Verification(
                    False, count, row.seq, f"entry {row.seq} is keyed with {row.key_id!r}, {held}"
                )
        elif keyed:
            return Verification(
                False,
                count,
                row.seq,
                f"entry {row.seq} is not keyed though entries before it are: forged",
            )
        if not hmac.compare_digest(
            row.entry_hash,
            entry_hash(prev, row.seq, row.principal, row.action, row.object, row.at, key),
        ):
            return Verification(False, count, row.seq, f"entry {row.seq} was altered")
        anchored = anchors.get(row.seq)
        if anchored is not None and anchored[0] != row.entry_hash:
            return Verification(
                False,
                count,
                row.seq,
                f"entry {row.seq} differs from the one {anchored[1]} recorded",
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


def head(session: Session) -> AuditRow | None:
    return session.scalar(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1))
