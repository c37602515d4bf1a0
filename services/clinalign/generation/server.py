"""The generation service process: loads the policy, serves it, reports to the monitor."""

from __future__ import annotations

import asyncio

import grpc.aio

from clinalign.common.channels import open_channel, service_token
from clinalign.common.config import CommonSettings
from clinalign.common.server import Readiness, run_main
from clinalign.generation.config import GenerationSettings
from clinalign.generation.engine import LocalEngine
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.servicer import ROLES, GenerationServicer
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc

MONITOR_TIMEOUT_S = 10.0


class GenerationApp:
    name = "generation"
    full_name = "clinalign.generation.v1.GenerationService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: GenerationSettings) -> None:
        self.common = common
        self.settings = settings
        path = settings.model_path or common.data_dir / "models" / "foundation"
        self.engine = LocalEngine(
            path, settings.model_name, settings.model_version, settings.device, settings.max_queue
        )
        self._channel: grpc.aio.Channel | None = None
        self.reporter: MonitorReporter | None = None
        if settings.report_to_monitor:
            self.reporter = MonitorReporter(
                self._send_to_monitor,
                capacity=settings.monitor_buffer,
                batch=settings.monitor_batch,
            )
        self.servicer = GenerationServicer(settings, self.engine, self.reporter)

    async def _send_to_monitor(self, batch: list[monitor_pb2.ProductionOutput]) -> None:
        if self._channel is None:
            self._channel = open_channel(
                self.common.monitor_target, self.common, service_token(self.common)
            )
        stub = monitor_pb2_grpc.MonitorServiceStub(self._channel)
        await stub.RecordOutputs(
            monitor_pb2.RecordOutputsRequest(outputs=batch), timeout=MONITOR_TIMEOUT_S
        )

    def register(self, server: grpc.aio.Server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        await asyncio.to_thread(self.engine.load)
        if self.reporter is not None:
            self.reporter.start()
        await readiness.set(True)

    async def stop(self) -> None:
        if self.reporter is not None:
            await self.reporter.stop()
        if self._channel is not None:
            await self._channel.close()


def main() -> None:
    run_main(GenerationApp, GenerationSettings)
