"""The preference service process."""

from __future__ import annotations

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.server import DatabaseApp, run_main
from clinalign.preference import store
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.servicer import ROLES, PreferenceServicer
from clinalign.preference.v1 import preference_pb2_grpc


class PreferenceApp(DatabaseApp):
    name = "preference"
    full_name = "clinalign.preference.v1.PreferenceService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: PreferenceSettings) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "preference")
        super().__init__(Database(url, store.Base))
        self.servicer = PreferenceServicer(self.db)

    def register(self, server: grpc.aio.Server) -> None:
        preference_pb2_grpc.add_PreferenceServiceServicer_to_server(self.servicer, server)


def main() -> None:
    run_main(PreferenceApp, PreferenceSettings)
