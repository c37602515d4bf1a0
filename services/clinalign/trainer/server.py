"""The trainer service process: its store, registry, job executor and servicer."""

from __future__ import annotations

import asyncio

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.server import DatabaseApp, Readiness, run_main
from clinalign.trainer import registry
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.executor import LocalExecutor
from clinalign.trainer.servicer import ROLES, TrainerServicer
from clinalign.trainer.v1 import trainer_pb2_grpc


class TrainerApp(DatabaseApp):
    name = "trainer"
    full_name = "clinalign.trainer.v1.TrainerService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: TrainerSettings) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "trainer")
        super().__init__(Database(url, registry.Base))
        self.registry = registry.Registry(common.data_dir / "registry")
        self.executor = LocalExecutor(self.db, common, settings, url)
        self.servicer = TrainerServicer(self.db, self.registry, self.executor, settings)

    def register(self, server: grpc.aio.Server) -> None:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        self.registry.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.db.create_schema)
        # Jobs an earlier trainer left are settled before the service reports ready.
        await self.executor.start()
        await readiness.set(True)

    async def stop(self) -> None:
        await self.executor.stop()
        await super().stop()


def main() -> None:
    run_main(TrainerApp, TrainerSettings)
