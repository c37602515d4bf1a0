"""The monitor service process."""

from __future__ import annotations

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.server import DatabaseApp, run_main
from clinalign.monitor import store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.servicer import ROLES, MonitorServicer
from clinalign.monitor.v1 import monitor_pb2_grpc


class MonitorApp(DatabaseApp):
    name = "monitor"
    full_name = "clinalign.monitor.v1.MonitorService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: MonitorSettings) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "monitor")
        super().__init__(Database(url, store.Base))
        self.servicer = MonitorServicer(self.db, settings.max_batch)

    def register(self, server: grpc.aio.Server) -> None:
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(self.servicer, server)


def main() -> None:
    run_main(MonitorApp, MonitorSettings)
