"""The keyed audit chain and its signed checkpoints, tampered with the way someone with
write access to the database would: an edited, a deleted and a reordered entry, a chain
rewritten without the key and one rewritten with it, a truncated log and a forged
checkpoint; key rotation. Through `clinalign audit verify` as an operator runs it, and
the preference service writing the checkpoints itself."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from clinalign.cli import app
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.preference import audit
from clinalign.preference.audit_keys import (
    SESSION_KEY,
    Checkpoint,
    CheckpointSink,
    ensure_keyring,
    load_keyring,
)
from clinalign.preference.models import Base
from clinalign.preference.server import MIGRATIONS


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_path = root / "preference.db"
        self.keys = root / "audit-keys.json"
        self.anchors = root / "audit-anchors.jsonl"
        self.db = Database(f"sqlite:///{self.db_path}", Base, migrations=MIGRATIONS)
        self.db.create_schema()
        self.keyring = ensure_keyring(self.keys)
        self.db.sessions.configure(info={SESSION_KEY: self.keyring})

    def append(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            with self.db.sessions.begin() as session:
                audit.append(session, f"clinician-{i % 3}", "submit_comparisons", f"key=k{i}")

    def checkpoint(self) -> None:
        with self.db.sessions() as session:
            row = audit.head(session)
        assert row is not None
        CheckpointSink(self.anchors).write(Checkpoint.sign(row.seq, row.entry_hash, self.keyring))

    def sql(self, *statements: str) -> None:
        with self.db.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))

    def verify(self) -> tuple[int, str]:
        self.db.dispose()
        result = CliRunner().invoke(
            app,
            [
                "audit",
                "verify",
                "--database-url",
                f"sqlite:///{self.db_path}",
                "--keys",
                str(self.keys),
                *(["--anchors", str(self.anchors)] if self.anchors.exists() else []),
            ],
        )
        return result.exit_code, result.output


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Six entries, a checkpoint after the fourth."""
    s = Store(tmp_path)
    s.append(4)
    s.checkpoint()
    s.append(2, start=4)
    yield s
    s.db.dispose()


def _rewrite_from(store: Store, seq: int, key: bytes | None, key_id: str) -> None:
    """Recomputes every hash from ``seq`` on, as someone who can write the table would."""
    with store.db.sessions.begin() as session:
        rows = list(session.scalars(audit.select(audit.AuditRow).order_by(audit.AuditRow.seq)))
        prev = rows[seq - 2].entry_hash if seq > 1 else audit.GENESIS
        for row in rows[seq - 1 :]:
            row.prev_hash, row.key_id = prev, key_id
            row.entry_hash = audit.entry_hash(
                prev, row.seq, row.principal, row.action, row.object, row.at, key
            )
            prev = row.entry_hash


def test_an_intact_chain_verifies_with_its_checkpoints(store: Store) -> None:
    code, output = store.verify()
    assert code == 0, output
    assert "audit log intact: 6 entries, 1 checkpoints held" in output


def test_an_edited_entry_is_caught(store: Store) -> None:
    store.sql("UPDATE audit_log SET object = 'key=forged' WHERE seq = 3")
    assert store.verify() == (1, "audit log BROKEN at entry 3: entry 3 was altered\n")


def test_a_deleted_entry_is_caught(store: Store) -> None:
    store.sql("DELETE FROM audit_log WHERE seq = 3")
    code, output = store.verify()
    assert code == 1 and "entry 3 is missing (found 4 next)" in output


def test_reordered_entries_are_caught(store: Store) -> None:
    store.sql(
        "UPDATE audit_log SET seq = 100 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 100",
    )
    code, output = store.verify()
    assert code == 1 and "BROKEN at entry 2: entry 2 does not follow its predecessor" in output


def test_a_chain_rewritten_without_the_key_is_caught(store: Store) -> None:
    store.sql("UPDATE audit_log SET object = 'key=forged' WHERE seq = 3")
    # Unkeyed from entry 3 on: the keyed entries before it give it away.
    _rewrite_from(store, 3, None, "")
    assert "entry 3 is not keyed though entries before it are" in store.verify()[1]
    # Unkeyed from entry 1: a plain SHA-256 chain, consistent in itself, but the signed
    # checkpoint outside the database holds entry 4's real hash.
    _rewrite_from(store, 1, None, "")
    code, output = store.verify()
    assert code == 1 and "entry 4 differs from the one a signed checkpoint recorded" in output
    # A guessed key under the real key id does not verify either.
    _rewrite_from(store, 1, b"\x00" * 32, store.keyring.current_id)
    assert "entry 1 was altered" in store.verify()[1]


def test_a_chain_rewritten_with_the_key_still_disagrees_with_the_checkpoint(store: Store) -> None:
    store.sql("UPDATE audit_log SET object = 'key=forged' WHERE seq = 2")
    _rewrite_from(store, 2, store.keyring.current, store.keyring.current_id)
    code, output = store.verify()
    assert code == 1 and "entry 4 differs from the one a signed checkpoint recorded" in output


def test_a_forged_checkpoint_and_a_truncated_log_are_caught(store: Store) -> None:
    genuine = store.anchors.read_text()
    record = json.loads(genuine)
    record["audit_checkpoint"]["entry_hash"] = "0" * 64
    store.anchors.write_text(json.dumps(record) + "\n")
    assert "checkpoint at entry 4 is not signed by a known audit key" in store.verify()[1]
    store.anchors.write_text(genuine)
    store.sql("DELETE FROM audit_log WHERE seq >= 4")
    code, output = store.verify()
    assert code == 1 and "entry 4, anchored by a signed checkpoint, is missing" in output


def _write_keys(path: Path, current: str, keys: dict[str, bytes]) -> None:
    encoded = {k: base64.b64encode(v).decode() for k, v in keys.items()}
    path.write_text(json.dumps({"current": current, "keys": encoded}))


def test_keys_rotate_and_every_key_an_entry_names_must_stay(store: Store) -> None:
    old = store.keyring
    _write_keys(store.keys, "k-next", {**old.keys, "k-next": b"\x07" * 32})
    store.keyring = load_keyring(store.keys)
    store.db.sessions.configure(info={SESSION_KEY: store.keyring})
    store.append(2, start=6)
    store.checkpoint()  # signed with the new key; the old checkpoint with the old one
    assert store.verify()[0] == 0
    # Dropping the old key breaks what it signed: the first checkpoint, then the entries.
    _write_keys(store.keys, "k-next", {"k-next": b"\x07" * 32})
    assert "checkpoint at entry 4 is not signed by a known audit key" in store.verify()[1]
    store.anchors.unlink()
    code, output = store.verify()
    assert code == 1 and f"keyed with {old.current_id!r}, which the audit keys file" in output


async def test_the_preference_service_keys_its_entries_and_anchors_its_head(
    common: CommonSettings,
) -> None:
    from clinalign.preference.config import PreferenceSettings
    from clinalign.preference.server import PreferenceApp
    from tests.conftest import serving

    settings = PreferenceSettings(port=0, audit_anchor_interval_s=0.05)
    service = PreferenceApp(common, settings, redact=lambda t: t)
    async with serving(service, common):
        await service.servicer.core.db.run_write(
            lambda s: audit.append(s, "svc-monitor", "register_annotator", "ann-1")
        )
        for _ in range(100):
            anchors = common.data_dir / "audit-anchors.jsonl"
            if anchors.exists() and '"sequence":1' in anchors.read_text():
                break
            await asyncio.sleep(0.05)
    keyring = load_keyring(common.data_dir / "audit-keys.json")
    with service.db.sessions() as session:
        (row,) = session.scalars(audit.select(audit.AuditRow)).all()
    assert row.key_id == keyring.current_id
    result = CliRunner().invoke(
        app=app_cli(), args=["audit", "verify", "--data-dir", str(common.data_dir)]
    )
    assert result.exit_code == 0 and "1 entries, 1 checkpoints held" in result.output


def app_cli():  # type: ignore[no-untyped-def]
    return app


def test_new_keys_and_rotate_key_commands(tmp_path: Path) -> None:
    path = tmp_path / "audit-keys.json"
    runner = CliRunner()
    made = runner.invoke(app, ["audit", "new-keys", str(path)])
    assert made.exit_code == 0 and (path.stat().st_mode & 0o777) == 0o600
    first = load_keyring(path)
    again = runner.invoke(app, ["audit", "new-keys", str(path)])
    assert again.exit_code == 1 and "rotate its keys" in again.output
    import time

    time.sleep(1.1)  # key ids are timestamps to the second
    rotated = runner.invoke(app, ["audit", "rotate-key", str(path)])
    assert rotated.exit_code == 0, rotated.output
    after = load_keyring(path)
    assert after.current_id != first.current_id
    assert after.keys[first.current_id] == first.current  # the old key stays
