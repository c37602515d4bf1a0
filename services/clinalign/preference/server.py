"""The preference service process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.deid import build_redactor
from clinalign.common.server import DatabaseApp, Readiness, run_main
from clinalign.preference import audit
from clinalign.preference.audit_keys import (
    SESSION_KEY,
    Checkpoint,
    CheckpointSink,
    Keyring,
    ensure_keyring,
    load_keyring,
)
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.domain import Limits, Redactor
from clinalign.preference.models import Base
from clinalign.preference.servicer import ROLES, SERVICE_CALLERS, PreferenceServicer
from clinalign.preference.v1 import preference_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("clinalign.preference")


class PreferenceApp(DatabaseApp):
    name = "preference"
    full_name = "clinalign.preference.v1.PreferenceService"
    roles = ROLES
    service_callers = SERVICE_CALLERS

    def __init__(
        self,
        common: CommonSettings,
        settings: PreferenceSettings,
        redact: Redactor | None = None,
    ) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "preference")
        super().__init__(Database(url, Base, migrations=MIGRATIONS))
        limits = Limits.from_settings(settings)
        self.servicer = PreferenceServicer(self.db, redact or build_redactor(), limits)
        self.settings = settings
        self.keys_file = settings.audit_keys_file or common.data_dir / "audit-keys.json"
        self.sink = CheckpointSink(
            None
            if settings.audit_anchor_to_log
            else settings.audit_anchor_file or common.data_dir / "audit-anchors.jsonl"
        )
        self._anchoring: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        preference_pb2_grpc.add_PreferenceServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        # Every entry this service appends is keyed; the key never enters the database.
        keyring = (
            load_keyring(self.settings.audit_keys_file)
            if self.settings.audit_keys_file
            else ensure_keyring(self.keys_file)
        )
        self.db.sessions.configure(info={SESSION_KEY: keyring})
        await super().start(readiness)
        self._anchoring = asyncio.create_task(self._anchor_forever(keyring))

    async def _anchor_forever(self, keyring: Keyring) -> None:
        last = -1
        while True:
            try:
                last = await asyncio.to_thread(self.anchor, keyring, last)
            except Exception:  # a sink that failed once may work next time
                log.exception("audit checkpoint failed")
            await asyncio.sleep(self.settings.audit_anchor_interval_s)

    def anchor(self, keyring: Keyring, last: int = -1) -> int:
        """Signs the chain's head and writes it to the sink (unless it has not moved);
        returns the head's sequence."""
        with self.db.sessions() as session:
            row = audit.head(session)
        if row is None or row.seq == last:
            return last
        self.sink.write(Checkpoint.sign(row.seq, row.entry_hash, keyring))
        return row.seq

    async def stop(self) -> None:
        if self._anchoring is not None:
            self._anchoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._anchoring
        await super().stop()


def main() -> None:
    run_main(PreferenceApp, PreferenceSettings)
