"""The audit chain's keys and the signed checkpoints of its head.

**Keys.** A JSON file, mounted from a Secret: ``{"current": "<id>", "keys": {"<id>":
"<base64 of 32 or more random bytes>", ...}}``. New entries use ``current``; every key an
entry names must stay in the file for the chain to verify. To rotate, add a key and make it
current; remove none. ``ensure_keyring`` writes a first file (mode 0600) for the embedded
default.

**Checkpoints.** Every ``anchor_interval_s`` the preference service signs its chain's head
(sequence and entry hash, HMAC under the current key) and appends it to a sink outside the
database: a JSON-lines file (a volume the database's administrators cannot write, or a
path a log shipper forwards) or the service's log stream. ``clinalign audit verify
--anchors`` holds the chain to them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from clinalign.common.keyfiles import read_or_create

log = logging.getLogger("clinalign.preference.audit")

SESSION_KEY = "clinalign_audit_keyring"
_MIN_KEY_BYTES = 32


class AuditKeyError(ValueError):
    """The keys file or a checkpoint is unusable; the message says which and why."""


@dataclass(frozen=True)
class Keyring:
    current_id: str
    keys: dict[str, bytes]

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]


def load_keyring(path: Path) -> Keyring:
    try:
        raw = json.loads(path.read_text())
        current = str(raw["current"])
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in raw["keys"].items()}
    except FileNotFoundError as exc:
        raise AuditKeyError(f"audit keys file {path} not found") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditKeyError(f"{path}: not an audit keys file ({type(exc).__name__})") from exc
    if current not in keys:
        raise AuditKeyError(f"{path}: current key {current!r} is not among its keys")
    short = [k for k, v in keys.items() if len(v) < _MIN_KEY_BYTES]
    if short:
        raise AuditKeyError(f"{path}: keys {short} are shorter than {_MIN_KEY_BYTES} bytes")
    return Keyring(current, keys)


def ensure_keyring(path: Path) -> Keyring:
    """The keys in ``path``, first writing one fresh key there (mode 0600) if it is absent."""
    read_or_create(path, _new_keyring)
    return load_keyring(path)


def _new_keyring() -> bytes:
    key_id = datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
    return json.dumps({"current": key_id, "keys": {key_id: _b64(secrets.token_bytes(32))}}).encode()


def rotate(path: Path) -> str:
    """Adds a fresh key to the keys file and makes it current (older keys stay: the
    entries they signed must still verify); returns the new key's id."""
    keyring = load_keyring(path)
    key_id = datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
    if key_id in keyring.keys:
        raise AuditKeyError(f"{path}: a key {key_id!r} exists; rotate again in a second")
    keys = {k: _b64(v) for k, v in keyring.keys.items()} | {key_id: _b64(secrets.token_bytes(32))}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"current": key_id, "keys": keys}, fh)
    os.replace(tmp, path)
    return key_id


def keyring_of(session: Session) -> Keyring | None:
    """The keyring the store's sessions carry (``Database.sessions.configure(info=...)``)."""
    found = session.info.get(SESSION_KEY)
    return found if isinstance(found, Keyring) else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at a time, signed."""

    sequence: int
    entry_hash: str
    at: str
    key_id: str
    mac: str

    def _message(self) -> bytes:
        return f"clinalign-audit-checkpoint|{self.sequence}|{self.entry_hash}|{self.at}".encode()

    @classmethod
    def sign(cls, sequence: int, entry_hash: str, keyring: Keyring) -> Checkpoint:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        unsigned = cls(sequence, entry_hash, at, keyring.current_id, "")
        mac = hmac.new(keyring.current, unsigned._message(), hashlib.sha256).hexdigest()
        return cls(sequence, entry_hash, at, keyring.current_id, mac)

    def signed_by(self, keyring: Keyring) -> bool:
        key = keyring.keys.get(self.key_id)
        if key is None:
            return False
        expected = hmac.new(key, self._message(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.mac)

    def to_json(self) -> str:
        return json.dumps(
            {
                "audit_checkpoint": {
                    "sequence": self.sequence,
                    "entry_hash": self.entry_hash,
                    "at": self.at,
                    "key_id": self.key_id,
                    "mac": self.mac,
                }
            },
            separators=(",", ":"),
        )


def read_checkpoints(path: Path) -> Iterator[Checkpoint]:
    """The checkpoints in a JSON-lines file (lines that are no checkpoint, as in a shipped
    log stream, are skipped; a malformed checkpoint is an error)."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        cp = record.get("audit_checkpoint") if isinstance(record, dict) else None
        if cp is None:
            continue
        try:
            yield Checkpoint(
                int(cp["sequence"]),
                str(cp["entry_hash"]),
                str(cp["at"]),
                str(cp["key_id"]),
                str(cp["mac"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditKeyError(f"{path}:{n}: malformed checkpoint") from exc


class CheckpointSink:
    """Where checkpoints go: a JSON-lines file, or the log stream (one INFO line each)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, checkpoint: Checkpoint) -> None:
        if self.path is None:
            log.info("audit checkpoint", extra={"fields": json.loads(checkpoint.to_json())})
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(checkpoint.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
