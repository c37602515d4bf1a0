"""The preference service process."""

from __future__ import annotations

from pathlib import Path

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.deid import build_redactor
from clinalign.common.server import DatabaseApp, run_main
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.domain import Limits, Redactor
from clinalign.preference.models import Base
from clinalign.preference.servicer import ROLES, PreferenceServicer
from clinalign.preference.v1 import preference_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"


class PreferenceApp(DatabaseApp):
    name = "preference"
    full_name = "clinalign.preference.v1.PreferenceService"
    roles = ROLES

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

    def register(self, server: grpc.aio.Server) -> None:
        preference_pb2_grpc.add_PreferenceServiceServicer_to_server(self.servicer, server)


def main() -> None:
    run_main(PreferenceApp, PreferenceSettings)
